"""Find what a run folder holds: training logs, reconstructions, metric files, configs, checkpoints.

How to use::

    from wfvae.report.discover import discover_run

    run = discover_run("demo/")          # any folder: a training run, a reconstruction, or a parent of both
    run.metrics_logs, run.recon_dirs, run.metric_files, run.configs, run.problems

Rules (so ``wfvae demo`` can pass one top-level folder holding everything):

* ``metrics.jsonl`` anywhere below the folder is a training log (one section per file).
* A folder with an ``origin/`` sub-folder that holds videos is a reconstruction folder; its
  videos are paired with ``origin/`` by relative path without extension, as ``wfvae evaluate`` does.
* A ``.json`` file with a ``per_video`` list is a metrics file: ``reconstruct_metrics.json`` (it has
  ``metrics``) or the output of ``wfvae evaluate --json`` (it has ``dataset``). It is attached to the
  reconstruction folder it names (``output_dir`` / ``generated_video_dir``) or lies in.
* Config files are ``config.json``/``.yaml``/``.yml`` and any ``*config*.json``/``.yaml`` name,
  except inside reconstruction outputs.
* ``*.ckpt`` files and ``save_pretrained`` folders (``config.json`` beside weights) are listed.

The walk skips hidden folders, ``__pycache__`` and virtual environments, stops below :data:`MAX_DEPTH`
levels, and never follows symlinked folders (no loops).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from wfvae.formats import MEDIA_EXTENSIONS
from wfvae.layout import METRICS_LOG, ORIGIN_DIR

logger = logging.getLogger(__name__)

__all__ = ["MAX_DEPTH", "MetricFile", "ReconFolder", "RunContents", "discover_run", "video_key"]

#: folders deeper than this below the run folder are not searched.
MAX_DEPTH = 6
_SKIP_DIRS = {"__pycache__", "node_modules", "venv", ".venv", "site-packages", "wandb"}
_CONFIG_SUFFIXES = {".json", ".yaml", ".yml", ".toml"}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth"}


def video_key(rel_path: str | os.PathLike) -> str:
    """``a/b.mp4`` -> ``a/b``: the pairing key of ``wfvae evaluate`` (relative path without extension)."""
    p = Path(rel_path)
    return (p.parent / p.stem).as_posix() if p.suffix else p.as_posix()


@dataclasses.dataclass
class MetricFile:
    """A JSON file with per-video metrics.

    Attributes:
        path: the file.
        kind: ``"reconstruct"`` (``reconstruct_metrics.json``) or ``"evaluate"`` (``wfvae evaluate --json``).
        per_video: ``{video key: {metric: value}}`` (numbers only).
        dataset: dataset-level values (``metrics`` / ``dataset`` of the file).
        notes: the file's own notes (e.g. the PSNR cap) plus anything odd found while reading it.
        target: folder the metrics describe, if the file names one that exists.
        raw: the whole parsed JSON.
    """

    path: Path
    kind: str
    per_video: dict[str, dict[str, float]]
    dataset: dict[str, float]
    notes: list[str]
    target: Path | None
    raw: dict[str, Any]


@dataclasses.dataclass
class ReconFolder:
    """A reconstruction output folder with its ``origin/`` ground truth.

    Attributes:
        path: the folder.
        pairs: ``[(key, origin file, reconstruction file)]`` sorted by key.
        unpaired: relative paths that have no partner on the other side.
        metric_files: metrics files attached to this folder.
    """

    path: Path
    pairs: list[tuple[str, Path, Path]]
    unpaired: list[str]
    metric_files: list[MetricFile] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RunContents:
    """Everything :func:`discover_run` found. Paths are absolute; ``problems`` are readable sentences."""

    root: Path
    metrics_logs: list[Path] = dataclasses.field(default_factory=list)
    recon_dirs: list[ReconFolder] = dataclasses.field(default_factory=list)
    metric_files: list[MetricFile] = dataclasses.field(default_factory=list)  # not attached to a folder
    configs: list[Path] = dataclasses.field(default_factory=list)
    checkpoints: list[Path] = dataclasses.field(default_factory=list)
    pretrained_dirs: list[Path] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def rel(self, path: Path) -> str:
        """``path`` relative to the run folder (``.`` for the folder itself)."""
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)


def _walk(root: Path):
    """Yield ``(folder, sub-folder names, file names, depth)`` below ``root``, pruned as the module says."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS and depth < MAX_DEPTH
        )
        yield here, dirnames, sorted(filenames), depth


def _scan_media(folder: Path, exclude: Path | None = None) -> dict[str, Path]:
    """``{key: file}`` for every video / image file below ``folder`` (``exclude`` subtree skipped)."""
    found: dict[str, Path] = {}
    for here, dirnames, filenames, _ in _walk(folder):
        if exclude is not None:
            dirnames[:] = [d for d in dirnames if here / d != exclude]
        for name in filenames:
            path = here / name
            if path.suffix.lower() in MEDIA_EXTENSIONS and not name.startswith(".tmp-"):
                found.setdefault(video_key(path.relative_to(folder)), path)
    return found


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _read_metric_file(path: Path) -> MetricFile | None:
    """Parse a metrics JSON; ``None`` when the file is some other JSON. Raises ValueError when unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path.name}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("per_video"), list):
        return None
    kind = "evaluate" if isinstance(data.get("dataset"), dict) else "reconstruct"
    per_video: dict[str, dict[str, float]] = {}
    notes = [str(n) for n in data.get("notes", []) if isinstance(n, str)]
    for row in data["per_video"]:
        if isinstance(row, dict) and "path" in row:
            per_video[video_key(str(row["path"]))] = _numbers(row)
    dataset = _numbers(data.get("dataset") if kind == "evaluate" else data.get("metrics") or {})
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    named = data.get("output_dir") or config.get("generated_video_dir")
    target = None
    if named:
        for candidate in (Path(named), path.parent / named):
            if candidate.is_dir():
                target = candidate.resolve()
                break
    return MetricFile(path, kind, per_video, dataset, notes, target, data)


def _is_config_name(name: str) -> bool:
    p = Path(name)
    return p.suffix.lower() in _CONFIG_SUFFIXES and (p.stem == "config" or "config" in p.stem.lower())


def discover_run(run_dir: str | os.PathLike) -> RunContents:
    """Search ``run_dir`` (recursively) for everything a report can show.

    Args:
        run_dir: a training run folder, a reconstruction folder, or any folder above them.

    Returns:
        :class:`RunContents`; what could not be read is described in ``problems`` (never raised).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    root = Path(run_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"run folder '{run_dir}' does not exist or is not a folder")
    run = RunContents(root=root)
    json_files: list[Path] = []
    recon_paths: list[Path] = []
    for here, dirnames, filenames, _ in _walk(root):
        if here.name == ORIGIN_DIR and here.parent in recon_paths:
            dirnames[:] = []  # ground truth copies: nothing else to find in there
            continue
        if ORIGIN_DIR in dirnames and (here / ORIGIN_DIR).is_dir():
            recon_paths.append(here)
        names = set(filenames)
        if "config.json" in names and any(Path(n).suffix in _WEIGHT_SUFFIXES for n in names):
            run.pretrained_dirs.append(here)
        inside_recon = any(here == r or r in here.parents for r in recon_paths)
        for name in filenames:
            path = here / name
            if name == METRICS_LOG:
                run.metrics_logs.append(path)
            elif name.endswith(".ckpt"):
                run.checkpoints.append(path)
            elif path.suffix.lower() == ".json" and not _is_config_name(name):
                json_files.append(path)
            if _is_config_name(name) and not inside_recon:
                run.configs.append(path)

    for folder in recon_paths:
        origin = folder / ORIGIN_DIR
        real = _scan_media(origin)
        recon = _scan_media(folder, exclude=origin)
        if not real:
            continue  # an "origin" folder without videos is not a reconstruction's ground truth
        keys = sorted(set(real) & set(recon))
        unpaired = [f"origin/{real[k].relative_to(origin).as_posix()}" for k in sorted(set(real) - set(recon))]
        unpaired += [recon[k].relative_to(folder).as_posix() for k in sorted(set(recon) - set(real))]
        run.recon_dirs.append(ReconFolder(folder, [(k, real[k], recon[k]) for k in keys], unpaired))

    for path in json_files:
        try:
            mf = _read_metric_file(path)
        except ValueError as e:
            run.problems.append(f"{run.rel(path)}: {e}")
            continue
        if mf is None:
            continue
        owner = _owner(mf, run.recon_dirs)
        if owner is None:
            run.metric_files.append(mf)
        else:
            owner.metric_files.append(mf)
    logger.info(
        "%s: %d training log(s), %d reconstruction folder(s), %d config file(s), %d checkpoint(s)",
        root, len(run.metrics_logs), len(run.recon_dirs), len(run.configs), len(run.checkpoints),
    )
    return run


def _owner(mf: MetricFile, folders: list[ReconFolder]) -> ReconFolder | None:
    """The reconstruction folder a metrics file describes: the one it names, else the one it lies in."""
    for folder in folders:
        if mf.target is not None and mf.target == folder.path.resolve():
            return folder
    for folder in folders:
        if mf.path.parent == folder.path:
            return folder
    # A lone metrics file beside a lone reconstruction folder, keys matching: the usual demo layout.
    if mf.target is None and len(folders) == 1:
        keys = {k for k, _, _ in folders[0].pairs}
        if keys and len(keys & set(mf.per_video)) >= max(1, len(mf.per_video) // 2):
            return folders[0]
    return None
