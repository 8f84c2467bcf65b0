"""The demo dataset: real, decodable mp4 clips of camera moves over bundled photos, deterministic by seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage", reason="the demo dataset needs scikit-image (pip install wfvae[demo])")

from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.video_probe import probe_video
from wfvae.data.video_read import read_video
from wfvae.demo.dataset import (
    MOTIONS,
    PHOTOS,
    VAL_PHOTOS,
    load_photo,
    make_demo_clip,
    make_demo_dataset,
)

N_TRAIN, N_VAL, FRAMES, SIZE = 5, 2, 9, 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo")
    return root, make_demo_dataset(root, n_train=N_TRAIN, n_val=N_VAL, num_frames=FRAMES, size=SIZE, seed=3)


def test_every_photo_is_bundled_and_loads():
    for name in PHOTOS:
        photo = load_photo(name)
        assert photo.dtype == np.float32 and photo.ndim == 3 and photo.shape[2] == 3
        assert photo.min() >= 0 and photo.max() <= 1 and photo.std() > 0.02, name
    with pytest.raises(KeyError, match="choose one of"):
        load_photo("not_a_photo")


def test_layout_counts_and_shapes(demo):
    root, info = demo
    assert len(info["train"]) == N_TRAIN and len(info["val"]) == N_VAL
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4")) == sorted(info["train"] + info["val"])
    # nested like the spec: split / group / motion / file
    assert "train/camera/pan/000_astronaut.mp4" in info["train"]
    assert any(p.startswith("train/objects/") for p in info["train"])
    assert {c["motion"] for c in info["clips"] if c["split"] == "train"} == set(MOTIONS)
    assert all(c["num_sprites"] >= 2 for c in info["clips"] if c["motion"] == "objects")
    assert {c["photo"] for c in info["clips"] if c["split"] == "val"} <= set(VAL_PHOTOS)
    assert not {c["photo"] for c in info["clips"] if c["split"] == "train"} & set(VAL_PHOTOS)
    assert json.loads((root / "demo_dataset.json").read_text()) == json.loads(json.dumps(info))
    for rel in info["train"] + info["val"]:
        meta = probe_video(root / rel)
        assert (meta.frames, meta.width, meta.height, meta.codec) == (FRAMES, SIZE, SIZE, "h264"), rel
        assert read_video(root / rel).shape == (FRAMES, SIZE, SIZE, 3)


def test_clips_move_smoothly(demo):
    root, info = demo
    clips = [read_video(root / rel).astype(np.float64) for rel in info["train"]]
    for rel, clip in zip(info["train"], clips):
        steps = [np.abs(clip[i + 1] - clip[i]).mean() for i in range(FRAMES - 1)]
        corr = [np.corrcoef(clip[i].ravel(), clip[i + 1].ravel())[0, 1] for i in range(FRAMES - 1)]
        assert min(steps) > 0.3, f"{rel}: a frame repeats the previous one ({min(steps):.2f} mean abs diff)"
        assert np.mean(corr) > 0.5, f"{rel}: consecutive frames are unrelated (mean correlation {np.mean(corr):.2f})"
        # Consecutive frames are much closer than frames of another clip.
        other = clips[(info["train"].index(rel) + 1) % len(clips)]
        assert np.mean(steps) < 0.7 * np.abs(clip - other).mean(), rel


def _decoded_close(a: Path, b: Path) -> bool:
    """Two H.264 files of the same rendered frames decode alike. libx264 is not bit-reproducible here: in one
    process, about one encode in ten of identical frames comes out different (with threads=1 too), up to 3.9
    levels of mean absolute difference in 25 repeats; clips of different views differ by tens of levels."""
    x, y = read_video(a).astype(np.int16), read_video(b).astype(np.int16)
    return x.shape == y.shape and float(np.abs(x - y).mean()) < 8.0


def test_deterministic_by_seed(tmp_path):
    a = make_demo_dataset(tmp_path / "a", n_train=2, n_val=1, num_frames=5, size=16, seed=7)
    b = make_demo_dataset(tmp_path / "b", n_train=2, n_val=1, num_frames=5, size=16, seed=7)
    assert {k: v for k, v in a.items() if k != "root"} == {k: v for k, v in b.items() if k != "root"}
    for rel in a["train"] + a["val"]:
        assert _decoded_close(tmp_path / "a" / rel, tmp_path / "b" / rel), rel
    # The rendered pixels (before the codec) are exactly the same for a seed, and depend on it.
    photo = load_photo("chelsea")
    first, _ = make_demo_clip(photo, "pan", 5, 16, seed=1)
    np.testing.assert_array_equal(first, make_demo_clip(photo, "pan", 5, 16, seed=1)[0])
    assert np.abs(first.astype(int) - make_demo_clip(photo, "pan", 5, 16, seed=2)[0]).mean() > 1


def test_train_clips_at_their_own_size_show_the_same_views(tmp_path):
    """``train_size`` renders the training clips smaller (the held-out ones keep ``size``); each clip keeps its
    photo, motion and field of view, so the small clip looks like the large one shrunk."""
    big = make_demo_dataset(tmp_path / "big", n_train=3, n_val=1, num_frames=5, size=32, seed=5)
    small = make_demo_dataset(tmp_path / "small", n_train=3, n_val=1, num_frames=5, size=32, train_size=16, seed=5)
    assert small["train_size"] == 16 and big["train_size"] == 32 and small["size"] == 32
    assert small["clips"] == big["clips"]
    for rel in small["val"]:  # the same pixels go to the encoder; its output may differ by its rounding
        assert _decoded_close(tmp_path / "small" / rel, tmp_path / "big" / rel), rel
    for rel in small["train"]:
        clip = read_video(tmp_path / "small" / rel).astype(np.float64)
        assert clip.shape == (5, 16, 16, 3), rel
        shrunk = read_video(tmp_path / "big" / rel).astype(np.float64).reshape(5, 16, 2, 16, 2, 3).mean(axis=(2, 4))
        other = read_video(tmp_path / "big" / big["train"][(big["train"].index(rel) + 1) % 3]).astype(np.float64)
        other = other.reshape(5, 16, 2, 16, 2, 3).mean(axis=(2, 4))
        # Same view: far closer to its own shrunk large clip than to another clip's (motion speeds are in
        # output pixels per frame, so later frames drift apart a little).
        assert np.abs(clip[0] - shrunk[0]).mean() < 0.5 * np.abs(clip[0] - other[0]).mean(), rel
    with pytest.raises(ValueError, match="train_size"):
        make_demo_dataset(tmp_path / "bad", n_train=1, n_val=0, size=32, train_size=4)


def test_loads_as_training_data(demo):
    root, _ = demo
    ds = VideoFolderDataset(root / "train", num_frames=FRAMES, sample_rate=1, resolution=SIZE, train=False)
    assert len(ds) == N_TRAIN
    video = ds[0]["video"]
    assert tuple(video.shape) == (3, FRAMES, SIZE, SIZE)
    assert -1 <= float(video.min()) and float(video.max()) <= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_train"):
        make_demo_dataset("unused", n_train=-1)
    with pytest.raises(ValueError, match="num_frames"):
        make_demo_clip(np.zeros((32, 32, 3), np.float32), "pan", num_frames=1)
    with pytest.raises(ValueError, match="unknown motion"):
        make_demo_clip(np.zeros((32, 32, 3), np.float32), "dolly")
