"""Output folders that say what produced them, resume after any crash and never leave their root.

Every command that writes a folder of results (``reconstruct``, ``encode``, ``decode``) keeps two
kinds of bookkeeping files in it:

* ``wfvae-manifest.json``: the command and the settings that decide the outputs' content
  (checkpoint identity, frames, resolution, format...). A rerun with other settings stops with a
  message naming each difference; ``--overwrite`` deletes the old outputs and starts again.
* ``wfvae-outputs-r<rank>.txt``: one line per output, appended (and fsynced) just before the
  output is renamed into place. An output counts as done only when it is listed there *and*
  exists; a file at an output path that no list names was not written by this folder's command
  and is never silently taken as done or replaced (``--overwrite`` replaces it).

Outputs are written under a hidden temporary name (``.wfvae-tmp-...``) and renamed, so a file
at its final path is always whole; a killed run leaves at most temporary files, removed by the
next run. Relative output paths come from user data (file names, a latents index) and are
checked to stay inside the folder (:func:`wfvae.utils.paths.safe_join`).

How to use::

    folder = OutputFolder(out_dir, "reconstruct", settings, rank=env.rank)
    folder.prepare(overwrite=cfg.overwrite)      # on one process, before any output
    done = folder.done_outputs()                # set of relative paths
    tmp = folder.temporary_path("a/clip.mp4")    # write here, then
    folder.publish(tmp, "a/clip.mp4")            # claim + rename into place
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from wfvae.errors import InputError, OutputError, UnsafePathError
from wfvae.utils.io import atomic_write_bytes, fsync_dir
from wfvae.utils.paths import check_relative, safe_join

MANIFEST_NAME = "wfvae-manifest.json"
CLAIMS_GLOB = "wfvae-outputs-r*.txt"
TMP_PREFIX = ".wfvae-tmp-"
TRASH_PREFIX = ".wfvae-trash-"


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def collision_free_stems(rel_paths: Iterable[str]) -> dict[str, str]:
    """Map each input's relative path to the output path without extension, never two to one.

    A video keeps its plain stem (``a/clip.mp4`` -> ``a/clip``), so outputs sit where the
    spec's scripts expect them. Only inputs that would share a stem with another input of the
    same folder (``a.mp4`` and ``a.mkv``, or ``a.MP4`` and ``a.mp4``) keep their extension in
    the stem (``a.mp4`` -> ``a.mp4``, ``a.mkv`` -> ``a.mkv``; the output format's extension is
    then added to that).

    Raises:
        InputError: the rule still gives two inputs one stem (``a.mp4``, ``a.mkv`` and a file
            named ``a.mp4.webm``); the message lists them.
    """
    paths = sorted(set(rel_paths))
    plain = {p: check_relative(p, "input file").with_suffix("").as_posix() for p in paths}
    counts = Counter(plain.values())
    stems = {p: (p if counts[plain[p]] > 1 else plain[p]) for p in paths}
    clashes = [s for s, n in Counter(stems.values()).items() if n > 1]
    if clashes:
        names = sorted(p for p in paths if stems[p] in clashes)
        raise InputError(f"these inputs would be written to the same output and cannot be told apart: {names}; "
                         "rename one of them")
    return stems


def check_not_nested(input_path: str | os.PathLike, output_dir: str | os.PathLike, input_option: str,
                     output_option: str) -> None:
    """Refuse an output folder that is, or lies inside, the input folder (outputs would become inputs)."""
    src = Path(os.path.realpath(input_path))
    out = Path(os.path.realpath(output_dir))
    if src.is_file() and out == src.parent:
        raise InputError(
            f"{output_option} {output_dir} is the folder of {input_option} {input_path}: an output could "
            f"replace the input; choose another {output_option}"
        )
    if src.is_dir() and (out == src or out.is_relative_to(src)):
        raise InputError(
            f"{output_option} {output_dir} lies inside {input_option} {input_path}: the outputs would be read "
            f"as inputs by the next run; choose an {output_option} outside {input_path}"
        )


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"{value.get('file', '?')} (sha256 {str(value['sha256'])[:12]}...)"
    return json.dumps(value)


class OutputFolder:
    """The bookkeeping of one output folder; see the module docstring.

    Args:
        root: the output folder (created by :meth:`prepare`).
        command: command name recorded in the manifest (``reconstruct``, ``encode``, ``decode``).
        settings: JSON-able values that decide the outputs' content; keys are the command's
            option names without ``--`` (``ckpt`` for the checkpoint identity).
        rank: this process's rank; each rank appends to its own claims file.
        output_option: the option that names ``root``, for messages.
    """

    def __init__(self, root: str | os.PathLike, command: str, settings: dict[str, Any], rank: int = 0,
                 output_option: str = "--out"):
        self.root = Path(root)
        self.command = command
        self.settings = json.loads(json.dumps(settings))  # normalised as it will read back
        self.rank = rank
        self.output_option = output_option

    # ---------------------------------------------------------------- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def read_manifest(self) -> dict | None:
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise OutputError(f"{self.manifest_path} is unreadable ({e}); pass --overwrite to start this folder again")
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            raise OutputError(f"{self.manifest_path} is not a wfvae manifest; pass --overwrite to start this folder again")
        return data

    def differences(self, manifest: dict) -> list[str]:
        """Human-readable differences between ``manifest`` and this run (empty when they agree)."""
        if manifest.get("command") != self.command:
            return [f"the folder was written by `wfvae {manifest.get('command')}`, not `wfvae {self.command}`"]
        diffs = []
        old = manifest["settings"]
        for key in sorted(set(old) | set(self.settings)):
            if old.get(key) != self.settings.get(key):
                diffs.append(f"--{key}: {_describe(old.get(key))} there, {_describe(self.settings.get(key))} now")
        return diffs

    def prepare(self, overwrite: bool = False) -> None:
        """Check (or, with ``overwrite``, reset) the folder for this run. Call on one process only.

        Raises:
            OutputError: the folder holds outputs of other settings and ``overwrite`` is False.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if overwrite:
            # outputs first, manifest last: a kill in between leaves the old manifest, so the
            # next run either resumes the old settings or is told again to pass --overwrite
            self.remove_claimed_outputs()
            self.remove_temporaries()
            self._write_manifest()
            return
        manifest = self.read_manifest()
        if manifest is not None:
            diffs = self.differences(manifest)
            if diffs:
                raise OutputError(
                    f"{self.output_option} {self.root} holds outputs made with other settings "
                    f"({MANIFEST_NAME}): " + "; ".join(diffs)
                    + f". Pass --overwrite to redo them with the new settings, or choose another {self.output_option}."
                )
        self.remove_temporaries()
        if manifest is None:
            self._write_manifest()

    def _write_manifest(self) -> None:
        body = {"command": self.command, "settings": self.settings, "format": 1}
        atomic_write_bytes(self.manifest_path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())

    # ---------------------------------------------------------------- claims
    def claims(self) -> set[str]:
        """Relative paths of every output any rank has claimed (started to publish)."""
        out: set[str] = set()
        for part in sorted(self.root.glob(CLAIMS_GLOB)):
            for line in part.read_text(errors="replace").splitlines():
                if line.strip():
                    out.add(line.strip())
        return out

    def done_outputs(self) -> set[str]:
        """Claimed outputs that exist: complete, since they are renamed into place whole."""
        return {rel for rel in self.claims() if (self.root / rel).exists()}

    def foreign_outputs(self, rel_paths: Iterable[str]) -> list[str]:
        """Those of ``rel_paths`` that exist but no claims file names (written by someone else)."""
        claimed = self.claims()
        return sorted(rel for rel in rel_paths if rel not in claimed and os.path.lexists(self.root / rel))

    def check_no_foreign(self, rel_paths: Iterable[str]) -> None:
        """Raise OutputError listing outputs that exist but were not written by this folder's command."""
        foreign = self.foreign_outputs(rel_paths)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(
                f"{self.output_option} {self.root} already holds {len(foreign)} output(s) not written by "
                f"`wfvae {self.command}` into this folder ({shown}); an older version or another tool made them. "
                f"Pass --overwrite to replace them, or choose another {self.output_option}."
            )

    def claim(self, rel: str) -> None:
        """Record ``rel`` as this folder's output (durably) before it is renamed into place."""
        with open(self.root / f"wfvae-outputs-r{self.rank}.txt", "a") as f:
            f.write(rel + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove_claimed_outputs(self) -> None:
        """Delete every claimed output and the claims files (for ``--overwrite``)."""
        for rel in sorted(self.claims()):
            try:
                path = safe_join(self.root, rel, "claimed output")
            except UnsafePathError:
                continue  # a claims line we would never have written: leave whatever it names alone
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif os.path.lexists(path):
                path.unlink()
        for part in self.root.glob(CLAIMS_GLOB):
            part.unlink()

    def remove_temporaries(self) -> None:
        """Delete temporary files and folders a killed run left behind."""
        leftovers = [Path(d) / n for d, dirs, files in os.walk(self.root) for n in dirs + files
                     if n.startswith((TMP_PREFIX, TRASH_PREFIX))]
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                path.unlink()

    # ---------------------------------------------------------------- writing
    def target(self, rel: str) -> Path:
        """The final path of output ``rel``, checked to stay inside the folder (parents created)."""
        safe_join(self.root, rel, "output")  # resolves the links that exist: mkdir adds plain folders only
        path = self.root / check_relative(rel, "output")
        path.parent.mkdir(parents=True, exist_ok=True)
        return safe_join(self.root, rel, "output")

    def temporary_path(self, rel: str) -> Path:
        """A hidden sibling of output ``rel`` to write before :meth:`publish`."""
        path = self.target(rel)
        return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")

    def publish(self, tmp: Path, rel: str) -> Path:
        """Claim ``rel`` and rename the finished ``tmp`` (file or folder) onto it, replacing any old one."""
        path = self.target(rel)
        self.claim(rel)
        if path.is_dir() and not path.is_symlink():
            # a folder cannot be replaced by rename: move the old one aside first
            trash = path.with_name(f"{TRASH_PREFIX}{os.getpid()}-{path.name}")
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            if path.is_symlink():
                path.unlink()
            os.replace(tmp, path)
        fsync_dir(path.parent)
        return path
