"""The dataset index at scale: cold probe, warm start, 1 % changed, memory, on a tree of real files.

How to run::

    python benchmarks/bench_index.py                                  # 100,000 files, cold subset 5,000
    python benchmarks/bench_index.py --num_files 10000 --cold_files 2000 --json out.json

What it builds (in ``--workdir``, default a temporary folder, removed at the end): four real clips
encoded with PyAV (H.264 .mp4, VP9 .webm, MJPEG .avi, H.264 .mkv; ``--frames`` frames of
``--size`` x ``--size``, key frame every 48 frames), then ``--num_files`` hard links to them, 1,000
per folder (``tree/d0000/f000000.mp4`` ...), plus a separate ``cold/`` tree of ``--cold_files``
links for the cold probe.

What it measures, each in a fresh Python process (numbers exclude the interpreter's start-up and
the imports, which are reported on their own: ``wfvae.data.index`` alone, and torch with the
dataset module):

* **cold probe**: ``build_index`` on ``cold/`` with an empty cache (default threads:
  ``min(8, cpus)``); seconds per file. Hard links share their data, so after the first few files
  the bytes come from the page cache: this measures CPU (demuxing, decoding the first frame and
  the tail), not the disk.
* **populating the full index**: probing 100,000 files at the cold rate costs tens of CPU
  minutes on a shared 2-core machine, so by default (``--populate links``) each of the four
  source clips is probed once and every link gets a row with that probe result and its own
  size/mtime stamp, written through ``IndexStore.put`` in batches of 1,024 as ``build_index`` does.
  Every link has the same bytes as its source clip, so the rows are what probing each link would
  store. ``--populate probe`` probes every file instead (slow, but no shortcut).
* **warm start**: ``build_index`` on the full tree, nothing changed (scan + stat of every file,
  reading the whole store, comparing stamps), and ``VideoFolderDataset`` on top of it.
* **1 % changed**: ``--changed_fraction`` of the links (seeded choice) are replaced by copies of
  their clip (a new inode with a new mtime); ``build_index`` must probe exactly those.
* **memory**: resident set growth (``/proc/self/statm``) of a process holding the index entries,
  and of one holding the dataset, plus the store's size on disk.

Targets (issue 17, at 100,000 files): cold <= 0.025 s/file on 2 cores, warm <= 1 s, 1 % changed
<= 5 s, memory <= 200 MB. The load average and the CPU model are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIPS = [(".mp4", None), (".webm", "libvpx-vp9"), (".avi", "mjpeg"), (".mkv", None)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------------------ child measurements
def child(mode: str, args: argparse.Namespace) -> dict:
    t_import = time.perf_counter()
    from wfvae.data.index import build_index  # without torch (the dataset below imports it)

    imported = time.perf_counter() - t_import
    root = Path(args.workdir) / ("cold" if mode == "cold" else "tree")
    cache = Path(args.workdir) / ("cache_cold" if mode == "cold" else args.cache_name)
    out = {"mode": mode, "import_s": imported, "torch_imported": "torch" in sys.modules,
           "load_before": os.getloadavg()}
    rss0 = rss_mb()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if mode == "dataset":
        t_import = time.perf_counter()
        from wfvae.data.datasets import VideoFolderDataset

        out["dataset_import_s"] = time.perf_counter() - t_import
        rss0 = rss_mb()
        c0 = time.process_time()
        t0 = time.perf_counter()
        ds = VideoFolderDataset(root, num_frames=9, resolution=args.size, cache_dir=cache, show_progress=False)
        out["seconds"] = time.perf_counter() - t0
        out["videos"] = len(ds)
        out["stats"] = ds.index_stats
    else:
        entries, stats = build_index(root, cache_dir=cache, show_progress=False, num_workers=args.threads)
        out["seconds"] = time.perf_counter() - t0
        out["entries"] = len(entries)
        out["bad"] = sum(e.info is None for e in entries)
        out["stats"] = stats
    out["cpu_s"] = time.process_time() - c0  # all threads of this process; less sensitive to other load
    out["rss_growth_mb"] = rss_mb() - rss0
    out["load_after"] = os.getloadavg()
    return out


def run_child(mode: str, args: argparse.Namespace, baseline: bool = False) -> dict:
    """One measurement in a fresh process; ``baseline``: with ``--baseline_src``'s code and its own cache."""
    cmd = [sys.executable, __file__, "--_child", mode, "--workdir", args.workdir, "--size", str(args.size),
           "--cache_name", "cache_baseline" if baseline else "cache"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    if baseline:
        env["PYTHONPATH"] = os.path.abspath(args.baseline_src)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


# ------------------------------------------------------------------------------ building the tree
def make_clips(workdir: Path, frames: int, size: int) -> list[Path]:
    from wfvae.data.synthetic import make_synthetic_video
    from wfvae.data.video_write import write_video

    clips = []
    for i, (ext, codec) in enumerate(CLIPS):
        video = make_synthetic_video(frames, size, size, seed=i)
        opts = {"deadline": "realtime", "cpu-used": "8"} if ext == ".webm" else None
        path = workdir / "src" / f"clip{i}{ext}"
        write_video(path, video, fps=25, codec=codec, gop_size=48, options=opts)
        clips.append(path)
    return clips


def link_tree(root: Path, n: int, clips: list[Path]) -> list[Path]:
    paths = []
    for i in range(n):
        src = clips[i % len(clips)]
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"f{i:06d}{src.suffix}"
        os.link(src, dst)
        paths.append(dst)
    return paths


def populate_from_sources(tree: Path, cache: Path, clips: list[Path]) -> float:
    """One probe per source clip, one row per link (see the module docstring)."""
    from wfvae.data.index import _BATCH, scan_folder, store_path
    from wfvae.data.index_store import IndexStore, make_row
    from wfvae.data.video_probe import probe_video

    t0 = time.perf_counter()
    by_ext = {c.suffix: probe_video(c) for c in clips}
    files, errors = scan_folder(tree)
    assert not errors
    with IndexStore(store_path(tree.absolute(), cache), str(tree.absolute())) as store:
        for start in range(0, len(files), _BATCH):
            store.put([make_row(rel, size, mtime, by_ext[os.path.splitext(rel)[1]], None)
                       for rel, size, mtime in files[start : start + _BATCH]])
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num_files", type=int, default=100_000)
    p.add_argument("--cold_files", type=int, default=5_000, help="files of the cold-probe subset")
    p.add_argument("--changed_fraction", type=float, default=0.01)
    p.add_argument("--frames", type=int, default=33, help="frames of each source clip")
    p.add_argument("--size", type=int, default=64, help="width and height of each source clip")
    p.add_argument("--threads", type=int, default=None, help="probing threads (default: build_index's min(8, cpus))")
    p.add_argument("--populate", choices=["links", "probe"], default="links")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--json", default=None, help="write all numbers here")
    p.add_argument("--baseline_src", default=None,
                   help="another checkout's src/ folder: its build_index is measured too, alternating with this one "
                        "(warm start and changed files), each with its own copy of the cache")
    p.add_argument("--changed_rounds", type=int, default=2, help="rounds of changing files (per code version)")
    p.add_argument("--rounds", type=int, default=3, help="warm-start runs (per code version)")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache_name", default="cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # a kill (SIGTERM) still runs the clean-up of the scratch folders below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args._child:
        print(json.dumps(child(args._child, args)))
        return 0

    from machine import cpu_model  # here, not at the top: it imports torch, which the timed children must not pay for

    owned = args.workdir is None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_index_")
    work = Path(args.workdir)
    results: dict = {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
                     "num_files": args.num_files, "cold_files": args.cold_files,
                     "clip": f"{args.frames} frames, {args.size}x{args.size}", "populate": args.populate}
    try:
        t = time.perf_counter()
        startup = subprocess.run([sys.executable, "-c", "pass"])
        results["interpreter_start_s"] = time.perf_counter() - t
        assert startup.returncode == 0
        clips = make_clips(work, args.frames, args.size)
        results["clip_bytes"] = {c.suffix: c.stat().st_size for c in clips}
        t = time.perf_counter()
        tree_paths = link_tree(work / "tree", args.num_files, clips)
        link_tree(work / "cold", args.cold_files, clips)
        results["link_s"] = time.perf_counter() - t
        print(f"{results['cpu']}, {results['cpus']} cpus; load {os.getloadavg()}")
        print(f"tree of {args.num_files} + {args.cold_files} links made in {results['link_s']:.1f}s")

        cold = run_child("cold", args)
        results["cold"] = cold
        per_file = cold["seconds"] / args.cold_files
        print(f"cold probe: {args.cold_files} files in {cold['seconds']:.1f}s = {per_file:.4f} s/file, "
              f"cpu {cold['cpu_s'] / args.cold_files:.4f} s/file "
              f"(load {cold['load_before'][0]:.1f} -> {cold['load_after'][0]:.1f})")

        if args.populate == "links":
            results["populate_s"] = populate_from_sources(work / "tree", work / "cache", clips)
            print(f"full index populated from the 4 source probes in {results['populate_s']:.1f}s")
        else:
            full = run_child("index", args)
            results["populate_probe"] = full
            print(f"full index probed: {full['seconds']:.1f}s ({full['seconds'] / args.num_files:.4f} s/file)")

        versions = [False, True] if args.baseline_src else [False]
        if args.baseline_src:
            shutil.copytree(work / "cache", work / "cache_baseline")
        name = {False: "this", True: "baseline"}
        for r in range(args.rounds):  # alternating, so both see the same load
            for baseline in versions if r % 2 == 0 else versions[::-1]:
                w = run_child("index", args, baseline)
                assert w["stats"]["probed"] == 0, w["stats"]
                results.setdefault("warm" if not baseline else "warm_baseline", []).append(w)
                print(f"warm start (build_index, {name[baseline]}): {w['seconds']:.2f}s (cpu {w['cpu_s']:.2f}s; "
                      f"import of wfvae.data.index {w['import_s']:.2f}s, torch {'in' if w['torch_imported'] else 'not'} loaded; rss growth {w['rss_growth_mb']:.0f} MB; "
                      f"load {w['load_before'][0]:.1f})")
        print(f"interpreter start {results['interpreter_start_s']:.2f}s")
        ds = run_child("dataset", args)
        results["warm_dataset"] = ds
        print(f"warm start (VideoFolderDataset): {ds['seconds']:.2f}s (cpu {ds['cpu_s']:.2f}s), "
              f"rss growth {ds['rss_growth_mb']:.0f} MB")

        rng = random.Random(0)
        n_changed = int(round(args.num_files * args.changed_fraction))
        by_ext = {c.suffix: c for c in clips}
        for r in range(args.changed_rounds):
            for path in rng.sample(tree_paths, n_changed):
                path.unlink()
                shutil.copyfile(by_ext[path.suffix], path)  # a new inode with a new mtime: the stamp changes
            for baseline in versions if r % 2 == 0 else versions[::-1]:
                changed = run_child("index", args, baseline)
                results.setdefault("changed" if not baseline else "changed_baseline", []).append(changed)
                assert changed["stats"]["probed"] == n_changed, changed["stats"]
                print(f"{n_changed} changed ({name[baseline]}): {changed['seconds']:.2f}s (cpu {changed['cpu_s']:.2f}s; "
                      f"load {changed['load_before'][0]:.1f}; {changed['stats']})")
        results["changed_files"] = n_changed
        results["store_mb"] = sum(f.stat().st_size for f in (work / "cache").glob("*.sqlite")) / 2**20
        print(f"store on disk: {results['store_mb']:.1f} MB; load now {os.getloadavg()}")
        results["load_end"] = os.getloadavg()
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
