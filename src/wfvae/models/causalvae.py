"""CausalVAE: the causal 3D-convolutional video VAE of the original project (Open-Sora Plan lineage).

Built from per-level block lists in the original ``CausalVAEModel`` config format. Layer choices
are looked up in explicit tables; an unknown name raises a ValueError listing the valid ones.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import VideoAutoencoder
from .layers.blocks import ResnetBlock2D, ResnetBlock3D, make_attention
from .layers.conv import CausalConv3d, FrameConv2d
from .layers.norm import make_norm
from .layers.sampling import DOWNSAMPLERS, TIME_DOWNSAMPLERS, TIME_UPSAMPLERS, UPSAMPLERS, pick
from .layers.stream import StreamState

CONV_LAYERS = {"CausalConv3d": CausalConv3d, "Conv2d": FrameConv2d}
RESNET_BLOCKS = {"ResnetBlock3D": ResnetBlock3D, "ResnetBlock2D": ResnetBlock2D}


def _conv(name: str, in_ch: int, out_ch: int, **kwargs) -> nn.Module:
    return pick(CONV_LAYERS, name, "conv layer")(in_ch, out_ch, **kwargs)


def _resnet(name: str, in_ch: int, out_ch: int, norm_type: str, dropout: float) -> nn.Module:
    return pick(RESNET_BLOCKS, name, "resnet block")(in_ch, out_ch, norm_type, dropout)


def _run_level(level: nn.Module, h: torch.Tensor, stream: StreamState | None, resamplers: tuple[str, ...]) -> torch.Tensor:
    """One resolution level: residual blocks (each followed by its attention, if any), then resampling."""
    for i, block in enumerate(level.block):
        h = block(h, stream)
        if len(level.attn) > 0:
            h = level.attn[i](h, stream)
    for name in resamplers:
        if hasattr(level, name):
            h = getattr(level, name)(h, stream)
    return h


class CausalVAEEncoder(nn.Module):
    def __init__(
        self, *, z_channels, hidden_size, hidden_size_mult, attn_resolutions, conv_in, conv_out, attention,
        resnet_blocks, spatial_downsample, temporal_downsample, mid_resnet, dropout, resolution,
        num_res_blocks, double_z, norm_type,
    ):
        super().__init__()
        if not (len(resnet_blocks) == len(hidden_size_mult) == len(spatial_downsample) == len(temporal_downsample)):
            raise ValueError(
                "encoder block lists must have one entry per level: "
                f"hidden_size_mult={list(hidden_size_mult)}, resnet_blocks={list(resnet_blocks)}, "
                f"spatial_downsample={list(spatial_downsample)}, temporal_downsample={list(temporal_downsample)}"
            )
        self.num_res_blocks = num_res_blocks
        self.conv_in = _conv(conv_in, 3, hidden_size, kernel_size=3, stride=1, padding=1)
        current_res = resolution
        ch_in_mult = (1,) + tuple(hidden_size_mult)
        self.down = nn.ModuleList()
        block_in = hidden_size
        for level, mult in enumerate(hidden_size_mult):
            level_module = nn.Module()
            block_in = hidden_size * ch_in_mult[level]
            block_out = hidden_size * mult
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(_resnet(resnet_blocks[level], block_in, block_out, norm_type, dropout))
                block_in = block_out
                if current_res in attn_resolutions:
                    # the original builds encoder attention without passing norm_type (GroupNorm)
                    attns.append(make_attention(attention, block_in))
            level_module.block, level_module.attn = blocks, attns
            if spatial_downsample[level]:
                level_module.downsample = pick(DOWNSAMPLERS, spatial_downsample[level], "spatial downsample")(block_in, block_in)
                current_res //= 2
            if temporal_downsample[level]:
                level_module.time_downsample = pick(TIME_DOWNSAMPLERS, temporal_downsample[level], "temporal downsample")(block_in, block_in)
            self.down.append(level_module)
        self.mid = nn.Module()
        self.mid.block_1 = _resnet(mid_resnet, block_in, block_in, norm_type, dropout)
        self.mid.attn_1 = make_attention(attention, block_in)
        self.mid.block_2 = _resnet(mid_resnet, block_in, block_in, norm_type, dropout)
        self.norm_out = make_norm(block_in, norm_type)
        self.conv_out = _conv(conv_out, block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        h = self.conv_in(x, stream)
        for level in self.down:
            h = _run_level(level, h, stream, ("downsample", "time_downsample"))
        h = self.mid.block_1(h, stream)
        h = self.mid.attn_1(h, stream)
        h = self.mid.block_2(h, stream)
        return self.conv_out(F.silu(self.norm_out(h, stream)), stream)


class CausalVAEDecoder(nn.Module):
    def __init__(
        self, *, z_channels, hidden_size, hidden_size_mult, attn_resolutions, conv_in, conv_out, attention,
        resnet_blocks, spatial_upsample, temporal_upsample, mid_resnet, dropout, resolution,
        num_res_blocks, norm_type,
    ):
        super().__init__()
        levels = len(hidden_size_mult)
        if not (len(resnet_blocks) == levels == len(spatial_upsample) == len(temporal_upsample)):
            raise ValueError(
                "decoder block lists must have one entry per level: "
                f"hidden_size_mult={list(hidden_size_mult)}, resnet_blocks={list(resnet_blocks)}, "
                f"spatial_upsample={list(spatial_upsample)}, temporal_upsample={list(temporal_upsample)}"
            )
        block_in = hidden_size * hidden_size_mult[-1]
        current_res = resolution // 2 ** (levels - 1)
        self.conv_in = _conv(conv_in, z_channels, block_in, kernel_size=3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = _resnet(mid_resnet, block_in, block_in, norm_type, dropout)
        self.mid.attn_1 = make_attention(attention, block_in, norm_type)
        self.mid.block_2 = _resnet(mid_resnet, block_in, block_in, norm_type, dropout)
        ups: list[nn.Module] = [None] * levels  # index = level, built from the deepest level up
        for level in reversed(range(levels)):
            level_module = nn.Module()
            block_out = hidden_size * hidden_size_mult[level]
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(_resnet(resnet_blocks[level], block_in, block_out, norm_type, dropout))
                block_in = block_out
                if current_res in attn_resolutions:
                    attns.append(make_attention(attention, block_in, norm_type))
            level_module.block, level_module.attn = blocks, attns
            if spatial_upsample[level]:
                level_module.upsample = pick(UPSAMPLERS, spatial_upsample[level], "spatial upsample")(block_in, block_in)
                current_res *= 2
            if temporal_upsample[level]:
                level_module.time_upsample = pick(TIME_UPSAMPLERS, temporal_upsample[level], "temporal upsample")(block_in, block_in)
            ups[level] = level_module
        self.up = nn.ModuleList(ups)
        self.norm_out = make_norm(block_in, norm_type)
        self.conv_out = _conv(conv_out, block_in, 3, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, stream: StreamState | None = None) -> torch.Tensor:
        h = self.conv_in(z, stream)
        h = self.mid.block_1(h, stream)
        h = self.mid.attn_1(h, stream)
        h = self.mid.block_2(h, stream)
        for level in reversed(self.up):
            h = _run_level(level, h, stream, ("upsample", "time_upsample"))
        return self.conv_out(F.silu(self.norm_out(h, stream)), stream)


class CausalVAE(VideoAutoencoder):
    """CausalVAE with the original ``CausalVAEModel`` constructor and state-dict layout.

    Parameters (original ``config.json`` keys): hidden_size (128), z_channels (4),
    hidden_size_mult ([1, 2, 4, 4]), attn_resolutions ([]), dropout, resolution (256, only used
    to place attention by resolution), double_z (True), embed_dim (4), num_res_blocks (2),
    q_conv ("CausalConv3d"), use_quant_layer (True), norm_type ("groupnorm" | "layernorm"),
    scale / shift (latent normalisation for diffusion; not applied by encode/decode), and the
    per-level block lists ``encoder_*`` / ``decoder_*``: conv_in / conv_out ("CausalConv3d" |
    "Conv2d"), attention ("AttnBlock3D" | "AttnBlock3DFix"), resnet_blocks ("ResnetBlock3D" |
    "ResnetBlock2D"), spatial_downsample / spatial_upsample ("SpatialDownsample2x",
    "Downsample", "Spatial2x3DDownsample" / "SpatialUpsample2x", "Upsample",
    "Spatial2x3DUpsample", or "" for none), temporal_downsample / temporal_upsample
    ("TimeDownsample2x", "TimeDownsampleRes2x" / "TimeUpsample2x", "TimeUpsampleRes2x", or "").
    """

    config_class_name = "CausalVAEModel"

    def __init__(
        self,
        hidden_size: int = 128,
        z_channels: int = 4,
        hidden_size_mult: Sequence[int] = (1, 2, 4, 4),
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        resolution: int = 256,
        double_z: bool = True,
        embed_dim: int = 4,
        num_res_blocks: int = 2,
        q_conv: str = "CausalConv3d",
        encoder_conv_in: str = "CausalConv3d",
        encoder_conv_out: str = "CausalConv3d",
        encoder_attention: str = "AttnBlock3D",
        encoder_resnet_blocks: Sequence[str] = ("ResnetBlock3D",) * 4,
        encoder_spatial_downsample: Sequence[str] = ("SpatialDownsample2x", "SpatialDownsample2x", "SpatialDownsample2x", ""),
        encoder_temporal_downsample: Sequence[str] = ("", "TimeDownsample2x", "TimeDownsample2x", ""),
        encoder_mid_resnet: str = "ResnetBlock3D",
        decoder_conv_in: str = "CausalConv3d",
        decoder_conv_out: str = "CausalConv3d",
        decoder_attention: str = "AttnBlock3D",
        decoder_resnet_blocks: Sequence[str] = ("ResnetBlock3D",) * 4,
        decoder_spatial_upsample: Sequence[str] = ("", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"),
        decoder_temporal_upsample: Sequence[str] = ("", "", "TimeUpsample2x", "TimeUpsample2x"),
        decoder_mid_resnet: str = "ResnetBlock3D",
        scale: Sequence[float] = (0.18215, 0.18215, 0.18215, 0.18215),
        shift: Sequence[float] = (0, 0, 0, 0),
        use_quant_layer: bool = True,
        norm_type: str = "groupnorm",
    ):
        super().__init__()
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in locals().items() if k not in ("self", "__class__")}
        self._record_config(values)
        self.use_quant_layer = use_quant_layer
        self.encoder = CausalVAEEncoder(
            z_channels=z_channels, hidden_size=hidden_size, hidden_size_mult=hidden_size_mult,
            attn_resolutions=attn_resolutions, conv_in=encoder_conv_in, conv_out=encoder_conv_out,
            attention=encoder_attention, resnet_blocks=encoder_resnet_blocks,
            spatial_downsample=encoder_spatial_downsample, temporal_downsample=encoder_temporal_downsample,
            mid_resnet=encoder_mid_resnet, dropout=dropout, resolution=resolution, num_res_blocks=num_res_blocks,
            double_z=double_z, norm_type=norm_type,
        )
        self.decoder = CausalVAEDecoder(
            z_channels=z_channels, hidden_size=hidden_size, hidden_size_mult=hidden_size_mult,
            attn_resolutions=attn_resolutions, conv_in=decoder_conv_in, conv_out=decoder_conv_out,
            attention=decoder_attention, resnet_blocks=decoder_resnet_blocks,
            spatial_upsample=decoder_spatial_upsample, temporal_upsample=decoder_temporal_upsample,
            mid_resnet=decoder_mid_resnet, dropout=dropout, resolution=resolution, num_res_blocks=num_res_blocks,
            norm_type=norm_type,
        )
        if use_quant_layer:
            quant_cls = pick(CONV_LAYERS, q_conv, "q_conv")
            self.quant_conv = quant_cls(2 * z_channels, 2 * embed_dim, 1)
            self.post_quant_conv = quant_cls(embed_dim, z_channels, 1)
            self.latent_channels = embed_dim
        else:
            self.latent_channels = z_channels
        self.temporal_compression_ratio = 2 ** sum(bool(b) for b in encoder_temporal_downsample)
        self.spatial_compression_ratio = 2 ** sum(bool(b) for b in encoder_spatial_downsample)

    def _encode_chunk(self, video, stream):
        h = self.encoder(video, stream)
        if self.use_quant_layer:
            h = self.quant_conv(h, stream)
        return h, None

    def _decode_chunk(self, latents, stream):
        if self.use_quant_layer:
            latents = self.post_quant_conv(latents, stream)
        return self.decoder(latents, stream), None
