"""Clips equal the original WF-VAE's preprocessing on real files.

The reference is built here the way the original's validation loader builds it: every frame
decoded to RGB (PyAV here, decord there: the same FFmpeg conversion), frame indices
``linspace(0, sample_rate * num_frames - 1, num_frames)`` rounded down, ``/ 255``, torchvision
``Resize(short_side)`` on the float tensor (antialiased bilinear), ``CenterCrop``, ``* 2 - 1``.
"""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
import torch
from torchvision.transforms import CenterCrop, Resize

from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.transforms import clip_indices, resize_crop
from wfvae.data.video_write import write_video

LEVEL = 2.0 / 255.0  # one uint8 level on the model's [-1, 1] scale

# name -> (height, width, codec options)
FILES = {
    "land_h264.mp4": (120, 176, {}),
    "portrait_vp9.webm": (150, 96, {}),
    "odd_mjpeg.avi": (99, 131, {}),
}


def _noisy_clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    clip = make_synthetic_video(frames, height, width, seed=seed).astype(np.int16)
    clip += np.random.default_rng(seed).integers(-20, 21, size=clip.shape, dtype=np.int16)  # edges + grain
    return np.clip(clip, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def real_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("preproc")
    for i, (name, (h, w, opts)) in enumerate(FILES.items()):
        codec = None if not name.endswith(".avi") else "mjpeg"
        write_video(root / name, _noisy_clip(20, h, w, seed=i), fps=24, codec=codec, options=opts)
    return root


def _all_frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _original_clip(path, num_frames: int, sample_rate: int, resolution: int, crop: int) -> torch.Tensor:
    frames = _all_frames(path)
    span = sample_rate * num_frames
    # np.linspace(0, span - 1, num_frames, dtype=int), written out
    idx = [math.floor(k * (span - 1) / (num_frames - 1)) for k in range(num_frames)]
    video = torch.from_numpy(frames[idx]).permute(3, 0, 1, 2)  # (C, T, H, W) uint8
    video = Resize(resolution, antialias=True)(video.float() / 255.0)
    return CenterCrop(crop)(video) * 2.0 - 1.0


def test_clip_indices_are_the_originals():
    assert clip_indices(0, 5, 1).tolist() == [0, 1, 2, 3, 4]
    assert clip_indices(3, 4, 3).tolist() == [3, 6, 10, 14]  # floor(3 + k * 11 / 3)
    assert clip_indices(0, 33, 2).tolist()[-3:] == [60, 62, 65]
    assert clip_indices(7, 1, 4).tolist() == [7]


@pytest.mark.parametrize("sample_rate", [1, 2])
def test_dataset_clips_match_the_original_within_one_level(real_files, tmp_path, sample_rate):
    ds = VideoFolderDataset(real_files, num_frames=9, sample_rate=sample_rate, resolution=64, train=False,
                            cache_dir=tmp_path)
    assert len(ds) == len(FILES)
    for item in (ds[i] for i in range(len(ds))):
        ref = _original_clip(real_files / item["path"], 9, sample_rate, 64, 64)
        diff = (item["video"] - ref).abs().max().item()
        assert item["video"].shape == ref.shape == (3, 9, 64, 64)
        assert diff <= 0.55 * LEVEL, (item["path"], diff / LEVEL)
    # The decoder-side resize is a different filter: the test can tell the two apart.
    fast = VideoFolderDataset(real_files, num_frames=9, sample_rate=sample_rate, resolution=64, train=False,
                              cache_dir=tmp_path, resize="fast")
    worst = max((fast[i]["video"] - _original_clip(real_files / fast[i]["path"], 9, sample_rate, 64, 64)).abs().max()
                for i in range(len(fast)))
    assert worst > 4 * LEVEL


def test_training_clips_use_the_same_resize_and_centre_crop(real_files, tmp_path):
    ds = VideoFolderDataset(real_files, num_frames=5, sample_rate=1, resolution=48, train=True, cache_dir=tmp_path)
    frames_by_path = {}
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            path = real_files / item["path"]
            frames = frames_by_path.setdefault(path, _all_frames(path))
            s = item["start"]
            video = torch.from_numpy(frames[s : s + 5]).permute(3, 0, 1, 2).float() / 255.0
            ref = CenterCrop(48)(Resize(48, antialias=True)(video)) * 2.0 - 1.0
            assert (item["video"] - ref).abs().max().item() <= 0.55 * LEVEL


def test_resize_crop_random_corner_and_upscaling():
    frames = _noisy_clip(3, 40, 70, seed=9)
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float()
    gen = torch.Generator().manual_seed(0)
    got = resize_crop(frames, 56, 50, 30, generator=gen)  # upscale 40 -> 56 (98 wide), random corner
    resized = Resize(56, antialias=True)(video)  # (3, T, 56, 98)
    hits = [(t, l) for t in range(56 - 50 + 1) for l in range(98 - 30 + 1)
            if (resized[:, :, t : t + 50, l : l + 30].permute(1, 2, 3, 0) - got).abs().max() <= 0.55]
    assert len(hits) == 1
    with pytest.raises(ValueError, match="uint8"):
        resize_crop(frames.astype(np.float32), 56, 50, 30)


def test_reconstruct_and_evaluate_read_the_same_clips(real_files, tmp_path):
    from wfvae.evaluation.evaluate import EvalConfig
    from wfvae.evaluation.loading import PairDataset
    from wfvae.inference.reconstruct import ReconstructConfig, _SingleFile

    path = real_files / "land_h264.mp4"
    ref = _original_clip(path, 9, 2, 64, 64)
    cfg = ReconstructConfig(real_video_dir=str(path), generated_video_dir=str(tmp_path), ckpt="-", num_frames=9,
                            sample_rate=2, resolution=64)
    single = _SingleFile(path, cfg, temporal_factor=4)[0]["video"]
    assert (single - ref).abs().max().item() <= 0.55 * LEVEL
    pairs = PairDataset([("k", path, path)], EvalConfig(real_video_dir=str(path), generated_video_dir=str(path), num_frames=9,
                                                              sample_rate=2, resolution=64))
    real = pairs[0]["real"]
    assert (real - ref).abs().max().item() <= 0.55 * LEVEL
