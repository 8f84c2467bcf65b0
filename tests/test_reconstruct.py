"""wfvae reconstruct and examples/gen_video.sh -> examples/eval.sh, end to end on real files."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video
from wfvae.errors import run_command
from wfvae.inference.reconstruct import main as reconstruct_main
from wfvae.models import build_model

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model")
    build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Same file name in two folders (must not collide) plus a too-short clip (reported)."""
    root = tmp_path_factory.mktemp("clips")
    write_video(root / "a" / "clip.mp4", make_synthetic_video(12, 40, 56, seed=1), fps=24)
    write_video(root / "b" / "clip.mp4", make_synthetic_video(12, 40, 56, seed=2), fps=24)
    write_video(root / "short.mp4", make_synthetic_video(3, 40, 56, seed=3), fps=24)
    return root


def test_reconstruct_folder_layout_origin_and_resume(tiny_model_dir, clips, tmp_path, capsys):
    out = tmp_path / "gen"
    args = ["--real_video_dir", str(clips), "--generated_video_dir", str(out), "--ckpt", str(tiny_model_dir),
            "--num_frames", "9", "--resolution", "32", "--output_origin", "--format", "mkv",
            "--metrics", "psnr,ssim", "--device", "cpu", "--cache_dir", str(tmp_path / "cache")]
    assert reconstruct_main(args) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mkv"))
    assert files == ["a/clip.mkv", "b/clip.mkv", "origin/a/clip.mkv", "origin/b/clip.mkv"]
    text = capsys.readouterr().out
    assert "skipped input short.mp4: too short" in text
    # origin is exactly what the model saw: 9 frames, resized so the short side is 32, centre-cropped
    origin = read_video(out / "origin" / "a" / "clip.mkv")
    assert origin.shape == (9, 32, 32, 3)
    # the in-memory metrics agree with the lossless files on disk (FFV1 is bit-exact)
    report = json.loads((out / "reconstruct_metrics.json").read_text())
    rec = read_video(out / "a" / "clip.mkv").astype(np.float64)
    mse = ((rec - origin.astype(np.float64)) / 255.0) ** 2
    psnr_disk = 10 * np.log10(1.0 / mse.mean())
    row = next(r for r in report["per_video"] if r["path"] == "a/clip.mp4")
    assert abs(row["psnr"] - psnr_disk) < 0.05, (row["psnr"], psnr_disk)
    # second run: everything exists and is skipped
    before = (out / "a" / "clip.mkv").stat().st_mtime_ns
    assert reconstruct_main(args[:-6] + ["--device", "cpu", "--cache_dir", str(tmp_path / "cache")]) == 0
    assert "(2 already done)" in capsys.readouterr().out
    assert (out / "a" / "clip.mkv").stat().st_mtime_ns == before


def test_reconstruct_single_video_and_image(tiny_model_dir, tmp_path):
    video = tmp_path / "one.mp4"
    write_video(video, make_synthetic_video(11, 32, 32, seed=5), fps=24)
    assert reconstruct_main(["--real_video_dir", str(video), "--generated_video_dir", str(tmp_path / "o1"),
                             "--ckpt", str(tiny_model_dir), "--num_frames", "11", "--resolution", "32",
                             "--device", "cpu"]) == 0
    # 11 frames read, the longest valid length (1 + 4k) is 9
    assert read_video(tmp_path / "o1" / "one.mp4").shape[0] == 9
    from PIL import Image

    Image.fromarray(make_synthetic_video(1, 48, 40, seed=6)[0]).save(tmp_path / "img.png")
    assert reconstruct_main(["--real_video_dir", str(tmp_path / "img.png"), "--generated_video_dir",
                             str(tmp_path / "o2"), "--ckpt", str(tiny_model_dir), "--resolution", "32",
                             "--device", "cpu"]) == 0
    assert np.asarray(Image.open(tmp_path / "o2" / "img.png")).shape == (32, 32, 3)


def test_memory_budget_runs_direct_kernels(tiny_model_dir, tmp_path, monkeypatch):
    """--conv auto times Winograd against oneDNN per layer shape, except under --max_memory_gb: the budget's
    estimate would count Winograd's work buffers, so the budget runs the direct kernels, leaving it to chunks."""
    from wfvae.models.layers import kernel_choice

    monkeypatch.setenv(kernel_choice.CACHE_ENV, "off")
    video = tmp_path / "one.mp4"
    write_video(video, make_synthetic_video(9, 32, 32, seed=5), fps=24)
    common = ["--real_video_dir", str(video), "--ckpt", str(tiny_model_dir), "--num_frames", "9",
              "--resolution", "32", "--device", "cpu"]
    for budget, timed in ((["--max_memory_gb", "1"], False), ([], True)):
        monkeypatch.setattr(kernel_choice, "CHOOSER", kernel_choice.KernelChooser())
        out = tmp_path / f"out{len(budget)}"
        assert reconstruct_main(common + ["--generated_video_dir", str(out)] + budget) == 0
        assert bool(kernel_choice.CHOOSER.choices()) is timed
        assert (out / "one.mp4").is_file()


def test_memory_budget_with_bf16(tiny_model_dir, tmp_path):
    """--dtype bf16 --max_memory_gb: the decoder gets the encoder's bf16 latents and chooses its chunks for them
    (this raised a dtype error in the estimate before)."""
    video = tmp_path / "one.mp4"
    write_video(video, make_synthetic_video(9, 32, 32, seed=6), fps=24)
    out = tmp_path / "out"
    assert reconstruct_main(["--real_video_dir", str(video), "--ckpt", str(tiny_model_dir), "--num_frames", "9",
                             "--resolution", "32", "--device", "cpu", "--dtype", "bf16", "--max_memory_gb", "0.5",
                             "--generated_video_dir", str(out)]) == 0
    assert (out / "one.mp4").is_file()


def test_gen_video_then_eval_scripts(tiny_model_dir, clips, tmp_path):
    env = {**os.environ, "EXP_NAME": "t", "NUM_FRAMES": "9", "RESOLUTION": "32", "CKPT": str(tiny_model_dir),
           "DATASET_DIR": str(clips), "FORMAT": "mkv", "NPROC": "1", "PYTHON": sys.executable,
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    subprocess.run(["bash", str(ROOT / "examples" / "gen_video.sh")], cwd=tmp_path, env=env, check=True,
                   capture_output=True, text=True)
    gen = tmp_path / "video_gen" / "t_sr1_nf9_res32_subset0"
    assert (gen / "a" / "clip.mkv").is_file() and (gen / "origin" / "b" / "clip.mkv").is_file()
    res = subprocess.run(["bash", str(ROOT / "examples" / "eval.sh")], cwd=tmp_path,
                         env={**env, "METRIC": "psnr,ssim", "DEVICE": "cpu"}, check=True, capture_output=True, text=True)
    values = dict(re.findall(r"^(psnr|ssim): ([-\d.]+)$", res.stdout, flags=re.M))
    assert set(values) == {"psnr", "ssim"}, res.stdout
    assert 0 < float(values["psnr"]) < 100 and 0 < float(values["ssim"]) <= 1


def test_dtype_bf16_runs_bf16_math_on_cpu_and_fp16_is_refused(tiny_model_dir, clips, tmp_path, capsys):
    """--dtype bf16 autocasts on CPU too (it used to run fp32 there silently): the lossless output differs
    from the fp32 one by bf16 rounding only. fp16 has no CPU kernels: exit 2 with the alternative."""
    outputs = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        assert reconstruct_main(["--real_video_dir", str(clips / "a"), "--generated_video_dir", str(out),
                                 "--ckpt", str(tiny_model_dir), "--num_frames", "9", "--resolution", "32",
                                 "--format", "mkv", "--device", "cpu", "--dtype", dtype]) == 0
        outputs[dtype] = read_video(out / "clip.mkv").astype(np.float64)
    diff = np.abs(outputs["bf16"] - outputs["fp32"])
    assert diff.max() > 0, "bf16 produced the fp32 result bit for bit: no bf16 math ran"
    assert diff.mean() < 2.0, diff.mean()  # a few 8-bit levels at most: rounding, not a different model
    capsys.readouterr()
    assert run_command("wfvae reconstruct", reconstruct_main, [
        "--real_video_dir", str(clips / "a"), "--generated_video_dir", str(tmp_path / "f16"), "--ckpt",
        str(tiny_model_dir), "--num_frames", "9", "--resolution", "32", "--device", "cpu", "--dtype", "fp16"]) == 2
    assert "--dtype fp16 runs on CUDA only" in capsys.readouterr().err
