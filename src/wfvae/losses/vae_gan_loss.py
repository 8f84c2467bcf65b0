"""VAE-GAN training loss: reconstruction + LPIPS + KL + wavelet + adversarial (3D PatchGAN, hinge).

How to use::

    loss_fn = VAEGANLoss(disc_start=5, kl_weight=1e-6, disc_weight=0.5, perceptual=build_perceptual_loss())
    out = model(video)
    g_loss, g_log = loss_fn.generator_loss(video, out.sample, out.posterior, step,
                                           last_layer=model.get_last_layer(), wavelet_coeffs=out.extra)
    d_loss, d_log = loss_fn.discriminator_loss(video, out.sample.detach(), step)

The numerics follow the original WF-VAE ``LPIPSWithDiscriminator3D`` (itself from taming-transformers /
latent-diffusion, https://arxiv.org/abs/2012.09841, https://arxiv.org/abs/2112.10752):

* ``rec = |x - x̂|`` (or squared) per pixel of every frame, plus ``perceptual_weight * LPIPS`` per frame;
  ``nll = rec / exp(logvar) + logvar`` summed over everything and divided by ``B * T`` (frames);
* ``kl`` = KL(q(z|x) || N(0, I)) summed per video and divided by ``B``;
* wavelet loss (WF-VAE, https://arxiv.org/abs/2411.17459) = ``sum |enc_l1 - dec_l1| / B + sum |enc_l2 - dec_l2| / B``;
* adversarial generator loss ``-mean(D(x̂))``, scaled by the adaptive weight
  ``disc_weight * ||∇_last nll|| / (||∇_last g|| + 1e-6)`` (clamped to [0, 1e6]) once ``step >= disc_start``;
* discriminator hinge loss ``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x̂))))``.

Parameter names (``logvar``, ``perceptual_loss.*``, ``discriminator.*``) are those of the original
module, so ``state_dict["dics_model"]`` of an original checkpoint loads strictly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wfvae.losses.discriminator import NLayerDiscriminator3D
from wfvae.networks.lpips import load_lpips

logger = logging.getLogger(__name__)

__all__ = [
    "LOSS_CLASSES",
    "PerceptualLoss",
    "VAEGANLoss",
    "adaptive_generator_weight",
    "build_loss",
    "build_perceptual_loss",
    "hinge_d_loss",
]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator (real logits pushed above +1, fake below -1)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())




def adaptive_generator_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                              scale: float, eps: float = 1e-6, max_weight: float = 1e6) -> torch.Tensor:
    """Balance the adversarial term against the reconstruction term at the decoder's last layer.

    Returns ``scale * clamp(||d nll / d W|| / (||d g / d W|| + eps), 0, max_weight)`` as a detached scalar
    (Esser et al., https://arxiv.org/abs/2012.09841, eq. 7). Both graphs are retained for the backward pass.
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(g_grad) + eps)
    return torch.clamp(weight, 0.0, max_weight).detach() * scale


class PerceptualLoss(nn.Module):
    """LPIPS distance per frame, holding exactly the original's submodules.

    ``lpips.LPIPS`` registers its linear heads twice (``lin0..lin4`` and the alias list ``lins.*``), which
    would add keys the original checkpoints lack. This module adopts the package's ``scaling_layer``,
    ``net`` (VGG16 slices) and ``lin0..lin4`` and computes the same distance, so its state dict keys are
    ``scaling_layer.{shift,scale}``, ``net.slice{1..5}.*``, ``lin{0..4}.model.1.weight``.

    It is frozen and always in eval mode (the heads' dropout must stay off); ``train()`` does not change it.
    """

    def __init__(self, lpips_module: nn.Module):
        super().__init__()
        self.scaling_layer = lpips_module.scaling_layer
        self.net = lpips_module.net
        self.lin0, self.lin1, self.lin2 = lpips_module.lin0, lpips_module.lin1, lpips_module.lin2
        self.lin3, self.lin4 = lpips_module.lin3, lpips_module.lin4
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)

    @staticmethod
    def _unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
        return feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, frames0: torch.Tensor, frames1: torch.Tensor) -> torch.Tensor:
        """Args: two ``(N, 3, H, W)`` batches in [-1, 1]. Returns: distances ``(N, 1, 1, 1)``."""
        feats0 = self.net(self.scaling_layer(frames0))
        feats1 = self.net(self.scaling_layer(frames1))
        heads = (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)
        total = None
        for head, f0, f1 in zip(heads, feats0, feats1):
            diff = (self._unit_normalize(f0) - self._unit_normalize(f1)).square()
            term = head.model(diff).mean(dim=(2, 3), keepdim=True)
            total = term if total is None else total + term
        return total


def build_perceptual_loss(backbone_path: str | None = None, random_backbone: bool = False) -> PerceptualLoss:
    """LPIPS(VGG16) from local weights (see :func:`wfvae.networks.lpips.load_lpips`)."""
    return PerceptualLoss(load_lpips("vgg", backbone_path=backbone_path, random_backbone=random_backbone))


class VAEGANLoss(nn.Module):
    """The original ``LPIPSWithDiscriminator3D``: generator and discriminator losses of a video VAE-GAN.

    Parameters:
        perceptual (PerceptualLoss): frozen LPIPS module (see :func:`build_perceptual_loss`).
        disc_start (int): step from which the adversarial terms are on (before it: ``d_weight = 0``).
        logvar_init (float, default 0.0): initial log-variance dividing the reconstruction loss.
        kl_weight (float, default 1.0): KL weight (the trainer passes ``--kl_weight``, default 1e-6).
        pixel_loss ("l1" | "l2", default "l1"): per-pixel reconstruction distance.
        perceptual_weight (float, default 1.0): weight of LPIPS inside the reconstruction term.
        disc_weight (float, default 1.0): scale of the adaptive adversarial weight.
        disc_num_layers (int, default 4), disc_base_channels (int, default 64): discriminator size (RGB input).
        wavelet_weight (float, default 0.01): weight of the wavelet-coefficient loss.
    """

    def __init__(self, perceptual: nn.Module | None, disc_start: int, logvar_init: float = 0.0,
                 kl_weight: float = 1.0, pixel_loss: str = "l1", perceptual_weight: float = 1.0,
                 disc_weight: float = 1.0, disc_num_layers: int = 4, disc_base_channels: int = 64,
                 wavelet_weight: float = 0.01):
        super().__init__()
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        if perceptual is None and perceptual_weight > 0:
            raise ValueError("perceptual_weight > 0 needs a perceptual module")
        self.pixel_loss = pixel_loss
        self.perceptual_weight = perceptual_weight
        self.kl_weight = kl_weight
        self.wavelet_weight = wavelet_weight
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        # Registration order matches the original so state_dict() lists keys in the same order.
        if perceptual is not None:
            self.perceptual_loss = perceptual
        self.logvar = nn.Parameter(torch.full((), float(logvar_init)), requires_grad=False)  # fixed, as in the original runs
        self.discriminator = NLayerDiscriminator3D(in_channels=3, base_channels=disc_base_channels,
                                                   num_layers=disc_num_layers)

    # ---- helpers ----------------------------------------------------------------------------------
    def adversarial_active(self, step: int) -> bool:
        return step >= self.disc_start

    def _disc_factor(self, step: int) -> float:
        """The adversarial terms' factor: 0 before ``disc_start``, 1 from it (the original's schedule)."""
        return 1.0 if step >= self.disc_start else 0.0

    # ---- generator --------------------------------------------------------------------------------
    def generator_loss(self, video: torch.Tensor, recon: torch.Tensor, posterior, step: int,
                       last_layer: torch.Tensor | None = None,
                       wavelet_coeffs: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict]:
        """Total generator loss and its detached parts.

        Args:
            video, recon: ``(B, C, T, H, W)`` in [-1, 1].
            posterior: has ``.kl()`` -> ``(B,)``.
            step: global step (decides whether the adversarial term is on).
            last_layer: decoder output weight, needed once the adversarial term is on.
            wavelet_coeffs: ``(enc_l1, dec_l1, enc_l2, dec_l2)`` from WFVAE, or None.

        Returns:
            ``(loss, parts)``; ``parts`` maps log keys to detached scalar tensors.
        """
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        recon_frames = recon.transpose(1, 2).reshape(b * t, c, h, w)
        diff = frames - recon_frames
        pixel = diff.abs() if self.pixel_loss == "l1" else diff.square()
        rec = pixel
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(frames, recon_frames)  # (B*T, 1, 1, 1), broadcast over pixels
            rec = rec + self.perceptual_weight * p_loss
        else:
            p_loss = torch.zeros((), device=video.device)
        nll = rec / torch.exp(self.logvar) + self.logvar
        nll_loss = nll.sum() / nll.shape[0]  # per frame, as the original

        kl = posterior.kl()
        kl_loss = kl.sum() / kl.shape[0]

        if wavelet_coeffs is not None:
            enc_l1, dec_l1, enc_l2, dec_l2 = wavelet_coeffs
            wl_loss = (enc_l1 - dec_l1).abs().sum() / b + (enc_l2 - dec_l2).abs().sum() / b
        else:
            wl_loss = torch.zeros((), device=video.device)

        loss = nll_loss + self.kl_weight * kl_loss + self.wavelet_weight * wl_loss
        if self.adversarial_active(step):
            disc = self.discriminator
            logits_fake = disc(recon)
            g_loss = -logits_fake.mean()
            if last_layer is None:
                raise ValueError("last_layer is required once the adversarial loss is active")
            d_weight = adaptive_generator_weight(nll_loss, g_loss, last_layer, self.disc_weight)
            loss = loss + d_weight * self._disc_factor(step) * g_loss
            logits_fake_mean = logits_fake.detach().mean()
        else:
            # Skip the discriminator entirely before disc_start: its output would be multiplied by 0.
            g_loss = torch.zeros((), device=video.device)
            d_weight = torch.zeros((), device=video.device)
            logits_fake_mean = torch.zeros((), device=video.device)

        parts = {
            "loss_g_total": loss.detach(),
            "loss_nll": nll_loss.detach(),
            "loss_rec": pixel.detach().mean(),
            "loss_lpips": p_loss.detach().mean(),
            "loss_kl": kl_loss.detach(),
            "loss_wavelet": wl_loss.detach(),
            "loss_g_adv": g_loss.detach(),
            "d_weight": d_weight.detach(),
            "logits_fake_g": logits_fake_mean,
            "logvar": self.logvar.detach(),
        }
        return loss, parts

    # ---- discriminator ----------------------------------------------------------------------------
    def discriminator_loss(self, video: torch.Tensor, recon: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """Hinge loss of the discriminator on real ``video`` vs. detached ``recon``; ``(loss, parts)``."""
        disc = self.discriminator
        logits_real = disc(video.detach())
        logits_fake = disc(recon.detach())
        d_loss = self._disc_factor(step) * hinge_d_loss(logits_real, logits_fake)
        parts = {
            "loss_d": d_loss.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
        return d_loss, parts


# Explicit name -> class table for --disc_cls (see wfvae.config.DISC_CLASS_ALIASES).
LOSS_CLASSES = {"LPIPSWithDiscriminator3D": VAEGANLoss}


def build_loss(name: str, *, disc_start: int, disc_weight: float, kl_weight: float, logvar_init: float,
               perceptual_weight: float, loss_type: str, wavelet_weight: float,
               lpips_backbone_path: str | None = None, perceptual_random_backbone: bool = False,
               disc_base_channels: int = 64, disc_num_layers: int = 4) -> VAEGANLoss:
    """Build the loss named by ``--disc_cls`` (after alias resolution) with the trainer's arguments."""
    if name not in LOSS_CLASSES:
        raise ValueError(f"unknown loss class {name!r}; choose one of {sorted(LOSS_CLASSES)}")
    # The LPIPS module is always built (even at weight 0) so the state dict keeps the original's keys;
    # with weight 0 its weights are never used, so a random trunk is fine and avoids needing the file.
    random_trunk = perceptual_random_backbone or perceptual_weight == 0
    perceptual = build_perceptual_loss(lpips_backbone_path, random_backbone=random_trunk)
    return LOSS_CLASSES[name](
        perceptual, disc_start=disc_start, logvar_init=logvar_init, kl_weight=kl_weight, pixel_loss=loss_type,
        perceptual_weight=perceptual_weight, disc_weight=disc_weight, wavelet_weight=wavelet_weight,
        disc_base_channels=disc_base_channels, disc_num_layers=disc_num_layers,
    )
