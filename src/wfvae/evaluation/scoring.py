"""Scoring pairs: per-video PSNR / SSIM / LPIPS, I3D features for FVD, and the dataset values with their notes.

How to use::

    fvd = FvdFeatures(extractor, batch_size=4) if "fvd" in wanted else None
    rows = score_pairs(loader, wanted, device, Networks(lpips=lpips_model), fvd)  # [{"path": key, "psnr": ...}]
    dataset, notes, capped = dataset_values(rows, wanted, fvd)

Per-video metrics (the registry's ``per_video`` entries: PSNR, SSIM, LPIPS) are computed over all frames of a
video and averaged over videos. FVD is one Frechet distance between the I3D feature sets of all real and all
generated videos.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from wfvae.errors import InputError
from wfvae.evaluation import metrics as M
from wfvae.evaluation.fvd import fvd_from_features
from wfvae.evaluation.registry import METRICS, PER_VIDEO_METRICS, Networks

__all__ = ["FvdFeatures", "dataset_values", "score_pairs"]


class FvdFeatures:
    """I3D features of real and generated videos, extracted ``batch_size`` pairs at a time."""

    def __init__(self, extractor: Callable[[torch.Tensor], np.ndarray], batch_size: int):
        self.extractor, self.batch_size = extractor, batch_size
        self.real: list[np.ndarray] = []
        self.generated: list[np.ndarray] = []
        self._queue: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, real: torch.Tensor, generated: torch.Tensor) -> None:
        """Queue one pair of (3, T, H, W) videos; extracts when a batch is full."""
        self._queue.append((real, generated))
        if len(self._queue) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._queue:
            return
        # Videos in one I3D batch must share a shape (they differ only when resolution is 0).
        groups: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for real_v, gen_v in self._queue:
            groups.setdefault(tuple(real_v.shape), []).append((real_v, gen_v))
        for items in groups.values():
            self.real.append(self.extractor(torch.stack([r for r, _ in items])))
            self.generated.append(self.extractor(torch.stack([g for _, g in items])))
        self._queue.clear()


def score_pairs(loader: Iterable[dict[str, Any]], wanted: list[str], device: torch.device,
                nets: Networks, fvd: FvdFeatures | None) -> list[dict[str, Any]]:
    """One row per pair of ``loader`` (items of :class:`~wfvae.evaluation.loading.PairDataset`).

    Raises:
        InputError: a pair could not be loaded (the item carries the reason).
    """
    rows: list[dict[str, Any]] = []
    per_video = [name for name in PER_VIDEO_METRICS if name in wanted]
    for item in loader:
        key = item["key"]
        if "error" in item:
            raise InputError(f"pair '{key}': {item['error']}")
        # (1, 3, T, H, W) uint8; PSNR/SSIM run on the device (float32 / exact integers)
        real = item["real"].unsqueeze(0).to(device, non_blocking=True)
        generated = item["generated"].unsqueeze(0).to(device, non_blocking=True)
        row: dict[str, Any] = {"path": key}
        for name in per_video:
            row[name] = float(METRICS[name].per_video(real, generated, nets)[0])
        if fvd is not None:  # the I3D batch is stacked on the host: queue the loader's tensors, not device copies
            fvd.add(item["real"], item["generated"])
        rows.append(row)
    if fvd is not None:
        fvd.flush()
    return rows


def dataset_values(rows: list[dict[str, Any]], wanted: list[str],
                   fvd: FvdFeatures | None) -> tuple[dict[str, float], list[str], int]:
    """``(dataset values, notes for the reader, videos whose PSNR hit the cap)``."""
    dataset: dict[str, float] = {}
    notes: list[str] = []
    for name in PER_VIDEO_METRICS:
        if name in wanted:
            dataset[name] = float(np.mean([row[name] for row in rows]))
    capped = 0
    if "psnr" in wanted:
        capped = sum(row["psnr"] >= M.PSNR_CAP_DB for row in rows)
        if capped:
            notes.append(
                f"PSNR of identical videos is infinite and is reported as the cap {M.PSNR_CAP_DB:g} dB "
                f"({capped} of {len(rows)} videos)"
            )
    if fvd is not None:
        real_all, gen_all = np.concatenate(fvd.real), np.concatenate(fvd.generated)
        dataset["fvd"] = fvd_from_features(real_all, gen_all)
        if len(real_all) < real_all.shape[1]:
            notes.append(
                f"FVD from {len(real_all)} videos (< {real_all.shape[1]} feature dimensions) is biased "
                f"and not comparable with published values"
            )
    return dataset, notes, int(capped)
