"""set_conv_backward_layout(): CPU float32 training computes convolution gradients in the chosen layout."""

import json
from pathlib import Path

import pytest
import torch

from wfvae.models import build_model
from wfvae.models.layers import conv_backward, kernel_choice
from wfvae.models.layers.conv import CausalConv3d, FrameConv2d

ROOT = Path(__file__).parents[1]
CL3, CL2 = torch.channels_last_3d, torch.channels_last


def _grads(module, x, mode):
    module.zero_grad(set_to_none=True)
    module.backward_layout = mode
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    torch.manual_seed(3)
    out.backward(torch.randn_like(out))
    return out, x.grad, [p.grad for p in module.parameters()]


@pytest.mark.parametrize("kind", ["conv3d", "conv3d_small", "frame2d", "image2d"])
def test_contiguous_backward_gives_the_same_gradients_in_the_same_layouts(kind):
    torch.manual_seed(0)
    if kind.startswith("conv3d"):
        channels, size = (16, 8) if kind == "conv3d_small" else (32, 12)  # small: the two-group oneDNN form
        module = CausalConv3d(channels, channels, 3, padding=1)
        module.conv.weight.data = module.conv.weight.data.contiguous(memory_format=CL3)
        x = torch.randn(1, channels, 5, size, size).contiguous(memory_format=CL3)
    else:
        module = FrameConv2d(24, 16, kernel_size=3, padding=1)
        module.weight.data = module.weight.data.contiguous(memory_format=CL2)
        shape = (1, 24, 3, 10, 10) if kind == "frame2d" else (3, 24, 10, 10)
        x = torch.randn(shape).contiguous(memory_format=CL3 if len(shape) == 5 else CL2)
    out_cl, gx_cl, gp_cl = _grads(module, x, "channels_last")
    out_c, gx_c, gp_c = _grads(module, x, "contiguous")
    torch.testing.assert_close(out_c, out_cl, rtol=0, atol=0)  # the forward is PyTorch's either way
    torch.testing.assert_close(gx_c, gx_cl, rtol=1e-5, atol=1e-5)
    assert gx_c.stride() == gx_cl.stride()
    for a, b, p in zip(gp_c, gp_cl, module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert a.stride() == b.stride() == p.stride()


def test_auto_times_each_shape_once_and_returns_the_chosen_layouts_gradients(tmp_path, monkeypatch):
    monkeypatch.setenv(kernel_choice.CACHE_ENV, str(tmp_path / "kernels.json"))
    kernel_choice.CHOOSER.clear()
    torch.manual_seed(0)
    module = CausalConv3d(32, 32, 3, padding=1)
    module.conv.weight.data = module.conv.weight.data.contiguous(memory_format=CL3)
    x = torch.randn(1, 32, 5, 12, 12).contiguous(memory_format=CL3)
    calls = []
    real = torch.ops.aten.convolution_backward

    class Counting:  # counts the backward computations without changing them
        def __call__(self, *args):
            calls.append(1)
            return real(*args)

    monkeypatch.setattr(torch.ops.aten, "convolution_backward", Counting())
    _, gx_auto, gp_auto = _grads(module, x, "auto")
    assert len(calls) == 3  # both layouts, and the slower once more
    entries = {k: v for k, v in kernel_choice.CHOOSER.choices().items() if "| bwd3d " in k}
    assert len(entries) == 1
    (entry,) = entries.values()
    assert entry["kernel"] in ("channels_last", "contiguous") and entry["channels_last_s"] > 0 < entry["contiguous_s"]
    on_disk = json.loads((tmp_path / "kernels.json").read_text())["entries"]
    assert list(entries) == [k for k in on_disk if "| bwd3d " in k]
    calls.clear()
    _, gx_again, _ = _grads(module, x, "auto")
    assert len(calls) == 1  # the cached choice only
    _, gx_forced, gp_forced = _grads(module, x, entry["kernel"])
    torch.testing.assert_close(gx_auto, gx_forced, rtol=0, atol=0)
    torch.testing.assert_close(gx_again, gx_forced, rtol=0, atol=0)
    for a, b in zip(gp_auto, gp_forced):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a fresh process reads the choice from the file: no timing
    kernel_choice.CHOOSER.clear()
    calls.clear()
    _grads(module, x, "auto")
    assert len(calls) == 1
    kernel_choice.CHOOSER.clear()


def test_inference_bf16_and_default_layout_calls_are_untouched():
    w = torch.randn(8, 4, 3, 3, 3).contiguous(memory_format=CL3).requires_grad_(True)
    x = torch.randn(1, 4, 5, 6, 6).contiguous(memory_format=CL3)
    assert conv_backward.applies(x, w)
    with torch.no_grad():
        assert not conv_backward.applies(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv_backward.applies(x, w)
    assert not conv_backward.applies(x.double(), w.double())
    assert not conv_backward.applies(x.contiguous(), w.detach().contiguous().requires_grad_(True))
    y = conv_backward.convolve(x, w, None, (1, 1, 1), (0, 1, 1), (1, 1, 1), 1, "contiguous")
    assert y.grad_fn is not None and "LayoutBackward" in type(y.grad_fn).__name__
    # integer geometry as F.conv3d takes it; string padding is left to PyTorch
    y_int = conv_backward.convolve(x, w, None, 1, 1, 1, 1, "contiguous")
    y_int.sum().backward()
    torch.testing.assert_close(w.grad, torch.autograd.grad(torch.nn.functional.conv3d(x, w, padding=1).sum(), w)[0],
                               rtol=1e-5, atol=1e-5)
    y_same = conv_backward.convolve(x, w, None, 1, "same", 1, 1, "contiguous")
    assert y_same.shape == x.shape[:1] + (8,) + x.shape[2:] and "LayoutBackward" not in type(y_same.grad_fn).__name__
    with pytest.raises(ValueError, match="must be one of"):
        build_model(json.loads((ROOT / "examples/configs/wfvae_tiny.json").read_text())).set_conv_backward_layout("x")


def test_training_step_with_contiguous_backward_matches_and_keeps_checkpointing_exact():
    torch.manual_seed(0)
    config = json.loads((ROOT / "examples/configs/wfvae_tiny.json").read_text())
    model = build_model(config).use_channels_last_weights().train()
    g = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, 5, 32, 32, generator=g) * 2 - 1

    def grads(layout, ckpt):
        model.set_conv_backward_layout(layout)
        (model.enable_gradient_checkpointing() if ckpt else model.disable_gradient_checkpointing())
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        out = model(video)
        ((out.sample - video).abs().mean() + 1e-6 * out.posterior.kl().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref = grads("channels_last", False)
    plain = grads("contiguous", False)
    ckpt = grads("contiguous", True)
    assert ref.keys() == plain.keys() == ckpt.keys()
    for name in ref:
        torch.testing.assert_close(plain[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)
        assert torch.equal(ckpt[name], plain[name]), name  # checkpointing recomputes the same calls
        assert plain[name].stride() == dict(model.named_parameters())[name].stride(), name
