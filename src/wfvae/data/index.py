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

import contextlib
import dataclasses
import gc
import hashlib
import itertools
import logging
import math
import os
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter, itemgetter
from pathlib import Path

from tqdm import tqdm

from wfvae.data.index_store import IndexStore, Row, make_row, row_info
from wfvae.data.manifest import Manifest, ManifestRow, is_manifest, read_manifest
from wfvae.data.video_probe import VideoInfo, probe_video
from wfvae.formats import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_image_path
from wfvae.errors import VideoDecodeError

logger = logging.getLogger(__name__)

__all__ = ["IndexEntry", "build_index", "default_cache_dir", "discover_videos", "gc_paused", "scan_folder",
           "source_root"]

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


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while a block builds many long-lived objects.

    Indexing creates a few objects per file (the scan's tuples, the store's rows, the entries and
    their ``VideoInfo``), none of them garbage and none in a reference cycle. Each collection
    pass the allocations trigger walks the young objects and, every so often, all the older ones:
    at 100,000 files those passes were a large share of a warm start's CPU time (measured in
    ``benchmarks/RESULTS.md``, "Dataset index at 100,000 files"). The collector is
    restored afterwards (it was off already: it stays off); reference counting frees everything
    as usual meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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
                if name[0] == ".":
                    continue
                dot = name.rfind(".")
                video = dot > 0 and name[dot:].lower() in exts
                try:
                    # a video file: is_file() reads the listing's file type (no system call unless a link)
                    # and stat() is the one call per file, for the stamp
                    if video and entry.is_file():
                        st = entry.stat()
                        found.append((prefix + name, st.st_size, st.st_mtime_ns))
                    elif entry.is_dir():  # (also a folder named like a video, e.g. "clips.mp4/")
                        real = os.path.realpath(entry.path)
                        if real not in seen_dirs:
                            seen_dirs.add(real)
                            stack.append((f"{prefix}{name}/", entry.path))
                    elif video and entry.is_symlink() and not os.path.exists(entry.path):  # reported, not dropped
                        target = os.readlink(entry.path)
                        errors.append((prefix + name, f"dangling symbolic link (its target {target} does not exist)"))
                except OSError as e:
                    errors.append((prefix + name, f"cannot stat ({e.strerror or e})"))
    found.sort(key=itemgetter(0))
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
        from platformdirs import user_cache_dir  # lazy: keeps the probe index light to import (bench_index children)
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
        import torch.distributed as dist  # lazy: only for multi-rank runs; keeps index start-up light
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

    root: str  # the folder keys are relative to
    keys: list[str]
    todo: list[tuple[str, str, int, int]]  # (key, absolute path, size, mtime_ns)
    bad: list[IndexEntry]
    rows: dict[str, ManifestRow]
    trusted: dict[str, VideoInfo]  # manifest rows taken as written
    stale: list[str]  # store rows of files that are gone
    # Valid store rows by key, for manifests; None for a folder: its entries are streamed from the
    # store, in key order, once the probe results are in (see _entries_from_store)
    cached: dict[str, Row] | None
    new: dict[str, Row] = dataclasses.field(default_factory=dict)  # this run's probe results


def _list_manifest(source: Path, root: Path, include_images: bool, bad: list[IndexEntry],
                   rows: dict[str, ManifestRow]) -> list[tuple[str, int, int]]:
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
    return listed


def _plan(source: Path, include_images: bool, verify: bool, store: IndexStore | None) -> _Plan:
    """Scan (or read the manifest) and compare each file's (size, mtime_ns) stamp with the store's."""
    root = source_root(source)
    root_str = str(root)
    bad: list[IndexEntry] = []
    rows: dict[str, ManifestRow] = {}
    if not (is_manifest(source) and not source.is_dir()):
        # A folder: (path, size, mtime_ns) tuples sorted by path, against the store's in key order.
        # Nothing changed (the usual start) is one list comparison in C; otherwise set differences.
        # No per-file Python work here beyond the scan itself.
        listed, errors = scan_folder(source, include_images)
        bad += [IndexEntry(rel, error=reason) for rel, reason in errors]
        keys = list(map(itemgetter(0), listed))
        stamps = _store_read(store, IndexStore.stamps, [])
        if stamps == listed:
            todo, stale = [], []
        else:
            known = set(stamps)
            todo = [(key, os.path.join(root_str, key), size, mtime)
                    for key, size, mtime in itertools.filterfalse(known.__contains__, listed)]
            stale = sorted(set(map(itemgetter(0), stamps)).difference(keys))
        return _Plan(root_str, keys, todo, bad, rows, {}, stale, None)

    listed = _list_manifest(source, root, include_images, bad, rows)
    cached = _store_read(store, IndexStore.load, {})
    keys = [key for key, _, _ in listed]
    records: dict[str, Row] = {}
    trusted: dict[str, VideoInfo] = {}
    todo: list[tuple[str, str, int, int]] = []
    for key, size, mtime in listed:
        row = rows[key]
        if row.trusted and not verify:
            trusted[key] = _trusted_info(row)
            continue
        old = cached.get(key)
        if old is not None and old[1] == size and old[2] == mtime:
            records[key] = old
        else:
            todo.append((key, os.path.join(root_str, key), size, mtime))
    stale = [key for key in cached.keys() - set(keys)] if len(cached) != len(records) else []
    return _Plan(root_str, keys, todo, bad, rows, trusted, stale, records)


def _store_read(store: IndexStore | None, method, default):
    if store is None:
        return default
    try:
        return method(store)
    except sqlite3.Error as e:
        logger.warning("ignoring unreadable index cache %s (%s)", store.path, e)
        return default


def _entry(row: Row) -> IndexEntry:
    info = row_info(row)
    return IndexEntry(row[0], info) if info is not None else IndexEntry(row[0], None, row[-1] or "unknown error")


def _entries_from_store(store: IndexStore | None, plan: _Plan, complete: bool, workers: int) -> list[IndexEntry]:
    """A folder's entries in ``plan.keys`` order: the store's rows streamed in key order, one
    :class:`IndexEntry` each. ``complete``: every probe result of this run reached the store.

    The store's key order equals the scan's (UTF-8 byte order is code point order), and nobody
    else writes rows for other files, so the streamed entries normally match ``plan.keys`` as
    they come. When they do not (the store could not be written or read, another process wrote
    or pruned rows meanwhile), entries are matched by key, this run's own probe results win, and
    a file with no row anywhere is probed now.
    """
    entries: list[IndexEntry] = []
    if store is not None:
        try:
            entries = list(map(_entry, store.rows()))
        except sqlite3.Error as e:
            logger.warning("could not read back the index cache %s (%s)", store.path, e)
            entries = []
    if complete and len(entries) == len(plan.keys) and list(map(_path_of, entries)) == plan.keys:
        return entries
    by_key = {entry.path: entry for entry in entries}
    by_key.update((key, _entry(row)) for key, row in plan.new.items())
    missing = [key for key in plan.keys if key not in by_key]
    if missing:
        logger.warning("%d index rows vanished while indexing (another process pruned them?); probing those again",
                       len(missing))
        for key, (info, error) in zip(missing, _probe_many([os.path.join(plan.root, k) for k in missing], workers)):
            by_key[key] = IndexEntry(key, info, error)
    return [by_key[key] for key in plan.keys]


_path_of = attrgetter("path")


def _manifest_entries(plan: _Plan, verify: bool) -> list[IndexEntry]:
    """A manifest's entries in row order: trusted values, stored rows, this run's probe results."""
    entries: list[IndexEntry] = []
    for key in plan.keys:
        row = plan.new.get(key) or plan.cached.get(key)
        if row is None:
            entries.append(IndexEntry(key, plan.trusted[key]))
            continue
        entry = _entry(row)
        if verify and entry.info is not None:
            entry.mismatch = _disagreement(plan.rows[key], entry.info)
        entries.append(entry)
    return entries


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


def _store_put(store: IndexStore | None, rows: list[Row]) -> bool:
    """Write rows; False (after a warning) when the store refuses them: the caller stops writing
    but may still read what the store held before."""
    try:
        store.put(rows)
    except sqlite3.Error as e:
        logger.warning("could not write the index cache %s (%s); continuing without writing to it", store.path, e)
        return False
    return True


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
            with gc_paused():
                plan = _plan(source, include_images, verify, store)
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
    writable = store is not None
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
            new_rows = [make_row(key, size, mtime, info, error)
                        for (key, _, size, mtime), (info, error) in zip(chunk, results, strict=True)]
            plan.new.update(zip(map(itemgetter(0), new_rows), new_rows))
            writable = writable and _store_put(store, new_rows)
            bar.update(len(chunk))
    except BaseException:
        if store is not None:
            store.close()
        raise
    finally:
        bar.close()

    if not is_main:
        entries, stats = ranks.broadcast(None)
        return entries, stats

    try:
        if writable and plan.stale:
            try:
                store.delete(plan.stale)
            except sqlite3.Error as e:
                logger.warning("could not prune the index cache %s (%s)", store.path, e)
        with gc_paused():  # (probing above runs with the collector on: FFmpeg wrappers may form cycles)
            if plan.cached is None:  # a folder: stream the store's rows
                entries = _entries_from_store(store, plan, writable, workers)
            else:
                entries = _manifest_entries(plan, verify)
    finally:
        if store is not None:
            store.close()

    entries += plan.bad
    trusted = len(plan.trusted)
    stats = {"probed": len(todo), "cached": len(plan.keys) - len(todo) - trusted, "trusted": trusted}
    if verify:
        stats["mismatched"] = sum(e.mismatch is not None for e in entries)
    logger.info(
        "indexed %d files of %s (%d probed, %d from cache, %d trusted from the manifest)",
        len(plan.keys), source, stats["probed"], stats["cached"], stats["trusted"],
    )
    if ranks is not None:
        ranks.broadcast((entries, stats))
    return entries, stats
