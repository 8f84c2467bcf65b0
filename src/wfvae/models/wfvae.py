"""WF-VAE: the Wavelet-Flow VAE (Li et al., 2024, https://arxiv.org/abs/2411.17459).

The video is split by a 3D Haar transform; its low-pass band is decomposed further (levels l1, l2)
and those wavelet coefficients "flow" into the encoder at matching resolutions (and out of the
decoder), so the main path can stay narrow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import VideoAutoencoder
from .layers.blocks import ResnetBlock2D, ResnetBlock3D, make_attention
from .layers.conv import CausalConv3d, FrameConv2d, to_channels_last
from .layers.norm import make_norm
from .layers.sampling import DOWNSAMPLERS, UPSAMPLERS, pick
from .layers.stream import StreamState, align
from .layers.wavelet import (
    INVERSE_WAVELETS,
    WAVELETS,
    HaarWaveletTransform3D,
    InverseHaarWaveletTransform3D,
)


def _run(layers: nn.ModuleList, x: torch.Tensor, stream: StreamState | None) -> torch.Tensor:
    for layer in layers:
        x = layer(x, stream)
    return x


def _l1_channels(block_name: str) -> int:
    # 2D Haar on 3 channels gives 12 coefficient channels, 3D Haar gives 24. The original keys this
    # on the block name ("Downsample"/"Upsample" = spatial-only level 1), and so do we.
    return 12 if block_name in ("Downsample", "Upsample") else 24


class WFVAEEncoder(nn.Module):
    def __init__(
        self,
        *,
        latent_dim: int,
        base_channels: int,
        num_resblocks: int,
        energy_flow_hidden_size: int,
        dropout: float,
        attention_type: str,
        use_attention: bool,
        norm_type: str,
        l1_dowmsample_block: str,
        l1_downsample_wavelet: str,
        l2_dowmsample_block: str,
        l2_downsample_wavelet: str,
    ):
        super().__init__()
        c, efh = base_channels, energy_flow_hidden_size
        self.down1 = nn.ModuleList(
            [FrameConv2d(24, c, kernel_size=3, stride=1, padding=1)]
            + [ResnetBlock2D(c, c, norm_type, dropout) for _ in range(num_resblocks)]
            + [pick(DOWNSAMPLERS, l1_dowmsample_block, "l1_dowmsample_block")(c, c)]
        )
        self.down2 = nn.ModuleList(
            [FrameConv2d(c + efh, 2 * c, kernel_size=3, stride=1, padding=1)]
            + [ResnetBlock3D(2 * c, 2 * c, norm_type, dropout) for _ in range(num_resblocks)]
            + [pick(DOWNSAMPLERS, l2_dowmsample_block, "l2_dowmsample_block")(2 * c, 2 * c)]
        )
        self.connect_l1 = FrameConv2d(_l1_channels(l1_dowmsample_block), efh, kernel_size=3, stride=1, padding=1)
        self.connect_l2 = FrameConv2d(24, efh, kernel_size=3, stride=1, padding=1)
        mid = [ResnetBlock3D(2 * c + efh, 4 * c, norm_type, dropout), ResnetBlock3D(4 * c, 4 * c, norm_type, dropout)]
        if use_attention:
            mid.insert(1, make_attention(attention_type, 4 * c, norm_type))
        self.mid = nn.ModuleList(mid)
        self.norm_out = make_norm(4 * c, norm_type)
        self.conv_out = CausalConv3d(4 * c, 2 * latent_dim, kernel_size=3, stride=1, padding=1)
        self.wavelet_transform_in = HaarWaveletTransform3D()
        self.wavelet_transform_l1 = pick(WAVELETS, l1_downsample_wavelet, "l1_downsample_wavelet")()
        self.wavelet_transform_l2 = pick(WAVELETS, l2_downsample_wavelet, "l2_downsample_wavelet")()

    def forward(self, x: torch.Tensor, stream: StreamState | None = None):
        # the Haar transforms return contiguous tensors; the rest of the encoder runs channels-last
        coeffs = to_channels_last(self.wavelet_transform_in(x, stream))  # (B, 24, T/2, H/2, W/2)
        l1_coeffs = self.wavelet_transform_l1(coeffs[:, :3], stream)  # low-pass band decomposed again
        l1 = self.connect_l1(to_channels_last(l1_coeffs), stream)
        l2_coeffs = self.wavelet_transform_l2(l1_coeffs[:, :3], stream)
        l2 = self.connect_l2(to_channels_last(l2_coeffs), stream)

        h = _run(self.down1, coeffs, stream)
        h, l1 = align(stream, (self, "l1"), h, l1)
        h = _run(self.down2, torch.cat([h, l1], dim=1), stream)
        h, l2 = align(stream, (self, "l2"), h, l2)
        h = _run(self.mid, torch.cat([h, l2], dim=1), stream)
        h = self.conv_out(F.silu(self.norm_out(h, stream)), stream)
        return h, (l1_coeffs, l2_coeffs)


class WFVAEDecoder(nn.Module):
    def __init__(
        self,
        *,
        latent_dim: int,
        base_channels: int,
        num_resblocks: int,
        dropout: float,
        energy_flow_hidden_size: int,
        attention_type: str,
        use_attention: bool,
        norm_type: str,
        t_interpolation: str,
        connect_res_layer_num: int,
        l1_upsample_block: str,
        l1_upsample_wavelet: str,
        l2_upsample_block: str,
        l2_upsample_wavelet: str,
    ):
        super().__init__()
        c, efh = base_channels, energy_flow_hidden_size
        self.energy_flow_hidden_size = efh
        self.conv_in = CausalConv3d(latent_dim, 4 * c, kernel_size=3, stride=1, padding=1)
        mid = [ResnetBlock3D(4 * c, 4 * c, norm_type, dropout), ResnetBlock3D(4 * c, 4 * c + efh, norm_type, dropout)]
        if use_attention:
            mid.insert(1, make_attention(attention_type, 4 * c, norm_type))
        self.mid = nn.ModuleList(mid)
        up_kwargs = {"t_interpolation": t_interpolation}
        self.up2 = nn.ModuleList(
            [ResnetBlock3D(4 * c, 4 * c, norm_type, dropout) for _ in range(num_resblocks)]
            + [pick(UPSAMPLERS, l2_upsample_block, "l2_upsample_block")(4 * c, 4 * c, **up_kwargs)]
            + [ResnetBlock3D(4 * c, 4 * c + efh, norm_type, dropout)]
        )
        self.up1 = nn.ModuleList(
            [ResnetBlock3D(4 * c if i == 0 else 2 * c, 2 * c, norm_type, dropout) for i in range(num_resblocks)]
            + [pick(UPSAMPLERS, l1_upsample_block, "l1_upsample_block")(2 * c, 2 * c, **up_kwargs)]
            + [ResnetBlock3D(2 * c, 2 * c, norm_type, dropout)]
        )
        self.layer = nn.ModuleList([ResnetBlock3D(2 * c if i == 0 else c, c, norm_type, dropout) for i in range(2)])
        self.connect_l1 = nn.ModuleList(
            [ResnetBlock3D(efh, efh, norm_type, dropout) for _ in range(connect_res_layer_num)]
            + [FrameConv2d(efh, _l1_channels(l1_upsample_block), kernel_size=3, stride=1, padding=1)]
        )
        self.connect_l2 = nn.ModuleList(
            [ResnetBlock3D(efh, efh, norm_type, dropout) for _ in range(connect_res_layer_num)]
            + [FrameConv2d(efh, 24, kernel_size=3, stride=1, padding=1)]
        )
        self.norm_out = make_norm(c, norm_type)
        self.conv_out = FrameConv2d(c, 24, kernel_size=3, stride=1, padding=1)
        self.inverse_wavelet_transform_out = InverseHaarWaveletTransform3D()
        self.inverse_wavelet_transform_l1 = pick(INVERSE_WAVELETS, l1_upsample_wavelet, "l1_upsample_wavelet")()
        self.inverse_wavelet_transform_l2 = pick(INVERSE_WAVELETS, l2_upsample_wavelet, "l2_upsample_wavelet")()

    def forward(self, z: torch.Tensor, stream: StreamState | None = None):
        efh = self.energy_flow_hidden_size
        h = _run(self.mid, self.conv_in(z, stream), stream)  # (B, 4c + efh, T, H, W)

        l2_coeffs = _run(self.connect_l2, h[:, -efh:], stream)
        l2 = self.inverse_wavelet_transform_l2(l2_coeffs, stream)  # (B, 3, ...) low band of level 1
        h = _run(self.up2, h[:, :-efh], stream)  # (B, 4c + efh, ...)

        l1_coeffs = _run(self.connect_l1, h[:, -efh:], stream)
        l1_coeffs, l2 = align(stream, (self, "l2"), l1_coeffs, l2)
        l1_coeffs = torch.cat([l1_coeffs[:, :3] + l2, l1_coeffs[:, 3:]], dim=1)
        l1 = self.inverse_wavelet_transform_l1(l1_coeffs, stream)

        # the largest activations: loops rather than _run, so each layer's input is freed once the next
        # layer has its output (a call's argument stays referenced until the call returns)
        h = h[:, :-efh]
        for layer in (*self.up1, *self.layer):
            h = layer(h, stream)
            if stream is not None:
                stream.release_freed_memory()  # the layer's input and temporaries (upsampling has no own call)
        h = F.silu(self.norm_out(h, stream))
        if stream is not None:
            stream.release_freed_memory()  # the last layer's output, now normalised
        h = self.conv_out(h, stream)  # (B, 24, ...) 3D Haar coefficients
        h, l1 = align(stream, (self, "l1"), h, l1)
        h = torch.cat([h[:, :3] + l1, h[:, 3:]], dim=1)
        return self.inverse_wavelet_transform_out(h, stream), (l1_coeffs, l2_coeffs)


class WFVAE(VideoAutoencoder):
    """Wavelet-Flow VAE with the original ``WFVAEModel`` constructor and state-dict layout.

    Parameters (the original ``config.json`` keys, including its spellings):
        latent_dim (int, 8): latent channels.
        base_channels (int, 128): width of the first level; deeper levels use 2x and 4x.
        encoder_num_resblocks / decoder_num_resblocks (int, 2): residual blocks per level.
        encoder_energy_flow_hidden_size (int, 64) / decoder_energy_flow_hidden_size (int, 128):
            channels of the wavelet energy-flow connections.
        attention_type ("AttnBlock3DFix" | "AttnBlock3D"), use_attention (bool): mid-block attention.
        dropout (float, 0.0), norm_type ("groupnorm" | "layernorm").
        t_interpolation ("nearest" | "trilinear"): temporal upsampling in the decoder.
        connect_res_layer_num (int, 1): residual blocks on the decoder's energy-flow outputs.
        scale, shift (list[float]): latent normalisation used by diffusion models
            (``(z - shift) * scale``); not applied by encode/decode.
        l1_dowmsample_block ("Downsample" = 2x spatial, or "Spatial2xTime2x3DDownsample" = 2x
            spatial and temporal, the 8x-temporal variant), l1_downsample_wavelet
            ("HaarWaveletTransform2D" | "HaarWaveletTransform3D"), l2_dowmsample_block,
            l2_downsample_wavelet, l1_upsample_block, l1_upsample_wavelet, l2_upsample_block,
            l2_upsample_wavelet: the matching decoder choices.
    """

    config_class_name = "WFVAEModel"

    def __init__(
        self,
        latent_dim: int = 8,
        base_channels: int = 128,
        encoder_num_resblocks: int = 2,
        encoder_energy_flow_hidden_size: int = 64,
        decoder_num_resblocks: int = 2,
        decoder_energy_flow_hidden_size: int = 128,
        attention_type: str = "AttnBlock3DFix",
        use_attention: bool = True,
        dropout: float = 0.0,
        norm_type: str = "groupnorm",
        t_interpolation: str = "nearest",
        connect_res_layer_num: int = 1,
        scale: list[float] = (0.18215, 0.18215, 0.18215, 0.18215),
        shift: list[float] = (0, 0, 0, 0),
        l1_dowmsample_block: str = "Downsample",
        l1_downsample_wavelet: str = "HaarWaveletTransform2D",
        l2_dowmsample_block: str = "Spatial2xTime2x3DDownsample",
        l2_downsample_wavelet: str = "HaarWaveletTransform3D",
        l1_upsample_block: str = "Upsample",
        l1_upsample_wavelet: str = "InverseHaarWaveletTransform2D",
        l2_upsample_block: str = "Spatial2xTime2x3DUpsample",
        l2_upsample_wavelet: str = "InverseHaarWaveletTransform3D",
    ):
        super().__init__()
        values = dict(locals())
        values.pop("self")
        values.pop("__class__", None)
        values["scale"], values["shift"] = list(scale), list(shift)
        self._record_config(values)
        self.latent_channels = latent_dim
        self.encoder = WFVAEEncoder(
            latent_dim=latent_dim, base_channels=base_channels, num_resblocks=encoder_num_resblocks,
            energy_flow_hidden_size=encoder_energy_flow_hidden_size, dropout=dropout,
            attention_type=attention_type, use_attention=use_attention, norm_type=norm_type,
            l1_dowmsample_block=l1_dowmsample_block, l1_downsample_wavelet=l1_downsample_wavelet,
            l2_dowmsample_block=l2_dowmsample_block, l2_downsample_wavelet=l2_downsample_wavelet,
        )
        self.decoder = WFVAEDecoder(
            latent_dim=latent_dim, base_channels=base_channels, num_resblocks=decoder_num_resblocks,
            dropout=dropout, energy_flow_hidden_size=decoder_energy_flow_hidden_size,
            attention_type=attention_type, use_attention=use_attention, norm_type=norm_type,
            t_interpolation=t_interpolation, connect_res_layer_num=connect_res_layer_num,
            l1_upsample_block=l1_upsample_block, l1_upsample_wavelet=l1_upsample_wavelet,
            l2_upsample_block=l2_upsample_block, l2_upsample_wavelet=l2_upsample_wavelet,
        )
        # input 3D Haar halves time; each level whose block also works in time halves it again
        temporal_levels = sum(b == "Spatial2xTime2x3DDownsample" for b in (l1_dowmsample_block, l2_dowmsample_block))
        self.temporal_compression_ratio = 2 ** (1 + temporal_levels)
        self.spatial_compression_ratio = 8

    def _encode_chunk(self, video, stream):
        moments, (l1, l2) = self.encoder(video, stream)
        return moments, (l1, l2)

    def _decode_chunk(self, latents, stream):
        video, (l1, l2) = self.decoder(latents, stream)
        return video, (l1, l2)
