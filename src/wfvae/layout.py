"""Names of the files and folders wfvae writes, so every command and the report agree on them.

How to use::

    from wfvae import layout
    run_dir / layout.METRICS_LOG                 # <run>/metrics.jsonl
    layout.checkpoint_name(1000)                 # "checkpoint-1000.ckpt"
    out_dir / layout.ORIGIN_DIR / "a/clip.mp4"   # ground truth next to a reconstruction
"""

from __future__ import annotations

import re

__all__ = ["CHECKPOINT_RE", "METRICS_LOG", "ORIGIN_DIR", "PRETRAINED_DIR", "RECONSTRUCT_METRICS",
           "checkpoint_name"]

#: Training run folder: the trainer's log (one JSON record per line) ...
METRICS_LOG = "metrics.jsonl"
#: ... the ``save_pretrained`` export for inference written at the end of training ...
PRETRAINED_DIR = "pretrained"
#: ... and one file per saved step.
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.ckpt$")


def checkpoint_name(step: int) -> str:
    """File name of the training checkpoint saved at ``step`` (matches :data:`CHECKPOINT_RE`)."""
    return f"checkpoint-{step}.ckpt"


#: Reconstruction folder: ``reconstruct --output_origin`` writes the model's exact input here (the same path
#: below it as the reconstruction), and ``evaluate`` pairs it with the reconstructions by default.
ORIGIN_DIR = "origin"
#: Per-video metrics written by ``reconstruct --metrics`` (default of ``--json``).
RECONSTRUCT_METRICS = "reconstruct_metrics.json"
