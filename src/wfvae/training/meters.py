"""What the training log line averages between two log steps: loss values, and wall time / clips / data time.

How to use::

    averager, window = LossAverager(), ThroughputWindow()
    averager.add({"loss_rec": loss_rec})        # detached device scalars; no sync
    window.clips += batch_size * world_size
    means = averager.pop()                      # {"loss_rec": float, ...}: one device-to-host transfer
    seconds, clips, data_time = window.pop()
"""

from __future__ import annotations

import time

import torch

__all__ = ["LossAverager", "ThroughputWindow"]


class LossAverager:
    """Running means of detached scalars between two log steps (no device sync until read)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        keys = list(self.sums)
        means = torch.stack([self.sums[k] / self.counts[k] for k in keys]).tolist() if keys else []  # one sync
        out = dict(zip(keys, means))
        self.sums.clear()
        self.counts.clear()
        return out


class ThroughputWindow:
    """Wall time, clips and data-loading time since the last log line."""

    def __init__(self):
        self.start, self.clips, self.data_time = time.perf_counter(), 0, 0.0

    def pop(self) -> tuple[float, int, float]:
        now = time.perf_counter()
        out = (now - self.start, self.clips, self.data_time)
        self.start, self.clips, self.data_time = now, 0, 0.0
        return out
