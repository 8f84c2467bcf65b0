"""Find video files under a folder and probe each one once, with a JSON cache.

The cache lives outside the dataset (default: ``<user cache dir>/wfvae/video_index``, see
:func:`default_cache_dir`), one file per dataset root. Each entry is keyed by the file's
relative path, size and modification time, so a changed, added or removed file is noticed on
the next scan and only that file is probed again. Bad files are cached too (with their reason),
so a large folder with a few broken files is not re-probed on every start.

Several processes may scan the same folder at once (e.g. every DDP rank): the cache is written
to a temporary file and renamed into place, so readers never see half a file. Probing the
same files twice is wasted work, not an error; to avoid it, build the dataset on rank 0 first,
then ``barrier()``, then on the other ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wfvae.data.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoInfo, probe_video
from wfvae.errors import VideoDecodeError

logger = logging.getLogger(__name__)

__all__ = ["IndexEntry", "discover_videos", "default_cache_dir", "build_index"]

# Bump when probe_video's results change meaning, so stale caches are ignored.
INDEX_FORMAT = 1


@dataclasses.dataclass
class IndexEntry:
    """One file of the dataset after probing.

    Attributes:
        path: path relative to the dataset root, with ``/`` separators.
        info: probe result, or None when the file is bad.
        error: why the file is bad (None when it is good).
    """

    path: str
    info: VideoInfo | None = None
    error: str | None = None


def discover_videos(root: str | os.PathLike, include_images: bool = False) -> list[Path]:
    """All video files below ``root``, recursively, in a deterministic (sorted) order.

    Extensions are matched case-insensitively (``.MP4``, ``.Mkv``); see
    ``video_io.VIDEO_EXTENSIONS`` and, with ``include_images``, ``IMAGE_EXTENSIONS``.
    Hidden files and folders (name starting with ``.``, e.g. macOS ``._clip.mp4`` resource
    forks) are ignored. Symbolic links to folders are followed once (loops are cut).

    Args:
        root: dataset folder.
        include_images: also return jpg/png/webp files (one-frame clips).

    Returns:
        Absolute paths, sorted by their path relative to ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found (or not a folder): {root}")
    exts = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS if include_images else VIDEO_EXTENSIONS
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in exts:
                continue
            full = Path(dirpath) / name
            # a dangling symbolic link is kept so that it is reported (stat fails), not silently dropped
            if full.is_file() or (full.is_symlink() and not full.exists()):
                found.append((full.relative_to(root).as_posix(), full))
    found.sort(key=lambda item: item[0])
    return [p for _, p in found]


def default_cache_dir() -> Path:
    """``<platform user cache dir>/wfvae/video_index`` (e.g. ``~/.cache/wfvae/video_index``)."""
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # platformdirs is a declared dependency; this keeps odd installs working
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wfvae" / "video_index"
    return Path(user_cache_dir("wfvae", appauthor=False)) / "video_index"


def _cache_file(root: Path, cache_dir: Path) -> Path:
    digest = hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:16]
    return cache_dir / f"{root.name or 'root'}-{digest}.json"


def _load_cache(path: Path, root: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        logger.warning("ignoring unreadable index cache %s (%s)", path, e)
        return {}
    if data.get("format") != INDEX_FORMAT or data.get("root") != str(root):
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _save_cache(path: Path, root: Path, files: dict) -> None:
    payload = {"format": INDEX_FORMAT, "root": str(root), "files": files}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not write index cache %s (%s); the folder will be probed again next time", path, e)


def _probe_one(path: Path) -> tuple[dict | None, str | None]:
    try:
        return probe_video(path).to_dict(), None
    except VideoDecodeError as e:
        return None, e.reason


def build_index(
    root: str | os.PathLike,
    include_images: bool = False,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    show_progress: bool | None = None,
) -> tuple[list[IndexEntry], dict[str, int]]:
    """Discover and probe every file under ``root``, reusing the JSON cache where valid.

    Args:
        root: dataset folder.
        include_images: also index jpg/png/webp files.
        cache_dir: folder for the cache file; None means :func:`default_cache_dir`.
        num_workers: probing threads (FFmpeg releases the GIL while it demuxes and decodes);
            None means ``min(8, cpu_count)``.
        show_progress: tqdm bar; None shows it only when stderr is a terminal.

    Returns:
        (entries in discovery order, stats ``{"probed": n, "cached": n}``).
    """
    root = Path(root).expanduser().absolute()
    paths = discover_videos(root, include_images=include_images)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_path = _cache_file(root, cache_dir)
    cached = _load_cache(cache_path, root)

    records: dict[str, dict] = {}
    todo: list[tuple[str, Path, int, int]] = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except OSError as e:
            if path.is_symlink():
                reason = f"dangling symbolic link (its target {os.readlink(path)} does not exist)"
            else:
                reason = f"cannot stat ({e})"
            records[rel] = {"size": -1, "mtime_ns": -1, "error": reason}
            continue
        old = cached.get(rel)
        if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            records[rel] = old
        else:
            todo.append((rel, path, st.st_size, st.st_mtime_ns))

    if todo:
        workers = num_workers or min(8, os.cpu_count() or 1)
        if show_progress is None:
            show_progress = sys.stderr.isatty()
        from tqdm import tqdm

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = pool.map(_probe_one, [p for _, p, _, _ in todo])
            bar = tqdm(results, total=len(todo), desc="probing videos", unit="file", disable=not show_progress)
            for (rel, _, size, mtime_ns), (info, error) in zip(todo, bar, strict=True):
                rec = {"size": size, "mtime_ns": mtime_ns}
                rec.update({"info": info} if info is not None else {"error": error})
                records[rel] = rec

    if todo or set(cached) != set(records):
        _save_cache(cache_path, root, records)

    entries = []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        rec = records[rel]
        if rec.get("info") is not None:
            entries.append(IndexEntry(rel, info=VideoInfo.from_dict(rec["info"])))
        else:
            entries.append(IndexEntry(rel, error=rec.get("error") or "unknown error"))
    stats = {"probed": len(todo), "cached": len(paths) - len(todo)}
    logger.info(
        "indexed %d files under %s (%d probed, %d from cache %s)",
        len(paths),
        root,
        stats["probed"],
        stats["cached"],
        cache_path,
    )
    return entries, stats
