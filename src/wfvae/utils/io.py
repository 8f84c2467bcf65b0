"""Crash-safe file writing (write a temporary file next to the target, fsync, then rename) and safe,
memory-mapped reading of torch files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wfvae.errors import ConfigError


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see either the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. the target is a folder, or the disk is full: leave no litter
        raise
    fsync_dir(path.parent)


def write_json_option(path: str | Path, obj, option: str = "--json") -> Path:
    """Write ``obj`` as JSON to the file a command-line ``option`` names (atomically, parents created).

    Raises:
        ConfigError: the file cannot be written (a folder, no permission, a read-only disk...).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot write it ({e.strerror or e}); pass a writable file path") from e
    return path


def load_torch_file(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (no pickle code runs), memory-mapped, onto the CPU.

    Memory mapping means a tensor's bytes are read from the file when it is first used, not all up front:
    ranks that load the same checkpoint share the page cache instead of each holding a private copy, and
    a rank that keeps only part of it (an FSDP shard) never reads the rest. Files in torch's legacy
    (pre-1.6, non-zip) format cannot be mapped and are read whole.
    """
    # torch is imported here, not at the top: the manifest and dataset-index code imports this module
    # and must not pay torch's 1-2 s import (a warm index start is ~0.6 s)
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)
