"""``wfvae demo`` at several training lengths: held-out quality against steps, time and speed.

How to run::

    python benchmarks/bench_demo.py --runs default,300,1000 --json benchmarks/results/demo_steps.json

Each run is the real command in a fresh process (``wfvae demo --out DIR`` for ``default``, which
fits its steps to the time budget, and ``wfvae demo --steps N --out DIR`` otherwise), one after the
other; the table is read from each run's ``demo_summary.json``. Every row records the load average
before and after it, because on a shared machine the wall time (and, for ``default``, the number of
steps the budget allows) depends on what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, machine_info


def run_one(spec: str, out: Path) -> dict:
    cmd = ["wfvae", "demo", "--out", str(out)] + ([] if spec == "default" else ["--steps", spec])
    load_before = os.getloadavg()
    started = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - started
    summary = json.loads((out / "demo_summary.json").read_text())
    before, after = summary["metrics"]["before"], summary["metrics"]["after"]
    return {
        "command": " ".join(["wfvae", "demo"] + ([] if spec == "default" else ["--steps", spec])),
        "steps": summary["steps"], "wall_s": round(wall, 1), "training_s": summary["training_seconds"],
        "steps_per_s": summary["training_steps_per_s"],
        "psnr_before": round(before["psnr"], 2), "psnr_after": round(after["psnr"], 2),
        "ssim_before": round(before["ssim"], 3), "ssim_after": round(after["ssim"], 3),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="default,300,1000",
                   help="comma-separated: 'default' (the time budget) or a step count, run in this order")
    p.add_argument("--json", default=None, help="write the table and the machine here")
    args = p.parse_args(argv)
    info = machine_info()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    try:
        for spec in args.runs.split(","):
            row = run_one(spec.strip(), work / spec.strip())
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    print(describe(info))
    print("| command | steps | steps/s | training s | wall s | held-out PSNR dB (before -> after) | SSIM |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['steps']} | {r['steps_per_s']:.2f} | {r['training_s']:.0f} | {r['wall_s']:.0f} | "
              f"{r['psnr_before']:.2f} -> {r['psnr_after']:.2f} | {r['ssim_before']:.3f} -> {r['ssim_after']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
