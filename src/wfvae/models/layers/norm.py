"""Normalisation layers. ``norm_type`` picks one; eps is 1e-6 as in the original."""

from __future__ import annotations

import torch
import torch.nn as nn

from .stream import StopChunk, StreamState


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of (B, C, T, H, W) or (B, C, H, W) tensors.

    Per position, so it never mixes frames (keeps chunked inference exact). The inner module is
    called ``norm`` so state-dict keys match the original (``<name>.norm.weight``).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps, elementwise_affine=True)

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        if x.dim() == 5:
            return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ClipGroupNorm(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-6). On a video it normalises over (C/G, T, H, W): the clip.

    Chunked inference resolves the clip statistics exactly in a collecting pass (see
    :class:`~wfvae.models.layers.stream.StreamState`): per-chunk mean and M2 are merged with
    Chan's parallel formula in float64, then applied to every chunk.
    """

    per_frame = False

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        if stream is None or x.dim() != 5 or self.per_frame:
            return super().forward(x)
        role = stream.clip_level(self)
        b, c = x.shape[:2]
        groups = x.reshape(b, self.num_groups, -1)  # (B, G, C/G * T * H * W)
        if role != "apply" and groups.shape[-1] == 0:
            raise StopChunk
        if role == "collect":
            total = stream.collected or (0, None, None)
            n_b = groups.shape[-1]
            var_b, mean_b = torch.var_mean(groups.double(), dim=-1, correction=0)
            n_a, mean_a, m2_a = total
            if n_a == 0:
                stream.collected = (n_b, mean_b, var_b * n_b)
            else:
                n = n_a + n_b
                delta = mean_b - mean_a
                stream.collected = (n, mean_a + delta * n_b / n, m2_a + var_b * n_b + delta.pow(2) * n_a * n_b / n)
            raise StopChunk
        if role == "skip":  # behind the layer collecting in this pass; resolved in a later pass
            raise StopChunk
        mean, var = stream.resolved[self]
        mean, var = mean.to(x.dtype)[..., None], var.to(x.dtype)[..., None]
        y = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        return y * self.weight.view(1, c, 1, 1, 1) + self.bias.view(1, c, 1, 1, 1)

    def resolve(self, collected) -> tuple[torch.Tensor, torch.Tensor]:
        n, mean, m2 = collected
        return mean, m2 / n


def _group_norm(channels: int) -> nn.Module:
    return ClipGroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


NORM_LAYERS = {"groupnorm": _group_norm, "layernorm": ChannelLayerNorm}


def make_norm(channels: int, norm_type: str) -> nn.Module:
    """Build the normalisation named by ``norm_type`` ("groupnorm" or "layernorm")."""
    try:
        return NORM_LAYERS[norm_type](channels)
    except KeyError:
        raise ValueError(f"unknown norm_type {norm_type!r}; choose one of {sorted(NORM_LAYERS)}") from None


def is_clip_level(module: nn.Module) -> bool:
    """True for layers whose output at one frame depends on every frame of the clip."""
    return isinstance(module, ClipGroupNorm) and not module.per_frame
