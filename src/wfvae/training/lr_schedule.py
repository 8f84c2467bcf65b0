"""Learning rate as a function of the step: constant (the original's), or linear warm-up then cosine decay.

A pure function of the step count, so a resumed run continues on the same curve without any
scheduler state in the checkpoint.
"""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULERS", "lr_at"]

LR_SCHEDULERS = ("constant", "cosine")


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "constant") -> float:
    """Learning rate of the update made at ``step`` (0-based).

    ``constant``: ``base_lr``, after the optional linear warm-up. ``cosine``: linear warm-up over
    ``warmup_steps`` updates, then half a cosine from ``base_lr`` down to 0 at ``total_steps``.
    """
    if kind not in LR_SCHEDULERS:
        raise ValueError(f"unknown lr scheduler {kind!r}; choose one of {', '.join(LR_SCHEDULERS)}")
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
