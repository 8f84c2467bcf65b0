"""``benchmarks/gpu_check.sh``: its dry run checks arguments and the whole plan on the CPU; without a GPU
(and without --dry_run) it stops at once with exit status 2 and says why."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", __import__("sys").executable)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


@pytest.mark.slow
def test_dry_run_checks_the_plan_on_cpu(tmp_path):
    out = tmp_path / "check"
    proc = _run("--dry_run", "--reference_repo", "none", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    cases = report["cases"]
    assert list(cases) == ["environment", "parity_fp32", "bf16_psnr", "chunked", "groupnorm_layout",
                           "attention_kernels", "train_resume", "train_fp16", "bench_inference", "bench_train_step",
                           "train_memory"]
    # the light cases really ran on the CPU (smallest inputs), with the CPU tolerances
    assert cases["parity_fp32"]["status"] == "pass"
    assert cases["parity_fp32"]["wfvae_small"]["decoded_max_abs"] <= 1e-4
    assert cases["chunked"]["status"] == "pass"
    assert 0 < cases["bf16_psnr"]["clips"][0]["psnr_bf16_vs_fp32_db"] < 200
    assert cases["attention_kernels"]["attention_widths"] == [768]  # WF-VAE-L's attention blocks
    # the GPU commands were built and accepted by their own parsers / the training CLI's --check_only
    for name in ("train_resume", "train_fp16", "bench_inference", "bench_train_step", "train_memory"):
        assert cases[name]["status"] == "planned", cases[name]
    plan = report["plan"]
    assert "--device cuda" in plan["bench_inference"][0] and "--device cuda" in plan["bench_train_step"][0]
    assert "--dtype bf16" in plan["bench_train_step"][0]
    assert len(plan["train_memory"]) == 2 and all("--device cuda" in c for c in plan["train_memory"])
    assert "--resume_from_checkpoint latest" in plan["train_resume"][1]
    assert not (out / "clips").exists() and not (out / "train_data").exists(), "scratch data left behind"


def test_bad_arguments_exit_2_with_one_clear_line(tmp_path):
    proc = _run("--dry_run", "--reference_repo", str(tmp_path / "nowhere"), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "--reference_repo" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run("--dry_run", "--budget_s", "5", "--reference_repo", "none", tmp_path=tmp_path)
    assert proc.returncode == 2 and "--budget_s" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_it_fails_fast_with_exit_2(tmp_path):
    proc = _run("--reference_repo", "none", "--out", str(tmp_path / "o"), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "no CUDA GPU is visible" in proc.stderr and "--dry_run" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
