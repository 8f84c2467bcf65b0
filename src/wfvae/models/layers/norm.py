"""Normalisation layers. ``norm_type`` picks one; eps is 1e-6 as in the original."""

from __future__ import annotations

import torch
import torch.nn as nn

from .stream import StopChunk, StreamState
from .twin import autocast_enabled, kernel_device


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
        keep_layout = keeps_channels_last(x, kernel_device(x, self))
        if stream is None or x.dim() != 5 or self.per_frame:
            if keep_layout:
                # one float32 copy of half-precision input (none of float32) serves the statistics and the
                # output, so backward saves it once, as ATen's group_norm saves its one cast input
                xc = x.to(_compute_dtype(x))
                var, mean = torch.var_mean(_grouped_view(xc, self.num_groups), dim=(1, 3), correction=0)  # (B, G)
                return self._normalize(xc, mean, var, x.dtype)
            return super().forward(x)
        role = stream.clip_level(self)
        b, c = x.shape[:2]
        # (B, G, C/G * T * H * W); on channels-last input (CUDA) a view of (B, T*H*W, G, C/G) instead
        groups = _grouped_view(x, self.num_groups) if keep_layout else x.reshape(b, self.num_groups, -1)
        reduce_dims = (1, 3) if keep_layout else -1
        if role != "apply" and groups.numel() == 0:
            raise StopChunk
        if role == "collect":
            total = stream.collected or (0, None, None)
            n_b = groups.numel() // (b * self.num_groups)
            var_b, mean_b = torch.var_mean(groups.double(), dim=reduce_dims, correction=0)
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
        if keep_layout:
            dtype = _compute_dtype(x)
            return self._normalize(x.to(dtype), mean.to(dtype), var.to(dtype), x.dtype)
        mean, var = mean.to(x.dtype)[..., None], var.to(x.dtype)[..., None]
        y = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        return y * self.weight.view(1, c, 1, 1, 1) + self.bias.view(1, c, 1, 1, 1)

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """``(x - mean) * rsqrt(var + eps) * weight + bias`` as one multiply-add that keeps x's layout.

        ``x``, ``mean``/``var`` ((B, G) statistics): already in :func:`_compute_dtype` of the layer's input,
        float32 for half precision. The result is float32 under autocast (ATen's group_norm is an autocast
        float32 op), else ``out_dtype``, the input's dtype.
        """
        b, c = x.shape[:2]
        dtype = x.dtype
        per_group = c // self.num_groups
        scale = torch.rsqrt(var + self.eps).repeat_interleave(per_group, dim=1) * self.weight.to(dtype)  # (B, C)
        shift = self.bias.to(dtype) - mean.repeat_interleave(per_group, dim=1) * scale
        bshape = (b, c) + (1,) * (x.dim() - 2)
        y = torch.addcmul(shift.view(bshape), x, scale.view(bshape))
        return y if autocast_enabled(kernel_device(x, self)) else y.to(out_dtype)

    def resolve(self, collected) -> tuple[torch.Tensor, torch.Tensor]:
        n, mean, m2 = collected
        return mean, m2 / n


def keeps_channels_last(x: torch.Tensor, device_type: str | None = None) -> bool:
    """Whether GroupNorm of ``x`` should be computed by :class:`ClipGroupNorm` itself.

    On CUDA, ATen's ``group_norm`` copies channels-last input to NCDHW and returns NCDHW, so every norm
    layer of a channels-last model would pay a layout copy in and another one out (the next convolution
    wants channels-last again). The CPU kernel keeps channels-last by itself, so this is False there.
    ``device_type``: the device whose path to take (default: x's; a shapes-only twin passes its model's).
    """
    return ((device_type or x.device.type) != "cpu" and x.dim() in (4, 5) and x.shape[1] > 1 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _grouped_view(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(B, C, *S) channels-last -> (B, prod(S), G, C/G), a view of the same memory."""
    b, c = x.shape[:2]
    return x.movedim(1, -1).reshape(b, -1, num_groups, c // num_groups)


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
