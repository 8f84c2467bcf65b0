"""Frechet Video Distance: I3D features and the Frechet distance between two feature sets.

How to use::

    from wfvae.evaluation.fvd import load_i3d, fvd_from_features

    extractor = load_i3d("styleganv", "/weights/i3d_torchscript.pt", device="cuda")
    real = extractor(real_videos)          # (N, 400) float64; videos (N, 3, T, H, W) uint8 or [-1, 1]
    fake = extractor(fake_videos)
    value = fvd_from_features(real, fake)  # one number for the whole dataset

FVD (Unterthiner et al. 2018, https://arxiv.org/abs/1812.01717) fits a Gaussian to the I3D features of
each video set and reports the Frechet distance between the two Gaussians. It is a property of the
*dataset*: collect the features of all videos first, then compute one distance. (The original WF-VAE
code computed it per batch of 1-2 videos and averaged, which measures something else.)

Two detectors are in common use and both are supported:

* ``styleganv``: the TorchScript I3D from StyleGAN-V / fvd-comparison, ``i3d_torchscript.pt``,
  loaded with ``torch.jit.load`` and called with ``rescale=False, resize=False,
  return_features=True`` (400-d pre-softmax features).
* ``videogpt``: the PyTorch I3D state dict from VideoGPT, ``i3d_pretrained_400.pt``, loaded into
  :class:`wfvae.networks.i3d.InceptionI3D` (written there; parameter names match that file); features are its
  400 logits averaged over time.

The networks themselves and where their files come from are in :mod:`wfvae.networks.i3d`.

The file comes from ``--fvd_weights PATH``, else the ``WFVAE_I3D_PATH`` environment variable,
else the download cache: on first use the detector is downloaded from its public URL
(:data:`wfvae.downloads.REMOTE_FILES`) and accepted only if it loads as that detector (no digest
is published for either file). Offline (``--offline``, ``WFVAE_OFFLINE=1``, ``HF_HUB_OFFLINE=1``)
a detector that is not cached is an error naming the file, the option and the variable.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from wfvae.evaluation.metrics import to_unit_range
from wfvae.networks.i3d import (
    I3D_FILES,
    I3D_MIN_FRAMES,
    I3D_RESOLUTION,
    FVDVariant,
    load_i3d_network,
)

logger = logging.getLogger(__name__)


class I3DFeatureExtractor:
    """Turns videos into FVD features with one of the two detectors.

    Call it with ``(B, 3, T, H, W)`` videos, ``uint8`` in [0, 255] or float in [-1, 1] (any H, W:
    the short side is resized to 224 with bilinear interpolation, as both reference
    implementations do, then centre-cropped); returns ``(B, 400)`` float64 numpy features.

    For ``videogpt`` the frames are first quantised to the uint8 grid, as VideoGPT's pipeline
    sees uint8 frames; we round to nearest where the original WF-VAE adapter truncated
    (``astype(uint8)``), which shifted every value down by up to one level.
    """

    def __init__(self, variant: FVDVariant, model: torch.nn.Module, device: str | torch.device = "cpu"):
        if variant not in I3D_FILES:
            raise ValueError(f"unknown FVD variant '{variant}'; choose one of {sorted(I3D_FILES)}")
        self.variant = variant
        self.model = model
        self.device = torch.device(device)

    def preprocess(self, videos: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` -> ``(B, 3, T, 224, 224)`` float32 in [-1, 1] on the detector's device."""
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected (B, 3, T, H, W) videos, got {tuple(videos.shape)}")
        x = to_unit_range(videos.to(self.device), torch.float64).to(torch.float32)  # [0, 1]
        if self.variant == "videogpt":
            x = torch.round(x * 255.0) / 255.0
        b, c, t, h, w = x.shape
        scale = I3D_RESOLUTION / min(h, w)
        size = (
            (I3D_RESOLUTION, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), I3D_RESOLUTION)
        )
        frames = x.reshape(b * c, t, h, w)  # interpolate treats time as channels: per-frame resize
        if (h, w) != size:
            frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)
        top = (frames.shape[2] - I3D_RESOLUTION) // 2
        left = (frames.shape[3] - I3D_RESOLUTION) // 2
        frames = frames[:, :, top : top + I3D_RESOLUTION, left : left + I3D_RESOLUTION]
        return (frames.reshape(b, c, t, I3D_RESOLUTION, I3D_RESOLUTION) - 0.5) * 2.0

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> np.ndarray:
        x = self.preprocess(videos)
        if self.variant == "videogpt":
            if x.shape[2] < I3D_MIN_FRAMES:
                raise ValueError(f"FVD (videogpt I3D) needs at least {I3D_MIN_FRAMES} frames, got {x.shape[2]}")
            feats = self.model(x)
        else:
            try:
                feats = self.model(x, rescale=False, resize=False, return_features=True)
            except RuntimeError as e:
                raise RuntimeError(f"StyleGAN-V I3D failed on input {tuple(x.shape)}: {e}") from e
        feats = feats.reshape(feats.shape[0], -1)
        return feats.detach().to("cpu", torch.float64).numpy()


def load_i3d(
    variant: FVDVariant = "styleganv",
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    offline: bool | None = None,
) -> I3DFeatureExtractor:
    """Load an FVD detector (from a local file, or downloaded once into the cache).

    Args:
        variant: ``"styleganv"`` (TorchScript ``i3d_torchscript.pt``) or ``"videogpt"`` (state dict
            ``i3d_pretrained_400.pt``).
        weights_path: the file; ``None`` reads ``$WFVAE_I3D_PATH``, else uses the download cache.
        device: where the detector runs.
        offline: never download (``None``: ``WFVAE_OFFLINE`` / ``HF_HUB_OFFLINE`` decide).

    Raises:
        MissingWeightsError: the given file does not exist, or offline and not cached, or the
            download failed (:class:`wfvae.downloads.DownloadError`).
        CheckpointError: the file does not fit the variant.
    """
    return I3DFeatureExtractor(variant, load_i3d_network(variant, weights_path, device, offline), device)


# ----------------------------------------------------------------------------------------------
# Frechet distance
# ----------------------------------------------------------------------------------------------


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features for a covariance, got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` for Gaussians N(mu1, S1), N(mu2, S2).

    ``tr((S1 S2)^(1/2))`` equals the sum of singular values of ``S1^(1/2) S2^(1/2)`` (the square
    roots are symmetric PSD, from ``eigh``). That form is real, symmetric in the two sets, and
    keeps full precision for the rank-deficient covariances of small sets, where
    ``scipy.linalg.sqrtm`` of the non-symmetric ``S1 S2`` returns complex noise and taking square
    roots of near-zero eigenvalues would amplify rounding. A set compared with itself gives 0 up
    to rounding (possibly a tiny negative number; it is not clamped).
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    s1 = np.asarray(sigma1, np.float64)
    s2 = np.asarray(sigma2, np.float64)
    trace_sqrt = float(np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum())
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def fvd_from_features(real_features: np.ndarray, generated_features: np.ndarray) -> float:
    """FVD between two sets of I3D features ``(N, D)`` (sets may differ in size, N >= 2 each).

    Logs a warning when a set has fewer videos than feature dimensions: the covariance is then
    rank-deficient, the estimate is strongly biased (upward) and not comparable with published
    FVDs, which use thousands of videos.
    """
    for name, feats in (("real", real_features), ("generated", generated_features)):
        n, d = np.shape(feats)
        if n < d:
            logger.warning(
                "FVD from %d %s videos with %d-d features: fewer videos than dimensions, so the "
                "covariance is rank-deficient and FVD is biased; use well over %d videos (published "
                "numbers typically use 2048) before comparing values.",
                n, name, d, d,
            )
    return frechet_distance_from_stats(*feature_stats(real_features), *feature_stats(generated_features))
