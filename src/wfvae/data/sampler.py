"""A distributed sampler that can resume in the middle of an epoch.

How the trainer uses it::

    sampler = ResumableDistributedSampler(len(dataset), num_replicas=world_size, rank=rank, seed=seed)
    if resuming:
        sampler.load_state_dict(ckpt["sampler_state"])   # epoch + samples consumed so far
    for epoch in range(sampler.epoch, num_epochs):
        sampler.set_epoch(epoch)                 # keeps the resumed position for the resumed epoch
        dataset.set_epoch(epoch)
        for batch in DataLoader(dataset, batch_size=b, sampler=sampler, ...):
            train_step(batch)
            sampler.advance(b)                   # this rank has now consumed b more samples
            if should_save:
                ckpt["sampler_state"] = sampler.state_dict()

Why an explicit ``advance``: a DataLoader pulls indices from the sampler ahead of the
training loop (``prefetch_factor * num_workers`` batches), so counting inside ``__iter__`` would
record samples as consumed that the model never saw. The trainer knows what it trained on.

Order: the epoch's permutation is ``torch.randperm(n)`` with a generator seeded by
``seed + epoch`` (identical on every rank), cut to a multiple of ``num_replicas``
(``drop_last=True``) or padded by wrapping around (``drop_last=False``); rank ``r`` takes
positions ``r, r + R, r + 2R, ...``. After ``c`` consumed samples per rank, exactly the first
``c * R`` positions of the permutation were used, so a run resumed with a different world
size still continues with the unseen samples (when ``c * R`` divides by the new world size;
otherwise it rounds down and a few samples are seen twice, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

__all__ = ["ResumableDistributedSampler"]


class ResumableDistributedSampler(Sampler[int]):
    """Deterministic, DDP-sharded, resumable sampler over ``range(dataset_len)``.

    Parameters:
        dataset_len (int): number of samples in the dataset.
        num_replicas (int, default 1): world size.
        rank (int, default 0): this process's rank, in ``[0, num_replicas)``.
        shuffle (bool, default True): permute with ``seed + epoch``; False keeps ``0..n-1``.
        seed (int, default 0): must be the same on every rank.
        drop_last (bool, default True): drop the tail so every rank gets the same number of
            samples; False pads by repeating the first samples instead.

    Consumption is tracked with :meth:`advance` (see the module docstring). ``state_dict()``
    returns ``{"epoch", "seed", "consumed", "num_replicas", "current_index"}``, all ints;
    ``consumed`` counts this rank's samples in the current epoch (equal on every rank), and
    ``current_index`` repeats it under the original WF-VAE sampler's key name so original
    checkpoints and ours read the same way.
    """

    def __init__(
        self,
        dataset_len: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        if dataset_len < 0 or num_replicas < 1:
            raise ValueError(f"need dataset_len >= 0 and num_replicas >= 1; got {dataset_len}, {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas - 1}]")
        self.dataset_len = int(dataset_len)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.consumed = 0
        if self.drop_last:
            self.num_samples = self.dataset_len // self.num_replicas
        else:
            self.num_samples = -(-self.dataset_len // self.num_replicas)  # ceil
        if self.num_samples == 0:
            raise ValueError(
                f"{self.dataset_len} samples cannot feed {self.num_replicas} ranks (drop_last={self.drop_last}); "
                f"add videos or use fewer ranks"
            )
        self.total_size = self.num_samples * self.num_replicas

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """All indices this rank gets in ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        if self.total_size > len(order):
            reps = -(-self.total_size // len(order))
            order = (order * reps)[: self.total_size]
        else:
            order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's not-yet-consumed indices of the current epoch.

        If the epoch was already fully consumed (no :meth:`set_epoch` to a new epoch), the
        same epoch starts over from its beginning.
        """
        if self.consumed >= self.num_samples:
            self.consumed = 0
        start = self.consumed
        return iter(self.epoch_indices()[start:])

    def __len__(self) -> int:
        """Number of indices the next ``__iter__`` yields (``num_samples`` minus those consumed)."""
        return self.num_samples - self.consumed if self.consumed < self.num_samples else self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Switch to ``epoch``. A new epoch starts at its first sample; setting the epoch that
        is already current (e.g. right after :meth:`load_state_dict`) keeps the position."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def advance(self, n: int) -> None:
        """Record that this rank trained on ``n`` more samples of the current epoch."""
        if n < 0:
            raise ValueError(f"advance(n) needs n >= 0, got {n}")
        self.consumed = min(self.num_samples, self.consumed + int(n))

    def state_dict(self) -> dict[str, int]:
        """Plain ints: ``epoch``, ``seed``, ``consumed`` (this rank, this epoch), ``num_replicas``,
        ``current_index`` (= ``consumed``, the original sampler's key)."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "consumed": self.consumed,
            "num_replicas": self.num_replicas,
            "current_index": self.consumed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by :meth:`state_dict` (ours or the original WF-VAE's
        ``{"epoch", "seed", "current_index"}``). The saved seed wins over the constructor's,
        since the resumed order must be the saved one."""
        self.epoch = int(state["epoch"])
        seed = int(state.get("seed", self.seed))
        if seed != self.seed:
            logger.warning("sampler seed %d from the checkpoint replaces seed %d", seed, self.seed)
            self.seed = seed
        consumed = int(state.get("consumed", state.get("current_index", 0)))
        saved_replicas = int(state.get("num_replicas", self.num_replicas))
        if saved_replicas != self.num_replicas:
            global_done = consumed * saved_replicas
            consumed, rest = divmod(global_done, self.num_replicas)
            if rest:
                logger.warning(
                    "resuming with %d ranks instead of %d: %d samples consumed in total do not divide "
                    "evenly, so %d samples of epoch %d will be seen again",
                    self.num_replicas,
                    saved_replicas,
                    global_done,
                    rest,
                    self.epoch,
                )
        self.consumed = max(0, min(consumed, self.num_samples))
