"""The table of video metrics: one entry per metric, read by ``evaluate``, ``reconstruct --metrics``, the
trainer's validation and the report.

How to use::

    from wfvae.evaluation.registry import METRICS, Networks
    metric = METRICS["psnr"]
    values = metric.per_video(real, recon, Networks())   # (B,); real/recon (B, 3, T, H, W), uint8 or [-1, 1]
    metric.higher_is_better                               # True

Adding a metric is one entry in :data:`METRICS` plus its function (next to the others in
:mod:`wfvae.evaluation.metrics`): every command that takes metric names then accepts it, computes it per video,
averages it over the dataset, and the report ranks and colours it the right way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from wfvae.evaluation import metrics as M

__all__ = ["METRICS", "PER_VIDEO_METRICS", "Metric", "Networks", "higher_is_better", "needed_networks"]


@dataclass
class Networks:
    """Pretrained networks the chosen metrics need, loaded once by the caller (see :attr:`Metric.needs`)."""

    lpips: nn.Module | None = None
    i3d: Any | None = None  # wfvae.evaluation.fvd.I3DFeatureExtractor


@dataclass(frozen=True)
class Metric:
    """One video metric.

    Attributes:
        name: the name on the command line, in JSON files and in logs.
        higher_is_better: PSNR, SSIM: True; LPIPS, FVD: False (the report ranks "worst first" with it).
        needs: the pretrained network it needs in :class:`Networks` (None: none).
        per_video: ``(real, recon, networks) -> (B,)``, one value per video, on the inputs' device; None for a
            dataset-level metric (FVD: one distance between the feature sets of all videos, which ``evaluate``
            computes from I3D features).
        description: one line for help texts.
    """

    name: str
    higher_is_better: bool
    needs: Literal["lpips", "i3d"] | None
    per_video: Callable[[torch.Tensor, torch.Tensor, Networks], torch.Tensor] | None
    description: str


def _psnr(real: torch.Tensor, recon: torch.Tensor, nets: Networks) -> torch.Tensor:
    return M.psnr(real, recon)


def _ssim(real: torch.Tensor, recon: torch.Tensor, nets: Networks) -> torch.Tensor:
    return M.ssim(real, recon)


def _lpips(real: torch.Tensor, recon: torch.Tensor, nets: Networks) -> torch.Tensor:
    if nets.lpips is None:
        raise ValueError("the lpips metric needs Networks.lpips (load it with wfvae.networks.lpips.load_lpips)")
    return M.lpips(real, recon, nets.lpips)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", True, None, _psnr, "peak signal-to-noise ratio over all frames of a video, dB"),
    Metric("ssim", True, None, _ssim, "structural similarity, mean over frames"),
    Metric("lpips", False, "lpips", _lpips, "learned perceptual distance, mean over frames"),
    Metric("fvd", False, "i3d", None, "Frechet video distance between the I3D features of all videos"),
)}

#: Metrics with one value per video, in table order.
PER_VIDEO_METRICS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.per_video is not None)


def needed_networks(names: list[str]) -> set[str]:
    """The :class:`Networks` fields the metrics ``names`` need (what a caller must load before scoring)."""
    return {METRICS[name].needs for name in names} - {None}


def higher_is_better(name: str) -> bool:
    """For a metric of the table; anything else a report shows (losses) is better smaller."""
    return name in METRICS and METRICS[name].higher_is_better
