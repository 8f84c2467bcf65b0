"""Manifests (CSV, JSON Lines, Parquet) as datasets, on real video files.

The parsing tests run on small hand-written tables; the end-to-end test trains, reconstructs,
encodes and evaluates from a manifest in each format with a tiny model.
"""

from __future__ import annotations

import builtins
import csv
import json
import sqlite3
from pathlib import Path

import pytest
import torch

from conftest import copy_tree
from train_utils import TINY_WFVAE, base_args
from wfvae.cli import main as cli
from wfvae.data.check import main as data_check
from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.index import build_index
from wfvae.data.manifest import ManifestError, read_manifest, write_manifest
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_probe import probe_video
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video

FORMATS = ["csv", "jsonl", "parquet"]


def _write_table(path: Path, rows: list[dict]) -> Path:
    """Write rows the way other tools would (not through write_manifest), keeping odd values."""
    ext = path.suffix
    if ext == ".csv":
        names = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=names)
            w.writeheader()
            w.writerows(rows)
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = list(dict.fromkeys(k for r in rows for k in r))
        pq.write_table(pa.table({n: [None if r.get(n) in (None, "") else str(r[n]) for r in rows] for n in names}), path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_manifest_paths_values_and_bad_rows(tmp_path, fmt):
    (tmp_path / "sub").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.mp4"
    rows = [
        {"path": "sub/a.mp4", "num_frames": 17, "fps": 24, "height": 32, "width": 48, "caption": "x"},
        {"path": str(tmp_path / "sub" / "b.mp4"), "num_frames": "", "fps": "", "height": "", "width": ""},
        {"path": str(outside), "num_frames": 9, "fps": 12.5, "height": 8, "width": 8},
        {"path": "sub/../c.mp4", "num_frames": "twelve", "fps": 24, "height": 8, "width": 8},
        {"path": "", "num_frames": 3, "fps": 24, "height": 8, "width": 8},
        {"path": "sub/a.mp4", "num_frames": 17, "fps": 24, "height": 32, "width": 48},
        {"path": "d.mp4", "num_frames": 0, "fps": 24, "height": 8, "width": 8},
        {"path": "e.mp4", "num_frames": 5, "fps": -1, "height": 8, "width": 8},
    ]
    m = read_manifest(_write_table(tmp_path / f"m.{fmt}", rows))
    assert m.root == tmp_path
    assert [(r.path, r.row, r.trusted) for r in m.rows] == [
        ("sub/a.mp4", 1, True), ("sub/b.mp4", 2, False), (str(outside), 3, True)]
    assert (m.rows[0].num_frames, m.rows[0].fps, m.rows[0].height, m.rows[0].width) == (17, 24.0, 32, 48)
    assert m.rows[2].fps == 12.5
    bad = dict(m.bad)
    assert bad["c.mp4"] == "manifest row 4: num_frames 'twelve' is not a number"
    assert bad[f"m.{fmt} row 5"] == "manifest row has no path"
    assert bad["d.mp4"] == "manifest row 7: num_frames must be >= 1, got " + ("0" if fmt == "jsonl" else "'0'")
    assert "fps must be a positive number" in bad["e.mp4"]
    assert any("listed twice" in reason and "rows 1 and 6" in reason for reason in bad.values())


def test_manifest_errors_are_clear(tmp_path, monkeypatch, capsys):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.csv")
    (tmp_path / "nopath.csv").write_text("file,num_frames\na.mp4,3\n")
    with pytest.raises(ManifestError, match="no 'path' column"):
        read_manifest(tmp_path / "nopath.csv")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.mp4"}\nnot json\n[1, 2]\n')
    m = read_manifest(tmp_path / "bad.jsonl")
    assert [r.path for r in m.rows] == ["a.mp4"]
    assert [reason for _, reason in m.bad] == [
        "manifest line 2 is not valid JSON (Expecting value)", "manifest line 3 is not a JSON object"]
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="cannot read the Parquet manifest"):
        read_manifest(tmp_path / "junk.parquet")
    # The command line turns these into one line and exit status 2.
    assert cli(["data-check", "--video_path", str(tmp_path / "nopath.csv"), "--num_frames", "4"]) == 2
    assert "no 'path' column" in capsys.readouterr().err

    # Without pyarrow, Parquet (and only Parquet) asks for the extra.
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kw):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ManifestError, match=r"needs pyarrow: pip install 'wfvae\[parquet\]'"):
        read_manifest(tmp_path / "junk.parquet")
    assert [r.path for r in read_manifest(tmp_path / "bad.jsonl").rows] == ["a.mp4"]


def test_trusted_rows_skip_probing_verify_reports_disagreements(video_dir, tmp_path):
    root = copy_tree(video_dir, tmp_path / "data")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4"))
    info = probe_video(root / files[0])
    rows = [{"path": f, "num_frames": info.frames, "fps": info.fps, "height": info.height, "width": info.width}
            for f in files[:2]]
    rows[1]["num_frames"] = info.frames + 5  # wrong on purpose
    rows.append({"path": files[2]})  # no metadata: probed
    rows.append({"path": "gone.mp4", "num_frames": 3, "fps": 24, "height": 32, "width": 48})
    manifest = write_manifest(root / "m.csv", rows)
    cache = tmp_path / "cache"

    entries, stats = build_index(manifest, cache_dir=cache)
    assert stats == {"probed": 1, "cached": 0, "trusted": 2}
    by_path = {e.path: e for e in entries}
    assert by_path["gone.mp4"].error.startswith("file does not exist (manifest row 4)")
    assert by_path[files[1]].info.frames == info.frames + 5  # trusted as written
    assert by_path[files[2]].info.codec == "h264"  # probed
    with sqlite3.connect(next(cache.glob("m.csv-*.sqlite"))) as db:  # only probed rows are stored
        assert [r[0] for r in db.execute("SELECT path FROM files")] == [files[2]]

    entries, stats = build_index(manifest, cache_dir=cache, verify=True)
    assert stats == {"probed": 2, "cached": 1, "trusted": 0, "mismatched": 1}
    by_path = {e.path: e for e in entries}
    assert by_path[files[0]].mismatch is None
    assert by_path[files[1]].mismatch == f"manifest says num_frames {info.frames + 5} (file: {info.frames} decodable)"
    assert by_path[files[1]].info.frames == info.frames  # the probe wins

    # A trusted row reads the same pixels as a probed one (the reader finds the timestamps itself).
    ds = VideoFolderDataset(manifest, 5, resolution=32, train=False, cache_dir=cache)
    assert [v.path for v in ds.videos] == files[:3] and [p for p, _ in ds.skipped] == ["gone.mp4"]
    assert ds.videos[0].info.pts_step == 0.0
    expected = read_video(root / files[0], 0, 5, short_side=32)
    got = read_video(root / files[0], 0, 5, short_side=32, info=ds.videos[0].info)
    assert (expected == got).all()
    late = read_video(root / files[0], 7, 5, short_side=32)
    assert (late == read_video(root / files[0], 7, 5, short_side=32, info=ds.videos[0].info)).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_data_check_write_manifest_round_trips(messy_dir, tmp_path, capsys, fmt):
    common = ["--num_frames", "8", "--sample_rate", "2", "--cache_dir", str(tmp_path / "c")]
    manifest = tmp_path / "lists" / f"all.{fmt}"  # outside the data folder: absolute paths
    assert data_check(["--video_path", str(messy_dir), "--json", str(tmp_path / "a.json"),
                       "--write_manifest", str(manifest), *common]) == 0
    folder_report = json.loads((tmp_path / "a.json").read_text())
    assert f"manifest of {len(folder_report['videos'])} usable videos written" in capsys.readouterr().out

    assert data_check(["--video_path", str(manifest), "--json", str(tmp_path / "b.json"), *common]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["trusted"] == len(folder_report["videos"]) and "taken from the manifest without probing" in out
    keys = ("frames", "fps", "height", "width", "padded", "upscaled")
    assert [(Path(v["path"]).relative_to(messy_dir).as_posix(), *(v[k] for k in keys)) for v in report["videos"]] == [
        (v["path"], *(v[k] for k in keys)) for v in folder_report["videos"]]
    assert report["skipped"] == [] and report["mismatched"] == []

    # --verify probes every row; a manifest written from probes agrees with them.
    assert data_check(["--video_path", str(manifest), "--verify", "--json", str(tmp_path / "c.json"), *common]) == 0
    verified = json.loads((tmp_path / "c.json").read_text())
    assert verified["trusted"] == 0 and verified["mismatched"] == []
    assert [v["frames"] for v in verified["videos"]] == [v["frames"] for v in folder_report["videos"]]


def test_data_check_verify_lists_mismatches_and_bad_output_name(video_dir, tmp_path, capsys):
    root = copy_tree(video_dir, tmp_path / "data")
    manifest = root / "m.jsonl"
    assert data_check(["--video_path", str(root), "--num_frames", "5", "--write_manifest", str(manifest),
                       "--cache_dir", str(tmp_path / "c")]) == 0
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert all(not Path(r["path"]).is_absolute() for r in rows)  # inside the folder: relative
    rows[0]["width"] += 2
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert data_check(["--video_path", str(manifest), "--num_frames", "5", "--verify",
                       "--cache_dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"MISMATCH {rows[0]['path']}: manifest says width {rows[0]['width']} (file: {rows[0]['width'] - 2})" in out
    assert cli(["data-check", "--video_path", str(root), "--num_frames", "5", "--write_manifest",
                str(tmp_path / "m.txt")]) == 2
    assert "must end in .csv, .jsonl or .parquet" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_trains_reconstructs_encodes_and_evaluates(tmp_path, fmt):
    """Every command that takes a video folder takes a manifest in each format."""
    data = tmp_path / "data"
    for i in range(2):
        write_video(data / "clips" / f"v{i}.mp4", make_synthetic_video(10, 32, 40, seed=i), fps=12)
    write_video(tmp_path / "elsewhere" / "w.mp4", make_synthetic_video(10, 32, 40, seed=7), fps=12)
    rows = [{"path": f"clips/v{i}.mp4"} for i in range(2)]
    rows.append({"path": str(tmp_path / "elsewhere" / "w.mp4"), "num_frames": 10, "fps": 12, "height": 32, "width": 40})
    rows.append({"path": "clips/missing.mp4"})
    manifest = write_manifest(data / f"list.{fmt}", rows)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY_WFVAE))
    cache = str(tmp_path / "cache")

    # train (1 step; the validation set is the same manifest)
    train_data = {"train": manifest, "val": manifest, "config": cfg}
    assert cli(["train", *base_args(train_data, tmp_path / "ckpt", max_steps=1, batch_size=1)]) == 0
    assert list((tmp_path / "ckpt").rglob("checkpoint-1.ckpt"))

    from wfvae.models import build_model

    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    build_model(cfg).save_pretrained(model_dir)

    # reconstruct: outputs named by the row's path (absolute rows lose their leading "/")
    recon = tmp_path / "recon"
    assert cli(["reconstruct", "--real_video_dir", str(manifest), "--generated_video_dir", str(recon),
                "--ckpt", str(model_dir), "--num_frames", "9", "--resolution", "32", "--device", "cpu",
                "--format", "mkv", "--cache_dir", cache]) == 0
    outside_key = (tmp_path / "elsewhere" / "w").as_posix().lstrip("/")
    made = sorted(p.relative_to(recon).as_posix() for p in recon.rglob("*.mkv"))
    assert made == sorted(["clips/v0.mkv", "clips/v1.mkv", f"{outside_key}.mkv"])

    # evaluate: the manifest's rows pair with the reconstructions by path
    out_json = tmp_path / "metrics.json"
    good_rows = [r for r in rows if "missing" not in r["path"]]
    real = write_manifest(data / f"good.{fmt}", good_rows)
    assert cli(["evaluate", "--real_video_dir", str(real), "--generated_video_dir", str(recon),
                "--metric", "psnr", "--num_frames", "9", "--resolution", "32", "--num_workers", "0",
                "--device", "cpu", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert result["num_videos"] == 3 and 5 < result["dataset"]["psnr"] < 60
    # a manifest row whose file is missing is an error that names it
    assert cli(["evaluate", "--real_video_dir", str(manifest), "--generated_video_dir", str(recon),
                "--metric", "psnr", "--num_workers", "0", "--device", "cpu"]) == 2

    # encode
    lat = tmp_path / "lat"
    assert cli(["encode", "--video_path", str(manifest), "--ckpt", str(model_dir), "--out", str(lat),
                "--num_frames", "9", "--resolution", "32", "--device", "cpu", "--cache_dir", cache]) == 0
    index = json.loads((lat / "index.json").read_text())
    assert len(index) == 3 and {r["source"] for r in index} >= {"clips/v0.mp4", "clips/v1.mp4"}
