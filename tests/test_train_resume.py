"""Exact resume and non-finite handling of a real single-process CPU training run on real video files.

* 2N steps in one go == N steps, stop, resume from the checkpoint, N more steps: same generator,
  discriminator, EMA and optimizer state (max-abs <= 1e-6) and the same samples in the same order.
* A NaN injected into the loss skips the update (weights, optimizer and EMA unchanged), is counted, and
  after --max_nan_skips consecutive skips the last good checkpoint is reloaded -- or training stops.
"""

from __future__ import annotations

import pytest
import torch
from faults import inject_nonfinite_losses
from train_utils import (
    base_args,
    load_ckpt,
    make_data,
    max_abs_diff,
    read_metrics,
    run_dir,
    train_records,
)

from wfvae.training.trainer import main

N = 3  # resume point, mid-epoch (5 clips per epoch); the second half crosses into epoch 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("train_data"))


@pytest.mark.slow
def test_exact_resume_matches_uninterrupted_run(data, tmp_path):
    # the adversarial loss is on from step 2, so generator and discriminator steps alternate; validation at
    # steps 1, 3, 6 (EMA too) must not disturb the random streams; one data worker process.
    common = {"save_ckpt_step": N, "eval_steps": 3, "ema": True, "wavelet_loss": True, "dataset_num_worker": 1}
    assert main(base_args(data, tmp_path / "a", max_steps=2 * N, **common)) == 0
    assert main(base_args(data, tmp_path / "b", max_steps=N, **common)) == 0
    assert main(base_args(data, tmp_path / "b", max_steps=2 * N, resume_from_checkpoint="latest", **common)) == 0

    run_a, run_b = run_dir(tmp_path / "a"), run_dir(tmp_path / "b")
    a, b = load_ckpt(run_a / f"checkpoint-{2 * N}.ckpt"), load_ckpt(run_b / f"checkpoint-{2 * N}.ckpt")
    gen_diff = max_abs_diff(a["state_dict"]["gen_model"], b["state_dict"]["gen_model"])
    disc_diff = max_abs_diff(a["state_dict"]["dics_model"], b["state_dict"]["dics_model"])
    ema_diff = max_abs_diff(a["ema_state_dict"], b["ema_state_dict"])
    print(f"resume max-abs diff: generator {gen_diff:.3g}, discriminator {disc_diff:.3g}, EMA {ema_diff:.3g}")
    assert gen_diff <= 1e-6 and disc_diff <= 1e-6 and ema_diff <= 1e-6
    for opt in ("gen_optimizer", "disc_optimizer"):
        sa, sb = a["optimizer_state"][opt]["state"], b["optimizer_state"][opt]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert max_abs_diff(sa[i], sb[i]) <= 1e-6
    # the training actually moved the weights (the comparison is not vacuous)
    start = load_ckpt(run_a / f"checkpoint-{N}.ckpt")
    assert max_abs_diff(start["state_dict"]["gen_model"], a["state_dict"]["gen_model"]) > 1e-5
    assert max_abs_diff(start["state_dict"]["dics_model"], a["state_dict"]["dics_model"]) > 1e-5
    assert a["epoch"] == b["epoch"] == 1 and a["sampler_state"] == b["sampler_state"]

    # same samples in the same order, and the same losses
    ra, rb = train_records(run_a), train_records(run_b)
    assert sorted(ra) == sorted(rb) == list(range(1, 2 * N + 1))
    assert [ra[s]["data/index"] for s in ra] == [rb[s]["data/index"] for s in ra]
    for s in ra:
        assert ra[s]["train/loss"] == pytest.approx(rb[s]["train/loss"], rel=1e-6, abs=1e-6)
    epoch0 = sorted(i for s in range(1, 6) for i in ra[s]["data/index"])
    assert epoch0 == [0, 1, 2, 3, 4]  # one epoch visits every clip once
    assert any(r.get("event") == "resume" for r in read_metrics(run_b))
    assert (run_a / "pretrained" / "config.json").is_file()
    assert any("val_ema/psnr" in r for r in read_metrics(run_a))


@pytest.mark.slow
def test_nan_updates_are_skipped_then_last_checkpoint_is_reloaded(data, tmp_path, monkeypatch):
    # steps 3, 4, 5 get a NaN loss: 3 and 4 are skipped, then (max_nan_skips=2) checkpoint-2, the last one
    # saved before the streak, is reloaded; no checkpoint is saved during the streak or right after the
    # reload; 5 is skipped again; 6..7 train normally.
    inject_nonfinite_losses(monkeypatch, first_step=3, count=3)
    args = base_args(data, tmp_path, max_steps=7, save_ckpt_step=1, ema=True, max_nan_skips=2)
    assert main(args) == 0
    run = run_dir(tmp_path)
    events = [r for r in read_metrics(run) if "event" in r]
    assert [(e["event"], e["step"]) for e in events] == [
        ("nonfinite_skip", 3), ("nonfinite_skip", 4), ("nan_reload", 4), ("nonfinite_skip", 5)]
    assert next(e for e in events if e["event"] == "nan_reload")["from"].endswith("checkpoint-2.ckpt")
    saved = sorted(int(p.stem.split("-")[1]) for p in run.glob("checkpoint-*.ckpt"))
    assert saved == [1, 2, 6, 7]  # 3, 4 and 5 ended inside a non-finite streak (or right after the reload)
    final = load_ckpt(run / "checkpoint-7.ckpt")
    assert final["counters"]["nan_skips_total"] == 3 and final["counters"]["nan_reloads"] == 1
    assert all(torch.isfinite(v).all() for v in final["state_dict"]["gen_model"].values() if v.is_floating_point())
    c2 = load_ckpt(run / "checkpoint-2.ckpt")
    assert max_abs_diff(c2["state_dict"]["gen_model"], final["state_dict"]["gen_model"]) > 0  # it trained on
    assert all((run / f"checkpoint-{s}.ckpt.sha256").is_file() for s in saved)


def test_run_that_keeps_diverging_stops_nonzero(data, tmp_path, capsys, monkeypatch):
    """Issue 12.6: every update after step 2 is non-finite; reloading checkpoint-2 cannot help, so after
    two reloads the run stops with exit 1 and says why, and nothing is exported."""
    inject_nonfinite_losses(monkeypatch, first_step=3, count=1000)
    args = base_args(data, tmp_path, max_steps=40, save_ckpt_step=1, max_nan_skips=2, eval_video_path=None)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "the checkpoint of step 2 was reloaded 2 times" in err and "cannot make progress" in err
    run = run_dir(tmp_path)
    assert sorted(int(p.stem.split("-")[1]) for p in run.glob("checkpoint-*.ckpt")) == [1, 2]
    assert not (run / "pretrained").exists()


def test_resume_latest_finds_other_run_folder_and_skips_damaged(data, tmp_path, capsys):
    """Issue 12.9: 'latest' continues the experiment after --lr changed (new run folder name), and falls
    back from a damaged newest checkpoint to the newest intact one."""
    common = {"save_ckpt_step": 1, "eval_video_path": None}
    assert main(base_args(data, tmp_path, max_steps=2, **common)) == 0
    (first,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    newest = first / "checkpoint-2.ckpt"
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: the file may still load, only the checksum tells
    newest.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(base_args(data, tmp_path, max_steps=3, lr=5e-5, resume_from_checkpoint="latest", **common)) == 0
    err = capsys.readouterr().err
    assert "checkpoint-2.ckpt is damaged" in err
    assert f"written by run folder {first.name}" in err
    second = next(p for p in tmp_path.iterdir() if p.is_dir() and p != first)
    resumed = [r for r in read_metrics(second) if r.get("event") == "resume"]
    assert resumed and resumed[0]["from"].endswith(f"{first.name}/checkpoint-1.ckpt")
    assert load_ckpt(second / "checkpoint-3.ckpt")["current_step"] == 3


def test_nan_policy_stop_and_no_checkpoint_fail_clearly(data, tmp_path, capsys, monkeypatch):
    inject_nonfinite_losses(monkeypatch, first_step=1, count=50)
    args = base_args(data, tmp_path / "stop", max_steps=20, max_nan_skips=2, nan_policy="stop",
                     eval_video_path=None)
    assert main(args) == 1
    assert "2 consecutive non-finite updates at step 2 (--nan_policy stop)" in capsys.readouterr().err
    args = base_args(data, tmp_path / "reload", max_steps=20, max_nan_skips=2, eval_video_path=None)
    assert main(args) == 1
    assert "no checkpoint with finite weights saved before step 1 to reload" in capsys.readouterr().err
