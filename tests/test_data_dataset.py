"""VideoFolderDataset on real files: discovery, skip reasons, clip sampling, cache, load-time failures."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import MESSY_BAD, MESSY_GOOD, MESSY_NUM_FRAMES, MESSY_SAMPLE_RATE, copy_tree
from wfvae.data.datasets import VideoFolderDataset, discover_videos
from wfvae.data.synthetic import make_synthetic_video, write_synthetic_dataset
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video
from wfvae.errors import VideoDecodeError


def _messy(messy_dir, tmp_path, **kw):
    kw.setdefault("num_frames", MESSY_NUM_FRAMES)
    kw.setdefault("sample_rate", MESSY_SAMPLE_RATE)
    kw.setdefault("resolution", 16)
    return VideoFolderDataset(messy_dir, cache_dir=tmp_path / "cache", **kw)


def test_discover_is_recursive_case_insensitive_sorted(messy_dir):
    rels = [p.relative_to(messy_dir).as_posix() for p in discover_videos(messy_dir)]
    assert rels == sorted(set(MESSY_GOOD) | set(MESSY_BAD))  # no notes.txt, no ._ junk
    assert discover_videos(messy_dir) == discover_videos(str(messy_dir))  # deterministic


def test_discover_images_only_with_flag(tmp_path):
    from PIL import Image

    write_video(tmp_path / "v.mp4", make_synthetic_video(4, 16, 16))
    Image.fromarray(make_synthetic_video(1, 16, 16)[0]).save(tmp_path / "i.JPG")
    assert [p.name for p in discover_videos(tmp_path)] == ["v.mp4"]
    assert [p.name for p in discover_videos(tmp_path, include_images=True)] == ["i.JPG", "v.mp4"]
    ds = VideoFolderDataset(tmp_path, 4, resolution=16, include_images=True, cache_dir=tmp_path / "c")
    shapes = {ds[i]["path"]: tuple(ds[i]["video"].shape) for i in range(len(ds))}
    assert shapes == {"i.JPG": (3, 1, 16, 16), "v.mp4": (3, 4, 16, 16)}


def test_messy_folder_good_and_bad_are_reported(messy_dir, tmp_path):
    ds = _messy(messy_dir, tmp_path)
    assert [v.path for v in ds.videos] == sorted(MESSY_GOOD)
    assert {p for p, _ in ds.skipped} == set(MESSY_BAD)
    for path, reason in ds.skipped:
        assert MESSY_BAD[path] in reason, (path, reason)
    # Nothing was written into the dataset folder (the cache lives in cache_dir).
    assert not list(messy_dir.rglob("*.json")) and not list(messy_dir.rglob("*.pkl"))
    assert len(list((tmp_path / "cache").glob("*.sqlite"))) == 1


def test_items_shape_range_and_rotation(messy_dir, tmp_path):
    ds = _messy(messy_dir, tmp_path, train=False, crop_size=(16, 12))
    for i, entry in enumerate(ds.videos):
        item = ds[i]
        assert item["path"] == entry.path and item["index"] == i and item["num_failures"] == 0
        video = item["video"]
        assert video.dtype == torch.float32 and video.shape == (3, MESSY_NUM_FRAMES, 16, 12)
        assert -1.0 <= video.min() < video.max() <= 1.0


def test_threaded_decoding_survives_pyav_python_logging(messy_dir, tmp_path):
    """Older torchvision releases turn PyAV's Python log callback on when imported (0.22 does); FFmpeg's decoder
    threads then wait for the GIL that closing a stream holds, a deadlock the suite hit under torch 2.7.1.
    Reading switches the callback off, with one warning. Run in a subprocess with a time limit, so that a
    deadlock fails this test instead of hanging the suite."""
    script = f"""
import logging, av.logging
from wfvae.data.datasets import VideoFolderDataset
logging.basicConfig(level=logging.WARNING)
av.logging.set_level(av.logging.ERROR)  # what importing torchvision 0.22 does
ds = VideoFolderDataset({str(messy_dir)!r}, {MESSY_NUM_FRAMES}, sample_rate={MESSY_SAMPLE_RATE}, resolution=16,
                        train=False, crop_size=(16, 12), cache_dir={str(tmp_path / "cache")!r})
for _ in range(3):
    for i in range(len(ds)):
        ds[i]
print("level", av.logging.get_level())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "level None" in proc.stdout
    assert proc.stderr.count("PyAV's Python logging was on") == 1, proc.stderr[-2000:]


def test_eval_clip_is_first_frames_center_crop(video_dir, tmp_path):
    ds = VideoFolderDataset(
        video_dir, num_frames=5, sample_rate=2, resolution=32, train=False, crop_size=(32, 32), cache_dir=tmp_path
    )
    item = ds[1]
    frames = read_video(video_dir / item["path"], indices=[0, 2, 4, 6, 9])  # (5, 32, 48, 3), linspace(0, 9, 5)
    expected = torch.from_numpy(frames[:, :, 8:40].copy()).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(item["video"], expected)
    assert item["start"] == 0
    torch.testing.assert_close(ds[1]["video"], item["video"])


def test_train_sampling_is_reproducible_from_seed_epoch_index(video_dir, tmp_path):
    def make(seed):
        return VideoFolderDataset(video_dir, num_frames=3, resolution=24, crop_size=16, seed=seed, cache_dir=tmp_path)

    a, b = make(0), make(0)
    starts = {}
    for epoch in range(6):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        x, y = a[2], b[2]
        torch.testing.assert_close(x["video"], y["video"])
        starts[epoch] = (x["start"], x["video"].sum().item())
        assert 0 <= x["start"] <= 17 - 3
    assert len(set(starts.values())) > 1  # the epoch changes start / crop
    c = make(1)
    differs = False
    for epoch in range(4):
        a.set_epoch(epoch)
        c.set_epoch(epoch)
        differs |= not torch.equal(a[2]["video"], c[2]["video"])
    assert differs  # so does the seed


def test_clip_frames_follow_sample_rate(tmp_path):
    root = tmp_path / "d"
    write_video(root / "v.mkv", make_synthetic_video(30, 16, 16, seed=0), lossless=True)
    full = read_video(root / "v.mkv")
    ds = VideoFolderDataset(root, num_frames=4, sample_rate=3, resolution=16, cache_dir=tmp_path / "c")
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        s = item["start"]
        assert 0 <= s <= 30 - 12
        # the original's rule: 4 positions spread over 4 * 3 = 12 frames, rounded down
        expected = torch.from_numpy(full[[s, s + 3, s + 7, s + 11]].copy()).permute(3, 0, 1, 2).float() / 127.5 - 1
        torch.testing.assert_close(item["video"], expected)


def test_short_video_policy_pad(messy_dir, tmp_path):
    ds = _messy(messy_dir, tmp_path, short_video_policy="pad")
    assert "bad/short.webm" in [v.path for v in ds.videos]
    assert {p for p, _ in ds.skipped} == set(MESSY_BAD) - {"bad/short.webm"}
    j = [v.path for v in ds.videos].index("bad/short.webm")
    video = ds[j]["video"]  # 6 frames, step 2 -> frames 0, 2, 4, then the last one repeated
    assert video.shape[1] == MESSY_NUM_FRAMES
    for t in range(3, MESSY_NUM_FRAMES):
        torch.testing.assert_close(video[:, t], video[:, 2])
    assert not torch.equal(video[:, 1], video[:, 2])


def test_cache_reuse_and_invalidation(video_dir, tmp_path):
    root = copy_tree(video_dir, tmp_path / "data")
    cache = tmp_path / "cache"
    ds = VideoFolderDataset(root, 5, resolution=32, cache_dir=cache)
    assert ds.index_stats == {"probed": 4, "cached": 0, "trusted": 0}
    ds = VideoFolderDataset(root, 5, resolution=32, cache_dir=cache)
    assert ds.index_stats == {"probed": 0, "cached": 4, "trusted": 0}

    # Replace one file by a shorter video, add one, remove one: only the new/changed are probed.
    changed = root / "video0.mp4" if (root / "video0.mp4").exists() else sorted(root.rglob("*.mp4"))[0]
    rel = changed.relative_to(root).as_posix()
    write_video(changed, make_synthetic_video(3, 32, 48, seed=9))
    write_synthetic_dataset(root / "new", 1, 9, 32, 48, nested=False)
    removed = sorted(root.rglob("*.mp4"))[-1]
    removed_rel = removed.relative_to(root).as_posix()
    removed.unlink()
    ds = VideoFolderDataset(root, 5, resolution=32, cache_dir=cache)
    assert ds.index_stats == {"probed": 2, "cached": 2, "trusted": 0}
    assert rel in {p for p, _ in ds.skipped}  # now too short
    paths = [v.path for v in ds.videos]
    assert "new/video0.mp4" in paths and removed_rel not in paths
    with sqlite3.connect(next(cache.glob("*.sqlite"))) as db:  # the removed file's row is gone
        stored = {row[0] for row in db.execute("SELECT path FROM files")}
    assert stored == {v.path for v in ds.videos} | {p for p, _ in ds.skipped}


def test_load_time_failure_is_replaced_by_next_and_counted(video_dir, tmp_path, caplog):
    root = copy_tree(video_dir, tmp_path / "data")
    ds = VideoFolderDataset(root, 5, resolution=32, cache_dir=tmp_path / "c")
    broken = ds.videos[1].path
    (root / broken).write_bytes(b"corrupted after probing")
    item = ds[1]
    assert item["path"] == ds.videos[2].path and item["index"] == 2 and item["num_failures"] == 1
    assert ds.failures == 1
    assert broken in caplog.text and "decode failure #1" in caplog.text
    torch.testing.assert_close(item["video"], ds[2]["video"])  # deterministic replacement
    # Evaluation must not count one video twice: it raises instead.
    ev = VideoFolderDataset(root, 5, resolution=32, train=False, cache_dir=tmp_path / "c2")
    assert broken in {p for p, _ in ev.skipped}  # a fresh scan reports it up front
    ev.videos.insert(1, ds.videos[1])
    with pytest.raises(VideoDecodeError):
        ev[1]


def test_no_usable_video_is_a_clear_error(messy_dir, tmp_path):
    bad_only = tmp_path / "bad_only"
    shutil.copytree(messy_dir / "bad", bad_only)
    with pytest.raises(ValueError, match=r"no usable video .*all 5 files were skipped"):
        VideoFolderDataset(bad_only, 8, sample_rate=2, cache_dir=tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        VideoFolderDataset(tmp_path / "empty", 8, cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        VideoFolderDataset(tmp_path / "missing", 8, cache_dir=tmp_path / "c")
    with pytest.raises(VideoDecodeError):
        VideoFolderDataset(messy_dir, 8, sample_rate=2, cache_dir=tmp_path / "c", strict=True)


def test_dataloader_batches(video_dir, tmp_path):
    ds = VideoFolderDataset(video_dir, 5, resolution=32, crop_size=32, cache_dir=tmp_path)
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=2)))
    assert batch["video"].shape == (2, 3, 5, 32, 32)
    assert batch["num_failures"].tolist() == [0, 0]


def test_default_cache_dir_is_outside_dataset(video_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = copy_tree(video_dir, tmp_path / "data")
    before = sorted(os.listdir(root))
    VideoFolderDataset(root, 5, resolution=32)
    assert sorted(os.listdir(root)) == before
    assert list((tmp_path / "xdg" / "wfvae" / "video_index").glob("*.sqlite"))
