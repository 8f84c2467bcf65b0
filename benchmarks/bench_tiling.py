"""What spatial tiling costs in fidelity: PSNR of the tiled round trip against the untiled one.

How to run::

    python benchmarks/bench_tiling.py --frames 9 --size 64 --tiles 32 48 --overlaps 0.25 0.5
    python benchmarks/bench_tiling.py --weights /path/to/save_pretrained_folder --size 512 --tiles 256

Same weights (seeded random init of ``--config`` unless ``--weights``), same input (a smooth
moving pattern, so the reconstruction is image-like), fp32, ``torch.inference_mode()``. PSNR is
computed on the [-1, 1] range (peak-to-peak 2) between the tiled and the untiled reconstruction,
so it isolates the seam error of tiling from the model's own reconstruction error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from machine import machine_info
from wfvae.models import build_model, load_model

ROOT = Path(__file__).resolve().parents[1]


def smooth_video(frames: int, size: int) -> torch.Tensor:
    """(1, 3, T, S, S) in [-1, 1]: drifting sinusoids, one phase per channel."""
    t = torch.arange(frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.arange(size, dtype=torch.float32).view(1, -1, 1)
    x = torch.arange(size, dtype=torch.float32).view(1, 1, -1)
    chans = [torch.sin((x + 2 * t) / (5 + 3 * c) + c) * torch.cos((y - t) / (7 + 2 * c)) for c in range(3)]
    return torch.stack(chans).unsqueeze(0).clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "examples/configs/wfvae-large-16chn.json"))
    p.add_argument("--weights", default=None)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--tiles", type=int, nargs="+", default=[32])
    p.add_argument("--overlaps", type=float, nargs="+", default=[0.25])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/tiling.json"))
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    if args.weights:
        model = load_model(args.weights).eval()
    else:
        torch.manual_seed(0)
        model = build_model(args.config).eval()
    video = smooth_video(args.frames, args.size)
    rows = []
    with torch.inference_mode():
        start = time.perf_counter()
        reference = model.decode(model.encode(video).mode())
        untiled_s = time.perf_counter() - start
        print(f"untiled round trip {args.frames}x{args.size}x{args.size}: {untiled_s:.2f} s")
        print(f"{'tile':>5} {'overlap':>7} | {'time s':>7} | {'PSNR vs untiled (dB)':>20}")
        for tile in args.tiles:
            for overlap in args.overlaps:
                model.enable_tiling(tile_sample_min_size=tile, overlap=overlap)
                start = time.perf_counter()
                tiled = model.decode(model.encode(video).mode())
                seconds = time.perf_counter() - start
                model.disable_tiling()
                rows.append({"tile": tile, "overlap": overlap, "time_s": seconds, "psnr_db": psnr(tiled, reference)})
                print(f"{tile:5d} {overlap:7.2f} | {seconds:7.2f} | {rows[-1]['psnr_db']:20.2f}", flush=True)
    info["loadavg_end"] = os.getloadavg()
    out = {"machine": info, "config": args.config, "frames": args.frames, "size": args.size, "threads": args.threads,
           "untiled_s": untiled_s, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
