"""Small float32 3D convolutions run by oneDNN, not by PyTorch's im2col fallback (slow_conv3d)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from wfvae.models import build_model
from wfvae.models.layers.conv import conv3d_onednn, takes_native_fallback

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")

TINY = Path(__file__).parents[1] / "examples" / "configs" / "wfvae_tiny.json"
SELECT = getattr(torch._C, "_select_conv_backend", None)  # private; only the tests ask it


def _backend(x, weight, conv: nn.Conv3d, groups: int) -> str:
    return str(SELECT(x, weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False,
                      [0, 0, 0], groups, None))


SHAPES = [  # (batch, in, out, frames, height, width, kernel, stride), whether PyTorch would take slow_conv3d
    ((1, 16, 16, 7, 64, 64, 3, 1), True),  # the tiny config's 64x64 decoder level at 9x128x128: 16*7*64
    ((1, 16, 32, 5, 32, 32, 3, (1, 2, 2)), True),
    ((1, 32, 32, 3, 16, 16, 3, 2), True),
    ((1, 8, 16, 9, 64, 64, (1, 3, 3), 1), True),
    ((1, 16, 20, 20, 64, 64, 3, 1), True),  # C*T*H = 20480 exactly: still the fallback
    ((1, 16, 20, 21, 61, 61, 3, 1), False),  # C*T*H = 20496: oneDNN by itself
    ((1, 64, 64, 11, 64, 64, 3, 1), False),  # large: oneDNN by itself
    ((2, 8, 8, 11, 64, 64, 3, 1), False),  # two samples: oneDNN by itself
    ((1, 8, 8, 11, 64, 64, 1, 1), False),  # 1x1x1: left to PyTorch (its column buffer is one copy)
    ((1, 4, 6, 5, 9, 7, 3, 1), True),  # odd sizes
    ((1, 4, 5, 5, 9, 7, 3, 1), True),  # odd output channels: falls back, conv3d_onednn keeps the plain call
]
IDS = ["x".join(map(str, shape[:6])) for shape, _ in SHAPES]


@pytest.mark.skipif(SELECT is None, reason="torch._C._select_conv_backend is not in this torch")
@pytest.mark.parametrize("shape, falls_back", SHAPES, ids=IDS)
def test_rule_matches_pytorchs_backend_choice(shape, falls_back):
    batch, cin, cout, frames, height, width, kernel, stride = shape
    conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, 1, 1) if kernel != 1 else 0)
    x = torch.zeros(batch, cin, frames, height, width).contiguous(memory_format=torch.channels_last_3d)
    chosen = _backend(x, conv.weight, conv, 1)
    assert takes_native_fallback(x, conv) == falls_back
    if falls_back:
        assert chosen.endswith("Slow3d"), chosen
        if cout % 2 == 0:  # the two-group form of the same convolution is what oneDNN gets
            assert _backend(torch.cat((x, x), 1), conv.weight, conv, 2).endswith("Mkldnn")
    elif conv.kernel_size[1:] != (1, 1):
        assert chosen.endswith("Mkldnn"), chosen
    # in float64 PyTorch never takes oneDNN, and neither do we (the parity tests run there)
    assert not takes_native_fallback(x.double(), conv.double())
    # nor for padding modes other than zeros, which F.conv3d with groups cannot express
    conv.padding_mode = "replicate"
    assert not takes_native_fallback(x, conv)


@pytest.mark.parametrize("shape, falls_back", SHAPES, ids=IDS)
def test_output_and_gradients_equal_the_convolution(shape, falls_back):
    batch, cin, cout, frames, height, width, kernel, stride = shape
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
    if falls_back and cout % 2 == 0:
        assert y.is_contiguous(memory_format=torch.channels_last_3d)  # the models' layout is kept
    else:  # PyTorch's own call, unchanged
        with torch.no_grad():
            assert torch.equal(y, conv(x))
    assert rel(y, y64) < 1e-5
    assert rel(x.grad, x64.grad) < 1e-5
    assert rel(conv.weight.grad, conv64.weight.grad) < 1e-5
    assert rel(conv.bias.grad, conv64.bias.grad) < 1e-5


def _aten_ops(fn) -> list[str]:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with Record() as rec:
        fn()
    return rec.names


def test_autocast_keeps_the_plain_call():
    """Under CPU autocast the convolution runs in bf16, which PyTorch gives to oneDNN by itself: no stacking."""
    conv = nn.Conv3d(8, 8, 3, padding=(0, 1, 1))
    x = torch.randn(1, 8, 11, 64, 64).contiguous(memory_format=torch.channels_last_3d)
    assert takes_native_fallback(x, conv)
    assert "aten.cat" in _aten_ops(lambda: conv3d_onednn(x, conv))  # float32: stacked
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes_native_fallback(x, conv)
        ops = _aten_ops(lambda: conv3d_onednn(x, conv))
    assert "aten.cat" not in ops and "aten.convolution" in ops


def test_tiny_config_training_step_runs_no_3x3_convolution_through_slow_conv3d():
    """A tiny WF-VAE step at 9x64x64 in float32: before, most 3x3x3 convolutions ran slow_conv3d."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build_model(TINY).train()
    x = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = model(x)
        (out.sample - x).abs().mean().backward()
    slow = [e for e in prof.events() if e.name.startswith("aten::slow_conv3d")]
    onednn = [e for e in prof.events() if e.name == "aten::mkldnn_convolution"]
    # the profiler sees slow_conv3d's forward ops (its backward is called inside convolution_backward), each with
    # its weight second; what remains there are 1x1x1 convolutions (attention projections, shortcuts)
    assert {e.name for e in slow} <= {"aten::slow_conv3d", "aten::slow_conv3d_forward"}
    assert all(len(e.input_shapes) > 1 and len(e.input_shapes[1]) == 5 for e in slow)
    kernels = {tuple(e.input_shapes[1][2:]) for e in slow}
    assert kernels <= {(1, 1, 1)}, kernels
    assert len(onednn) >= 10
