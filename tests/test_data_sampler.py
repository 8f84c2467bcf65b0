"""ResumableDistributedSampler: sharding, determinism, mid-epoch resume (also across world sizes)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from wfvae.data.sampler import ResumableDistributedSampler


def _all_ranks(n, world, epoch=0, **kw):
    out = []
    for r in range(world):
        s = ResumableDistributedSampler(n, num_replicas=world, rank=r, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_shards_are_disjoint_and_cover_the_epoch():
    shards = _all_ranks(23, 4, seed=3)
    assert all(len(s) == 5 for s in shards)  # 23 // 4, tail dropped
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == 20 and set(flat) <= set(range(23))
    padded = _all_ranks(23, 4, seed=3, drop_last=False)
    assert all(len(s) == 6 for s in padded)
    assert set(i for s in padded for i in s) == set(range(23))


def test_order_depends_on_seed_and_epoch_only():
    a = _all_ranks(50, 2, epoch=1, seed=7)
    assert a == _all_ranks(50, 2, epoch=1, seed=7)
    assert a != _all_ranks(50, 2, epoch=2, seed=7)
    assert a != _all_ranks(50, 2, epoch=1, seed=8)
    assert _all_ranks(6, 1, shuffle=False) == [[0, 1, 2, 3, 4, 5]]


def test_resume_mid_epoch_yields_exactly_the_unseen_samples():
    s = ResumableDistributedSampler(40, num_replicas=2, rank=1, seed=5)
    s.set_epoch(3)
    full = list(s)
    s.advance(7)
    state = s.state_dict()
    assert state == {"epoch": 3, "seed": 5, "consumed": 7, "num_replicas": 2, "current_index": 7}
    assert all(type(v) is int for v in state.values())

    t = ResumableDistributedSampler(40, num_replicas=2, rank=1, seed=5)
    t.load_state_dict(state)
    t.set_epoch(3)  # same epoch: keeps the position
    assert list(t) == full[7:] and len(t) == 13
    t.advance(13)
    t.set_epoch(4)  # next epoch starts from its beginning
    assert len(list(t)) == 20 and t.state_dict()["consumed"] == 0


def test_resume_with_a_different_world_size():
    n, seed = 48, 1
    old = [ResumableDistributedSampler(n, 4, r, seed=seed) for r in range(4)]
    seen = set()
    for s in old:
        seen |= set(list(s)[:3])
        s.advance(3)
    state = old[0].state_dict()
    new = [ResumableDistributedSampler(n, 2, r, seed=seed) for r in range(2)]
    rest = []
    for s in new:
        s.load_state_dict(state)
        rest += list(s)
    assert set(rest).isdisjoint(seen) and set(rest) | seen == set(range(n))


def test_reads_the_original_samplers_state():
    s = ResumableDistributedSampler(10, seed=0)
    s.load_state_dict({"epoch": 2, "seed": 9, "current_index": 4})
    ref = ResumableDistributedSampler(10, seed=9)
    ref.set_epoch(2)
    assert s.seed == 9 and list(s) == list(ref)[4:]


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        ResumableDistributedSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="cannot feed"):
        ResumableDistributedSampler(1, num_replicas=2)
    with pytest.raises(ValueError):
        ResumableDistributedSampler(10).advance(-1)


class _Ids(Dataset):
    def __len__(self):
        return 30

    def __getitem__(self, i):
        return i


def test_with_dataloader_prefetch_resume_is_exact():
    # Workers prefetch ahead of the loop; only what the loop trained on counts as consumed.
    s = ResumableDistributedSampler(30, seed=2)
    seen = []
    for step, batch in enumerate(DataLoader(_Ids(), batch_size=4, sampler=s, num_workers=2)):
        if step == 3:
            break
        seen += batch.tolist()
        s.advance(len(batch))
    r = ResumableDistributedSampler(30, seed=2)
    r.load_state_dict(s.state_dict())
    rest = torch.cat(list(DataLoader(_Ids(), batch_size=4, sampler=r))).tolist()
    assert seen + rest == s.epoch_indices()
