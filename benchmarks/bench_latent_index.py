"""Writing the latents index: one append per shard against the whole-file rewrite it replaced.

How to run::

    python benchmarks/bench_latent_index.py                          # 1,000 / 4,000 / 16,000 videos
    python benchmarks/bench_latent_index.py --videos 500 --json out.json

``wfvae encode`` writes each shard, then records its videos in the rank's index. Earlier versions
rewrote the whole ``index-r<rank>.json`` after every shard (O(N^2) bytes for N videos); now each
shard appends its records to ``index-r<rank>.jsonl`` (O(N) in all). Both are timed here with the
real code (``latents._RankIndex.append``; the old way: ``_publish_bytes`` of ``_json_bytes`` of
all records so far, as before), in one process, alternating, on the same records, each with its
fsyncs, into a temporary folder that is removed at the end. No model, no video: only the index.
Reported: total wall and CPU seconds per size, and the cost of the last shard's index write.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from wfvae.inference.latents import _json_bytes, _publish_bytes, _RankIndex, read_index
from wfvae.utils.output_folder import OutputFolder


def records_for(n: int, shard_size: int) -> list[dict]:
    """Records shaped like encode's (33x256x256 clips, WF-VAE-L latents)."""
    return [{"key": f"v{i:07d}r0", "shard": f"shard-r0-{i // shard_size:05d}.safetensors",
             "source": f"k400/train/class_{i % 400:03d}/clip_{i:08d}.mp4", "frames": 33, "fps": 29.97,
             "sample_rate": 1, "resolution": 256, "latent_shape": [16, 9, 32, 32],
             "model_config_hash": "0123456789abcdef", "scale_shift_applied": False, "has_sample": False}
            for i in range(n)]


def write_appending(root: Path, records: list[dict], shard_size: int) -> tuple[float, float, float]:
    folder = OutputFolder(root, "encode", {})
    folder.prepare()
    index = _RankIndex(folder, 0)
    last = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(records), shard_size):
        t = time.perf_counter()
        index.append(records[start : start + shard_size])
        last = time.perf_counter() - t
    return time.perf_counter() - t0, time.process_time() - c0, last


def write_rewriting(root: Path, records: list[dict], shard_size: int) -> tuple[float, float, float]:
    folder = OutputFolder(root, "encode", {})
    folder.prepare()
    so_far: list[dict] = []
    last = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(records), shard_size):
        t = time.perf_counter()
        so_far.extend(records[start : start + shard_size])
        _publish_bytes(folder, "index-r0.json", _json_bytes(so_far))
        last = time.perf_counter() - t
    return time.perf_counter() - t0, time.process_time() - c0, last


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--shard_size", type=int, default=64, help="videos per shard (encode's default)")
    p.add_argument("--json", default=None, help="write the numbers here")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_latent_index_"))
    results = {"load_before": os.getloadavg(), "shard_size": args.shard_size, "sizes": []}
    try:
        for i, n in enumerate(args.videos):
            records = records_for(n, args.shard_size)
            row = {"videos": n}
            ways = [("append", write_appending), ("rewrite", write_rewriting)]
            for name, fn in ways if i % 2 == 0 else ways[::-1]:
                root = work / f"{name}-{n}"
                wall, cpu, last = fn(root, records, args.shard_size)
                assert sorted(r["key"] for r in read_index(root)) == [r["key"] for r in records]  # same index
                row[name] = {"wall_s": wall, "cpu_s": cpu, "last_shard_s": last,
                             "bytes": sum(f.stat().st_size for f in root.glob("index-r0.json*"))}
                shutil.rmtree(root)
            results["sizes"].append(row)
            print(f"{n:>7} videos: append {row['append']['wall_s']:.2f}s (cpu {row['append']['cpu_s']:.2f}s, "
                  f"last shard {row['append']['last_shard_s'] * 1e3:.1f} ms) | rewrite {row['rewrite']['wall_s']:.2f}s "
                  f"(cpu {row['rewrite']['cpu_s']:.2f}s, last shard {row['rewrite']['last_shard_s'] * 1e3:.1f} ms)")
        results["load_after"] = os.getloadavg()
        print(f"load {results['load_before'][0]:.1f} -> {results['load_after'][0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
