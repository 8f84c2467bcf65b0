"""CheckpointManager (atomic writes, keep-last-K, layout), RNG capture and the EMA helper."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from wfvae.errors import CheckpointError
from wfvae.training.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from wfvae.training.ema import EMA


def _payload(step: int) -> dict:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "epoch": 0, "current_step": step,
        "optimizer_state": {"gen_optimizer": opt.state_dict(), "disc_optimizer": opt.state_dict()},
        "state_dict": {"gen_model": model.state_dict(), "dics_model": {"logvar": torch.zeros(())}},
        "ema_state_dict": {}, "scaler_state": {}, "sampler_state": {"epoch": 0, "seed": 1, "current_index": step},
        "rng_states": [capture_rng_state()], "config": {"lr": 1e-5, "name": "x", "steps": None},
    }


def test_save_is_atomic_named_by_step_and_weights_only_loadable(tmp_path):
    mgr = CheckpointManager(tmp_path / "run")
    path = mgr.save(_payload(7), step=7)
    assert path.name == "checkpoint-7.ckpt"
    # no temporary left; the checksum file sits beside the checkpoint
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint-7.ckpt", "checkpoint-7.ckpt.sha256"]
    raw = torch.load(path, weights_only=True)  # plain tensors / python values only
    assert raw["current_step"] == 7 and "dics_model" in raw["state_dict"]
    assert load_checkpoint(path)["sampler_state"]["current_index"] == 7


def test_keep_last_k_and_latest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last_k=2)
    for step in (5, 10, 15, 20):
        mgr.save(_payload(step), step=step)
    assert [s for s, _ in mgr.list()] == [15, 20]
    assert mgr.latest().name == "checkpoint-20.ckpt"
    with pytest.raises(ValueError, match="keep_last_k"):
        CheckpointManager(tmp_path, keep_last_k=1)


def test_stale_temporary_is_ignored_and_removed(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_payload(1), step=1)
    (tmp_path / ".tmp-checkpoint-2-999").write_bytes(b"half a checkpoint")
    assert mgr.latest().name == "checkpoint-1.ckpt"
    assert len(mgr.remove_stale_temporaries()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.ckpt", "checkpoint-1.ckpt.sha256"]


def test_failed_write_leaves_previous_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(_payload(1), step=1)
    bad = _payload(2)
    bad["config"]["unpicklable"] = lambda: None  # torch.save fails half-way
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        mgr.save(bad, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1.ckpt", "checkpoint-1.ckpt.sha256"]
    load_checkpoint(mgr.latest())


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match="lacks keys"):
        load_checkpoint(tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match="required keys"):
        CheckpointManager(tmp_path).save({"epoch": 0}, step=1)


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert random.random() == expected[0]
    assert float(np.random.rand()) == expected[1]
    torch.testing.assert_close(torch.rand(3), expected[2], rtol=0, atol=0)


def test_ema_update_swap_and_original_key_prefix():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[1].requires_grad_(False)
    ema = EMA(model, decay=0.9)
    assert set(ema.shadow) == {"0.weight", "0.bias"}  # trainable parameters only, as the original
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["0.weight"], 0.9 * start + 0.1 * (start + 1.0))
    current = model[0].weight.detach().clone()
    with ema.swapped_into(model):
        torch.testing.assert_close(model[0].weight.detach(), ema.shadow["0.weight"])
    torch.testing.assert_close(model[0].weight.detach(), current, rtol=0, atol=0)

    sd = ema.state_dict()
    assert set(sd) == {"module.0.weight", "module.0.bias"}  # the original saved the DDP wrapper's names
    other = EMA(model, decay=0.9)
    other.load_state_dict(sd)
    torch.testing.assert_close(other.shadow["0.weight"], ema.shadow["0.weight"])
    other.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})  # unprefixed also accepted
    with pytest.raises(KeyError):
        other.load_state_dict({})
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)

    # a snapshot: later updates must not change what was handed to the checkpoint writer
    saved = sd["module.0.weight"].clone()
    assert sd["module.0.weight"].untyped_storage().data_ptr() != ema.shadow["0.weight"].untyped_storage().data_ptr()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    assert not torch.equal(ema.shadow["0.weight"], saved)
    torch.testing.assert_close(sd["module.0.weight"], saved, rtol=0, atol=0)


def test_checksum_detects_damage_and_latest_falls_back(tmp_path, caplog):
    """Issue 12.9: checkpoints carry a SHA-256; a damaged newest one is skipped for the newest intact one."""
    from wfvae.training.checkpoint import checksum_path, find_resumable, verify_checkpoint

    mgr = CheckpointManager(tmp_path, keep_last_k=2)
    for step in (1, 2, 3):
        mgr.save(_payload(step), step=step)
    assert not checksum_path(tmp_path / "checkpoint-1.ckpt").exists()  # pruned together with its checkpoint
    newest = mgr.latest()
    assert verify_checkpoint(newest) is None
    raw = bytearray(newest.read_bytes())
    raw[-100] ^= 0x01
    newest.write_bytes(bytes(raw))
    assert "does not match" in verify_checkpoint(newest)
    with caplog.at_level("WARNING"):
        path, ckpt = find_resumable([p for _, p in reversed(mgr.list())])
    assert path.name == "checkpoint-2.ckpt" and ckpt["current_step"] == 2
    assert "checkpoint-3.ckpt is damaged" in caplog.text
