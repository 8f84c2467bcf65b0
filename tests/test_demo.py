"""`wfvae demo --fast`: every stage end to end (dataset, training, reconstruction, evaluation, report)."""

import json
from html.parser import HTMLParser

import pytest

from wfvae.cli import main as cli
from wfvae.demo.dataset import make_demo_dataset
from wfvae.demo.run import FAST_MODEL_CONFIG, fit_steps


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))


def test_demo_fast_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("WFVAE_LPIPS_BACKBONE", raising=False)
    monkeypatch.delenv("WFVAE_I3D_PATH", raising=False)
    assert cli(["demo", "--fast", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    before, after = summary["metrics"]["before"], summary["metrics"]["after"]
    # even four steps move a random model clearly towards the held-out clips
    assert after["psnr"] > before["psnr"] + 0.5, (before, after)
    assert "psnr:" in out and "before training ->" in out and "report:" in out
    assert summary["steps"] == 4 and summary["training_steps_per_s"] > 0 and "4 training steps in" in out
    # weights for LPIPS/FVD are not on this machine: the demo says which file to provide
    assert any("alexnet-owt-7be5be79.pth" in n for n in summary["notes"])
    assert any("i3d_torchscript.pt" in n for n in summary["notes"])
    recon = tmp_path / "demo" / "reconstructions" / "after_training"
    assert len(list((recon / "origin").rglob("*.mkv"))) == 2 and len(list(recon.glob("*/*/*.mkv"))) >= 2
    html = (tmp_path / "demo" / "report.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert parser.images and all(src.startswith("data:image/") for src in parser.images)
    assert "http://" not in html and "https://" not in html


def test_fit_steps_fills_the_time_budget():
    steps, per_step = fit_steps(60.0, FAST_MODEL_CONFIG, num_frames=5, size=16, batch=1, repeats=1)
    assert per_step > 0 and steps == max(20, int(60.0 / per_step))
    assert fit_steps(1e-6, FAST_MODEL_CONFIG, 5, 16, 1, repeats=1)[0] == 20  # never fewer than 20 steps


def test_fit_steps_times_the_real_clips(tmp_path):
    """With ``video_path`` the timed steps read their clips through the trainer's dataset class."""
    make_demo_dataset(tmp_path / "data", n_train=2, n_val=0, num_frames=5, size=16, seed=0)
    steps, per_step = fit_steps(60.0, FAST_MODEL_CONFIG, num_frames=5, size=16, batch=2, repeats=1,
                                video_path=tmp_path / "data" / "train")
    assert per_step > 0 and steps == max(20, int(60.0 / per_step))
    with pytest.raises(ValueError, match="no usable video"):
        fit_steps(60.0, FAST_MODEL_CONFIG, num_frames=9, size=16, batch=1, repeats=1,
                  video_path=tmp_path / "data" / "train")  # 5-frame clips are too short for 9 frames


def test_bad_budget_or_steps_is_one_clear_error(tmp_path, capsys):
    assert cli(["demo", "--out", str(tmp_path / "d"), "--steps", "0", "--train_seconds", "-5"]) == 2
    err = capsys.readouterr().err
    assert "--steps must be >= 1 when given, got 0" in err and "--train_seconds must be > 0, got -5.0" in err
    assert "Traceback" not in err and not (tmp_path / "d").exists()
