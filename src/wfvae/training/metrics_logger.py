"""Metrics sink of the trainer: always a local ``metrics.jsonl``, optionally W&B and/or TensorBoard.

How to use::

    ml = MetricsLogger(run_dir, report_to="wandb,tensorboard", run_name="exp", config=cfg.to_dict())
    ml.log({"train/loss_rec": 0.12, "train/lr": 1e-5}, step=10)   # one JSON line per call
    ml.log_videos("val/recon", [video_uint8_THWC, ...], step=10, fps=10)
    ml.close()

Create it on the main process only. ``report_to`` is ``none`` or a comma list of trackers:

* ``wandb`` (optional extra, ``pip install wfvae[wandb]``): honours ``WANDB_MODE=offline|disabled``
  and ``WANDB_PROJECT`` by itself; this class reads no environment variable.
* ``tensorboard`` (optional extra, ``pip install wfvae[tensorboard]``): event files in
  ``<run_dir>/tensorboard`` (``tensorboard --logdir <run_dir>``): numeric values as scalars,
  validation videos as images of frames sampled over time (first, quarter points, last; one row
  per video), and the config as text.

``metrics.jsonl`` is written whatever the trackers, so ``wfvae report`` works on every run.
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

from wfvae.data.video_write import write_video

logger = logging.getLogger(__name__)

__all__ = ["REPORT_TARGETS", "MetricsLogger", "import_tensorboard_writer", "import_wandb", "parse_report_to"]

#: Trackers ``report_to`` may name (besides ``none``).
REPORT_TARGETS = ("wandb", "tensorboard")
#: Sub-folder of the run folder holding TensorBoard event files.
TENSORBOARD_DIR = "tensorboard"
_FRAMES_PER_VIDEO_IMAGE = 5


def parse_report_to(value: str | Sequence[str]) -> list[str]:
    """``"wandb,tensorboard"`` -> ``["wandb", "tensorboard"]``; ``"none"`` -> ``[]``.

    Raises:
        ValueError: an unknown name, or ``none`` combined with a tracker.
    """
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    unknown = [n for n in names if n not in (*REPORT_TARGETS, "none")]
    if unknown or not names:
        raise ValueError(f"report_to {','.join(names) or '(empty)'!r}: use none or a comma list of "
                         f"{', '.join(REPORT_TARGETS)}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"report_to {','.join(names)!r}: 'none' cannot be combined with a tracker")
    return [n for n in dict.fromkeys(names) if n != "none"]


def import_wandb():
    try:
        import wandb  # lazy: optional extra [wandb]
    except ImportError as e:
        raise ImportError("--report_to wandb needs the wandb package: pip install wfvae[wandb] "
                          "(or pass --report_to none)") from e
    return wandb


def import_tensorboard_writer():
    """``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # lazy: optional extra [tensorboard]
    except ImportError as e:
        raise ImportError("--report_to tensorboard needs the tensorboard package: pip install "
                          "wfvae[tensorboard] (or pass --report_to none)") from e
    return SummaryWriter


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


def _frame_strip(video: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 -> ``(H, k*W, 3)``: k frames evenly spaced in time, side by side."""
    t = video.shape[0]
    picks = sorted({round(i * (t - 1) / (_FRAMES_PER_VIDEO_IMAGE - 1)) for i in range(_FRAMES_PER_VIDEO_IMAGE)})
    return np.concatenate([video[i] for i in picks], axis=1)


class MetricsLogger:
    """Append-only JSON-lines log plus optional W&B and TensorBoard writers.

    Args:
        run_dir: folder of ``metrics.jsonl`` (and logged videos under ``videos/``, event files
            under ``tensorboard/``).
        report_to: ``"none"``, ``"wandb"``, ``"tensorboard"`` or a comma list such as
            ``"wandb,tensorboard"`` (see :func:`parse_report_to`).
        run_name, project, config: passed to ``wandb.init``; ``config`` is also written to
            TensorBoard as text.
    """

    def __init__(self, run_dir: str | os.PathLike, report_to: str | Sequence[str] = "none",
                 run_name: str | None = None, project: str | None = None, config: dict | None = None):
        targets = parse_report_to(report_to)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._wandb = None
        self._wandb_run = None
        self._tb = None
        if "tensorboard" in targets:
            writer_cls = import_tensorboard_writer()
            self._tb = writer_cls(log_dir=str(self.run_dir / TENSORBOARD_DIR))
            if config:
                text = json.dumps(config, indent=2, sort_keys=True, default=str)
                # four-space indent: TensorBoard renders the text as Markdown, this keeps it verbatim
                self._tb.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)
        if "wandb" in targets:
            self._wandb = import_wandb()
            self._wandb_run = self._wandb.init(project=project, name=run_name, config=config,
                                               dir=str(self.run_dir))
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (open for the whole run); line-buffered: each record hits the OS promptly

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=int(step))
        if self._tb is not None:
            for key, value in metrics.items():
                if hasattr(value, "item") and callable(value.item):
                    value = value.item()
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, int(step))  # NaN/inf kept: TensorBoard shows them

    def log_videos(self, key: str, videos: Sequence[np.ndarray], step: int, fps: int = 10) -> list[Path]:
        """Save ``(T, H, W, 3)`` uint8 videos under ``videos/`` and send them to the trackers."""
        out_dir = self.run_dir / "videos" / f"step-{step:08d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, video in enumerate(videos):
            path = out_dir / f"{key.replace('/', '_')}_{i}.mp4"
            write_video(path, video, fps=fps)
            paths.append(path)
        if self._wandb_run is not None and videos:
            # wandb.Video wants (T, C, H, W)
            clips = [self._wandb.Video(np.ascontiguousarray(v.transpose(0, 3, 1, 2)), fps=fps) for v in videos]
            self._wandb_run.log({key: clips}, step=int(step))
        if self._tb is not None and videos:
            # one image per logged video: frames sampled over time, side by side (no moviepy needed)
            for i, video in enumerate(videos):
                self._tb.add_image(f"{key}/{i}", _frame_strip(np.asarray(video)), int(step), dataformats="HWC")
        self.log({f"{key}_files": [str(p.relative_to(self.run_dir)) for p in paths]}, step=step)
        return paths

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
