"""Spatial and temporal down/upsampling layers (names and state-dict layout of the original)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpointing import checkpointable
from .conv import CausalConv3d, FrameConv2d, conv3d_onednn, frames_to_images, images_to_frames
from .stream import StreamState, causal_time_window, time_upsample_2x


def _spatial_up_2x(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Upsample every frame of (B, C, T, H, W) by 2 in H and W."""
    if x.shape[2] == 0:
        b, c, _, h, w = x.shape
        return x.new_empty(b, c, 0, 2 * h, 2 * w)
    if mode == "nearest":
        return images_to_frames(F.interpolate(frames_to_images(x), scale_factor=2.0, mode="nearest"), x.shape[0])
    return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="trilinear")


class Downsample(nn.Module):
    """Per-frame 2x spatial downsampling: pad right/bottom by one, 3x3 conv with stride 2."""

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=0)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        y = self.conv(F.pad(frames_to_images(x), (0, 1, 0, 1)))
        return images_to_frames(y, x.shape[0])


class Upsample(nn.Module):
    """Per-frame 2x nearest-neighbour upsampling followed by a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.conv = FrameConv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        y = F.interpolate(frames_to_images(x), scale_factor=2.0, mode="nearest")
        return images_to_frames(self.conv(y), x.shape[0])


class Spatial2xTime2x3DDownsample(nn.Module):
    """2x down in T, H and W: pad right/bottom by one, causal 3x3x3 conv with stride 2."""

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size=3, stride=2, padding=0)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)), stream)


class Spatial2x3DDownsample(nn.Module):
    """2x down in H and W with a causal 3x3x3 conv of stride (1, 2, 2)."""

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size=3, stride=(1, 2, 2), padding=0)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)), stream)


class Spatial2xTime2x3DUpsample(nn.Module):
    """2x up in T (first frame kept once, ``t_interpolation``), bilinear 2x in H/W, causal conv."""

    def __init__(self, in_channels: int, out_channels: int, t_interpolation: str = "trilinear", **_):
        super().__init__()
        if t_interpolation not in ("trilinear", "nearest"):
            raise ValueError(f"t_interpolation must be 'trilinear' or 'nearest', got {t_interpolation!r}")
        self.t_interpolation = t_interpolation
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size=3, padding=1)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        x = time_upsample_2x(x, self.t_interpolation, stream, self)
        return self.conv(_spatial_up_2x(x, "trilinear"), stream)


class Spatial2x3DUpsample(nn.Module):
    """Bilinear 2x in H/W, then a causal 3x3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size=3, padding=1)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        return self.conv(_spatial_up_2x(x, "trilinear"), stream)


class SpatialDownsample2x(nn.Module):
    """CausalVAE: pad right/bottom by one, causal (1, 3, 3) conv with stride (1, 2, 2)."""

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, (1, 3, 3), stride=(1, 2, 2), padding=0)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)), stream)


class SpatialUpsample2x(nn.Module):
    """CausalVAE: nearest 2x in H/W per frame, then a causal (1, 3, 3) conv."""

    def __init__(self, in_channels: int, out_channels: int, **_):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, (1, 3, 3), padding=1)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        return self.conv(_spatial_up_2x(x, "nearest"), stream)


class TimeDownsample2x(nn.Module):
    """CausalVAE: causal average over 3 frames with stride 2 (no parameters)."""

    def __init__(self, in_channels: int = 0, out_channels: int = 0, kernel_size: int = 3, **_):
        super().__init__()
        self.kernel_size = kernel_size

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        x = causal_time_window(x, stream, self, self.kernel_size, 2)
        if x.shape[2] < self.kernel_size:
            return x[:, :, :0]
        return F.avg_pool3d(x, (self.kernel_size, 1, 1), stride=(2, 1, 1))


class TimeDownsampleRes2x(nn.Module):
    """CausalVAE: learned mix of a causal 3-frame average and a 3x3x3 conv, both with stride 2."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0, **_):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=(2, 1, 1), padding=(0, 1, 1))
        self.mix_factor = nn.Parameter(torch.tensor([float(mix_factor)]))

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        x = causal_time_window(x, stream, self, self.kernel_size, 2)
        if x.shape[2] < self.kernel_size:
            b, _, _, h, w = x.shape
            return x.new_empty(b, self.conv.out_channels, 0, h, w)
        alpha = torch.sigmoid(self.mix_factor)
        pooled = F.avg_pool3d(x, (self.kernel_size, 1, 1), stride=(2, 1, 1))
        return alpha * pooled + (1 - alpha) * conv3d_onednn(x, self.conv)


class TimeUpsample2x(nn.Module):
    """CausalVAE: 2x trilinear time upsampling, first frame kept once (no parameters)."""

    def __init__(self, in_channels: int = 0, out_channels: int = 0, **_):
        super().__init__()

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        return time_upsample_2x(x, "trilinear", stream, self)


class TimeUpsampleRes2x(nn.Module):
    """CausalVAE: learned mix of 2x trilinear time upsampling and a causal conv of it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0, **_):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size, padding=1)
        self.mix_factor = nn.Parameter(torch.tensor([float(mix_factor)]))

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        x = time_upsample_2x(x, "trilinear", stream, self)
        alpha = torch.sigmoid(self.mix_factor)
        return alpha * x + (1 - alpha) * self.conv(x, stream)


DOWNSAMPLERS = {
    "Downsample": Downsample,
    "Spatial2xTime2x3DDownsample": Spatial2xTime2x3DDownsample,
    "Spatial2x3DDownsample": Spatial2x3DDownsample,
    "SpatialDownsample2x": SpatialDownsample2x,
}
UPSAMPLERS = {
    "Upsample": Upsample,
    "Spatial2xTime2x3DUpsample": Spatial2xTime2x3DUpsample,
    "Spatial2x3DUpsample": Spatial2x3DUpsample,
    "SpatialUpsample2x": SpatialUpsample2x,
}
TIME_DOWNSAMPLERS = {"TimeDownsample2x": TimeDownsample2x, "TimeDownsampleRes2x": TimeDownsampleRes2x}
TIME_UPSAMPLERS = {"TimeUpsample2x": TimeUpsample2x, "TimeUpsampleRes2x": TimeUpsampleRes2x}


def pick(table: dict, name: str, what: str):
    """Look ``name`` up in ``table`` with an error that lists the valid choices."""
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}") from None
