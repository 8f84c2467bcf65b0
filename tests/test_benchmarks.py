"""The benchmark scripts run end to end on a tiny model, write their JSON, and leave no scratch files behind.

Timings are not checked (they are measured, not asserted); what is checked is that each script still
runs against the current package, reports the rows it was asked for, and removes its temporary weights,
clips and checkpoints even though they are hundreds of MB for the real model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_utils import TINY_WFVAE

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}  # where tempfile puts the scripts' scratch folders
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # torch's own compile cache folder (torchinductor_<user>) is torch's, shared and reused, not ours
    left = [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")]
    assert left == [], f"the benchmark left scratch files behind: {left}"
    return proc


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_WFVAE))
    return path


def test_bench_inference_rows_and_cleanup(tmp_path, tiny_config):
    out = tmp_path / "inference.json"
    proc = _run("bench_inference.py", tmp_path, "--config", str(tiny_config), "--frames", "5", "9", "--sizes", "32",
                "--variants", "full", "chunked", "--enc_chunk", "4", "--dec_chunk", "1", "--repeats", "1",
                "--warmup", "0", "--json", str(out))
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["variant"], r["frames"]) for r in rows] == [("full", 5), ("full", 9), ("chunked", 5), ("chunked", 9)]
    for row in rows:
        assert len(row["time"]["times_s"]["ours"]) == 1 and row["time"]["times_s"]["ours"][0] > 0
        assert row["memory_ours"]["peak_mb"] > row["memory_ours"]["act_mb"] >= 0
        assert "memory_reference" not in row  # no --reference_repo given
    assert result["machine"]["threads"] == 2
    assert proc.stdout.count("roundtrip") == 4


def test_bench_conv_errors_are_small(tmp_path):
    out = tmp_path / "conv.json"
    _run("bench_conv.py", tmp_path, "--shapes", "8x3x12", "--repeats", "1", "--json", str(out))
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["channels"], row["frames"], row["size"]) == (8, 3, 12)
    assert set(row["max_abs_err_vs_fp64"]) == {"ncdhw", "channels_last", "winograd"}
    assert max(row["max_abs_err_vs_fp64"].values()) < 1e-4


def test_bench_train_step_runs_and_cleans_up(tmp_path, tiny_config):
    out = tmp_path / "train.json"
    _run("bench_train_step.py", tmp_path, "--config", str(tiny_config), "--frames", "5", "--size", "32",
         "--repeats", "1", "--warmup", "1", "--perceptual_weight", "0", "--json", str(out))
    result = json.loads(out.read_text())
    ours = result["medians_s"]["ours"]
    assert ours["g"] > 0 and ours["d"] > 0 and ours["step"] == pytest.approx(ours["g"] + ours["d"])


def test_bench_ssim_agrees_with_skimage(tmp_path):
    out = tmp_path / "ssim.json"
    _run("bench_ssim.py", tmp_path, "--frames", "3", "--size", "32", "--repeats", "1", "--json", str(out))
    result = json.loads(out.read_text())
    assert set(result["time_s"]) == {"ours", "previous", "skimage"}
    assert result["max_abs_diff_vs_skimage_per_frame"]["ours"] < 1e-4
    assert all(result["memory"][m]["peak_mb"] > 0 for m in result["memory"])


def test_bench_index_runs_and_cleans_up(tmp_path):
    out = tmp_path / "index.json"
    src = REPO / "src"  # this checkout as its own baseline: the A/B path runs
    proc = _run("bench_index.py", tmp_path, "--num_files", "400", "--cold_files", "40", "--json", str(out),
                "--rounds", "1", "--changed_rounds", "1", "--baseline_src", str(src))
    result = json.loads(out.read_text())
    for key in ("changed", "changed_baseline"):
        assert [c["stats"] for c in result[key]] == [{"probed": 4, "cached": 396, "trusted": 0}]
    assert [w["stats"]["cached"] for w in result["warm"] + result["warm_baseline"]] == [400, 400]
    assert result["warm_dataset"]["videos"] == 400
    assert result["cold"]["stats"]["probed"] == 40 and "cold probe" in proc.stdout


def test_bench_latent_index_runs_and_cleans_up(tmp_path):
    out = tmp_path / "latent_index.json"
    _run("bench_latent_index.py", tmp_path, "--videos", "40", "--shard_size", "8", "--json", str(out))
    (row,) = json.loads(out.read_text())["sizes"]
    assert row["videos"] == 40 and row["append"]["bytes"] > 0 and row["rewrite"]["bytes"] > 0


def test_bench_train_memory_runs_and_cleans_up(tmp_path, tiny_config):
    out = tmp_path / "train_memory.json"
    _run("bench_train_memory.py", tmp_path, "--config", str(tiny_config), "--frames", "5", "--size", "32",
         "--repeats", "1", "--warmup", "0", "--json", str(out))
    result = json.loads(out.read_text())
    assert set(result["memory"]) == {"ours", "ours_ckpt"}  # no --reference_repo given
    assert all(m["peak_mb"] >= m["base_mb"] > 0 for m in result["memory"].values())
    if sys.platform == "linux":  # glibc: ours runs with the fixed mmap threshold (--release_host_memory)
        assert all(m["mmap_threshold_fixed"] for m in result["memory"].values())
    assert result["time"]["grad_max_rel_diff_ckpt_vs_plain"] == 0.0
    assert result["machine"]["cpu"] and isinstance(result["machine"]["isa_flags"], list)

    # --conv_backward auto: the time run's warm-up step times the layouts, the memory runs read its choices
    out_auto = tmp_path / "train_memory_auto.json"
    _run("bench_train_memory.py", tmp_path, "--config", str(tiny_config), "--frames", "5", "--size", "32",
         "--repeats", "1", "--warmup", "1", "--conv_backward", "auto", "--json", str(out_auto))
    auto = json.loads(out_auto.read_text())
    choices = auto["conv_backward_choices"]
    assert choices and all(c["kernel"] in ("channels_last", "contiguous") for c in choices.values())
    assert any(k.startswith("bwd3d") for k in choices) and any(k.startswith("bwd2d") for k in choices)
    assert set(auto["memory"]) == {"ours", "ours_ckpt"} and auto["time"]["grad_max_rel_diff_ckpt_vs_plain"] == 0.0

    # the GPU check's summary of the same JSON (benchmarks/gpu_check.py, case train_memory) reads this format;
    # an "original" entry (here ours again, scaled) exercises the ratios and the target verdict
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    ctx = gpu_check.Context(out=tmp_path, device="cuda", quick=False, reference_repo=None, weights=None)
    (dtype, frames, size), _ = gpu_check.TRAIN_MEMORY_RUNS
    named = tmp_path / f"train_memory_{dtype}_{frames}x{size}.json"
    result["memory"]["original"] = {"growth_mb": result["memory"]["ours_ckpt"]["growth_mb"] * 2.5}
    result["time"]["times_s"]["original"] = [t / 1.2 for t in result["time"]["times_s"]["ours_ckpt"]]
    named.write_text(json.dumps(result))
    summary = gpu_check.check_train_memory(ctx, [{"returncode": 0}])
    assert summary["status"] == "pass" and len(summary["rows"]) == 1
    row = summary["rows"][0]
    assert row["ckpt_vs_original"] == {"memory": 0.4, "time": 1.2} and row["target_met"] is True
    assert set(row["growth_mb"]) == {"ours", "ours_ckpt", "original"}
    assert gpu_check.check_train_memory(ctx, [{"returncode": 1}])["status"] == "fail"
