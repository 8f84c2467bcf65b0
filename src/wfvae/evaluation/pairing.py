"""Pairing real videos with their reconstructions: by relative path without extension, found recursively.

How to use::

    pairs = pair_videos("video_gen/run/origin", "video_gen/run")   # [(key, real_file, generated_file), ...]

``a/b.mp4`` pairs with ``a/b.mkv``. Two videos of one folder that differ only by extension (``a.mp4``,
``a.mkv``) keep it in their key (``a.mp4``, ``a.mkv``), the rule ``wfvae reconstruct`` names its outputs by
(``a.mp4.mp4``, ``a.mkv.mp4``), so each still pairs with its own reconstruction. On the generated side, the
``origin/`` subfolder (where reconstruction saves the ground truth) and the real folder itself, if it lies
inside, are skipped. Any video without a partner is an error that lists them. Either side may be a manifest.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from wfvae.data.manifest import is_manifest, output_key, read_manifest
from wfvae.errors import InputError
from wfvae.formats import is_video_path
from wfvae.layout import ORIGIN_DIR
from wfvae.utils.output_folder import collision_free_stems

__all__ = ["pair_videos", "scan_videos"]


def scan_videos(root: str | os.PathLike, exclude: Iterable[Path] = ()) -> dict[str, Path]:
    """Map ``relative/path/without/extension`` -> file for every video under ``root``.

    Files that differ only by extension keep it in their key (see
    :func:`wfvae.utils.output_folder.collision_free_stems`). ``root`` may also be a manifest
    (``.csv``, ``.jsonl``, ``.parquet``): its rows are the videos, keyed the same way by their
    path relative to the manifest's folder (absolute paths lose their leading ``/``, as
    ``wfvae reconstruct`` names its outputs).

    Raises:
        FileNotFoundError: ``root`` is not a directory (nor a manifest).
        InputError: the naming rule still gives two files one key; a manifest row is unusable
            or its file is missing.
    """
    root = Path(root)
    if is_manifest(root) and not root.is_dir():
        return _scan_manifest(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder '{root}' does not exist or is not a directory")
    excluded = [Path(p).resolve() for p in exclude]
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() not in excluded)
        for name in sorted(filenames):
            path = here / name
            if is_video_path(path):
                files[path.relative_to(root).as_posix()] = path
    stems = collision_free_stems(files)
    return {stems[rel]: path for rel, path in sorted(files.items())}


def _scan_manifest(file: Path) -> dict[str, Path]:
    manifest = read_manifest(file)  # ManifestError (an InputError) when unreadable as a whole
    problems = [f"  {label}: {reason}" for label, reason in manifest.bad]
    files: dict[str, Path] = {}
    for row in manifest.rows:
        path = manifest.root / row.path
        if not path.is_file():
            problems.append(f"  {row.path}: file does not exist (manifest row {row.row})")
        else:
            files[output_key(row.path)] = path
    if problems:
        raise InputError(f"manifest {file} has rows that cannot be evaluated:\n" + "\n".join(problems))
    stems = collision_free_stems(files)
    return {stems[rel]: path for rel, path in sorted(files.items())}


def pair_videos(real_dir: str | os.PathLike, generated_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """Pair videos of two folders by relative path without extension.

    The generated side skips its ``origin/`` subfolder and, if nested inside it, the real folder.

    Returns:
        ``[(key, real_file, generated_file), ...]`` sorted by key.

    Raises:
        ValueError: some video has no partner (all are listed), or a folder has no videos.
    """
    real_dir, generated_dir = Path(real_dir), Path(generated_dir)
    skip = [generated_dir / ORIGIN_DIR]
    if real_dir.is_dir() and real_dir.resolve().is_relative_to(generated_dir.resolve()):
        skip.append(real_dir)
    real = scan_videos(real_dir)
    generated = scan_videos(generated_dir, exclude=skip)
    if not real:
        raise InputError(f"no videos found in --real_video_dir '{real_dir}'")
    if not generated:
        raise InputError(f"no videos found in --generated_video_dir '{generated_dir}' (its '{ORIGIN_DIR}/' is skipped)")
    only_real = sorted(set(real) - set(generated))
    only_generated = sorted(set(generated) - set(real))
    if only_real or only_generated:
        lines = ["videos without a partner (matched by relative path without extension):"]
        lines += [f"  only in real '{real_dir}': {_shown(real[k], real_dir)}" for k in only_real]
        lines += [f"  only in generated '{generated_dir}': {_shown(generated[k], generated_dir)}" for k in only_generated]
        raise InputError("\n".join(lines))
    return [(k, real[k], generated[k]) for k in sorted(real)]


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to a folder, or to a manifest's folder (absolute when outside)."""
    base = root.parent if not root.is_dir() else root
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)
