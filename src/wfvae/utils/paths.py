"""Output paths built from untrusted names stay inside their output folder.

Every command that turns a name read from data (a latents index record, a dataset file's relative
path) into an output path goes through :func:`safe_join`. A name that is absolute, that climbs with
``..``, or that reaches outside the folder through a symlink already inside it is refused with
:class:`~wfvae.errors.UnsafePathError`; nothing is written.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from wfvae.errors import UnsafePathError


def check_relative(name: str, what: str = "path") -> PurePosixPath:
    """``name`` as a clean relative path, or UnsafePathError saying why it is not one."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafePathError(f"{what} {name!r} is empty or not a valid file name")
    win = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or win.drive or win.root:
        raise UnsafePathError(f"{what} {name!r} is an absolute path; only paths relative to the folder are allowed")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafePathError(f"{what} {name!r} climbs out of its folder with '..'")
    if not parts or parts == (".",):
        raise UnsafePathError(f"{what} {name!r} does not name a file")
    return PurePosixPath(*parts)


def safe_join(root: str | Path, name: str, what: str = "path") -> Path:
    """``root / name`` after checking that the result cannot lie outside ``root``.

    Symlinks already present below ``root`` are followed when checking, so a link planted inside the
    output folder cannot redirect a write elsewhere.
    """
    root = Path(root)
    path = root / check_relative(name, what)
    resolved_root = root.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise UnsafePathError(f"{what} {name!r} resolves to {resolved}, outside {resolved_root} (through a symlink)")
    return path
