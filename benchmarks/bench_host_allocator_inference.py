"""Round-trip time with and without glibc's fixed mmap threshold (``free_memory_promptly``), fresh processes.

How to run::

    python benchmarks/bench_host_allocator_inference.py --config examples/configs/wfvae-large-16chn.json \\
        --frames 17 --size 64 --pairs 2

Each measurement is a fresh process (the setting is process-wide) that builds the model from ``--config``
(seed 0), runs one warm-up round trip at 9 frames and times one full-pass round trip (CPU time and wall
time); the two settings alternate, ``--pairs`` times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from machine import machine_info

WORKER = """
import sys, time, json, torch
from wfvae import runtime
from wfvae.models import build_model
cfg, frames, size, fixed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if fixed:
    runtime.free_memory_promptly()
torch.set_num_threads(2)
torch.manual_seed(0)
model = build_model(cfg).eval().use_channels_last_weights()
g = torch.Generator().manual_seed(0)
with torch.inference_mode():
    model.decode(model.encode(torch.rand(1, 3, 9, size, size, generator=g) * 2 - 1).mode())
    x = torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1
    c0, w0 = time.process_time(), time.perf_counter()
    model.decode(model.encode(x).mode())
    print(json.dumps({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    info, rows = machine_info(2), {"default": [], "fixed": []}
    for _ in range(args.pairs):
        for name, flag in (("default", "0"), ("fixed", "1")):
            out = subprocess.run([sys.executable, "-c", WORKER, args.config, str(args.frames), str(args.size), flag],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            rows[name].append(json.loads(out))
    result = {"machine": info, "args": vars(args), "runs": rows, "time": time.time()}
    for name, runs in rows.items():
        print(name, " ".join(f"{r['cpu_s']:.2f}/{r['wall_s']:.2f}" for r in runs), "(cpu s / wall s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
