"""What the trainer does when an update's loss or gradient is not finite.

How to use::

    policy = NonFinitePolicy(max_skips=10, on_limit="reload")
    policy.finite(step)                  # after every good update
    action = policy.skipped(step)        # after a skipped one: "continue", "reload" or "stop"
    policy.may_save()                    # False during a streak: such weights are never a "good" checkpoint
    policy.reload_candidate(checkpoints) # the newest checkpoint saved before the streak began
    policy.reloaded(step_of_checkpoint)  # raises TrainingDiverged when that checkpoint keeps diverging

One skipped update is harmless (optimizer, scaler and EMA are untouched). ``max_skips`` in a row mean the
weights themselves went bad: ``reload`` restores the newest checkpoint saved before the streak began (the
caller checks its weights are finite), ``stop`` ends the run with :class:`TrainingDiverged`. A checkpoint
that leads back into a streak ``max_reloads`` times is not a way forward: the run stops, non-zero, and
says so, instead of reloading forever or ending "successfully" with exploded weights.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

__all__ = ["NonFinitePolicy", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite updates and no way (or no permission) to recover."""


class NonFinitePolicy:
    """Counts consecutive non-finite updates and says what to do at the limit.

    Args:
        max_skips: consecutive non-finite updates that trigger ``on_limit``.
        on_limit: ``reload`` the last good checkpoint, or ``stop``.
        max_reloads: how often one checkpoint may be reloaded before the run is declared stuck.
    """

    def __init__(self, max_skips: int, on_limit: Literal["reload", "stop"], max_reloads: int = 2):
        self.max_skips = max_skips
        self.on_limit = on_limit
        self.max_reloads = max_reloads
        self.consecutive = 0
        self.streak_start: int | None = None  # step of the first update of the current streak
        self.reloads: Counter[int] = Counter()  # checkpoint step -> times reloaded
        self.updated_since_reload = True  # a reloaded checkpoint is not saved again as if it were progress

    def finite(self, step: int | None = None) -> None:
        self.consecutive = 0
        self.streak_start = None
        self.updated_since_reload = True

    def skipped(self, step: int | None = None) -> Literal["continue", "reload", "stop"]:
        if self.consecutive == 0:
            self.streak_start = step
        self.consecutive += 1
        if self.consecutive < self.max_skips:
            return "continue"
        return self.on_limit

    def may_save(self) -> bool:
        """Whether the current weights may be saved as a checkpoint: not during a non-finite streak, and not
        right after a reload (they are the reloaded checkpoint's, not progress)."""
        return self.consecutive == 0 and self.updated_since_reload

    def reload_candidates(self, checkpoints: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
        """Checkpoints saved before the streak began, newest first (``checkpoints``: ``(step, path)``)."""
        limit = self.streak_start if self.streak_start is not None else float("inf")
        return [(s, p) for s, p in sorted(checkpoints, reverse=True) if s < limit]

    def reloaded(self, from_step: int) -> None:
        """Record a reload of the checkpoint of ``from_step``; stop when it keeps leading back here."""
        self.reloads[from_step] += 1
        if self.reloads[from_step] > self.max_reloads:
            raise TrainingDiverged(
                f"the checkpoint of step {from_step} was reloaded {self.max_reloads} times and training diverged "
                f"again after each reload: the run cannot make progress. Lower --lr (or --clip_grad_norm), use "
                f"--mix_precision fp32/bf16, or resume from an earlier checkpoint.")
        self.consecutive = 0
        self.streak_start = None
        self.updated_since_reload = False
