"""Metrics sink of the trainer: always a local ``metrics.jsonl``, optionally Weights & Biases.

How to use::

    ml = MetricsLogger(run_dir, report_to="wandb", run_name="exp", config=cfg.to_dict())
    ml.log({"train/loss_rec": 0.12, "train/lr": 1e-5}, step=10)   # one JSON line per call
    ml.log_videos("val/recon", [video_uint8_THWC, ...], step=10, fps=10)
    ml.close()

Create it on the main process only. W&B is an optional extra (``pip install wfvae[wandb]``); it honours
``WANDB_MODE=offline|disabled`` and ``WANDB_PROJECT`` by itself, this class reads no environment variable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["MetricsLogger", "import_wandb"]


def import_wandb():
    try:
        import wandb
    except ImportError as e:
        raise ImportError("--report_to wandb needs the wandb package: pip install wfvae[wandb] "
                          "(or pass --report_to none)") from e
    return wandb


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricsLogger:
    """Append-only JSON-lines log plus an optional W&B run.

    Args:
        run_dir: folder of ``metrics.jsonl`` (and logged videos under ``videos/``).
        report_to: ``"wandb"`` or ``"none"``.
        run_name, project, config: passed to ``wandb.init``.
        resume_id: W&B run id to continue (stored in checkpoints' counters by the trainer).
    """

    def __init__(self, run_dir: str | os.PathLike, report_to: str = "none", run_name: str | None = None,
                 project: str | None = None, config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (open for the whole run); line-buffered: each record hits the OS promptly
        self._wandb = None
        self._wandb_run = None
        if report_to == "wandb":
            self._wandb = import_wandb()
            self._wandb_run = self._wandb.init(project=project, name=run_name, config=config,
                                               dir=str(self.run_dir))
        elif report_to != "none":
            raise ValueError(f"report_to must be 'wandb' or 'none', got {report_to!r}")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=int(step))

    def log_videos(self, key: str, videos: Sequence[np.ndarray], step: int, fps: int = 10) -> list[Path]:
        """Save ``(T, H, W, 3)`` uint8 videos under ``videos/`` and send them to W&B; returns the files."""
        from wfvae.data import video_io

        out_dir = self.run_dir / "videos" / f"step-{step:08d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, video in enumerate(videos):
            path = out_dir / f"{key.replace('/', '_')}_{i}.mp4"
            video_io.write_video(path, video, fps=fps)
            paths.append(path)
        if self._wandb_run is not None and videos:
            # wandb.Video wants (T, C, H, W)
            clips = [self._wandb.Video(np.ascontiguousarray(v.transpose(0, 3, 1, 2)), fps=fps) for v in videos]
            self._wandb_run.log({key: clips}, step=int(step))
        self.log({f"{key}_files": [str(p.relative_to(self.run_dir)) for p in paths]}, step=step)
        return paths

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
