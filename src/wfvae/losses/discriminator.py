"""3D PatchGAN discriminator used by the VAE-GAN loss.

The layer layout (and therefore every ``state_dict`` key, ``main.<i>.weight`` ...) matches the original
WF-VAE ``NLayerDiscriminator3D`` so that ``state_dict["dics_model"]["discriminator.*"]`` of an original
checkpoint loads strictly. PatchGAN: Isola et al., "Image-to-Image Translation with Conditional Adversarial
Networks", https://arxiv.org/abs/1611.07004 .
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NLayerDiscriminator3D", "init_discriminator_weights"]


def init_discriminator_weights(module: nn.Module) -> None:
    """DCGAN-style init: conv weights ~ N(0, 0.02); batch-norm scale ~ N(1, 0.02), shift 0.

    Conv biases keep PyTorch's default init, as in the original.
    """
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.constant_(module.bias, 0.0)


class NLayerDiscriminator3D(nn.Module):
    """A PatchGAN over space-time: ``(B, C, T, H, W)`` -> logits ``(B, 1, T', H', W')``.

    Parameters:
        in_channels (int, default 3): channels of the input video.
        base_channels (int, default 64): width of the first conv; later convs use up to 8x this.
        num_layers (int, default 4): number of strided stages (the loss uses 4, as the original).
        dropout (float, default 0.3): dropout after each normalised stage (active in train mode).

    Layout: conv(s=2) + LeakyReLU, then ``num_layers - 1`` stages of conv (stride 2 in time only for the
    first of them, stride 2 in space always) + BatchNorm3d + LeakyReLU + Dropout, one stride-1 stage, and a
    1-channel conv. Convs followed by BatchNorm have no bias (the norm's shift replaces it).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 4, dropout: float = 0.3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        k, pad = 3, 1
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, base_channels, kernel_size=k, stride=2, padding=pad),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, num_layers):
            prev, mult = mult, min(2**n, 8)
            temporal_stride = 2 if n == 1 else 1
            layers += [
                nn.Conv3d(base_channels * prev, base_channels * mult, kernel_size=k,
                          stride=(temporal_stride, 2, 2), padding=pad, bias=False),
                nn.BatchNorm3d(base_channels * mult),
                nn.LeakyReLU(0.2, True),
                nn.Dropout(dropout),
            ]
        prev, mult = mult, min(2**num_layers, 8)
        layers += [
            nn.Conv3d(base_channels * prev, base_channels * mult, kernel_size=k, stride=1, padding=pad, bias=False),
            nn.BatchNorm3d(base_channels * mult),
            nn.LeakyReLU(0.2, True),
            nn.Dropout(dropout),
            nn.Conv3d(base_channels * mult, 1, kernel_size=k, stride=1, padding=pad),
        ]
        self.main = nn.Sequential(*layers)
        self.apply(init_discriminator_weights)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Args: video ``(B, C, T, H, W)``. Returns: patch logits ``(B, 1, T', H', W')``."""
        if video.ndim != 5:
            raise ValueError(f"discriminator expects (B, C, T, H, W), got shape {tuple(video.shape)}")
        return self.main(video)
