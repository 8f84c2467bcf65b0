"""One convolution layer: oneDNN's direct kernels against our Winograd F(2x2, 3x3).

How to run::

    python benchmarks/bench_conv.py                       # WF-VAE-L layer shapes, CPU, 2 threads
    python benchmarks/bench_conv.py --shapes 384x13x64 768x9x16 --repeats 5

Each shape is ``CxTxS``: a causal 3x3x3 convolution with C input and output channels over T
frames (already causally padded, so T - 2 output frames) of S x S pixels, as in WF-VAE-L's
residual blocks. For every shape the direct convolution runs on NCDHW input (what the original
WF-VAE feeds it) and on channels-last input (what our models feed it), then Winograd; times are
medians of interleaved runs, and each output's max-abs error is taken against a float64 direct
convolution of the same input. ``--block_elements A B ...`` times Winograd with several block
budgets (the later ones as extra columns, with their time relative to the first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import machine_info
from wfvae.models.layers import winograd

ROOT = Path(__file__).resolve().parents[1]
# (channels, frames incl. causal padding, pixels): WF-VAE-L residual-block convs at 33x256x256 / 17x128x128
DEFAULT_SHAPES = ["192x19x128", "384x11x64", "384x11x32", "768x11x32", "768x7x16"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="CxTxS entries")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--block_elements", type=int, nargs="+", default=[winograd.BLOCK_ELEMENTS],
                   help="Winograd block budgets to compare (values of transformed input per block); "
                        f"the first is the reported one (default {winograd.BLOCK_ELEMENTS})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/conv_layers.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)

    rows = []
    print(f"{'C x T x S':>12} | {'NCDHW s':>8} {'ch-last s':>9} {'wino s':>7} | {'wino/NCDHW':>10} {'wino/ch-last':>12} | "
          f"{'err direct':>10} {'err wino':>9}")
    for spec in args.shapes:
        c, t, s = (int(v) for v in spec.split("x"))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, t, s, s, generator=g)
        w = torch.randn(c, c, 3, 3, 3, generator=g) / (c * 27) ** 0.5
        b = torch.randn(c, generator=g)
        x_cl = x.contiguous(memory_format=torch.channels_last_3d)
        w_cl = w.contiguous(memory_format=torch.channels_last_3d)
        runs = {  # (function, input, weight): the same bias and padding for all three
            "ncdhw": (lambda xi, wi, bi: F.conv3d(xi, wi, bi, padding=(0, 1, 1)), x, w),
            "channels_last": (lambda xi, wi, bi: F.conv3d(xi, wi, bi, padding=(0, 1, 1)), x_cl, w_cl),
        }
        for i, blk in enumerate(args.block_elements):
            name = "winograd" if i == 0 else f"winograd@{blk}"
            runs[name] = (lambda xi, wi, bi, blk=blk: winograd.conv3d(xi, wi, bi, block_elements=blk), x_cl, w_cl)
        times = {k: [] for k in runs}
        outputs = {}
        with torch.inference_mode():
            for _ in range(args.repeats):
                for name, (fn, xi, wi) in runs.items():
                    start = time.perf_counter()
                    outputs[name] = fn(xi, wi, b)
                    times[name].append(time.perf_counter() - start)
            exact = F.conv3d(x.double(), w.double(), b.double(), padding=(0, 1, 1))
        med = {k: statistics.median(v) for k, v in times.items()}
        err = {k: (v.double() - exact).abs().max().item() for k, v in outputs.items()}
        row = {"channels": c, "frames": t, "size": s, "times_s": times, "median_s": med, "max_abs_err_vs_fp64": err}
        rows.append(row)
        print(f"{spec:>12} | {med['ncdhw']:8.3f} {med['channels_last']:9.3f} {med['winograd']:7.3f} | "
              f"{med['winograd'] / med['ncdhw']:10.2f} {med['winograd'] / med['channels_last']:12.2f} | "
              f"{max(err['ncdhw'], err['channels_last']):10.1e} {err['winograd']:9.1e}"
              + "".join(f" | {k}: {med[k]:.3f} s ({med[k] / med['winograd']:.2f}x)" for k in med if "@" in k), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    info["loadavg_end"] = os.getloadavg()
    Path(args.json).write_text(json.dumps({"machine": info, "block_elements": args.block_elements, "rows": rows},
                                          indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
