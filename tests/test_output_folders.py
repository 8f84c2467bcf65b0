"""Output folders: resume after a real ``kill -9`` at chosen points, for every format and for
reconstruct / encode / decode; two inputs never share an output; ``--overwrite``; ``--device auto``.

A killed run is a child process that sends itself SIGKILL right before or right after the N-th
output is renamed into place (the test patches ``os.replace`` from the outside; the package has
no test hooks). The next run must finish and give what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wfvae.cli import main as cli
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video
from wfvae.models import build_model

ROOT = Path(__file__).parents[1]

KILLER = r"""
import os, signal, sys
n, when = int(os.environ["KILL_AT"]), os.environ["KILL_WHEN"]
real_replace, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    ours = os.path.basename(str(src)).startswith(".wfvae-tmp-")
    if ours:
        seen[0] += 1
        if seen[0] == n and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
    result = real_replace(src, dst, *args, **kwargs)
    if ours and seen[0] == n and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
os.replace = replace
from wfvae.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("outputs")
    torch.manual_seed(0)
    model = build_model(ROOT / "examples" / "configs" / "wfvae_tiny.json").save_pretrained(base / "model")
    videos = base / "videos"
    write_video(videos / "a" / "c0.mp4", make_synthetic_video(10, 32, 40, seed=0), fps=12)
    write_video(videos / "c1.mp4", make_synthetic_video(10, 32, 40, seed=1), fps=12)
    return {"base": base, "model": model, "videos": videos, "cache": base / "cache"}


def _recon_args(f, out, fmt, *extra):
    return ["reconstruct", "--real_video_dir", str(f["videos"]), "--generated_video_dir", str(out), "--ckpt",
            str(f["model"]), "--num_frames", "9", "--resolution", "32", "--format", fmt, "--output_origin",
            "--device", "cpu", "--num_workers", "0", "--cache_dir", str(f["cache"]), *extra]


def _killed(argv, at: int, when: str) -> None:
    env = {**os.environ, "KILL_AT": str(at), "KILL_WHEN": when, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", KILLER, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _frames(path: Path) -> np.ndarray:
    if path.is_dir():  # png frame folder
        from PIL import Image

        return np.stack([np.asarray(Image.open(p)) for p in sorted(path.iterdir())])
    return read_video(path)


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.name.startswith((".wfvae-tmp-", ".wfvae-trash-"))]


@pytest.mark.parametrize("fmt, at, when", [("png", 1, "after"), ("mkv", 2, "before"), ("mp4", 3, "after")])
def test_reconstruct_resumes_after_kill(files, tmp_path, capsys, fmt, at, when):
    """Issue 12.2: killed after the reconstruction was renamed but before its origin (png), etc."""
    clean, out = tmp_path / "clean", tmp_path / "out"
    if fmt != "mp4":  # lossless formats are compared with an uninterrupted run
        assert cli(_recon_args(files, clean, fmt)) == 0
    _killed(_recon_args(files, out, fmt), at, when)
    capsys.readouterr()
    assert cli(_recon_args(files, out, fmt)) == 0
    assert "reconstructed" in capsys.readouterr().out
    suffix = {"png": "", "mkv": ".mkv", "mp4": ".mp4"}[fmt]
    for rel in ["a/c0", "c1", "origin/a/c0", "origin/c1"]:
        got = _frames(out / f"{rel}{suffix}")
        assert got.shape == (9, 32, 32, 3)
        if fmt != "mp4":  # bit-exact with the uninterrupted run
            np.testing.assert_array_equal(got, _frames(clean / f"{rel}{suffix}"))
    assert _leftovers(out) == []
    # a third run has nothing left to do
    assert cli(_recon_args(files, out, fmt)) == 0
    assert "reconstructed 0 videos (2 already done)" in capsys.readouterr().out


@pytest.mark.parametrize("at, done_after", [(1, 0), (2, 1)])
def test_encode_resumes_after_kill(files, tmp_path, capsys, at, done_after):
    """Killed right after a shard was renamed (its index not yet) or after the index: no loss, no orphan."""
    args = ["encode", "--video_path", str(files["videos"]), "--ckpt", str(files["model"]), "--out",
            str(tmp_path / "lat"), "--num_frames", "9", "--resolution", "32", "--shard_size", "1", "--device", "cpu",
            "--num_workers", "0", "--cache_dir", str(files["cache"])]
    _killed(args, at, "after")
    capsys.readouterr()
    assert cli(args) == 0
    assert f"encoded {2 - done_after} videos ({done_after} already done)" in capsys.readouterr().out
    index = json.loads((tmp_path / "lat" / "index.json").read_text())
    assert [r["source"] for r in index] == ["a/c0.mp4", "c1.mp4"]
    shards = sorted(p.name for p in (tmp_path / "lat").glob("shard-*.safetensors"))
    assert shards == sorted({r["shard"] for r in index})  # the orphan shard of the killed run is gone
    assert _leftovers(tmp_path / "lat") == []
    if at != 1:
        return
    # decode, killed after its first video, then resumed
    dec = ["decode", "--latents", str(tmp_path / "lat"), "--ckpt", str(files["model"]), "--out", str(tmp_path / "dec"),
           "--format", "mkv", "--device", "auto"]
    _killed(dec, 1, "after")
    assert cli(dec) == 0
    assert "decoded 1 videos (1 already done)" in capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path / "dec").as_posix() for p in (tmp_path / "dec").rglob("*.mkv")) == \
        ["a/c0.mkv", "c1.mkv"]


def test_same_stem_inputs_never_share_an_output(files, tmp_path, capsys):
    """Issue 12.3: a.mp4 and a.mkv are two videos in reconstruct, evaluate, encode and decode."""
    src = tmp_path / "src"
    write_video(src / "a.mp4", make_synthetic_video(10, 32, 32, seed=3), fps=12)
    write_video(src / "a.mkv", make_synthetic_video(10, 32, 32, seed=4), fps=12, lossless=True)
    write_video(src / "b.mp4", make_synthetic_video(10, 32, 32, seed=5), fps=12)
    args = ["--ckpt", str(files["model"]), "--num_frames", "9", "--resolution", "32", "--device", "cpu",
            "--num_workers", "0", "--cache_dir", str(files["cache"])]
    out = tmp_path / "gen"
    assert cli(["reconstruct", "--real_video_dir", str(src), "--generated_video_dir", str(out), "--format", "mkv",
                "--output_origin", *args]) == 0
    assert "reconstructed 3 videos (0 already done)" in capsys.readouterr().out
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mkv"))
    assert names == ["a.mkv.mkv", "a.mp4.mkv", "b.mkv", "origin/a.mkv.mkv", "origin/a.mp4.mkv", "origin/b.mkv"]
    # each origin holds its own source's frames (seed 3 vs 4), not one of them twice
    assert not np.array_equal(read_video(out / "origin" / "a.mp4.mkv"), read_video(out / "origin" / "a.mkv.mkv"))
    # evaluate pairs the origin/ copies with their reconstructions, and the raw folder with them too
    assert cli(["evaluate", "--real_video_dir", str(out / "origin"), "--generated_video_dir", str(out),
                "--metric", "psnr", "--num_frames", "9", "--resolution", "32", "--num_workers", "0",
                "--device", "cpu"]) == 0
    assert "videos: 3" in capsys.readouterr().out
    assert cli(["evaluate", "--real_video_dir", str(src), "--generated_video_dir", str(out), "--metric", "psnr",
                "--num_frames", "9", "--resolution", "32", "--num_workers", "0", "--device", "cpu"]) == 0
    assert "videos: 3" in capsys.readouterr().out
    # encode keeps both records; decode writes both videos
    assert cli(["encode", "--video_path", str(src), "--out", str(tmp_path / "lat"), *args]) == 0
    index = json.loads((tmp_path / "lat" / "index.json").read_text())
    assert sorted(r["source"] for r in index) == ["a.mkv", "a.mp4", "b.mp4"]
    assert cli(["decode", "--latents", str(tmp_path / "lat"), "--ckpt", str(files["model"]), "--out",
                str(tmp_path / "dec"), "--format", "mkv"]) == 0
    assert sorted(p.name for p in (tmp_path / "dec").glob("*.mkv")) == ["a.mkv.mkv", "a.mp4.mkv", "b.mkv"]


def test_overwrite_redoes_outputs_with_new_settings(files, tmp_path, capsys):
    """Issue 12.4: a rerun with other settings refuses (tested in test_hostile_inputs); --overwrite redoes."""
    out = tmp_path / "gen"
    assert cli(_recon_args(files, out, "png")) == 0
    capsys.readouterr()
    assert cli(_recon_args(files, out, "png")[:-6] + ["--resolution", "16", "--device", "cpu", "--num_workers", "0",
                                                      "--overwrite", "--cache_dir", str(files["cache"])]) == 0
    assert "reconstructed 2 videos (0 already done)" in capsys.readouterr().out
    assert _frames(out / "a" / "c0").shape == (9, 16, 16, 3)
    manifest = json.loads((out / "wfvae-manifest.json").read_text())
    assert manifest["command"] == "reconstruct" and manifest["settings"]["resolution"] == 16
    assert len(manifest["settings"]["ckpt"]["sha256"]) == 64
    # and a mp4 run into the png folder is refused with the difference named, nothing touched
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert cli(_recon_args(files, out, "mp4")[:-6] + ["--resolution", "16", "--device", "cpu", "--num_workers", "0",
                                                      "--cache_dir", str(files["cache"])]) == 2
    assert '--format: "png" there, "mp4" now' in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_decode_device_auto_and_default(files, tmp_path, capsys):
    """Issue 18.3: decode takes --device auto (and defaults to it) like every other command."""
    lat = tmp_path / "lat"
    assert cli(["encode", "--video_path", str(files["videos"]), "--ckpt", str(files["model"]), "--out", str(lat),
                "--num_frames", "9", "--resolution", "32", "--device", "auto", "--num_workers", "0",
                "--cache_dir", str(files["cache"])]) == 0
    assert cli(["decode", "--latents", str(lat), "--ckpt", str(files["model"]), "--out", str(tmp_path / "d1"),
                "--device", "auto"]) == 0
    assert cli(["decode", "--latents", str(lat), "--ckpt", str(files["model"]), "--out", str(tmp_path / "d2")]) == 0
    from wfvae.inference.latents import DecodeConfig
    from wfvae.options import parse_config

    assert parse_config(DecodeConfig, ["--latents", "l", "--ckpt", "c", "--out", "o"], "wfvae decode").device == "auto"
    assert read_video(tmp_path / "d1" / "c1.mp4").shape == read_video(tmp_path / "d2" / "c1.mp4").shape


def test_writer_thread_reraises_and_keeps_order(tmp_path):
    from wfvae.utils.writer import BackgroundWriter

    seen = []
    with BackgroundWriter(max_pending=1) as writer:
        for i in range(20):
            writer.submit(seen.append, i)
    assert seen == list(range(20))

    def boom():
        raise OSError(28, "No space left on device", "x.mp4")

    with pytest.raises(OSError, match="No space left"):
        with BackgroundWriter() as writer:
            writer.submit(boom)
            writer.wait()
