"""A real 2-process gloo run on CPU through ``examples/train_ddp.sh`` (torchrun), then a resume of it.

Uses the script's own defaults (EMA, wavelet loss, LPIPS perceptual loss, validation LPIPS, disc_start 0)
with only paths, sizes and step counts overridden, as a user would.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from train_utils import (
    PYTHON,
    REPO,
    free_port,
    load_ckpt,
    make_data,
    read_metrics,
    run_dir,
    subprocess_env,
)

from wfvae.training.checkpoint import CheckpointManager


def _script(data, ckpt_dir, *extra, nproc: int = 2, conv_cache=None) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.update(PYTHON=PYTHON, NPROC_PER_NODE=str(nproc), MASTER_PORT=str(free_port()))
    if conv_cache is not None:
        env["WFVAE_CONV_CACHE"] = str(conv_cache)
    args = ["--video_path", data["train"], "--eval_video_path", data["val"], "--model_config", data["config"],
            "--num_frames", "9", "--resolution", "32", "--eval_num_frames", "9", "--eval_resolution", "32",
            "--eval_batch_size", "1", "--eval_subset_size", "2", "--report_to", "none", "--mix_precision", "fp32",
            "--perceptual_random_backbone", "--disc_base_channels", "8", "--dataset_num_worker", "1",
            "--ckpt_dir", ckpt_dir, "--save_ckpt_step", "2", "--eval_steps", "2", "--log_steps", "1",
            "--device", "cpu", *extra]
    return subprocess.run(["bash", str(REPO / "examples" / "train_ddp.sh"), *map(str, args)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
def test_train_ddp_script_two_processes_save_and_resume(tmp_path):
    data = make_data(tmp_path / "data")
    ckpt_dir = tmp_path / "ckpt"
    # the first run recomputes its blocks in the backward pass (gradient checkpointing under DDP), returns
    # freed host memory to the OS and times the convolutions' backward layouts
    first = _script(data, ckpt_dir, "--max_steps", "4", "--gradient_checkpointing", "--release_host_memory",
                    "--conv_backward", "auto", conv_cache=tmp_path / "conv_kernels.json")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "glibc mmap threshold fixed at 128 KiB" in first.stderr
    choices = json.loads((tmp_path / "conv_kernels.json").read_text())["entries"]
    assert any("| bwd3d " in key for key in choices) and any("| bwd2d " in key for key in choices)
    run = run_dir(ckpt_dir)
    assert [s for s, _ in CheckpointManager(run).list()] == [2, 4]

    second = _script(data, ckpt_dir, "--max_steps", "6", "--resume_from_checkpoint", "latest")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    assert "resumed from" in second.stderr
    ckpt = load_ckpt(run / "checkpoint-6.ckpt")
    assert ckpt["current_step"] == 6
    assert len(ckpt["rng_states"]) == 2  # one per rank
    assert ckpt["sampler_state"]["num_replicas"] == 2
    # 5 clips over 2 ranks -> 2 steps per epoch; 6 steps = 3 epochs
    assert ckpt["epoch"] == 3 and ckpt["sampler_state"]["consumed"] == 0
    assert ckpt["ema_state_dict"] and all(k.startswith("module.") for k in ckpt["ema_state_dict"])
    assert "perceptual_loss.net.slice1.0.weight" in ckpt["state_dict"]["dics_model"]

    records = read_metrics(run)
    assert [r["sys/replicas_identical"] for r in records if "sys/replicas_identical" in r] == [1, 1, 1]
    val = [r for r in records if "val/psnr" in r]
    assert val and all(r["val/num_videos"] == 2 for r in val)  # sharded over ranks, gathered, none twice
    assert all("val/lpips" in r for r in val) and any("val_ema/psnr" in r for r in records)
    train = [r for r in records if "train/loss" in r]
    assert {"train/loss_rec", "train/loss_lpips", "train/loss_d", "train/logits_real", "train/grad_norm_g",
            "train/lr", "perf/clips_per_s"} <= set().union(*train)
    assert list((run / "videos").rglob("*.mp4"))
    assert (run / "pretrained" / "config.json").is_file()


def test_train_ddp_script_rejects_bad_arguments_before_workers(tmp_path):
    data = make_data(tmp_path / "data")
    bad = _script(data, tmp_path / "ckpt", "--num_frames", "10", "--max_steps", "1")
    assert bad.returncode == 2
    assert "num_frames 10 is not 1 + k*4" in bad.stderr
    assert "torch.distributed" not in bad.stderr and not (tmp_path / "ckpt").exists()
