"""No lost work: SIGTERM/SIGINT save at the next step boundary and exit 0; kill -9 during a save leaves the
previous checkpoint loadable and the run resumable. Real subprocesses, real files."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from train_utils import (
    PYTHON,
    base_args,
    load_ckpt,
    make_data,
    read_metrics,
    run_dir,
    subprocess_env,
    train_records,
)

from wfvae.training.checkpoint import CheckpointManager, load_checkpoint
from wfvae.training.trainer import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("fault_data"))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"training exited (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _logged_steps(ckpt_dir: Path) -> int:
    try:
        return max(train_records(run_dir(ckpt_dir)), default=0)
    except (ValueError, FileNotFoundError):  # run folder or metrics file not there yet
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_at_step_boundary_and_exits_zero(data, tmp_path, sig):
    args = base_args(data, tmp_path, max_steps=500, save_ckpt_step=1000, eval_video_path=None)
    proc = subprocess.Popen([PYTHON, "-m", "wfvae.train", *args], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: _logged_steps(tmp_path) >= 2, proc, timeout=240, what="two training steps")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "saving a checkpoint at the next step boundary" in out
    run = run_dir(tmp_path)
    (step, path), = CheckpointManager(run).list()
    assert step >= 2 and step == max(train_records(run))  # saved at the boundary after the last finished step
    ckpt = load_ckpt(path)
    assert ckpt["current_step"] == step and ckpt["sampler_state"]["consumed"] == step % 5
    assert not (run / "pretrained").exists()  # stopped, not finished


@pytest.mark.slow
def test_kill_9_during_save_keeps_previous_checkpoint(data, tmp_path):
    assert main(base_args(data, tmp_path, max_steps=1, save_ckpt_step=1, eval_video_path=None)) == 0
    run = run_dir(tmp_path)
    # resume in a subprocess whose every save sleeps before the final rename; kill it while it sleeps
    args = base_args(data, tmp_path, max_steps=5, save_ckpt_step=1, eval_video_path=None,
                     resume_from_checkpoint="latest")
    proc = subprocess.Popen([PYTHON, str(Path(__file__).with_name("faults.py")), "--save_delay_s", "300", "--", *args],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tmp_file = _wait_for(lambda: next(run.glob(".tmp-checkpoint-2-*"), None), proc, timeout=240,
                         what="the step-2 save to start")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert tmp_file.exists()  # the interrupted write is still there ...
    latest = CheckpointManager(run).latest()
    assert latest.name == "checkpoint-1.ckpt"  # ... but never listed as a checkpoint
    assert load_checkpoint(latest)["current_step"] == 1

    # the run continues from checkpoint-1 and cleans up the leftover
    assert main(base_args(data, tmp_path, max_steps=2, save_ckpt_step=1, eval_video_path=None,
                          resume_from_checkpoint="latest")) == 0
    assert not tmp_file.exists()
    assert [s for s, _ in CheckpointManager(run).list()] == [1, 2]
    assert load_ckpt(run / "checkpoint-2.ckpt")["current_step"] == 2
    assert sum(r.get("event") == "resume" for r in read_metrics(run)) == 2
