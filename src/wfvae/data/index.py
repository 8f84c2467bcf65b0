"""Find a dataset's videos (a folder, or a manifest file) and probe each one once, with a cache.

The cache lives outside the dataset (default: ``<user cache dir>/wfvae/video_index``, see
:func:`default_cache_dir`): one SQLite database per folder or manifest
(:mod:`wfvae.data.index_store` says why SQLite). Each row is keyed by the file's path, size and
modification time, so a changed, added or removed file is noticed on the next scan and only
that file is probed again. Bad files are stored too (with their reason), so a large folder with
a few broken files is not re-probed on every start. Probe results are committed in batches
while probing runs, so an interrupted cold probe of a large dataset resumes where it stopped.

Manifest rows that carry ``num_frames``, ``fps``, ``height`` and ``width`` are trusted and not
probed at all (``verify=True`` probes them anyway and reports disagreements); the files are
still checked to exist.

Several processes may build the same index at once: SQLite serialises the writers. To share
the probing out instead, have every rank of an initialised ``torch.distributed`` process group
call :func:`build_index` with ``across_ranks=True``: rank 0 scans and finds what needs probing,
each rank probes its share (with threads), rank 0 stores the results, and every rank gets the
merged index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from wfvae.data.index_store import IndexStore, Row, make_row, row_info
from wfvae.data.manifest import Manifest, ManifestRow, is_manifest, read_manifest
from wfvae.data.video_probe import VideoInfo, probe_video
from wfvae.formats import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_image_path
from wfvae.errors import VideoDecodeError

logger = logging.getLogger(__name__)

__all__ = ["IndexEntry", "build_index", "default_cache_dir", "discover_videos", "scan_folder", "source_root"]

# Probe results are committed to the store after every batch of this many files.
_BATCH = 1024


@dataclasses.dataclass(slots=True)
class IndexEntry:
    """One file of the dataset after indexing.

    Attributes:
        path: relative to the dataset root (the folder, or the manifest's folder) with ``/``
            separators; absolute for manifest rows outside the manifest's folder.
        info: probe result (or the manifest's trusted values), None when the file is bad.
        error: why the file is bad (None when it is good).
        mismatch: with ``verify``: where the manifest's values disagree with the probe.
    """

    path: str
    info: VideoInfo | None = None
    error: str | None = None
    mismatch: str | None = None


# ----------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------


def scan_folder(root: str | os.PathLike, include_images: bool = False) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """Every video file below ``root`` with its size and modification time, sorted by path.

    Extensions are matched case-insensitively (``.MP4``); hidden files and folders (name
    starting with ``.``, e.g. macOS ``._clip.mp4``) are ignored; symbolic links to folders are
    followed once (loops are cut). Uses ``os.scandir`` and plain strings: 100,000 files take
    about 0.3 s when the folder is in the page cache.

    Returns:
        ``([(relative posix path, size, mtime_ns), ...], [(relative path, error), ...])``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root_str = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.isdir(root_str):
        raise FileNotFoundError(f"video folder not found (or not a folder): {root_str}")
    exts = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS if include_images else VIDEO_EXTENSIONS
    found: list[tuple[str, int, int]] = []
    errors: list[tuple[str, str]] = []
    seen_dirs = {os.path.realpath(root_str)}
    stack = [("", root_str)]
    while stack:
        prefix, folder = stack.pop()
        try:
            it = os.scandir(folder)
        except OSError as e:
            errors.append((prefix.rstrip("/") or ".", f"cannot list folder ({e.strerror or e})"))
            continue
        with it:
            for entry in it:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        real = os.path.realpath(entry.path)
                        if real not in seen_dirs:
                            seen_dirs.add(real)
                            stack.append((f"{prefix}{name}/", entry.path))
                        continue
                    dot = name.rfind(".")
                    if dot <= 0 or name[dot:].lower() not in exts:
                        continue
                    if not entry.is_file():
                        if entry.is_symlink() and not os.path.exists(entry.path):  # reported, not dropped
                            target = os.readlink(entry.path)
                            errors.append((prefix + name, f"dangling symbolic link (its target {target} does not exist)"))
                        continue
                    st = entry.stat()
                except OSError as e:
                    errors.append((prefix + name, f"cannot stat ({e.strerror or e})"))
                    continue
                found.append((prefix + name, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda item: item[0])
    return found, errors


def discover_videos(root: str | os.PathLike, include_images: bool = False) -> list[Path]:
    """Absolute paths of every video below ``root`` (see :func:`scan_folder`), sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root).expanduser().absolute()
    return [root / rel for rel, _, _ in scan_folder(root, include_images)[0]]


def source_root(source: str | os.PathLike) -> Path:
    """The folder entry paths are relative to: the folder itself, or the manifest's folder."""
    path = Path(source).expanduser().absolute()
    return path.parent if is_manifest(path) and not path.is_dir() else path


def default_cache_dir() -> Path:
    """``<platform user cache dir>/wfvae/video_index`` (e.g. ``~/.cache/wfvae/video_index``)."""
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # platformdirs is a declared dependency; this keeps odd installs working
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wfvae" / "video_index"
    return Path(user_cache_dir("wfvae", appauthor=False)) / "video_index"


def store_path(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The SQLite file that caches ``source``'s probe results."""
    source = Path(source).expanduser().absolute()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha1(str(source).encode("utf-8")).hexdigest()[:16]
    return cache_dir / f"{source.name or 'root'}-{digest}.sqlite"


# ----------------------------------------------------------------------------------------------
# Probing
# ----------------------------------------------------------------------------------------------


def _probe_one(path: str) -> tuple[VideoInfo | None, str | None]:
    try:
        return probe_video(path), None
    except VideoDecodeError as e:
        return None, e.reason


def _trusted_info(row: ManifestRow) -> VideoInfo:
    # pts_step 0 means "timing unknown": read_video derives the timestamp grid from the stream.
    return VideoInfo(frames=row.num_frames, fps=row.fps, width=row.width, height=row.height,
                     constant_rate=True, start_pts=0, pts_step=0.0, is_image=is_image_path(row.path))


def _disagreement(row: ManifestRow, info: VideoInfo | None) -> str | None:
    if info is None:
        return None
    diffs = []
    if row.num_frames is not None and row.num_frames != info.frames:
        diffs.append(f"num_frames {row.num_frames} (file: {info.frames} decodable)")
    if row.fps is not None and not math.isclose(row.fps, info.fps, rel_tol=0.01):
        diffs.append(f"fps {row.fps:g} (file: {info.fps:g})")
    for name in ("height", "width"):
        value = getattr(row, name)
        if value is not None and value != getattr(info, name):
            diffs.append(f"{name} {value} (file: {getattr(info, name)})")
    return "manifest says " + ", ".join(diffs) if diffs else None


class _Ranks:
    """Object collectives over the torch.distributed default group (a gloo group for nccl)."""

    _gloo_group = None

    def __init__(self) -> None:
        import torch.distributed as dist  # torch is a dependency; imported only for multi-rank indexing

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.group = None
        if dist.get_backend() != "gloo":
            if _Ranks._gloo_group is None:
                _Ranks._gloo_group = dist.new_group(backend="gloo")
            self.group = _Ranks._gloo_group

    def broadcast(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj) -> list:
        out = [None] * self.world
        self.dist.all_gather_object(out, obj, group=self.group)
        return out


def _distributed() -> _Ranks | None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always has it
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _Ranks()
    return None


# ----------------------------------------------------------------------------------------------
# Building the index
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """What rank 0 found: files in order, what the store or the manifest already knows, what needs probing."""

    keys: list[str]
    records: dict[str, Row]  # from the store, then new probe results
    trusted: dict[str, VideoInfo]  # manifest rows taken as written
    todo: list[tuple[str, str, int, int]]  # (key, absolute path, size, mtime_ns)
    bad: list[IndexEntry]
    rows: dict[str, ManifestRow]
    stale: list[str]


def _plan(source: Path, include_images: bool, verify: bool, cached: dict[str, Row]) -> _Plan:
    root = source_root(source)
    bad: list[IndexEntry] = []
    rows: dict[str, ManifestRow] = {}
    if is_manifest(source) and not source.is_dir():
        manifest: Manifest = read_manifest(source)
        bad += [IndexEntry(label, error=reason) for label, reason in manifest.bad]
        listed: list[tuple[str, int, int]] = []
        for row in manifest.rows:
            if is_image_path(row.path) and not include_images:
                bad.append(IndexEntry(row.path, error="still image; images are used only with include_images"))
                continue
            full = os.path.join(root, row.path)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                bad.append(IndexEntry(row.path, error=f"file does not exist (manifest row {row.row})"))
                continue
            except OSError as e:
                bad.append(IndexEntry(row.path, error=f"cannot stat ({e.strerror or e}) (manifest row {row.row})"))
                continue
            if not os.path.isfile(full):
                bad.append(IndexEntry(row.path, error=f"not a file (manifest row {row.row})"))
                continue
            rows[row.path] = row
            listed.append((row.path, st.st_size, st.st_mtime_ns))
    else:
        listed, errors = scan_folder(source, include_images)
        bad += [IndexEntry(rel, error=reason) for rel, reason in errors]

    keys = [key for key, _, _ in listed]
    records: dict[str, Row] = {}
    trusted: dict[str, VideoInfo] = {}
    todo: list[tuple[str, str, int, int]] = []
    root_str = str(root)
    for key, size, mtime in listed:
        if rows:
            row = rows.get(key)
            if row is not None and row.trusted and not verify:
                trusted[key] = _trusted_info(row)
                continue
        old = cached.get(key)
        if old is not None and old[1] == size and old[2] == mtime:
            records[key] = old
        else:
            todo.append((key, os.path.join(root_str, key), size, mtime))
    stale = [key for key in cached.keys() - set(keys)] if len(cached) != len(records) else []
    return _Plan(keys, records, trusted, todo, bad, rows, stale)


def _probe_many(paths: list[str], workers: int) -> list[tuple[VideoInfo | None, str | None]]:
    if workers <= 1 or len(paths) <= 1:
        return [_probe_one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_probe_one, paths))


def _open_store(source: Path, cache_dir) -> IndexStore | None:
    path = store_path(source, cache_dir)
    try:
        return IndexStore(path, str(source))
    except (OSError, sqlite3.Error) as e:
        logger.warning("cannot use the index cache %s (%s); every file is probed and nothing is cached", path, e)
        return None


def _store_put(store: IndexStore | None, rows: list[Row]) -> IndexStore | None:
    if store is None or not rows:
        return store
    try:
        store.put(rows)
    except sqlite3.Error as e:
        logger.warning("could not write the index cache %s (%s); continuing without it", store.path, e)
        store.close()
        return None
    return store


def build_index(
    source: str | os.PathLike,
    include_images: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    show_progress: bool | None = None,
    *,
    verify: bool = False,
    across_ranks: bool = False,
) -> tuple[list[IndexEntry], dict[str, int]]:
    """Find and probe every file of a folder or manifest, reusing the cache where valid.

    Args:
        source: dataset folder (searched recursively), or a manifest file (``.csv``,
            ``.jsonl``, ``.parquet``; see :mod:`wfvae.data.manifest`).
        include_images: also index jpg/png/webp files.
        cache_dir: folder for the cache database; None means :func:`default_cache_dir`.
        num_workers: probing threads per process (FFmpeg releases the GIL while it demuxes and
            decodes); None means ``min(8, cpu_count)``.
        show_progress: tqdm bar; None shows it only when stderr is a terminal.
        verify: probe manifest rows that carry metadata too; entries whose values disagree get
            ``mismatch`` set, and the probed values are used.
        across_ranks: every rank of the initialised process group calls this together and
            probes a share of the files (no effect without a process group of 2+ ranks).

    Returns:
        (entries: the good and bad files, in the folder's sorted order or the manifest's row
        order, rejected manifest rows last; stats ``{"probed", "cached", "trusted"}``).

    Raises:
        FileNotFoundError: ``source`` is not a folder and not a manifest file.
        wfvae.data.manifest.ManifestError: the manifest cannot be read as a whole.
    """
    source = Path(source).expanduser().absolute()
    ranks = _distributed() if across_ranks else None
    is_main = ranks is None or ranks.rank == 0
    workers = max(1, num_workers or min(8, os.cpu_count() or 1))
    if show_progress is None:
        show_progress = sys.stderr.isatty()

    store = None
    plan = failure = None
    if is_main:
        try:
            if not source.exists():
                kind = "manifest" if is_manifest(source) else "video folder"
                raise FileNotFoundError(f"{kind} not found: {source}")
            store = _open_store(source, cache_dir)
            cached = {}
            if store is not None:
                try:
                    cached = store.load()
                except sqlite3.Error as e:
                    logger.warning("ignoring unreadable index cache %s (%s)", store.path, e)
            plan = _plan(source, include_images, verify, cached)
        except Exception as e:
            if ranks is None:
                if store is not None:
                    store.close()
                raise
            failure = e  # tell the other ranks before raising, so none waits forever
    if ranks is not None:
        shared = ranks.broadcast(None if failure or plan is None else plan.todo)
        if shared is None:
            if failure is not None:
                raise failure
            raise RuntimeError("rank 0 failed while indexing the dataset; see its log")
        todo = shared
    else:
        todo = plan.todo

    # Probe in rounds; each round's results are stored before the next starts.
    per_round = _BATCH * (ranks.world if ranks else 1)
    bar = tqdm(total=len(todo), desc="probing videos", unit="file", disable=not (show_progress and is_main))
    try:
        for start in range(0, len(todo), per_round):
            chunk = todo[start : start + per_round]
            mine = chunk[ranks.rank :: ranks.world] if ranks else chunk
            results = _probe_many([item[1] for item in mine], workers)
            if ranks is not None:
                parts = ranks.gather(results)
                if not is_main:
                    continue
                results = [None] * len(chunk)
                for r, part in enumerate(parts):
                    results[r :: ranks.world] = part
            new_rows = []
            for (key, _, size, mtime), (info, error) in zip(chunk, results, strict=True):
                row = make_row(key, size, mtime, info, error)
                plan.records[key] = row
                new_rows.append(row)
            store = _store_put(store, new_rows)
            bar.update(len(chunk))
    finally:
        bar.close()

    if not is_main:
        entries, stats = ranks.broadcast(None)
        return entries, stats

    if store is not None:
        try:
            if plan.stale:
                store.delete(plan.stale)
        except sqlite3.Error as e:
            logger.warning("could not prune the index cache %s (%s)", store.path, e)
        store.close()

    entries: list[IndexEntry] = []
    mismatches = 0
    records, trusted = plan.records, plan.trusted
    for key in plan.keys:
        row = records.get(key)
        if row is None:
            entries.append(IndexEntry(key, trusted[key]))
            continue
        info = row_info(row)
        if info is None:
            entries.append(IndexEntry(key, None, row[-1] or "unknown error"))
            continue
        entry = IndexEntry(key, info)
        if verify and key in plan.rows:
            entry.mismatch = _disagreement(plan.rows[key], info)
            mismatches += entry.mismatch is not None
        entries.append(entry)
    entries += plan.bad
    stats = {"probed": len(todo), "cached": len(plan.keys) - len(todo) - len(trusted), "trusted": len(trusted)}
    if verify:
        stats["mismatched"] = mismatches
    logger.info(
        "indexed %d files of %s (%d probed, %d from cache, %d trusted from the manifest)",
        len(plan.keys), source, stats["probed"], stats["cached"], stats["trusted"],
    )
    if ranks is not None:
        ranks.broadcast((entries, stats))
    return entries, stats
