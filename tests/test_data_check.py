"""`wfvae data-check` on a messy folder: every good video and every bad file with its reason."""

from __future__ import annotations

import json
import shutil

from conftest import MESSY_BAD, MESSY_GOOD, MESSY_NUM_FRAMES, MESSY_SAMPLE_RATE
from wfvae.cli import main


def test_data_check_lists_good_and_bad(messy_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = [
        "data-check",
        "--video_path",
        str(messy_dir),
        "--num_frames",
        str(MESSY_NUM_FRAMES),
        "--sample_rate",
        str(MESSY_SAMPLE_RATE),
        "--resolution",
        "32",
        "--json",
        str(out),
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    videos = {v["path"]: v for v in report["videos"]}
    assert set(videos) == set(MESSY_GOOD)
    for path, frames in MESSY_GOOD.items():
        if frames is not None:
            assert videos[path]["frames"] == frames
    assert videos["g_portrait.mp4"]["rotation"] == 90 and videos["g_portrait.mp4"]["height"] == 48
    assert videos["h_tiny.mp4"]["upscaled"] and not videos["a_h264.mp4"]["upscaled"]
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == set(MESSY_BAD)
    for path, word in MESSY_BAD.items():
        assert word in skipped[path]
    printed = capsys.readouterr().out
    assert f"{len(MESSY_GOOD)} usable videos, {len(MESSY_BAD)} skipped" in printed
    assert "SKIP bad/text.mp4" in printed

    # Second run answers from the cache and gives the same report.
    assert main(argv) == 0
    assert json.loads(out.read_text()) == report


def test_data_check_pad_policy_and_errors(messy_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    common = ["--num_frames", "8", "--sample_rate", "2", "--cache_dir", str(tmp_path / "c"), "--json", str(out)]
    assert main(["data-check", "--video_path", str(messy_dir), "--short_video_policy", "pad", *common]) == 0
    padded = [v["path"] for v in json.loads(out.read_text())["videos"] if v["padded"]]
    assert padded == ["bad/short.webm"]

    bad_only = tmp_path / "bad_only"
    shutil.copytree(messy_dir / "bad", bad_only)
    assert main(["data-check", "--video_path", str(bad_only), *common]) == 1
    assert "no usable video" in capsys.readouterr().err
    assert main(["data-check", "--video_path", str(tmp_path / "nope"), *common]) == 2
