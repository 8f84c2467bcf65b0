"""Training checkpoints: one ``.ckpt`` file per save, in the original WF-VAE layout, written atomically.

How to use::

    manager = CheckpointManager(run_dir, keep_last_k=3)
    manager.save(payload, step=1000)              # -> run_dir/checkpoint-1000.ckpt
    path = manager.latest()                       # newest complete checkpoint or None
    ckpt = load_checkpoint(path)                  # torch.load(weights_only=True) + layout check

Layout (key names are in :mod:`wfvae.checkpoint_keys`; ``dics_model`` is the original's spelling)::

    {
      "epoch": int, "current_step": int,
      "optimizer_state": {"gen_optimizer": ..., "disc_optimizer": ...},
      "state_dict": {"gen_model": model.state_dict(), "dics_model": loss_module.state_dict()},
      "ema_state_dict": {"module.<param>": tensor, ...} or {},
      "scaler_state": GradScaler.state_dict() (possibly {}),
      "sampler_state": sampler.state_dict(),
      # additions of this package (the original ignores unknown keys):
      "rng_states": [per-rank RNG state], "config": TrainConfig as dict,
      "model_name": str, "model_config": dict, "wfvae_version": str, "counters": {...},
    }

Only tensors and plain Python values are stored, so ``torch.load(..., weights_only=True)`` reads it.
Each file gets a ``<name>.sha256`` beside it (the SHA-256 of its bytes, written once the file is complete):
:func:`verify_checkpoint` tells a damaged copy from a good one, and :func:`find_resumable` (``--resume_from_checkpoint
latest``) falls back from a damaged newest checkpoint to the newest intact one, with a warning.
A write goes to a hidden temporary file in the same folder, is flushed and fsynced, then renamed over the
final name (``os.replace`` is atomic on POSIX), and the folder is fsynced. A crash at any point leaves
either the previous set of checkpoints or the previous set plus the new complete one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wfvae.checkpoint_keys import GEN_MODEL, REQUIRED_KEYS, STATE_DICT, STEP
from wfvae.errors import CheckpointError
from wfvae.layout import CHECKPOINT_RE, checkpoint_name
from wfvae.utils.io import load_torch_file

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointManager",
    "capture_rng_state",
    "checksum_path",
    "find_resumable",
    "load_checkpoint",
    "restore_rng_state",
    "verify_checkpoint",
]

_TMP_PREFIX = ".tmp-checkpoint-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems / platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointManager:
    """Save, list, prune and find the checkpoints of one run folder.

    Args:
        run_dir: folder that holds ``checkpoint-<step>.ckpt`` files (created when missing).
        keep_last_k: keep only the newest K checkpoints after each save; 0 keeps all. 1 is rejected: the
            only good file would be deleted as soon as a new one is complete, leaving no fallback if the new
            file turns out to be from a diverged model.
    """

    def __init__(self, run_dir: str | os.PathLike, keep_last_k: int = 0):
        if keep_last_k < 0 or keep_last_k == 1:
            raise ValueError(f"keep_last_k must be 0 (keep all) or >= 2, got {keep_last_k}")
        self.run_dir = Path(run_dir)
        self.keep_last_k = keep_last_k

    def path_for(self, step: int) -> Path:
        return self.run_dir / checkpoint_name(step)

    def list(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as ``(step, path)``, oldest first. Temporary files are never listed."""
        if not self.run_dir.is_dir():
            return []
        found = []
        for p in self.run_dir.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1][1] if found else None

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files left by a save that was killed (call from the main process only)."""
        removed = []
        if self.run_dir.is_dir():
            for p in self.run_dir.iterdir():
                if p.name.startswith(_TMP_PREFIX):
                    p.unlink(missing_ok=True)
                    removed.append(p)
        if removed:
            logger.warning("removed %d incomplete checkpoint file(s) from an interrupted save: %s",
                           len(removed), [p.name for p in removed])
        return removed

    def save(self, payload: dict[str, Any], step: int) -> Path:
        """Write ``payload`` as ``checkpoint-<step>.ckpt`` atomically; prune old files; return the path."""
        missing = [k for k in REQUIRED_KEYS if k not in payload]
        if missing:
            raise CheckpointError(f"checkpoint payload lacks required keys {missing}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        tmp = self.run_dir / f"{_TMP_PREFIX}{step}-{os.getpid()}"
        start = time.perf_counter()
        try:
            with open(tmp, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            self._commit(tmp, final)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a half-written temporary behind when we can help it.
            tmp.unlink(missing_ok=True)
            raise
        _write_checksum(final)
        _fsync_dir(self.run_dir)
        size_mb = final.stat().st_size / 2**20
        logger.info("saved checkpoint %s (%.1f MiB) in %.2f s", final, size_mb, time.perf_counter() - start)
        self._prune()
        return final

    def _commit(self, tmp: Path, final: Path) -> None:
        """The atomic step of a save: the complete temporary file takes the final name."""
        os.replace(tmp, final)

    def _prune(self) -> None:
        if self.keep_last_k <= 0:
            return
        found = self.list()
        for _step, path in found[: max(0, len(found) - self.keep_last_k)]:
            path.unlink(missing_ok=True)
            checksum_path(path).unlink(missing_ok=True)
            logger.info("removed old checkpoint %s (keep_last_k=%d)", path.name, self.keep_last_k)


def checksum_path(path: str | os.PathLike) -> Path:
    """The ``.sha256`` file beside a checkpoint."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_checksum(path: Path) -> None:
    """``<path>.sha256``: ``<hex digest>  <file name>`` (the ``sha256sum`` format), written atomically."""
    side = checksum_path(path)
    tmp = side.with_name(f"{_TMP_PREFIX}{side.name}-{os.getpid()}")
    tmp.write_text(f"{_sha256(path)}  {path.name}\n")
    os.replace(tmp, side)


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """Why ``path`` is damaged (its bytes do not match its ``.sha256``), or None when it matches or has
    no checksum file (checkpoints of older versions and of the original code)."""
    path = Path(path)
    side = checksum_path(path)
    try:
        expected = side.read_text().split()[0]
    except (OSError, IndexError):
        return None
    actual = _sha256(path)
    if actual != expected:
        return f"its SHA-256 {actual[:12]}... does not match {side.name} ({expected[:12]}...)"
    return None


def find_resumable(candidates: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The first of ``candidates`` (newest first) that is intact and loads; a damaged one is skipped with a
    warning naming it and the reason. None when none is usable."""
    for path in candidates:
        problem = verify_checkpoint(path)
        if problem is None:
            try:
                return path, load_checkpoint(path)
            except CheckpointError as e:
                problem = str(e)
        logger.warning("checkpoint %s is damaged (%s); falling back to the next newest one", path, problem)
    return None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (ours or the original's) safely and check its layout.

    Raises:
        CheckpointError: unreadable file, not a dict, or required keys missing (the message lists them).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    start = time.perf_counter()
    try:
        ckpt = load_torch_file(path)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(ckpt).__name__}, expected a dict")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks keys {missing}; found {sorted(ckpt)}. "
                              "Is this a training checkpoint (not a save_pretrained folder)?")
    if GEN_MODEL not in ckpt[STATE_DICT]:
        raise CheckpointError(f"checkpoint {str(path)!r}: state_dict has no {GEN_MODEL!r}")
    logger.info("loaded checkpoint %s (step %s) in %.2f s", path, ckpt[STEP], time.perf_counter() - start)
    return ckpt


# ---- RNG state (plain values / tensors only, so weights_only loading works) ------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states of this process."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's current device only
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
