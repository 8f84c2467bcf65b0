"""Manifests: a table that lists a dataset's videos, as an alternative to a folder.

How to use::

    wfvae train --video_path /data/k400/train.csv ...          # any command that takes a folder
    wfvae data-check --video_path /data/k400/train --num_frames 33 --write_manifest train.csv

Formats, chosen by the file's extension:

* ``.csv``: a header row, comma-separated (Open-Sora's and VidTok's metadata tables are CSV);
* ``.jsonl``: one JSON object per line;
* ``.parquet``: needs pyarrow (``pip install wfvae[parquet]``).

Columns: ``path`` (required) is relative to the manifest's folder or absolute. ``num_frames``,
``fps``, ``height`` and ``width`` are optional; a row that has all four is trusted and not
probed (``verify=True`` / ``--verify`` probes it anyway and reports where the two disagree).
Other columns (captions, scores, ...) are ignored. ``num_frames`` is the number of frames that
decode; ``height`` and ``width`` are the displayed size (after rotation).

Rows that cannot be used (no path, a value that is not a number, a path listed twice) are
reported like bad videos, with the row number, and skipped; a missing file is reported when
the dataset is indexed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from wfvae.errors import InputError
from wfvae.utils.io import atomic_write_bytes

__all__ = [
    "MANIFEST_EXTENSIONS",
    "METADATA_COLUMNS",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "is_manifest",
    "output_key",
    "read_manifest",
    "write_manifest",
]

MANIFEST_EXTENSIONS = frozenset({".csv", ".jsonl", ".parquet"})
# Optional columns, in the order ``write_manifest`` writes them after ``path``.
METADATA_COLUMNS = ("num_frames", "fps", "height", "width")


class ManifestError(InputError):
    """The manifest as a whole cannot be read (missing file, no ``path`` column, bad format)."""


@dataclasses.dataclass(slots=True)
class ManifestRow:
    """One usable row.

    Attributes:
        path: relative to the manifest's folder with ``/`` separators when the file lies inside
            that folder, otherwise absolute.
        row: 1-based data row number (the header is not counted), for messages.
        num_frames, fps, height, width: the manifest's values, None when absent.
    """

    path: str
    row: int
    num_frames: int | None = None
    fps: float | None = None
    height: int | None = None
    width: int | None = None

    @property
    def trusted(self) -> bool:
        """All four metadata values are present, so the file need not be probed."""
        return None not in (self.num_frames, self.fps, self.height, self.width)


@dataclasses.dataclass
class Manifest:
    """A parsed manifest: usable rows and rejected rows ``(label, reason)``."""

    file: Path
    root: Path
    rows: list[ManifestRow]
    bad: list[tuple[str, str]]


def is_manifest(path: str | os.PathLike) -> bool:
    """True when ``path`` names a manifest by its extension (existing or not)."""
    return Path(path).suffix.lower() in MANIFEST_EXTENSIONS


def output_key(path: str) -> str:
    """A dataset entry's path as a relative path, for naming outputs inside an output folder.

    Entry paths are relative (kept as they are) or, for manifest rows outside the manifest's
    folder, absolute: those lose their anchor (``/data/k400/a.mp4`` -> ``data/k400/a.mp4``).
    """
    p = Path(path)
    return p.relative_to(p.anchor).as_posix() if p.is_absolute() else p.as_posix()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value)
    )


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} {value!r} is not a whole number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not number.is_integer():
        raise ValueError(f"{name} {value!r} is not a whole number")
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(number)


def _as_fps(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"fps {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"fps {value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"fps must be a positive number, got {value!r}")
    return number


def _normalise_path(text: str, root: Path) -> str:
    """Relative (posix) when the file lies under ``root``, else absolute."""
    full = os.path.normpath(text if os.path.isabs(text) else os.path.join(root, text))
    rel = os.path.relpath(full, root)
    if rel == os.curdir or rel.startswith(os.pardir + os.sep) or rel == os.pardir:
        return full
    return Path(rel).as_posix()


def _records(file: Path) -> Iterable[dict[str, Any]]:
    """Yield one dict per data row, in file order."""
    ext = file.suffix.lower()
    if ext == ".csv":
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in [n.strip() for n in reader.fieldnames]:
                raise ManifestError(
                    f"manifest {file} has no 'path' column in its header row "
                    f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})"
                )
            for record in reader:
                yield {(k or "").strip(): v for k, v in record.items()}
    elif ext == ".jsonl":
        with open(file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    yield {"__error__": f"line {line_no} is not valid JSON ({e.msg})"}
                    continue
                yield record if isinstance(record, dict) else {"__error__": f"line {line_no} is not a JSON object"}
    elif ext == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional: only Parquet manifests need it
        except ImportError:
            raise ManifestError(
                f"reading the Parquet manifest {file} needs pyarrow: pip install 'wfvae[parquet]' "
                "(or convert it to .csv / .jsonl)"
            ) from None
        try:
            table = pq.read_table(file)
        except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError family
            raise ManifestError(f"cannot read the Parquet manifest {file}: {e}") from None
        if "path" not in table.column_names:
            raise ManifestError(
                f"manifest {file} has no 'path' column (found: {', '.join(table.column_names) or 'nothing'})"
            )
        wanted = [c for c in ("path", *METADATA_COLUMNS) if c in table.column_names]
        yield from table.select(wanted).to_pylist()
    else:
        raise ManifestError(
            f"{file}: unknown manifest extension '{file.suffix}'; use one of {', '.join(sorted(MANIFEST_EXTENSIONS))}"
        )


def read_manifest(file: str | os.PathLike) -> Manifest:
    """Parse a manifest; bad rows are collected in ``Manifest.bad``, not raised.

    Raises:
        ManifestError: the file is missing, unreadable, of an unknown format or has no ``path``.
    """
    file = Path(file).expanduser().absolute()
    if not file.is_file():
        raise ManifestError(f"manifest not found (or not a file): {file}")
    root = file.parent
    rows: list[ManifestRow] = []
    bad: list[tuple[str, str]] = []
    first_row: dict[str, int] = {}
    try:
        for number, record in enumerate(_records(file), 1):
            where = f"{file.name} row {number}"
            if "__error__" in record:
                bad.append((where, f"manifest {record['__error__']}"))
                continue
            raw = record.get("path")
            if _missing(raw) or not isinstance(raw, str):
                bad.append((where, "manifest row has no path"))
                continue
            path = _normalise_path(raw.strip(), root)
            if path in first_row:
                bad.append((path, f"listed twice in the manifest (rows {first_row[path]} and {number}); row {number} ignored"))
                continue
            values: dict[str, Any] = {}
            try:
                for name in METADATA_COLUMNS:
                    value = record.get(name)
                    if not _missing(value):
                        values[name] = _as_fps(value) if name == "fps" else _as_int(name, value)
            except ValueError as e:
                bad.append((path, f"manifest row {number}: {e}"))
                continue
            first_row[path] = number
            rows.append(ManifestRow(path, number, **values))
    except UnicodeDecodeError as e:
        raise ManifestError(f"manifest {file} is not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise ManifestError(f"manifest {file} is not valid CSV ({e})") from None
    except OSError as e:
        raise ManifestError(f"cannot read manifest {file} ({e})") from None
    return Manifest(file=file, root=root, rows=rows, bad=bad)


def write_manifest(file: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows (``path`` plus any of ``num_frames/fps/height/width``) atomically.

    ``path`` values are written as given; make them relative to ``file``'s folder (or absolute).
    The format follows the extension, like :func:`read_manifest`.
    """
    file = Path(file)
    ext = file.suffix.lower()
    columns = ("path", *METADATA_COLUMNS)
    records = [{c: r.get(c) for c in columns} for r in rows]
    if ext == ".csv":
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        data = buf.getvalue().encode("utf-8")
    elif ext == ".jsonl":
        data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    elif ext == ".parquet":
        try:
            import pyarrow as pa  # lazy: optional extra [parquet]
            import pyarrow.parquet as pq
        except ImportError:
            raise ManifestError("writing a Parquet manifest needs pyarrow: pip install 'wfvae[parquet]'") from None
        table = pa.table(
            {
                "path": pa.array([r["path"] for r in records], pa.string()),
                "num_frames": pa.array([r["num_frames"] for r in records], pa.int64()),
                "fps": pa.array([r["fps"] for r in records], pa.float64()),
                "height": pa.array([r["height"] for r in records], pa.int64()),
                "width": pa.array([r["width"] for r in records], pa.int64()),
            }
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
    else:
        raise ManifestError(
            f"{file}: unknown manifest extension '{file.suffix}'; use one of {', '.join(sorted(MANIFEST_EXTENSIONS))}"
        )
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(file, data)
    return file
