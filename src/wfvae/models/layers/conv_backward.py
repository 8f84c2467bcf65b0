"""Which memory layout a training convolution's backward pass runs in on CPU: channels-last or the default.

The models run channels-last (:func:`~wfvae.models.layers.conv.to_channels_last`), so oneDNN also computes the
gradients of every convolution in that layout. Its forward kernels are about as fast in either layout, but its
backward kernels need not be: on an AVX2 AMD EPYC (Zen 3, no AVX-512) the channels-last backward of WF-VAE-L's
3x3x3 layers took 1.24-1.6x the time of the same call in the default (NCDHW) layout, which made our float32
training step slower than the original's there (``benchmarks/RESULTS.md``, "Training-step memory").

:func:`convolve` is ``F.conv3d``/``F.conv2d`` with a choice of the backward layout (``mode``):

* ``"channels_last"``: PyTorch's own backward (the default of a model; nothing changes);
* ``"contiguous"``: the forward is PyTorch's; the backward copies the saved input, the weight and the incoming
  gradient into the default layout, calls ATen's ``convolution_backward`` there and copies the gradients back
  into the layouts of the input and the weight (so optimizers, DDP's buckets and the next layer see the layouts
  they would without it). The copies are a few activation-sized temporaries per call, freed at once;
* ``"auto"``: the first backward call of each shape computes the gradients both ways, keeps the faster (the
  chooser and cache file of :mod:`~wfvae.models.layers.kernel_choice`, keys ``bwd2d``/``bwd3d``), and later calls
  run the chosen one only. A cached choice is not timed again, so runs on one machine compute the same bits;
  but ranks of one run time on their own and the file keeps the last writer's choice, so a resumed multi-rank
  run may use another layout than a rank did before (float rounding, not correctness). That first call
  computes the gradients three times and holds both layouts' results at once: the first step is slower and
  peaks higher.

Only float32 CPU convolutions that record gradients, outside autocast, with channels-last input or weight are
affected; everything else (GPUs, bf16 autocast, inference) runs PyTorch's convolution unchanged. Both layouts
compute the same gradients up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernel_choice

MODES = ("channels_last", "contiguous", "auto")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"conv backward layout must be one of {MODES}; got {mode!r}")
    return mode


def _channels_last(t: torch.Tensor) -> bool:
    fmt = torch.channels_last_3d if t.dim() == 5 else torch.channels_last
    return t.dim() in (4, 5) and t.is_contiguous(memory_format=fmt) and not t.is_contiguous()


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``mode`` changes anything for this call (see the module docstring)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            and not torch.is_autocast_enabled("cpu") and (_channels_last(x) or _channels_last(weight)))


def convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation,
             groups: int, mode: str = "channels_last") -> torch.Tensor:
    """``F.conv3d`` (5-D ``x``) or ``F.conv2d`` (4-D) whose backward pass runs in the layout ``mode`` picks."""
    if mode == "channels_last" or isinstance(padding, str) or not applies(x, weight):
        conv = F.conv3d if x.dim() == 5 else F.conv2d
        return conv(x, weight, bias, stride, padding, dilation, groups)
    n = x.dim() - 2
    stride, padding, dilation = (tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n
                                 for v in (stride, padding, dilation))
    return _LayoutBackward.apply(x, weight, bias, stride, padding, dilation, groups, mode)


def call_key(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, groups: int) -> str:
    """What decides the two layouts' speed: kind, shapes, dtype, the input's and weight's layouts, geometry."""
    kind = "bwd3d" if x.dim() == 5 else "bwd2d"
    layouts = ("cl" if _channels_last(x) else "c") + ("cl" if _channels_last(weight) else "c")
    return (f"{kind} x{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} w{tuple(weight.shape)} {layouts} "
            f"s{tuple(stride)} p{tuple(padding)} d{tuple(dilation)} g{groups}")


def _like(t: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor | None:
    """``t`` in ``ref``'s layout (channels-last or default)."""
    if t is None:
        return None
    if _channels_last(ref):
        return t.contiguous(memory_format=torch.channels_last_3d if ref.dim() == 5 else torch.channels_last)
    return t.contiguous()


class _LayoutBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, mode):
        ctx.save_for_backward(x, weight)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        ctx.args = (stride, padding, dilation, groups, mode)
        conv = F.conv3d if x.dim() == 5 else F.conv2d
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, mode = ctx.args
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
        zeros = [0] * len(stride)

        def run(layout: str):
            if layout == "contiguous":
                g, xs, w = grad.contiguous(), x.contiguous(), weight.contiguous()
            else:
                g, xs, w = _like(grad, x), x, weight
            gi, gw, gb = torch.ops.aten.convolution_backward(
                g, xs, w, ctx.bias_sizes, list(stride), list(padding), list(dilation), False, zeros, groups, mask)
            return _like(gi, x), _like(gw, weight), gb

        runs = {"contiguous": lambda: run("contiguous"), "channels_last": lambda: run("channels_last")}
        if mode == "auto":
            key = call_key(x, weight, stride, padding, dilation, groups)
            gi, gw, gb = kernel_choice.CHOOSER.run_named(key, runs)
        else:
            gi, gw, gb = runs[mode]()
        return gi, gw, gb, None, None, None, None, None
