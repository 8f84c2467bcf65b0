"""Typed outputs of the autoencoders."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DiagonalGaussian:
    """Diagonal Gaussian posterior q(z | x) parameterised by the encoder's moments.

    Args:
        moments: (B, 2 * latent_channels, T', H', W'): mean, then log-variance (unclamped, exactly
            as the encoder produced them; ``logvar`` is clamped to [-30, 20] like the original).
    """

    def __init__(self, moments: torch.Tensor):
        self.moments = moments
        self.mean, raw_logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = torch.clamp(raw_logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample ``mean + std * eps``."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over all but the batch dimension, shape (B,)."""
        dims = list(range(1, self.mean.ndim))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        dims = list(range(1, self.mean.ndim))
        log_two_pi = torch.log(torch.tensor(2.0 * torch.pi, dtype=self.mean.dtype, device=self.mean.device))
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims)


@dataclass
class ModelOutput:
    """Result of ``model(video)``.

    Attributes:
        sample: (B, 3, T, H, W) reconstruction in [-1, 1] (not clamped).
        posterior: the encoder's :class:`DiagonalGaussian`.
        extra: WF-VAE only: ``(enc_l1, dec_l1, enc_l2, dec_l2)`` wavelet coefficients of the
            energy-flow paths (used by the wavelet loss); ``None`` for CausalVAE.
    """

    sample: torch.Tensor
    posterior: DiagonalGaussian
    extra: tuple[torch.Tensor, ...] | None = None
