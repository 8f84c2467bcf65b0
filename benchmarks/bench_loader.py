"""Clips per second: wfvae's VideoFolderDataset vs a decord loader shaped like the original's,
clips/s against DataLoader workers, and the share of a training step spent decoding.

How to run::

    pip install -e .[decord]          # optional; without decord only our numbers are printed
    python benchmarks/bench_loader.py --json benchmarks/results/loader.json        # everything
    python benchmarks/bench_loader.py --video_path /data/k400/val --repeats 2 --workers "" --step_configs ""

Part 1, loaders side by side (``--repeats`` passes, torch threads ``--threads``, one process): both
produce the same thing: a random ``--num_frames`` clip, short side resized to ``--resolution``, a
square crop, float (3, T, H, W) in [-1, 1], one clip per video, same files, same order. The decord
loader follows the original ``TrainVideoDataset``: ``decord.VideoReader(num_threads=1)`` +
``get_batch`` + torchvision ``Resize`` (antialiased bilinear) + centre crop on float tensors. The two
loaders alternate pass by pass, so load on a shared machine hits both alike.

Part 2, ``--workers`` (default 0,1,2,4): our dataset in a ``torch.utils.data.DataLoader`` (batch 1,
``--worker_passes`` passes); clips/s after the first batch (worker start-up excluded).

Part 3, ``--step_configs`` (default: the tiny config and WF-VAE-L 16-channel): the time of one
training update (the real ``Trainer``'s generator and discriminator steps, as
``benchmarks/bench_train_step.py`` runs them) at ``--step_frames`` x ``--step_size``^2 (default
9x64x64: a WF-VAE-L update at 33x256x256 takes over an hour on a 2-core CPU), next to the time to
decode one clip in one process, at that size and at the loader's size. ``decode / (decode +
update)`` is the share of a step spent decoding when nothing overlaps (``dataset_num_worker 0``);
with the loader's clip size it is an upper bound, since the update grows with the clip and the
decoding mostly does not. For the tiny config the real loop also runs ``--loop_steps`` steps with
``--loop_workers`` (default 4, training's default) and measures the time it waits for data.

Without ``--video_path`` the script writes five real files, 640x360, 120 frames, a key frame every
48 frames (typical of camera/web video), made with ``make_synthetic_video`` plus light film-grain
noise so they compress like footage: H.264 ``.mp4`` and ``.MP4``, VP9 ``.webm``, MJPEG ``.avi`` and
H.264 ``.mkv``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from machine import cpu_model, machine_info
from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_write import write_video

ROOT = Path(__file__).resolve().parents[1]
# name, codec (None: the extension's default), encoder options
FILES = [
    ("clip0.mp4", None, {"preset": "veryfast"}),
    ("clip1.MP4", None, {"preset": "veryfast"}),
    ("clip2.webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}),
    ("clip3.avi", "mjpeg", None),
    ("clip4.mkv", None, {"preset": "veryfast"}),
]
STEP_CONFIGS = {
    "tiny": ROOT / "examples/configs/wfvae_tiny.json",
    "large": ROOT / "examples/configs/wfvae-large-16chn.json",
}


def make_clips(root: Path, frames: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for i, (name, codec, opts) in enumerate(FILES):
        clip = make_synthetic_video(frames, height, width, seed=i).astype(np.int16)
        clip += rng.integers(-6, 7, size=clip.shape, dtype=np.int16)  # grain
        clip = np.clip(clip, 0, 255).astype(np.uint8)
        write_video(root / name, clip, fps=30, codec=codec, gop_size=48, options=opts)


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


def timed_pass(dataset, epoch: int) -> list[float]:
    """Seconds per item of one pass over the dataset."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    times = []
    for i in range(len(dataset)):
        t0 = time.perf_counter()
        assert dataset[i]["video"].shape[1] > 0
        times.append(time.perf_counter() - t0)
    return times


def loader_cps(dataset, workers: int, passes: int) -> float:
    from torch.utils.data import DataLoader

    indices = [i for _ in range(passes) for i in range(len(dataset))]
    loader = DataLoader(dataset, batch_size=1, sampler=indices, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up (worker processes, first file) excluded
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += batch["video"].shape[0]
    return n / (time.perf_counter() - t0)


def step_share(name: str, config: Path, args, root: Path, cache: Path, decode_s: float, result: dict) -> None:
    """Time training updates of ``config`` at ``--step_frames`` x ``--step_size``^2; run the real loop."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_train_step as bts  # the sibling benchmark's trainer set-up (benchmarks/ is not a package)
    from torch.utils.data import DataLoader

    frames, size = args.step_frames, args.step_size
    ns = argparse.Namespace(config=str(config), frames=frames, size=size, batch=1, dtype="fp32",
                            device="cpu", disc_start=0, perceptual_weight=1.0, no_wavelet_loss=False, ema=False)
    torch.set_num_threads(args.step_threads)
    small = VideoFolderDataset(root, frames, resolution=size, cache_dir=cache)  # clips of the step's size
    work = Path(tempfile.mkdtemp(prefix="bench_loader_step_"))
    try:
        trainer = bts.build_ours(ns, work)
        video = small[0]["video"].unsqueeze(0)
        times = {"g": [], "d": []}
        for r in range(args.step_repeats):
            for kind, step in (("g", 2 * r), ("d", 2 * r + 1)):
                t0 = time.perf_counter()
                bts.ours_step(trainer, video, step)
                times[kind].append(time.perf_counter() - t0)
                print(f"  {name}: {kind} update {times[kind][-1]:.2f}s", flush=True)
        step_s = statistics.mean(times["g"] + times["d"])  # one update per batch, G and D alternating
        small_decode = statistics.mean(timed_pass(small, 0))
        entry = {"config": str(config.relative_to(ROOT)), "step_input": f"{frames}x{size}x{size}",
                 "update_times_s": times, "update_mean_s": step_s,
                 "decode_s_at_step_size": small_decode, "decode_s_at_loader_size": decode_s,
                 "serial_share_step_size": small_decode / (small_decode + step_s),
                 "serial_share_bound_loader_size": decode_s / (decode_s + step_s), "load": os.getloadavg()}
        if args.loop_steps and name == "tiny":
            workers = args.loop_workers
            indices = [i % len(small) for i in range(args.loop_steps + 1)]
            loader = DataLoader(small, batch_size=1, sampler=indices, num_workers=workers)
            it = iter(loader)
            batch = next(it)  # start-up excluded
            wait = busy = 0.0
            for step in range(args.loop_steps):
                t0 = time.perf_counter()
                bts.ours_step(trainer, batch["video"], step)
                t1 = time.perf_counter()
                batch = next(it)
                t2 = time.perf_counter()
                busy += t1 - t0
                wait += t2 - t1
            entry.update(loop_workers=workers, loop_steps=args.loop_steps, loop_wait_s=wait, loop_busy_s=busy,
                         loop_wait_share=wait / (wait + busy))
        trainer.close()
        result["step_share"][name] = entry
        print(f"{name}: update {step_s:.2f}s at {entry['step_input']}; decode {small_decode:.3f}s/clip there "
              f"({100 * entry['serial_share_step_size']:.2f}% without workers), {decode_s:.3f}s/clip at the "
              f"loader size ({100 * entry['serial_share_bound_loader_size']:.2f}% of this update: an upper bound, "
              f"the update itself is longer at that size)"
              + (f"; real loop with {entry['loop_workers']} workers waited {100 * entry['loop_wait_share']:.2f}% "
                 f"of {args.loop_steps} steps" if "loop_wait_share" in entry else ""), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video_path", default=None, help="folder (or manifest) of real clips (default: write 5 files)")
    p.add_argument("--num_frames", type=int, default=33)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="passes over the clips, per loader")
    p.add_argument("--threads", type=int, default=1, help="torch threads while decoding (parts 1 and 2)")
    p.add_argument("--workers", default="0,1,2,4", help="DataLoader worker counts for part 2 ('' to skip)")
    p.add_argument("--worker_passes", type=int, default=4)
    p.add_argument("--step_configs", default="tiny,large", help="configs for part 3 ('' to skip)")
    p.add_argument("--step_threads", type=int, default=2, help="torch threads for the training updates")
    p.add_argument("--step_repeats", type=int, default=1, help="G + D update pairs timed per config")
    p.add_argument("--loop_steps", type=int, default=6, help="real loop steps with --loop_workers (tiny only)")
    p.add_argument("--loop_workers", type=int, default=4, help="DataLoader workers of the real loop (training's "
                                                                  "default --dataset_num_worker)")
    p.add_argument("--step_frames", type=int, default=9, help="clip length of the timed training updates")
    p.add_argument("--step_size", type=int, default=64, help="clip size of the timed training updates")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    # a kill (SIGTERM) still runs the clean-up of the scratch folders below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    result: dict = {"machine": machine_info(args.threads), "cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "load_start": os.getloadavg(),
                    "setup": f"{args.num_frames} frames at {args.resolution}x{args.resolution}, "
                             f"{args.repeats} passes, torch threads {args.threads}"}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.video_path) if args.video_path else Path(tmp) / "clips"
        if not args.video_path:
            t0 = time.perf_counter()
            make_clips(root, 120, 360, 640)
            print(f"wrote {len(FILES)} test clips (640x360, 120 frames, GOP 48) in {time.perf_counter() - t0:.1f}s")
        ours = VideoFolderDataset(root, args.num_frames, resolution=args.resolution, cache_dir=Path(tmp) / "cache")
        paths = [ours.root / v.path for v in ours.videos]
        result["files"] = [{"file": Path(v.path).name, "codec": v.info.codec, "pix_fmt": v.info.pix_fmt,
                            "size": f"{v.info.width}x{v.info.height}", "frames": v.info.frames,
                            "bytes": (ours.root / v.path).stat().st_size} for v in ours.videos]
        print(f"{len(paths)} videos, {result['setup']}; {result['cpu']}, load {os.getloadavg()}")

        try:
            import decord  # noqa: F401

            decord_ds = DecordLoader(paths, args.num_frames, args.resolution)
        except ImportError:
            decord_ds = None
            print("decord is not installed (pip install -e .[decord]); no comparison, only our numbers")
        ours[0]
        if decord_ds is not None:
            decord_ds[0]  # warm-up: imports, first file open
        random.seed(0)
        per = {"wfvae": [], "decord": []}
        for r in range(args.repeats):  # alternate pass by pass
            per["wfvae"].append(timed_pass(ours, r))
            if decord_ds is not None:
                per["decord"].append(timed_pass(decord_ds, r))
        table = {}
        for name, passes in per.items():
            if not passes:
                continue
            total = sum(sum(p) for p in passes)
            table[name] = {"clips_per_s": len(paths) * len(passes) / total,
                           "per_file_s": [statistics.mean(p[i] for p in passes) for i in range(len(paths))]}
            print(f"{name:7s}: {table[name]['clips_per_s']:6.2f} clips/s; per file (s): "
                  + ", ".join(f"{Path(q).name} {t:.3f}" for q, t in zip(paths, table[name]["per_file_s"])))
        if "decord" in table:
            ratio = table["wfvae"]["clips_per_s"] / table["decord"]["clips_per_s"]
            table["ratio"] = ratio
            print(f"ratio wfvae / decord: {ratio:.2f}x")
        result["loaders"] = table
        result["load_after_loaders"] = os.getloadavg()

        result["workers"] = {}
        for w in [int(x) for x in args.workers.split(",") if x.strip()]:
            cps = loader_cps(ours, w, args.worker_passes)
            result["workers"][w] = cps
            print(f"DataLoader num_workers={w}: {cps:6.2f} clips/s (load {os.getloadavg()[0]:.1f})", flush=True)

        result["step_share"] = {}
        decode_s = statistics.mean(t for p in per["wfvae"] for t in p)
        for name in [n.strip() for n in args.step_configs.split(",") if n.strip()]:
            config = STEP_CONFIGS.get(name, Path(name))
            step_share(name, Path(config).resolve(), args, root, Path(tmp) / "cache", decode_s, result)
        result["load_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
