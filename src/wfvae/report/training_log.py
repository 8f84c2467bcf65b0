"""Reading a training run's ``metrics.jsonl`` for the report: one series per logged value, and the events.

How to use::

    log = load_metrics_log("runs/exp/metrics.jsonl")
    steps, values = log.series["val/psnr"]
    for title, series in group_series(log.series): ...     # one figure per group
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wfvae.report.markup import HIGHER_IS_BETTER

__all__ = ["TrainingLog", "as_float", "group_series", "higher_is_better", "load_metrics_log"]


@dataclass
class TrainingLog:
    """A parsed ``metrics.jsonl``.

    Attributes:
        series: ``{key: (steps, values)}`` float arrays, NaN where a record logged "nan"/"inf".
        events: records with an ``event`` key (resume, nonfinite_skip, ...), as logged.
        bad_lines: lines that were not JSON objects (e.g. a line cut off by a crash).
    """

    series: dict[str, tuple[np.ndarray, np.ndarray]]
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0


def as_float(value: Any) -> float | None:
    """A logged value as a float (non-finite values arrive as strings), or None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)  # MetricsLogger writes non-finite values as strings
    return None


def load_metrics_log(path: str | os.PathLike) -> TrainingLog:
    """Read a trainer ``metrics.jsonl``: numeric values per key against ``step``; other values are ignored.

    Raises:
        OSError: the file cannot be read.
    """
    points: dict[str, list[tuple[float, float]]] = {}
    events: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            step = as_float(record.get("step")) if isinstance(record, dict) else None
            if step is None:
                bad += 1
                continue
            if "event" in record:
                events.append(record)
            for key, value in record.items():
                number = as_float(value)
                if key in ("step", "time") or number is None:
                    continue
                points.setdefault(key, []).append((step, number))
    series = {}
    for key, pts in points.items():
        arr = np.asarray(pts, dtype=np.float64)  # (N, 2): step, value
        arr[~np.isfinite(arr[:, 1]), 1] = np.nan
        series[key] = (arr[:, 0], arr[:, 1])
    return TrainingLog(series, events, bad)


def metric_name(key: str) -> str:
    """``val/psnr`` -> ``psnr``."""
    return key.rsplit("/", 1)[-1].lower()


def higher_is_better(key: str) -> bool:
    """Whether a larger value of the logged ``key`` is better."""
    return metric_name(key) in HIGHER_IS_BETTER


def group_series(series: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[tuple[str, dict]]:
    """Split logged keys into figures: losses, validation metrics, everything else that changes."""
    losses = {k: v for k, v in series.items() if k.startswith("train/loss")}
    val = {k: v for k, v in series.items() if k.startswith("val/")}
    rest = {}
    for k, v in series.items():
        if k in losses or k in val:
            continue
        finite = v[1][np.isfinite(v[1])]
        if len(finite) >= 2 and finite.min() != finite.max():  # constants (epoch 0, flags) are noise here
            rest[k] = v
    order = ["train/loss", "train/loss_rec", "train/loss_kl", "train/loss_lpips", "train/loss_g_adv", "train/loss_d"]
    losses = dict(sorted(losses.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    groups = [("Training losses", losses), ("Validation metrics", val), ("Other logged values", rest)]
    return [(title, s) for title, s in groups if s]
