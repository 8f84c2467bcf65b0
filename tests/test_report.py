"""``wfvae report``: a self-contained HTML page built from whatever a run folder holds."""

from __future__ import annotations

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wfvae import cli
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_write import write_video
from wfvae.report.discover import discover_run
from wfvae.report.html import ReportConfig, build_report
from wfvae.report.training_log import load_metrics_log

KEYS = ["sub/clip_a", "clip_b"]


class _Page(HTMLParser):
    """Collects what the tests look at: image sources, links, table rows and the visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: list[list[str]] = []
        self.scripts_with_src = 0
        self.text: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag in ("a", "link"):
            self.links.append(a.get("href", ""))
        elif tag == "script" and "src" in a:
            self.scripts_with_src += 1
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


def _decode_image(src: str) -> Image.Image:
    head, _, payload = src.partition(",")
    assert head in ("data:image/png;base64", "data:image/gif;base64"), head[:40]
    img = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    img.load()
    assert img.format == head.split("/")[1].split(";")[0].upper()
    return img


def _assert_self_contained(text: str, page: _Page) -> None:
    assert "http://" not in text and "https://" not in text
    assert page.scripts_with_src == 0 and "<link" not in text
    assert all(link.startswith("#") for link in page.links), page.links


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A demo-like top folder: run/ (training log, config, weights), recon/ (+ origin/), eval.json."""
    root = tmp_path_factory.mktemp("report_run")
    run = root / "run"
    run.mkdir()
    lines = []
    for step in range(0, 50, 5):
        lines.append({"step": step, "time": 1.0, "train/loss": 1 / (step + 1), "train/loss_rec": 0.5 / (step + 1),
                      "train/loss_kl": "nan" if step == 20 else 1e-3, "train/lr": 1e-4})
        if step % 20 == 0:
            lines.append({"step": step, "val/psnr": 20.0 + step / 10, "val/lpips": 0.5 - step / 200})
    lines.append({"step": 25, "event": "resume", "from": "checkpoint-20.ckpt"})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + '\n{"step": 50, "train/lo')
    (run / "config.json").write_text(json.dumps({"model_name": "WFVAE", "lr": 1e-4}))
    (run / "checkpoint-40.ckpt").write_bytes(b"\0" * 100)

    recon = root / "recon"
    rows = []
    for i, key in enumerate(KEYS):
        clip = make_synthetic_video(9, 32, 32, seed=i)
        noisy = np.clip(clip.astype(int) + (i + 1) * 6, 0, 255).astype(np.uint8)  # clip_b is the worse one
        write_video(recon / "origin" / f"{key}.mp4", clip, fps=8)
        write_video(recon / f"{key}.mp4", noisy, fps=8)
        rows.append({"path": f"{key}.mp4", "psnr": 30.0 - 5 * i, "ssim": 0.9 - 0.1 * i})
    (recon / "reconstruct_metrics.json").write_text(json.dumps(
        {"config": {"ckpt": "run/pretrained"}, "videos": 2, "output_dir": str(recon), "metrics": {"psnr": 27.5},
         "per_video": rows}))
    (root / "eval.json").write_text(json.dumps(
        {"dataset": {"psnr": 27.0, "lpips": 0.2}, "num_videos": 2, "notes": ["a note"], "psnr_cap_db": 100,
         "per_video": [{"path": k, "psnr": 29.0 - 5 * i, "lpips": 0.1 + 0.1 * i} for i, k in enumerate(KEYS)],
         "config": {"generated_video_dir": str(recon), "real_video_dir": str(recon / "origin")}}))
    return root


def test_discovery_of_a_top_level_folder(run_dir):
    run = discover_run(run_dir)
    assert [p.relative_to(run_dir).as_posix() for p in run.metrics_logs] == ["run/metrics.jsonl"]
    assert [f.path for f in run.recon_dirs] == [(run_dir / "recon").resolve()]
    folder = run.recon_dirs[0]
    assert [k for k, _, _ in folder.pairs] == sorted(KEYS)
    assert sorted(mf.kind for mf in folder.metric_files) == ["evaluate", "reconstruct"]  # both attached
    assert not run.metric_files and not run.problems
    assert [p.name for p in run.configs] == ["config.json"]
    assert [p.name for p in run.checkpoints] == ["checkpoint-40.ckpt"]


def test_metrics_log_parsing(run_dir):
    log = load_metrics_log(run_dir / "run" / "metrics.jsonl")
    assert log.bad_lines == 1  # the line cut off at the end
    steps, values = log.series["train/loss_kl"]
    assert len(steps) == 10 and math.isnan(values[steps.tolist().index(20)])
    assert log.series["val/psnr"][0].tolist() == [0, 20, 40]
    assert [e["event"] for e in log.events] == ["resume"]
    assert "time" not in log.series and "from" not in log.series


def test_full_report(run_dir, tmp_path):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(run_dir), "--out", str(out)]) == 0
    text, page = _parse(out)
    _assert_self_contained(text, page)

    images = [_decode_image(src) for src in page.images]
    formats = [img.format for img in images]
    # 2 curve figures (losses, validation; train/lr is constant) + per video: a still grid and an animation.
    assert formats.count("GIF") == 2 and formats.count("PNG") == 2 + 2
    assert all(img.n_frames == 9 for img in images if img.format == "GIF")

    # Per-video table: one row per video, worst (lowest stored PSNR) first, with values from both files.
    table = [r for r in page.rows if r and r[0] in KEYS]
    assert [r[0] for r in table] == ["sub/clip_a", "clip_b"][::-1]
    header = next(r for r in page.rows if r and r[0] == "video" and len(r) > 3)
    assert "psnr [reconstruct]" in header and "lpips [evaluate]" in header
    assert table[0][header.index("psnr [reconstruct]")] == "25.0000"
    psnr_files = float(table[0][header.index("PSNR files (dB)")])
    assert 25 < psnr_files < 40

    body = " ".join(page.text)
    for needle in ("Training losses", "run/config.json", "checkpoint-40.ckpt", "a note", "python", "torch"):
        assert needle in body or needle in text, needle
    assert "not JSON records" in body  # the cut-off line is reported, not fatal


def test_report_says_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "empty.html"
    assert cli.main(["report", str(empty), "--out", str(out)]) == 0
    text, page = _parse(out)
    _assert_self_contained(text, page)
    assert page.images == []
    for hint in ("metrics.jsonl", "--output_origin", "--json FILE", "no config file", "no checkpoint"):
        assert hint in text, hint


def test_broken_inputs_are_reported_not_fatal(tmp_path):
    recon = tmp_path / "recon"
    clip = make_synthetic_video(5, 16, 16, seed=0)
    write_video(recon / "origin" / "good.mp4", clip, fps=8)
    write_video(recon / "good.mp4", clip, fps=8)
    (recon / "origin" / "bad.mp4").write_text("not a video")
    (recon / "bad.mp4").write_text("not a video either")
    write_video(recon / "origin" / "lonely.mp4", clip, fps=8)
    (tmp_path / "broken.json").write_text("{ not json")
    out = tmp_path / "report.html"
    assert cli.main(["report", str(tmp_path), "--out", str(out)]) == 0
    text, page = _parse(out)
    _assert_self_contained(text, page)
    rows = {r[0]: r for r in page.rows if r}
    assert "cannot decode" in rows["bad"][-1]
    assert rows["good"][1] == "∞"  # identical frames: PSNR is infinite, and shown so
    assert 'data-v="1e308"' in text  # ... yet sorts as a number
    assert "origin/lonely.mp4" in text and "without a partner" in text
    assert "broken.json" in text
    for src in page.images:
        _decode_image(src)


def test_missing_folder_is_an_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_curves_with_a_loss_spanning_orders_of_magnitude():
    """A loss falling 1000x gets a log axis; labelling it must not fail."""
    import numpy as np
    from PIL import Image
    import io

    from wfvae.report import figures

    steps = np.arange(1, 41, dtype=float)
    png = figures.curves_png({"train/loss_kl": (steps, 1000.0 / steps**2), "lr": (steps, np.full(40, 1e-4))}, "curves")
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_static_assets_are_package_data_and_inlined(tmp_path):
    """The report's CSS/JS are files in the package: a (non-editable) wheel must carry them, and every report
    inlines them (it stays one self-contained file)."""
    import fnmatch
    import tomllib

    from wfvae.report.markup import asset

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["wfvae"]
    assets = sorted((root / "src" / "wfvae" / "report" / "assets").iterdir())
    assert assets
    for path in assets:
        rel = path.relative_to(root / "src" / "wfvae").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in [tool.setuptools.package-data]"
    (tmp_path / "empty").mkdir()
    page = build_report(ReportConfig(run_dir=str(tmp_path / "empty"))).read_text()
    assert asset("report.css") in page and asset("report.js") in page
