"""What a training checkpoint holds, both ways: :func:`capture` writes the parts into a payload and
:func:`restore` reads a payload back into them. One function each, used for resuming a run and for reloading
the last good checkpoint after non-finite updates; :func:`export_pretrained` writes the inference folder.

How to use::

    parts = TrainingParts(model, loss_fn, opts, ema, sampler, fsdp=False)
    payload = capture(parts, progress, env, config=cfg.to_dict(), model_name=..., model_config=...)
    progress = restore(ckpt, parts, lr=cfg.lr, env=env)              # resume: weights, optimizers, position
    restore(ckpt, parts, lr=cfg.lr, env=env, progress=False)         # reload: weights and optimizers only

Key names are in :mod:`wfvae.checkpoint_keys`; the file format, atomic writes and checksums in
:mod:`wfvae.training.checkpoint`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wfvae import __version__
from wfvae import checkpoint_keys as K
from wfvae.distributed import DistEnv, all_gather_object, broadcast_object
from wfvae.errors import CheckpointError
from wfvae.layout import PRETRAINED_DIR
from wfvae.models import MODEL_CLASSES
from wfvae.training.builders import Optimizers
from wfvae.training.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    find_resumable,
    load_checkpoint,
)
from wfvae.training.ema import EMA
from wfvae.training.nonfinite import NonFinitePolicy
from wfvae.training.parallel import (
    full_model_state_dict,
    full_optimizer_state_dict,
    load_model_state_dict,
    load_optimizer_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = ["Progress", "TrainingParts", "capture", "checkpoint_part", "export_pretrained", "latest_of_experiment",
           "reload_target", "restore"]


@dataclass
class TrainingParts:
    """Everything with state that a checkpoint saves."""

    model: nn.Module            # the generator (unwrapped; sharded in place under FSDP)
    loss_fn: nn.Module          # logvar, perceptual net and discriminator, saved as "dics_model"
    opts: Optimizers
    ema: EMA | None
    sampler: Any                # ResumableDistributedSampler: the position inside the epoch
    fsdp: bool = False


@dataclass
class Progress:
    """Where a run is: its step, epoch, event counters and (after a resume) this rank's saved RNG state."""

    step: int = 0
    epoch: int = 0
    counters: dict[str, int] = field(default_factory=lambda: {"nan_skips_total": 0, "amp_overflows": 0,
                                                              "nan_reloads": 0})
    rng_state: dict | None = None


def checkpoint_part(ckpt: dict, outer: str, inner: str):
    """``ckpt[outer][inner]``, or a CheckpointError naming what is missing."""
    try:
        return ckpt[outer][inner]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint lacks {outer}.{inner}") from e


def capture(parts: TrainingParts, progress: Progress, env: DistEnv, *, config: dict, model_name: str,
            model_config: dict) -> dict[str, Any]:
    """The full checkpoint payload (collective: every rank must call it; only rank 0's result is complete)."""
    rng = all_gather_object(capture_rng_state(), env)
    return {
        K.EPOCH: progress.epoch,
        K.STEP: progress.step,
        K.OPTIMIZER_STATE: {K.GEN_OPTIMIZER: full_optimizer_state_dict(parts.model, parts.opts.gen, parts.fsdp),
                            K.DISC_OPTIMIZER: parts.opts.disc.state_dict()},
        K.STATE_DICT: {K.GEN_MODEL: full_model_state_dict(parts.model, parts.fsdp),
                       K.DISC_MODEL: parts.loss_fn.state_dict()},
        # a host copy of every shadow: on rank 0 only, which writes the file (under FSDP gathering it is a
        # collective, so every rank takes part there)
        K.EMA_STATE: parts.ema.state_dict() if parts.ema is not None and (parts.fsdp or env.is_main) else {},
        K.SCALER_STATE: parts.opts.scaler.state_dict(),
        K.SAMPLER_STATE: parts.sampler.state_dict(),
        K.RNG_STATES: rng,
        K.CONFIG: config,
        K.MODEL_NAME: model_name,
        K.MODEL_CONFIG: model_config,
        K.COUNTERS: dict(progress.counters),
        K.VERSION: __version__,
    }


def restore(ckpt: dict, parts: TrainingParts, *, lr: float, env: DistEnv, generator_optimizer: bool = True,
            discriminator: bool = True, progress: bool = True, ignore_mismatched_sizes: bool = False,
            ) -> Progress | None:
    """Load ``ckpt`` into ``parts``, in place.

    Always the generator weights and the checkpoint's EMA tensors. ``generator_optimizer``: the generator's
    AdamW state. ``discriminator``: the discriminator, its optimizer and the GradScaler. ``progress`` (a
    resume): the EMA first restarts from the loaded weights (what the checkpoint's EMA lacks keeps them), both
    optimizers' learning rate is set to ``lr`` (the schedule sets it again before each step), the data
    position is restored, and the step, epoch, counters and this rank's RNG state are returned. Without
    ``progress`` (a reload after non-finite updates) the running EMA and the learning rate are kept as they
    are, like the step and the data position, and None is returned.
    """
    load_model_state_dict(parts.model, checkpoint_part(ckpt, K.STATE_DICT, K.GEN_MODEL), parts.fsdp,
                          ignore_mismatched_sizes=ignore_mismatched_sizes)
    if parts.ema is not None:
        if progress:
            parts.ema.reset(parts.model)  # what the checkpoint's EMA lacks starts from the loaded weights
        if ckpt.get(K.EMA_STATE):
            parts.ema.load_state_dict(ckpt[K.EMA_STATE], strict=False)
        elif progress:
            logger.warning("checkpoint has no EMA weights; EMA starts from the current weights")
    if generator_optimizer:
        load_optimizer_state_dict(parts.model, parts.opts.gen,
                                  checkpoint_part(ckpt, K.OPTIMIZER_STATE, K.GEN_OPTIMIZER), parts.fsdp)
    if discriminator:
        _load_discriminator(parts.loss_fn, checkpoint_part(ckpt, K.STATE_DICT, K.DISC_MODEL))
        parts.opts.disc.load_state_dict(checkpoint_part(ckpt, K.OPTIMIZER_STATE, K.DISC_OPTIMIZER))
        if parts.opts.scaler.is_enabled() and ckpt.get(K.SCALER_STATE):
            parts.opts.scaler.load_state_dict(ckpt[K.SCALER_STATE])
    if not progress:
        return None
    for opt in (parts.opts.gen, parts.opts.disc):
        for group in opt.param_groups:
            group["lr"] = lr
    parts.sampler.load_state_dict(ckpt[K.SAMPLER_STATE])
    restored = Progress(step=int(ckpt[K.STEP]), epoch=int(ckpt[K.SAMPLER_STATE].get("epoch", ckpt[K.EPOCH])))
    restored.counters.update({k: int(v) for k, v in (ckpt.get(K.COUNTERS) or {}).items() if k in restored.counters})
    rng_states = ckpt.get(K.RNG_STATES)
    if rng_states and len(rng_states) == env.world_size:
        restored.rng_state = rng_states[env.rank]
    else:
        logger.warning("checkpoint has no RNG state for world size %d; random streams restart from the seed "
                       "(training continues, but not bit-identically)", env.world_size)
    return restored


def _load_discriminator(loss_fn: nn.Module, state: dict) -> None:
    own = loss_fn.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"discriminator state does not fit: missing {missing[:5]} ({len(missing)}), "
                              f"unexpected {unexpected[:5]} ({len(unexpected)}); pass --not_resume_discriminator "
                              "to start a fresh discriminator")
    loss_fn.load_state_dict(state, strict=True)


# ---- which checkpoint -------------------------------------------------------------------------------------
def latest_of_experiment(ckpt_dir: str | Path, exp_name: str, run_dir: Path) -> tuple[Path, dict] | None:
    """The newest intact checkpoint of experiment ``exp_name``, whatever hyperparameters its run folder holds.

    Run folders are ``<ckpt_dir>/<exp_name>-lr..-bs..``: a rerun with another --lr or --batch_size gets a new
    folder name, yet ``--resume_from_checkpoint latest`` must continue the experiment. Newest = last written
    (mtime), then highest step; a damaged checkpoint is skipped with a warning (see ``find_resumable``).
    """
    root = Path(ckpt_dir)
    folders = {run_dir}
    if root.is_dir():
        folders |= {d for d in root.glob(f"{glob_escape(exp_name)}-lr*") if d.is_dir()}
    found = [(path.stat().st_mtime_ns, step, path) for folder in folders
             for step, path in CheckpointManager(folder).list()]
    result = find_resumable([path for _, _, path in sorted(found, reverse=True)])
    if result is not None and result[0].parent.resolve() != run_dir.resolve():
        logger.warning("--resume_from_checkpoint latest: resuming experiment %r from %s, written by run folder %s "
                       "(other hyperparameters); this run writes to %s", exp_name, result[0], result[0].parent.name,
                       run_dir)
    return result


def reload_target(policy: NonFinitePolicy, manager: CheckpointManager, env: DistEnv) -> tuple[int, Path] | None:
    """The newest checkpoint saved before the current non-finite streak whose generator weights are all
    finite (chosen on rank 0, broadcast to every rank); None when there is none."""
    chosen = None
    if env.is_main:
        for step, path in policy.reload_candidates(manager.list()):
            try:
                ckpt = load_checkpoint(path)
            except CheckpointError as e:
                logger.warning("not reloading %s: %s", path, e)
                continue
            weights = checkpoint_part(ckpt, K.STATE_DICT, K.GEN_MODEL).values()
            if all(bool(torch.isfinite(t).all()) for t in weights if t.is_floating_point()):
                chosen = (step, str(path))
                break
            logger.warning("not reloading %s: its generator weights hold NaN/Inf", path)
    chosen = broadcast_object(chosen, env)
    return (chosen[0], Path(chosen[1])) if chosen else None


# ---- the inference export ---------------------------------------------------------------------------------
def export_pretrained(parts: TrainingParts, run_dir: Path, env: DistEnv, model_name: str,
                      model_config: dict) -> Path | None:
    """``<run>/pretrained``, a ``save_pretrained`` folder for inference: the EMA weights with --ema, else the
    trained weights. Collective under FSDP (the full weights are gathered); rank 0 writes and returns the path."""
    out = Path(run_dir) / PRETRAINED_DIR
    which = "EMA" if parts.ema is not None else "trained"
    if parts.fsdp:
        state = full_model_state_dict(parts.model, fsdp=True)  # on rank 0 only
        ema = parts.ema.state_dict() if parts.ema is not None else {}
        if not env.is_main:
            return None
        state.update({k.removeprefix(K.MODULE_PREFIX): v for k, v in ema.items()})
        plain = MODEL_CLASSES[model_name].from_config(model_config)  # a plain copy to write from
        plain.load_weights(state, strict=True)
        plain.save_pretrained(out)
    else:
        if not env.is_main:
            return None
        swapped = parts.ema.swapped_into(parts.model) if parts.ema is not None else contextlib.nullcontext()
        with swapped:
            parts.model.save_pretrained(out)
    logger.info("exported %s weights for inference to %s", which, out)
    return out
