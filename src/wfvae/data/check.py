"""``wfvae data-check``: list every usable and every bad file of a video folder or manifest.

How to run::

    wfvae data-check --video_path /data/kinetics/train --num_frames 33 --sample_rate 1 \\
        --resolution 256 --json report.json
    wfvae data-check --video_path /data/kinetics/train --num_frames 33 --write_manifest train.csv
    wfvae data-check --video_path train.csv --num_frames 33 --verify     # trust, but check

It probes every file (in parallel; results are cached, see ``--cache_dir``), applies the same
rules as training (too short = fewer than ``num_frames * sample_rate`` decodable frames), prints
a summary and, with ``--json``, writes::

    {"videos":  [{"path": "sub/a.mp4", "frames": 120, "fps": 24.0, "width": 640, ...}, ...],
     "skipped": [{"path": "sub/b.mp4", "reason": "cannot open as a media container (...)"}, ...]}

Paths are relative to ``--video_path`` (for a manifest: to the manifest's folder, or absolute).
``--write_manifest OUT.csv`` (or ``.jsonl`` / ``.parquet``) writes the usable videos with their
``num_frames``, ``fps``, ``height`` and ``width``, so later runs on that manifest skip probing.
With ``--verify`` manifest rows that carry those values are probed anyway and disagreements are
listed (``"mismatched"`` in the JSON report). Exit status: 0 if at least one video is usable,
1 if none is, 2 for bad arguments (including an unreadable manifest).
"""

from __future__ import annotations

import collections
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from wfvae.data.datasets import reason_kind
from wfvae.data.index import build_index, source_root
from wfvae.data.manifest import is_manifest, write_manifest
from wfvae.errors import InputError
from wfvae.options import (
    REQUIRED,
    FrameOptions,
    IndexCacheOptions,
    option,
    run_config,
    too_small,
    validate,
)
from wfvae.utils.io import write_json_option
from wfvae.utils.logging import setup_logging

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class DataCheckConfig(FrameOptions, IndexCacheOptions):
    """Settings of ``wfvae data-check`` (the clip rules are training's)."""

    ALLOW_ABBREV: ClassVar[bool] = True  # unique prefixes of a flag were accepted before; still are

    video_path: str = option(REQUIRED, "Dataset folder (searched recursively) or manifest file (.csv, .jsonl, "
                             ".parquet with a 'path' column).")
    num_frames: int = option(REQUIRED, "Frames per training clip.")
    json: str | None = option(None, "Write the full report here.")
    short_video_policy: Literal["skip", "pad"] = option(
        "skip", "Too-short videos: skip, or keep and pad (the last frame repeated).")
    include_images: bool = option(False, "Also check jpg/png/webp as one-frame clips.")
    num_workers: int | None = option(None, "Probing threads (default: min(8, cpus)).")
    verify: bool = option(False, "Probe manifest rows even when they give num_frames/fps/height/width, and list "
                          "disagreements.")
    write_manifest: str | None = option(
        None, "Write the usable videos as a manifest (.csv, .jsonl or .parquet) that later runs can use.",
        metavar="OUT.csv")

    def check(self) -> list[str]:
        errors = too_small(self, ("num_frames", "sample_rate", "resolution"))
        if self.write_manifest and not is_manifest(self.write_manifest):
            errors.append(f"--write_manifest {self.write_manifest!r} must end in .csv, .jsonl or .parquet")
        return errors


def check_folder(cfg: DataCheckConfig, show_progress: bool | None = None) -> dict:
    """Probe a folder (or a manifest's files) and sort them into usable videos and skipped files.

    Returns:
        ``{"videos": [{"path", "frames", "fps", "width", "height", "rotation", "codec",
        "pix_fmt", "header_frames", "padded", "upscaled"}], "skipped": [{"path", "reason"}],
        "mismatched": [{"path", "reason"}], "trusted": n}``: ``trusted`` counts manifest rows
        taken without probing.
        Rows trusted from a manifest have empty ``codec`` / ``pix_fmt`` and rotation 0.
    """
    validate(cfg)
    entries, stats = build_index(
        cfg.video_path,
        include_images=cfg.include_images,
        cache_dir=cfg.cache_dir,
        num_workers=cfg.num_workers,
        show_progress=show_progress,
        verify=cfg.verify,
    )
    need = cfg.num_frames * cfg.sample_rate
    videos, skipped = [], []
    mismatched = [{"path": e.path, "reason": e.mismatch} for e in entries if e.mismatch is not None]
    for e in entries:
        if e.info is None:
            skipped.append({"path": e.path, "reason": e.error})
            continue
        info = e.info
        short = not info.is_image and info.frames < need
        if short and cfg.short_video_policy == "skip":
            reason = f"too short: {info.frames} decodable frames < num_frames*sample_rate = {need}"
            if info.header_frames > info.frames:
                reason += f" (header claims {info.header_frames}; truncated?)"
            reason += "; --short_video_policy pad keeps it"
            skipped.append({"path": e.path, "reason": reason})
            continue
        row = {"path": e.path, **info.to_dict(), "padded": short, "upscaled": min(info.width, info.height) < cfg.resolution}
        for key in ("start_pts", "pts_step", "constant_rate"):  # decoder internals, not for people
            row.pop(key)
        videos.append(row)
    return {"videos": videos, "skipped": skipped, "mismatched": mismatched, "trusted": stats["trusted"]}


def manifest_rows(report: dict, video_path: str, manifest_file: str) -> list[dict]:
    """The usable videos of a report as manifest rows, paths relative to the manifest's folder
    when the files lie inside it, absolute otherwise."""
    root = source_root(video_path)
    out_dir = Path(manifest_file).expanduser().absolute().parent
    rows = []
    for v in report["videos"]:
        full = os.path.normpath(os.path.join(root, v["path"]))
        rel = os.path.relpath(full, out_dir)
        path = full if rel == os.pardir or rel.startswith(os.pardir + os.sep) else Path(rel).as_posix()
        rows.append({"path": path, "num_frames": v["frames"], "fps": v["fps"], "height": v["height"],
                     "width": v["width"]})
    return rows


def _summary(report: dict, root: str, need: int) -> str:
    videos, skipped = report["videos"], report["skipped"]
    lines = [f"{root}: {len(videos)} usable videos, {len(skipped)} skipped (a clip needs {need} frames)"]
    if report.get("trusted"):
        lines.append(f"  {report['trusted']} taken from the manifest without probing (--verify probes them)")
    if videos:
        frames = sorted(v["frames"] for v in videos)
        lines.append(f"  frames per video: min {frames[0]}, median {frames[len(frames) // 2]}, max {frames[-1]}")
        for flag, text in (
            ("padded", "padded (too short, last frame repeated)"),
            ("upscaled", "smaller than --resolution (upscaled)"),
        ):
            n = sum(v[flag] for v in videos)
            if n:
                lines.append(f"  {n} {text}")
        rotated = sum(v["rotation"] != 0 for v in videos)
        if rotated:
            lines.append(f"  {rotated} with rotation metadata (decoded upright)")
    if skipped:
        counts = collections.Counter(reason_kind(s["reason"]) for s in skipped)
        lines.append("  skipped by reason: " + ", ".join(f"{kind}: {n}" for kind, n in counts.most_common()))
        for s in skipped:
            lines.append(f"  SKIP {s['path']}: {s['reason']}")
    mismatched = report.get("mismatched") or []
    if mismatched:
        lines.append(f"  {len(mismatched)} manifest rows disagree with their files (probed values used):")
        for m in mismatched:
            lines.append(f"  MISMATCH {m['path']}: {m['reason']}")
    return "\n".join(lines)


def run_check(cfg: DataCheckConfig) -> int:
    """``wfvae data-check`` on a parsed config: report, optional JSON and manifest, exit status."""
    setup_logging()
    source = Path(cfg.video_path)
    if not source.is_dir() and not (is_manifest(source) and source.is_file()):
        raise InputError(f"--video_path {cfg.video_path} is not a folder nor a manifest file (.csv, .jsonl, "
                         ".parquet); pass the dataset folder or its manifest")
    report = check_folder(cfg)  # a ManifestError (an InputError) reaches the command's error boundary: one line, exit 2
    if cfg.json:
        write_json_option(cfg.json, report, "--json")
    print(_summary(report, cfg.video_path, cfg.num_frames * cfg.sample_rate))
    if cfg.json:
        print(f"report written to {cfg.json}")
    if cfg.write_manifest:
        try:
            write_manifest(cfg.write_manifest, manifest_rows(report, cfg.video_path, cfg.write_manifest))
        except OSError as e:
            raise InputError(f"cannot write --write_manifest {cfg.write_manifest}: {e}") from None
        print(f"manifest of {len(report['videos'])} usable videos written to {cfg.write_manifest}")
    if not report["videos"]:
        print(f"wfvae data-check: no usable video under {cfg.video_path}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_config(DataCheckConfig, run_check, argv, "wfvae data-check", __doc__.split("\n\n")[0])
