"""Haar wavelet transforms used by WF-VAE.

Sub-band order follows the original so checkpoints and coefficient losses line up: for the 3D
transform the sub-band index is the binary number (t, h, w) with 0 = low-pass [1, 1] and
1 = high-pass [1, -1]; output channel = sub_band * C + input_channel. The 3D filters are scaled by
0.3536 (the original's rounded 1/sqrt(8), which the released checkpoints were trained with); the
2D filters by exactly 1/2.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import CausalConv3d, frames_to_images, images_to_frames
from .stream import StreamState

HAAR_3D_SCALE = 0.3536
_LOW, _HIGH = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])

# names of the eight 3D filters in sub-band order (original state-dict names)
HAAR_3D_NAMES = ("h", "g", "hh", "gh", "h_v", "g_v", "hh_v", "gh_v")
# names of the four 2D filters with their (h, w) pass types, in the original's order
HAAR_2D_FILTERS = (("aa", (0, 0)), ("ad", (1, 0)), ("da", (0, 1)), ("dd", (1, 1)))


def haar_3d_filters() -> torch.Tensor:
    """(8, 1, 2, 2, 2) float32 filters in sub-band order."""
    out = []
    for t, h, w in itertools.product((0, 1), repeat=3):
        ft, fh, fw = ((_LOW, _HIGH)[i] for i in (t, h, w))
        out.append(torch.einsum("i,j,k->ijk", ft, fh, fw))
    return (torch.stack(out) * HAAR_3D_SCALE).unsqueeze(1)


def haar_2d_filters() -> torch.Tensor:
    """(4, 1, 2, 2) float32 filters in the original's order (aa, ad, da, dd)."""
    out = []
    for _, (h, w) in HAAR_2D_FILTERS:
        fh, fw = (_LOW, _HIGH)[h], (_LOW, _HIGH)[w]
        out.append(torch.outer(fh, fw) / 2)
    return torch.stack(out).unsqueeze(1)


class HaarWaveletTransform3D(nn.Module):
    """(B, C, T, H, W) -> (B, 8C, (T+1)/2, H/2, W/2), causal in time.

    The filters are frozen parameters stored as eight 1-channel causal convolutions
    (``h_conv.conv.weight`` ...) for checkpoint compatibility, and applied as one convolution.
    """

    def __init__(self):
        super().__init__()
        filters = haar_3d_filters()
        for i, name in enumerate(HAAR_3D_NAMES):
            conv = CausalConv3d(1, 1, 2, stride=2, bias=False)
            with torch.no_grad():
                conv.conv.weight.copy_(filters[i : i + 1])
            conv.requires_grad_(False)
            self.add_module(f"{name}_conv", conv)

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        weight = torch.cat([getattr(self, f"{n}_conv").conv.weight for n in HAAR_3D_NAMES])
        x = self.h_conv.pad(x.reshape(b * c, 1, t, h, w), stream)  # (B*C, 1, T', H, W)
        if x.shape[2] < 2:
            return x.new_empty(b, 8 * c, 0, h // 2, w // 2)
        y = F.conv3d(x, weight.to(x.dtype), stride=2)  # (B*C, 8, T'', H/2, W/2)
        return y.reshape(b, c, 8, *y.shape[2:]).transpose(1, 2).reshape(b, 8 * c, *y.shape[2:])


class InverseHaarWaveletTransform3D(nn.Module):
    """(B, 8C, T, H, W) -> (B, C, 2T - 1, 2H, 2W); the first output frame of a clip is dropped."""

    def __init__(self):
        super().__init__()
        filters = haar_3d_filters()
        for i, name in enumerate(HAAR_3D_NAMES):
            self.register_buffer(name, filters[i : i + 1].clone())

    def forward(self, coeffs: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        b, c8, t, h, w = coeffs.shape
        c = c8 // 8
        weight = torch.cat([getattr(self, n) for n in HAAR_3D_NAMES])  # (8, 1, 2, 2, 2)
        x = coeffs.reshape(b, 8, c, t, h, w).transpose(1, 2).reshape(b * c, 8, t, h, w)
        y = F.conv_transpose3d(x, weight.to(x.dtype), stride=2)  # (B*C, 1, 2T, 2H, 2W)
        first_chunk = stream is None or not stream.get(self, False)
        if stream is not None and t > 0:
            stream.set(self, True)
        if first_chunk and t > 0:
            y = y[:, :, 1:]
        return y.reshape(b, c, y.shape[2], 2 * h, 2 * w)


class HaarWaveletTransform2D(nn.Module):
    """Per-frame 2D Haar: (B, C, T, H, W) -> (B, 4C, T, H/2, W/2)."""

    def __init__(self):
        super().__init__()
        for (name, _), f in zip(HAAR_2D_FILTERS, haar_2d_filters()):
            self.register_buffer(name, f.unsqueeze(0).clone())

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        batch = x.shape[0]
        images = frames_to_images(x)
        n, c, h, w = images.shape
        weight = torch.cat([getattr(self, name) for name, _ in HAAR_2D_FILTERS])  # (4, 1, 2, 2)
        y = F.conv2d(images.reshape(n * c, 1, h, w), weight.to(x.dtype), stride=2)
        y = y.reshape(n, c, 4, h // 2, w // 2).transpose(1, 2).reshape(n, 4 * c, h // 2, w // 2)
        return images_to_frames(y, batch)


class InverseHaarWaveletTransform2D(nn.Module):
    """Per-frame inverse 2D Haar: (B, 4C, T, H, W) -> (B, C, T, 2H, 2W)."""

    def __init__(self):
        super().__init__()
        for (name, _), f in zip(HAAR_2D_FILTERS, haar_2d_filters()):
            self.register_buffer(name, f.unsqueeze(0).clone())

    def forward(self, coeffs: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        batch = coeffs.shape[0]
        images = frames_to_images(coeffs)
        n, c4, h, w = images.shape
        c = c4 // 4
        weight = torch.cat([getattr(self, name) for name, _ in HAAR_2D_FILTERS])  # (4, 1, 2, 2)
        x = images.reshape(n, 4, c, h, w).transpose(1, 2).reshape(n * c, 4, h, w)
        y = F.conv_transpose2d(x, weight.to(x.dtype), stride=2)  # (N*C, 1, 2H, 2W)
        return images_to_frames(y.reshape(n, c, 2 * h, 2 * w), batch)


WAVELETS = {"HaarWaveletTransform2D": HaarWaveletTransform2D, "HaarWaveletTransform3D": HaarWaveletTransform3D}
INVERSE_WAVELETS = {
    "InverseHaarWaveletTransform2D": InverseHaarWaveletTransform2D,
    "InverseHaarWaveletTransform3D": InverseHaarWaveletTransform3D,
}
