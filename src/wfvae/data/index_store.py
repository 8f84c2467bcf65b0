"""The probe cache on disk: one SQLite database per dataset (folder or manifest).

Why SQLite (from Python's standard library, so no new dependency):

* rows are inserted and updated in place, in batches, inside transactions: probing a million
  files costs one row write per file, not a rewrite of the whole index each time, and an
  interrupted cold probe keeps every batch committed before the interruption;
* in WAL mode any number of processes read while one writes, and a second writer waits for the
  lock (``busy_timeout``) instead of corrupting the file;
* a warm start compares the folder's (path, size, mtime_ns) list with the table's, read in key
  order by one query, in a single C-level list comparison, then streams the rows once to build
  the entries; the file is compact (about 70 bytes per video).

JSON Lines or one JSON file would need a full rewrite (or unbounded appends and compaction) and
a home-made lock; LMDB or DuckDB would be new dependencies for no gain at this size. WAL needs
the database on a local file system (not NFS): the default cache folder is the user's cache dir.

Schema (``files``, one row per file): ``path`` (key: relative to the dataset root, or absolute
for manifest rows outside it), ``size`` and ``mtime_ns`` (a change invalidates the row), the
:class:`~wfvae.data.video_probe.VideoInfo` fields, and ``error`` (why a bad file is bad).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path
from typing import Iterable

from wfvae.data.video_probe import VideoInfo

logger = logging.getLogger(__name__)

__all__ = ["IndexStore", "Row", "SCHEMA_VERSION", "make_row", "row_info"]

# Bump when probe_video's results change meaning or the table changes: older stores are emptied.
SCHEMA_VERSION = 2

_INFO_FIELDS = tuple(f.name for f in dataclasses.fields(VideoInfo))
_INFO_TYPES = {"frames": "INTEGER", "fps": "REAL", "width": "INTEGER", "height": "INTEGER", "rotation": "INTEGER",
               "codec": "TEXT", "pix_fmt": "TEXT", "header_frames": "INTEGER", "constant_rate": "INTEGER",
               "start_pts": "INTEGER", "pts_step": "REAL", "is_image": "INTEGER"}
_BOOL_FIELDS = frozenset({"constant_rate", "is_image"})
_COLUMNS = ("path", "size", "mtime_ns", *_INFO_FIELDS, "error")
# row_info indexes rows by position: fail at import if VideoInfo's fields ever move
assert _COLUMNS[3:] == ("frames", "fps", "width", "height", "rotation", "codec", "pix_fmt", "header_frames",
                        "constant_rate", "start_pts", "pts_step", "is_image", "error")


# A row, as stored and as returned by IndexStore.load:
# (path, size, mtime_ns, <the VideoInfo fields in their declared order>, error)
Row = tuple
_NO_INFO = (None,) * len(_INFO_FIELDS)


def make_row(path: str, size: int, mtime_ns: int, info: VideoInfo | None, error: str | None) -> Row:
    """A store row for one file: its stamp and its probe result or the reason it is bad.
    Written out field by field (``dataclasses.astuple`` deep-copies: ~0.1 ms a row)."""
    if info is None:
        return (path, size, mtime_ns, *_NO_INFO, error)
    return (path, size, mtime_ns, info.frames, info.fps, info.width, info.height, info.rotation, info.codec,
            info.pix_fmt, info.header_frames, int(info.constant_rate), info.start_pts, info.pts_step,
            int(info.is_image), None)


def row_info(row: Row) -> VideoInfo | None:
    """The probe result of a row (None for a bad file). Written out field by field: this runs once
    per file on every start, so it avoids slicing and generic conversion."""
    if row[15] is not None:
        return None
    return VideoInfo(row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11] == 1, row[12],
                     row[13], row[14] == 1)


class IndexStore:
    """A probe cache database. Use as a context manager, or call :meth:`close`.

    Args:
        path: the database file (created with its folder when missing).
        source: what it indexes (absolute folder or manifest path); a store written for another
            source, or by another schema version, is emptied and reused.
        timeout_s: how long a writer waits for another writer's lock.
    """

    def __init__(self, path: str | Path, source: str, timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE) around writes.
        self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        if not self._current(source):  # only then take the write lock: readers never wait here
            self._create(source)

    def _meta(self) -> dict[str, str]:
        try:
            return dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:  # no table yet
            return {}

    def _current(self, source: str) -> bool:
        meta = self._meta()
        return meta.get("schema") == str(SCHEMA_VERSION) and meta.get("source") == source

    def _create(self, source: str) -> None:
        columns = ", ".join(f"{name} {_INFO_TYPES[name]}" for name in _INFO_FIELDS)
        with self._write():
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            if meta.get("schema") != str(SCHEMA_VERSION) or meta.get("source") != source:
                if meta:
                    logger.info("index store %s was written for %s (schema %s); starting it afresh",
                                self.path, meta.get("source"), meta.get("schema"))
                self._db.execute("DROP TABLE IF EXISTS files")
                self._db.execute("DELETE FROM meta")
                self._db.executemany("INSERT INTO meta VALUES (?, ?)",
                                     [("schema", str(SCHEMA_VERSION)), ("source", source)])
            self._db.execute(
                f"CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                f"{columns}, error TEXT) WITHOUT ROWID"
            )

    # -------------------------------------------------------------------------------------------
    def _write(self):
        return _Transaction(self._db)

    def load(self) -> dict[str, Row]:
        """Every row (see :func:`make_row`), keyed by path."""
        return {row[0]: row for row in self.rows()}

    def stamps(self) -> list[tuple[str, int, int]]:
        """``(path, size, mtime_ns)`` of every row, ordered by path (the table's own order: no sort)."""
        return self._db.execute("SELECT path, size, mtime_ns FROM files ORDER BY path").fetchall()

    def rows(self) -> Iterable[Row]:
        """Every row (see :func:`make_row`), ordered by path, streamed: no list of all rows is built."""
        return self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM files ORDER BY path")

    def put(self, rows: Iterable[Row]) -> int:
        """Insert or replace rows (see :func:`make_row`) in one transaction; returns how many."""
        values = list(rows)
        if values:
            marks = ", ".join("?" * len(_COLUMNS))
            with self._write():
                self._db.executemany(f"INSERT OR REPLACE INTO files VALUES ({marks})", values)
        return len(values)

    def delete(self, paths: Iterable[str]) -> int:
        """Remove rows (files that are gone); returns how many were asked for."""
        keys = [(p,) for p in paths]
        if keys:
            with self._write():
                self._db.executemany("DELETE FROM files WHERE path = ?", keys)
        return len(keys)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): takes the write lock up front."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
