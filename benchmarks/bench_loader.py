"""Clips per second: wfvae's VideoFolderDataset vs a decord loader shaped like the original's.

How to run::

    pip install -e .[decord]          # optional; without decord only our numbers are printed
    python benchmarks/bench_loader.py                       # writes test clips to a temp dir
    python benchmarks/bench_loader.py --video_path /data/k400/val --limit 64

Both loaders produce the same thing: a random 33-frame clip (``--num_frames``), short side
resized to 256 (``--resolution``), 256x256 crop, float (3, T, H, W) in [-1, 1], one clip per
video, single process, same files, same order. The decord loader follows the original
``TrainVideoDataset``: ``decord.VideoReader(num_threads=1)`` + ``get_batch`` + torchvision
``Resize`` (antialiased bilinear) + centre crop on float tensors.

Without ``--video_path`` the script writes H.264 (.mp4) and VP9 (.webm) clips at 640x360,
120 frames, a key frame every 48 frames (typical of camera/web video), made with
``make_synthetic_video`` plus light film-grain noise so they compress like footage.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_io import write_video


def make_clips(root: Path, n: int, frames: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        clip = make_synthetic_video(frames, height, width, seed=i).astype(np.int16)
        clip += rng.integers(-6, 7, size=clip.shape, dtype=np.int16)  # grain
        clip = np.clip(clip, 0, 255).astype(np.uint8)
        # Fast encoder settings: only decoding is measured, and 2-core machines are slow at VP9.
        if i % 2 == 0:
            write_video(root / f"clip{i}.mp4", clip, fps=30, gop_size=48, options={"preset": "veryfast"})
        else:
            fast_vp9 = {"deadline": "realtime", "cpu-used": "8"}
            write_video(root / f"clip{i}.webm", clip, fps=30, gop_size=48, options=fast_vp9)


class DecordLoader:
    """The original loader's decoding and transform path, minus its error swallowing."""

    def __init__(self, paths, num_frames, resolution):
        import decord
        from torchvision.transforms import CenterCrop, Resize

        self.decord = decord
        self.paths = paths
        self.num_frames = num_frames
        self.resize = Resize(resolution, antialias=True)
        self.crop = CenterCrop(resolution)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        vr = self.decord.VideoReader(str(self.paths[i]), ctx=self.decord.cpu(0), num_threads=1)
        total = len(vr)
        begin = random.randint(0, max(0, total - self.num_frames - 1))
        idx = np.linspace(begin, begin + self.num_frames - 1, self.num_frames, dtype=int)
        video = torch.from_numpy(vr.get_batch(idx).asnumpy()).permute(0, 3, 1, 2)  # (T, C, H, W)
        video = self.crop(self.resize(video.float() / 255.0))
        return {"video": (2.0 * video - 1.0).transpose(0, 1)}  # (C, T, H, W)


def clips_per_second(dataset, repeats: int) -> float:
    dataset[0]  # warm-up: imports, first file open
    t0 = time.perf_counter()
    n = 0
    for r in range(repeats):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(r)
        for i in range(len(dataset)):
            assert dataset[i]["video"].shape[1] > 0
            n += 1
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video_path", default=None, help="folder of real clips (default: write test clips)")
    p.add_argument("--num_videos", type=int, default=8, help="test clips to write when --video_path is not given")
    p.add_argument("--num_frames", type=int, default=33)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="passes over the clips")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine's other cores stay free)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.video_path) if args.video_path else Path(tmp) / "clips"
        if not args.video_path:
            t0 = time.perf_counter()
            make_clips(root, args.num_videos, 120, 360, 640)
            took = time.perf_counter() - t0
            print(f"wrote {args.num_videos} test clips (H.264 + VP9, 640x360, 120 frames, GOP 48) in {took:.1f}s")
        ours = VideoFolderDataset(root, args.num_frames, resolution=args.resolution, cache_dir=Path(tmp) / "cache")
        paths = [root / v.path for v in ours.videos]
        setup = f"{args.num_frames} frames at {args.resolution}, {args.repeats} passes, torch threads {args.threads}"
        print(f"{len(paths)} videos, {setup}")

        ours_cps = clips_per_second(ours, args.repeats)
        print(f"wfvae (PyAV, seek + swscale resize): {ours_cps:7.2f} clips/s")
        try:
            import decord  # noqa: F401
        except ImportError:
            print("decord is not installed (pip install -e .[decord]); no comparison, only our numbers above")
            return 0
        random.seed(0)
        dec_cps = clips_per_second(DecordLoader(paths, args.num_frames, args.resolution), args.repeats)
        print(f"decord (original-style loader):      {dec_cps:7.2f} clips/s")
        print(f"ratio wfvae / decord: {ours_cps / dec_cps:.2f}x (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
