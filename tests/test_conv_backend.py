"""Small float32 3D convolutions run by oneDNN, not by PyTorch's im2col fallback (slow_conv3d)."""

import pytest
import torch
from torch import nn

from wfvae.models import build_model
from wfvae.models.layers.conv import CausalConv3d, conv3d_onednn, takes_native_fallback

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")

SELECT = getattr(torch._C, "_select_conv_backend", None)  # private; only the tests ask it


def _backend(x, weight, conv: nn.Conv3d, groups: int) -> str:
    return str(SELECT(x, weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False,
                      [0, 0, 0], groups, None))


SHAPES = [  # (batch, in, out, frames, height, width, kernel, stride)
    (1, 8, 8, 11, 64, 64, 3, 1),  # the tiny config's first level at 9x128x128: 8*11*64 <= 20480
    (1, 16, 32, 5, 32, 32, 3, (1, 2, 2)),
    (1, 32, 32, 3, 16, 16, 3, 2),
    (1, 8, 16, 9, 64, 64, (1, 3, 3), 1),
    (1, 64, 64, 11, 64, 64, 3, 1),  # large: PyTorch takes oneDNN by itself
    (2, 8, 8, 11, 64, 64, 3, 1),  # two samples: oneDNN by itself
    (1, 8, 8, 11, 64, 64, 1, 1),  # 1x1x1: left to PyTorch
    (1, 4, 6, 5, 9, 7, 3, 1),  # odd sizes
]


@pytest.mark.skipif(SELECT is None, reason="torch._C._select_conv_backend is not in this torch")
@pytest.mark.parametrize("batch, cin, cout, frames, height, width, kernel, stride", SHAPES)
def test_rule_matches_pytorchs_backend_choice(batch, cin, cout, frames, height, width, kernel, stride):
    conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, 1, 1) if kernel != 1 else 0)
    x = torch.zeros(batch, cin, frames, height, width).contiguous(memory_format=torch.channels_last_3d)
    chosen = _backend(x, conv.weight, conv, 1)
    spatial_1x1 = conv.kernel_size[1:] == (1, 1)
    if takes_native_fallback(x, conv):
        assert chosen.endswith("Slow3d"), chosen
        # the two-group form of the same convolution is what oneDNN gets
        assert _backend(torch.cat((x, x), 1), conv.weight, conv, 2).endswith("Mkldnn")
    elif not spatial_1x1:
        assert chosen.endswith("Mkldnn"), chosen
    # in float64 PyTorch never takes oneDNN, and neither do we (the parity tests run there)
    assert not takes_native_fallback(x.double(), conv.double())


@pytest.mark.parametrize("batch, cin, cout, frames, height, width, kernel, stride", SHAPES)
def test_output_and_gradients_equal_the_convolution(batch, cin, cout, frames, height, width, kernel, stride):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, 1, 1) if kernel != 1 else 0)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(batch, cin, frames, height, width, generator=g)
    x = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    y = conv3d_onednn(x, conv)
    grad_out = torch.randn(y.shape, generator=g)
    y.backward(grad_out)

    conv64 = nn.Conv3d(cin, cout, kernel, stride=stride, padding=conv.padding).double()
    conv64.load_state_dict({k: v.double() for k, v in conv.state_dict().items()})
    x64 = x.detach().double().requires_grad_()
    y64 = conv64(x64)
    y64.backward(grad_out.double())

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert y.dtype == torch.float32 and y.shape == y64.shape
    if takes_native_fallback(x, conv):
        assert y.is_contiguous(memory_format=torch.channels_last_3d)  # the models' layout is kept
    assert rel(y, y64) < 1e-5
    assert rel(x.grad, x64.grad) < 1e-5
    assert rel(conv.weight.grad, conv64.weight.grad) < 1e-5
    assert rel(conv.bias.grad, conv64.bias.grad) < 1e-5


def test_tiny_config_training_step_runs_no_3x3_convolution_through_slow_conv3d():
    """A tiny WF-VAE step at 9x64x64 in float32: before, most 3x3x3 convolutions ran slow_conv3d."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build_model("examples/configs/wfvae_tiny.json").train()
    x = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = model(x)
        (out.sample - x).abs().mean().backward()
    slow = [e for e in prof.events() if e.name.startswith("aten::slow_conv3d")]
    onednn = [e for e in prof.events() if e.name == "aten::mkldnn_convolution"]
    # what remains in slow_conv3d are 1x1x1 convolutions (attention projections, shortcuts): weight (O, C, 1, 1, 1)
    kernels = {tuple(e.input_shapes[1][2:]) for e in slow if len(e.input_shapes) > 1 and len(e.input_shapes[1]) == 5}
    assert kernels <= {(1, 1, 1)}, kernels
    assert len(onednn) >= 10
