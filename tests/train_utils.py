"""Helpers shared by the training tests: a tiny model config, real video folders, run-folder readers."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# WFVAE with 8 base channels, one res-block per stage and no attention: ~0.5M parameters, ~1 s per step
# on a shared CPU at 9 x 32 x 32.
TINY_WFVAE = {
    "_class_name": "WFVAEModel", "base_channels": 8, "encoder_energy_flow_hidden_size": 8,
    "decoder_energy_flow_hidden_size": 8, "encoder_num_resblocks": 1, "decoder_num_resblocks": 1,
    "latent_dim": 4, "use_attention": False, "norm_type": "layernorm", "t_interpolation": "trilinear",
}


def make_data(root: Path) -> dict[str, Path]:
    """Five training clips (12 frames, 40x48) in nested folders and two validation clips."""
    from wfvae.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(root / "train", n_videos=5, num_frames=12, height=40, width=48, seed=0)
    write_synthetic_dataset(root / "val", n_videos=2, num_frames=10, height=32, width=32, seed=50)
    cfg = root / "wfvae_tiny.json"
    cfg.write_text(json.dumps(TINY_WFVAE))
    return {"train": root / "train", "val": root / "val", "config": cfg}


def base_args(data: dict[str, Path], ckpt_dir: Path, **overrides) -> list[str]:
    """A fast single-process command line; keyword overrides replace or add flags (True -> bare flag)."""
    args = {
        "model_name": "WFVAE", "model_config": data["config"], "video_path": data["train"],
        "eval_video_path": data["val"], "num_frames": 9, "resolution": 32, "sample_rate": 1,
        "eval_num_frames": 9, "eval_resolution": 32, "eval_batch_size": 2, "eval_num_video_log": 1,
        "report_to": "none", "mix_precision": "fp32", "ckpt_dir": ckpt_dir, "perceptual_weight": 0.0,
        "disc_base_channels": 8, "disc_start": 2, "dataset_num_worker": 0, "log_steps": 1,
        "eval_steps": 1000, "save_ckpt_step": 1000, "lr": 1e-4, "exp_name": "t",
    }
    args.update(overrides)
    out = []
    for k, v in args.items():
        if v is None or v is False:
            continue
        out += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return out


def run_dir(ckpt_dir: Path) -> Path:
    (only,) = [p for p in Path(ckpt_dir).iterdir() if p.is_dir()]
    return only


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_records(run: Path) -> dict[int, dict]:
    """Last ``train/loss`` record of every step (a resumed run may have logged a step twice)."""
    return {r["step"]: r for r in read_metrics(run) if "train/loss" in r}


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k, value in a.items():
        if value.numel():
            worst = max(worst, (value.double() - b[k].double()).abs().max().item())
    return worst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.pop("LOCAL_RANK", None)
    return env


PYTHON = sys.executable
