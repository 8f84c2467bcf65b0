"""Convolutions on videos laid out as (B, C, T, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import conv_backward, kernel_choice, winograd
from .stream import StreamState, causal_time_window
from .twin import kernel_device


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Store a 4-D/5-D tensor channels-last (no copy if it already is).

    The models run channels-last: LayerNorm over channels then needs no transposed copy, and
    oneDNN convolutions read and write the layout directly instead of reordering every call.
    """
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _triple(value) -> tuple[int, int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 3:
            raise ValueError(f"expected 3 values, got {value}")
        return tuple(int(v) for v in value)
    return (int(value),) * 3


# aten's ConvParams::use_mkldnn sends a float32 CPU convolution with one sample, one group and a kernel of
# at most 3x3 in its last two dims to oneDNN only when N*C*T*H (the input's first four sizes) exceeds this;
# below it, a 3D convolution runs slow_conv3d: im2col into a column buffer kernel-volume times the input
# (27x for 3x3x3), allocated and filled on every call, forward and backward.
NATIVE_FALLBACK_MAX_NCTH = 20480


def takes_native_fallback(x: torch.Tensor, conv: nn.Conv3d) -> bool:
    """Whether PyTorch would run ``conv(x)`` through slow_conv3d's column buffer (see above).

    1x1 spatial kernels are left out: their column buffer is one copy of the input, which is cheap. So is
    CPU autocast: the convolution then runs in bf16, which PyTorch gives to oneDNN wherever oneDNN has bf16
    kernels (elsewhere the two-group form would not reach oneDNN either).
    ``tests/test_conv_backend.py`` checks this rule against PyTorch's own backend choice.
    On ``chunk_plan``'s shapes-only twin of a CPU model (see ``twin.py``) meta inputs follow the CPU rule, so
    the stacked input is counted.
    """
    _, k_h, k_w = conv.kernel_size
    return (kernel_device(x, conv) == "cpu" and x.dtype == torch.float32 and x.dim() == 5 and x.shape[0] == 1
            and not torch.is_autocast_enabled("cpu") and conv.groups == 1 and conv.padding_mode == "zeros"
            and (k_h, k_w) != (1, 1) and not (k_h > 3 and k_w > 3)
            and x.shape[1] * x.shape[2] * x.shape[3] <= NATIVE_FALLBACK_MAX_NCTH
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def conv3d_onednn(x: torch.Tensor, conv: nn.Conv3d, backward_layout: str = "channels_last") -> torch.Tensor:
    """``conv(x)``, run by oneDNN also where PyTorch would take slow_conv3d (:func:`takes_native_fallback`).

    There it computes the same convolution as two groups over ``x`` stacked twice along channels: group g
    reads copy g with output channels g*O/2 .. (g+1)*O/2 of the unchanged weight, so the output and the
    gradients are the convolution's own (to float32 rounding: a different algorithm), and PyTorch takes oneDNN
    for grouped convolutions. Memory: the stacked input, twice the input's size (kept for the backward pass
    in training), instead of a column buffer 27 times its size at every call; the effect on a training step
    is in ``benchmarks/RESULTS.md`` ("Training-step memory", session 8). An odd number of output channels
    keeps PyTorch's own choice. ``backward_layout``: see :mod:`~wfvae.models.layers.conv_backward`.
    """
    if conv.out_channels % 2 == 0 and takes_native_fallback(x, conv):
        return conv_backward.convolve(torch.cat((x, x), 1), conv.weight, conv.bias, conv.stride, conv.padding,
                                      conv.dilation, 2, backward_layout)
    if backward_layout != "channels_last" and conv.padding_mode == "zeros":
        return conv_backward.convolve(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                      conv.groups, backward_layout)
    return conv(x)


def _run_kernel(mode: str, x: torch.Tensor, key: str, direct, winograd_fn) -> torch.Tensor:
    """The kernel ``mode`` picks (see :mod:`kernel_choice`). Meta tensors (``chunk_plan``'s shapes-only twin) have
    nothing to time: they run Winograd, whose work buffers the twin then counts."""
    if x.device.type == "meta":
        return winograd_fn()
    return kernel_choice.CHOOSER.run(mode, key, direct, winograd_fn)


def frames_to_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W), frame-major like the original's rearrange."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def images_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*T, C, H, W) -> (B, C, T, H, W)."""
    bt, c, h, w = x.shape
    return x.reshape(batch, bt // batch, c, h, w).permute(0, 2, 1, 3, 4)


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame independently (state-dict keys of ``nn.Conv2d``).

    Takes videos (B, C, T, H, W) or images (N, C, H, W).
    """

    conv_kernel = "direct"  # or "winograd" / "auto" on CPU without gradients; see VideoAutoencoder.set_conv_kernels
    backward_layout = "channels_last"  # CPU float32 training; see VideoAutoencoder.set_conv_backward_layout

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        if self.conv_kernel != "direct" and winograd.applies(x, 1):
            key = kernel_choice.call_key("frame2d", x, self.weight)
            return _run_kernel(self.conv_kernel, x, key, lambda: self._direct(x), lambda: self._winograd(x))
        return self._direct(x)

    def _direct(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return self._conv2d(x)
        # small inputs may take a non-oneDNN kernel that returns NCHW; keep the video channels-last
        return images_to_frames(to_channels_last(self._conv2d(frames_to_images(x))), x.shape[0])

    def _conv2d(self, x: torch.Tensor) -> torch.Tensor:
        if self.backward_layout == "channels_last" or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return conv_backward.convolve(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                      self.groups, self.backward_layout)

    def _winograd(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.unsqueeze(2)  # a 3D kernel with one time tap
        if x.dim() == 4:
            return winograd.conv3d(x.unsqueeze(2), weight, self.bias).squeeze(2)
        return winograd.conv3d(x, weight, self.bias)


class CausalConv3d(nn.Module):
    """3D convolution that is causal in time: output frame t sees input frames <= t only.

    The sequence is padded in front with ``kernel_t - 1`` copies of its first frame (no padding at
    the end); ``padding`` applies to height and width only. State-dict keys are ``conv.weight`` and
    ``conv.bias`` as in the original.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: int or (t, h, w).
        stride: int or (t, h, w).
        padding: int or (t, h, w); the time entry is ignored (time is padded causally).
    """

    conv_kernel = "direct"  # or "winograd" / "auto" on CPU without gradients; see VideoAutoencoder.set_conv_kernels
    backward_layout = "channels_last"  # CPU float32 training; see VideoAutoencoder.set_conv_backward_layout

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        kernel = _triple(kernel_size)
        stride = _triple(stride)
        padding = _triple(padding)
        self.time_kernel, self.time_stride = kernel[0], stride[0]
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=(0, padding[1], padding[2]), bias=bias)

    def pad(self, x: torch.Tensor, stream: StreamState | None) -> torch.Tensor:
        """The causally padded input holding whole temporal windows (see ``causal_time_window``)."""
        return causal_time_window(x, stream, self, self.time_kernel, self.time_stride)

    def forward(self, x: torch.Tensor, stream: StreamState | None = None, apply_silu: bool = False) -> torch.Tensor:
        """Convolve ``x`` (B, C, T, H, W) causally; with ``apply_silu`` convolve ``silu(x)``.

        Without gradients ``apply_silu`` writes SiLU straight into the causally padded window (whole
        clip or stream chunk), so neither the activation nor the padding costs a separate copy.
        """
        if apply_silu and not torch.is_grad_enabled():
            x = self.silu_window(x, stream)
        else:
            x = self.pad(F.silu(x) if apply_silu else x, stream)
        return self.convolve_window(x)

    def silu_window(self, x: torch.Tensor, stream: StreamState | None) -> torch.Tensor:
        """The causally padded window of ``silu(x)`` (no gradients), for :meth:`convolve_window`.

        Splitting ``forward`` in two lets a caller drop ``x`` (e.g. a norm output) before the
        convolution allocates its output, so the two are never alive together.
        """
        return causal_time_window(x, stream, self, self.time_kernel, self.time_stride, silu=True)

    def convolve_window(self, window: torch.Tensor) -> torch.Tensor:
        """Convolve a window from :meth:`pad` or :meth:`silu_window` (no padding added)."""
        if window.shape[2] < self.time_kernel:
            return self._no_frames(window)
        return self._convolve(window)

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_kernel != "direct" and winograd.applies(x, self.time_kernel):
            conv, key = self.conv, kernel_choice.call_key("conv3d", x, self.conv.weight)
            return _run_kernel(self.conv_kernel, x, key, lambda: conv3d_onednn(x, conv),
                                             lambda: winograd.conv3d(x, conv.weight, conv.bias))
        return conv3d_onednn(x, self.conv, self.backward_layout)

    def _no_frames(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        b, _, _, h, w = x.shape
        h_out = (h + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
        w_out = (w + 2 * conv.padding[2] - conv.kernel_size[2]) // conv.stride[2] + 1
        return x.new_empty(b, conv.out_channels, 0, h_out, w_out)
