"""SSIM of one video pair: time and peak memory, ours against scikit-image (and our previous version).

How to run::

    python benchmarks/bench_ssim.py --frames 33 --size 256 --repeats 3 --json benchmarks/results/ssim_33x256.json

Methods, all on the same uint8 frames (a synthetic clip and its H.264 crf-35 decode, i.e. real codec
error), all computing the mean over frames of scikit-image's Gaussian SSIM (sigma 1.5, population
covariance, data range 1, mean over channels of the valid region):

* ``ours``: :func:`wfvae.evaluation.metrics.ssim` (float32, separable 11x1 + 1x11 Gaussian, the five
  local moments in one batch, 8 frames at a time);
* ``previous``: the implementation this replaced (float64, a full 11x11 2-D window, every frame of
  the video at once), kept here only as the baseline;
* ``skimage``: ``skimage.metrics.structural_similarity`` frame by frame (float64).

Times are medians of interleaved runs in one process (ours, previous, skimage, ours, ...). Peak
memory is measured in a fresh process per method: the largest growth of the resident set while the
metric runs (sampled every millisecond from ``/proc/self/statm``, frames already loaded). Also reported: the
largest difference of per-frame values from scikit-image's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from machine import cpu_model

METHODS = ("ours", "previous", "skimage")


def make_pair(frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic clip and its lossy H.264 decode, uint8 (T, H, W, 3)."""
    from wfvae.data.synthetic import make_synthetic_video
    from wfvae.data.video_read import read_video
    from wfvae.data.video_write import write_video

    clip = make_synthetic_video(frames, size, size, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        decoded = read_video(write_video(Path(tmp) / "lossy.mp4", clip, options={"crf": "35"}))
    return clip, decoded


def _bcthw(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)


def previous_ssim_frames(real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """The replaced implementation: float64, one 11x11 window, all frames of the video at once; (B, T)."""
    b, c, t, h, w = real.shape
    x = (real.to(torch.float64) / 255.0).transpose(1, 2).reshape(b * t * c, 1, h, w)
    y = (recon.to(torch.float64) / 255.0).transpose(1, 2).reshape(b * t * c, 1, h, w)
    g = torch.exp(-0.5 * (torch.arange(-5, 6, dtype=torch.float64) / 1.5) ** 2)
    g = g / g.sum()
    window = torch.outer(g, g).view(1, 1, 11, 11)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x * mu_x
    var_y = F.conv2d(y * y, window) - mu_y * mu_y
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).view(b, t, c).mean(dim=2)


def per_frame(method: str, clip: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    if method == "ours":
        from wfvae.evaluation.metrics import ssim_frames

        return ssim_frames(_bcthw(clip), _bcthw(decoded))[0].numpy()
    if method == "previous":
        return previous_ssim_frames(_bcthw(clip), _bcthw(decoded))[0].numpy()
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=255, channel_axis=-1) for a, b in zip(clip, decoded)])


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory(method: str, frames_file: str) -> dict:
    """Run in a fresh process: peak RSS growth of one SSIM call. The frames are read from a .npz the
    parent wrote (decoding video here would raise the high-water mark before the measurement)."""
    if frames_file:
        data = np.load(frames_file)
        clip, decoded = data["clip"], data["decoded"]
    else:  # made here (raises the high-water mark before the call; --_frames_file avoids that)
        clip, decoded = make_pair(33, 256)
    per_frame(method, clip[:1, :32, :32], decoded[:1, :32, :32])  # imports and first-call set-up
    # ru_maxrss is a high-water mark that the imports may already have set above the call's own peak, so
    # the resident set is sampled every millisecond while the call runs instead
    before = _rss_mb()
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start_cpu = time.process_time()
    per_frame(method, clip, decoded)
    cpu_s = time.process_time() - start_cpu
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mb())
    return {"peak_mb": peak[0], "before_mb": before, "growth_mb": peak[0] - before, "cpu_s": cpu_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    p.add_argument("--json", default=None)
    p.add_argument("--_memory", default=None, help=argparse.SUPPRESS)  # internal: one method, fresh process
    p.add_argument("--_frames_file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory:
        print(json.dumps(measure_memory(args._memory, args._frames_file)))
        return 0

    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    load_start = os.getloadavg()
    clip, decoded = make_pair(args.frames, args.size)
    reference = per_frame("skimage", clip, decoded)
    for method in methods:  # imports and first-call set-up are not timed
        per_frame(method, clip[:2], decoded[:2])
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}  # process CPU seconds: less sensitive to a loaded machine
    max_diff: dict[str, float] = {}
    for _ in range(args.repeats):
        for method in methods:
            start, start_cpu = time.perf_counter(), time.process_time()
            values = per_frame(method, clip, decoded)
            times[method].append(time.perf_counter() - start)
            cpu[method].append(time.process_time() - start_cpu)
            print(f"{method}: {times[method][-1]:.3f} s", flush=True)
            max_diff[method] = float(np.abs(values - reference).max())
    memory = {}
    with tempfile.TemporaryDirectory() as tmp:
        frames_file = str(Path(tmp) / "frames.npz")
        np.savez(frames_file, clip=clip, decoded=decoded)
        for method in methods:
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--_memory", method,
                                  "--_frames_file", frames_file], capture_output=True, text=True, check=True)
            memory[method] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{method}: peak growth {memory[method]['growth_mb']:.0f} MB, cpu {memory[method]['cpu_s']:.2f} s",
                  flush=True)
    result = {
        "shape": [args.frames, args.size, args.size, 3],
        "mean_ssim_skimage": float(reference.mean()),
        "time_s": {m: {"runs": times[m], "median": statistics.median(times[m])} for m in methods},
        "cpu_s": {m: {"runs": cpu[m], "median": statistics.median(cpu[m])} for m in methods},
        "memory": memory,
        "max_abs_diff_vs_skimage_per_frame": max_diff,
        "machine": {"cpu": cpu_model(), "threads": args.threads,
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "torch": torch.__version__},
    }
    for m in methods:
        print(f"{m:9s} time {result['time_s'][m]['median']:.3f} s  peak growth {memory[m]['growth_mb']:.0f} MB  "
              f"max |diff| vs skimage {max_diff[m]:.2e}")
    print(f"load average {load_start} -> {result['machine']['loadavg_end']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
