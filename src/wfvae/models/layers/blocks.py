"""Residual and attention blocks (state-dict layout of the original WF-VAE modules)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checkpointing import checkpointable
from .conv import CausalConv3d, FrameConv2d, frames_to_images, images_to_frames
from .norm import make_norm
from .stream import StopChunk, StreamState


class ResnetBlock2D(nn.Module):
    """norm -> SiLU -> 3x3 conv, twice, plus a (1x1) shortcut; applied to each frame on its own."""

    def __init__(self, in_channels: int, out_channels: int, norm_type: str, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, norm_type)
        self.conv1 = FrameConv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = make_norm(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = FrameConv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        # normalisation here sees one frame at a time, so GroupNorm does not mix frames
        self.norm1.per_frame = self.norm2.per_frame = True

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        batch = x.shape[0] if x.dim() == 5 else None
        if batch is not None:
            x = frames_to_images(x)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        out = x + h
        return images_to_frames(out, batch) if batch is not None else out


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> causal 3x3x3 conv, twice, plus a causal 1x1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, norm_type: str, dropout: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = make_norm(in_channels, norm_type)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = make_norm(out_channels, norm_type)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1)

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        if not torch.is_grad_enabled() and not (self.training and self.dropout.p > 0):
            return self._inference(x, stream)
        h = self.conv1(self.norm1(x, stream), stream, apply_silu=True)
        h = self.norm2(h, stream)
        if self.training and self.dropout.p > 0:
            h = self.conv2(self.dropout(F.silu(h)), stream)
        else:
            h = self.conv2(h, stream, apply_silu=True)
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x, stream)
        if torch.is_grad_enabled():
            return x + h
        return h.add_(x)  # no autograd: reuse h's memory (x + h == h + x exactly)

    def _inference(self, x: torch.Tensor, stream: StreamState | None) -> torch.Tensor:
        """The same arithmetic as ``forward`` without gradients, holding less at once: each norm output is
        freed once SiLU of it sits in the causal window, and the first conv's output once it is normalised,
        so a convolution runs with only the block input, its window and its output alive (plus, for small
        float32 windows on CPU, the window stacked twice: see ``conv.conv3d_onednn``)."""
        h = self.conv1.convolve_window(self.conv1.silu_window(self.norm1(x, stream), stream))
        window = self.conv2.silu_window(self.norm2(h, stream), stream)
        del h
        h = self.conv2.convolve_window(window)
        del window
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x, stream)
        out = h.add_(x)  # reuse h's memory (x + h == h + x exactly)
        if stream is not None:
            stream.release_freed_memory()  # what this block's norm and convolution outputs freed
        return out


class AttentionBase(nn.Module):
    def __init__(self, in_channels: int, norm_type: str = "groupnorm"):
        super().__init__()
        self.in_channels = in_channels
        self.norm = make_norm(in_channels, norm_type)
        self.q = CausalConv3d(in_channels, in_channels, 1)
        self.k = CausalConv3d(in_channels, in_channels, 1)
        self.v = CausalConv3d(in_channels, in_channels, 1)
        self.proj_out = CausalConv3d(in_channels, in_channels, 1)


class AttnBlock3DFix(AttentionBase):
    """Self-attention over the pixels of each frame (frames never attend to each other)."""

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        h = self.norm(x, stream)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, t, hh, ww = q.shape
        # (B, C, T, H, W) -> (B*T, 1, H*W, C): one single-head attention problem per frame. The head
        # axis must be explicit: CUDA's fused SDPA kernels (flash, memory-efficient) take 4-D input only
        # and a 3-D call falls back to the math kernel, which materialises the (HW, HW) weights.
        q, k, v = (z.permute(0, 2, 3, 4, 1).reshape(b * t, 1, hh * ww, c) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B*T, 1, H*W, C)
        out = out.reshape(b, t, hh, ww, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class AttnBlock3D(AttentionBase):
    """The original's first 3D attention, kept for checkpoint compatibility.

    It reshapes (B, C, T, H, W) straight to (B*T, C, H*W), which interleaves channels and frames,
    so every output frame depends on the whole clip. Chunked inference therefore gathers this
    layer's (low-resolution) input over all chunks in a collecting pass, computes the output once,
    and hands it out chunk by chunk in the final pass.
    """

    @checkpointable
    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        if stream is not None:
            return self._clip_level(x, stream)
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, t, hh, ww = q.shape
        q = q.reshape(b * t, c, hh * ww).transpose(1, 2)  # (B*T, HW, C) of interleaved memory
        k = k.reshape(b * t, c, hh * ww)  # (B*T, C, HW)
        weights = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # (B*T, HWq, HWk)
        v = v.reshape(b * t, c, hh * ww)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, t, hh, ww)
        return x + self.proj_out(out)

    def _clip_level(self, x: torch.Tensor, stream: StreamState) -> torch.Tensor:
        role = stream.clip_level(self)
        if role == "collect":
            stream.collected = (stream.collected or []) + [x.clone()]
            raise StopChunk
        if role == "skip":
            raise StopChunk
        position = stream.get(self, 0)
        stream.set(self, position + x.shape[2])
        return stream.resolved[self][:, :, position : position + x.shape[2]]

    def resolve(self, collected: list[torch.Tensor]) -> torch.Tensor:
        return self.forward(torch.cat(collected, dim=2), None)


ATTENTION_BLOCKS = {"AttnBlock3DFix": AttnBlock3DFix, "AttnBlock3D": AttnBlock3D}


def make_attention(name: str, channels: int, norm_type: str = "groupnorm") -> nn.Module:
    try:
        cls = ATTENTION_BLOCKS[name]
    except KeyError:
        raise ValueError(f"unknown attention type {name!r}; choose one of {sorted(ATTENTION_BLOCKS)}") from None
    return cls(channels, norm_type=norm_type)
