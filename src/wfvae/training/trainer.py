"""GAN training of a WFVAE / CausalVAE: one process, or one process per GPU (or CPU slot) under torchrun.

How to run::

    # one process (CPU or one GPU)
    python -m wfvae.train --model_name WFVAE --model_config examples/configs/wfvae_tiny.json \
        --video_path data/train --eval_video_path data/val --num_frames 9 --resolution 32 --report_to none

    # one node, 8 GPUs (or: bash examples/train_ddp.sh)
    torchrun --nproc_per_node=8 -m wfvae.train --model_name WFVAE --model_config cfg.json --video_path ...

    # two nodes: the same command on each node with the usual rendezvous variables
    torchrun --nnodes=2 --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR --master_port=29500 \
        --nproc_per_node=8 -m wfvae.train ...

    # a generator too big for DDP's full copy per GPU: shard it (same checkpoints, resumable either way)
    torchrun --nproc_per_node=8 -m wfvae.train ... --fsdp

    # resume after a crash or pre-emption (same arguments)
    python -m wfvae.train ... --resume_from_checkpoint latest

What one step does (the original WF-VAE schedule): steps alternate between the generator (the VAE) and the
discriminator once ``step >= disc_start`` -- odd steps train the discriminator, even steps the generator;
before ``disc_start`` every step trains the generator. Each step consumes one batch.

    generator step:      forward (DDP) -> VAE-GAN loss -> backward -> [all-reduce by DDP] -> clip -> AdamW -> EMA
    discriminator step:  forward without grad -> hinge loss on (real, recon) -> backward -> all-reduce -> clip -> AdamW

With ``--fsdp`` the generator is sharded with FSDP2 instead of replicated (see ``wfvae.training.parallel``):
the forward gathers one block at a time, backward reduce-scatters gradients, and each rank's AdamW updates its
shard. The decoder's last layer stays replicated for the adaptive GAN weight; its gradient is all-reduced
explicitly, like the discriminator's. Checkpoints hold full tensors either way.

Every step ends at a *step boundary* where the trainer may validate (every ``--eval_steps``), save
(every ``--save_ckpt_step``) and stop (``--max_steps``, SIGTERM/SIGINT). An update whose loss or gradient
is not finite is skipped (optimizer, scaler and EMA untouched); after ``--max_nan_skips`` consecutive skips
the last good checkpoint is reloaded (``--nan_policy reload``) or training stops (``stop``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from wfvae.config import TrainConfig, parse_train_config
from wfvae.errors import CheckpointError, ConfigError, MissingWeightsError
from wfvae.training import checkpoint as ck
from wfvae.training.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    find_resumable,
    load_checkpoint,
    restore_rng_state,
)
from wfvae.distributed import (
    DistEnv,
    all_gather_object,
    all_reduce_sum_,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from wfvae.training.ema import EMA
from wfvae.training.lr_schedule import lr_at
from wfvae.training.nonfinite import NonFinitePolicy, TrainingDiverged
from wfvae.training.parallel import (
    clip_grad_norm_,
    full_model_state_dict,
    full_optimizer_state_dict,
    is_sharded,
    load_model_state_dict,
    load_optimizer_state_dict,
    replicated_generator_params,
    wrap_generator,
)

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingDiverged", "main", "preflight"]

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def generator_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable generator parameters in the original optimizer's order: decoder side, then encoder side.

    The order matters only for loading an original ``gen_optimizer`` state (its tensors are matched by
    position). Parameters outside encoder/decoder/quant convs are appended last.
    """
    groups = [getattr(model, "post_quant_conv", None), getattr(model, "decoder", None),
              getattr(model, "quant_conv", None), getattr(model, "encoder", None)]
    ordered, seen = [], set()
    for module in groups:
        if isinstance(module, nn.Module):
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    ordered.append(p)
                    seen.add(id(p))
    rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        logger.info("%d generator parameters outside encoder/decoder are trained too: %s",
                    len(rest), [n for n, _ in rest][:5])
        ordered += [p for _, p in rest]
    return ordered


def _encoder_side(model: nn.Module) -> list[nn.Module]:
    return [m for m in (getattr(model, "quant_conv", None), getattr(model, "encoder", None)) if isinstance(m, nn.Module)]


def _read_model_config(cfg: TrainConfig, ckpt: dict | None) -> dict:
    """Architecture source, in order: the resumed checkpoint's stored config, --model_config, the pretrained
    folder's config.json (a Hub id is fetched into the Hub cache here, before any worker starts). A
    --model_config that differs from the checkpoint's is ignored with a warning."""
    from wfvae.models.base import read_config
    from wfvae.models.loading import resolve_pretrained

    stored = ckpt.get("model_config") if ckpt is not None else None
    cli = read_config(cfg.model_config) if cfg.model_config else None
    if isinstance(stored, dict):
        if cli is not None and {k: v for k, v in cli.items() if not k.startswith("_")} != \
                {k: v for k, v in stored.items() if not k.startswith("_")}:
            logger.warning("--model_config differs from the architecture stored in the checkpoint; "
                           "using the checkpoint's (architecture cannot change on resume)")
        return stored
    if cli is not None:
        return cli
    if cfg.pretrained_model_name_or_path:
        p = resolve_pretrained(cfg.pretrained_model_name_or_path, offline=cfg.offline or None)
        for candidate in (p / "config.json", p.parent / "config.json"):
            if candidate.is_file():
                return read_config(candidate)
    raise ConfigError("cannot tell the model architecture: pass --model_config (the checkpoint stores none)")


def preflight(cfg: TrainConfig) -> tuple[int, int]:
    """Checks that need the model's compression ratios, without building real weights.

    The model is constructed on the ``meta`` device (no memory, no init cost). Returns (spatial, temporal).
    """
    from wfvae.models import MODEL_CLASSES

    ckpt = None
    if cfg.resume_from_checkpoint not in (None, "latest") and not cfg.model_config:
        ckpt = torch.load(cfg.resume_from_checkpoint, map_location="cpu", weights_only=True, mmap=True)
    config = _read_model_config(cfg, ckpt)
    cls = MODEL_CLASSES[cfg.model_name]
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cfg.model_name} cannot be built from the model config: {e}") from e
    spatial, temporal = int(model.spatial_compression_ratio), int(model.temporal_compression_ratio)
    cfg.validate_against_model(spatial, temporal)
    # Pretrained LPIPS trunks: found (or downloaded once, under a file lock shared by the ranks) now,
    # so a missing file fails before any work; the loss and validation then read the cached copy.
    from wfvae.networks.lpips import find_lpips_backbone

    offline = cfg.offline or None  # None: WFVAE_OFFLINE / HF_HUB_OFFLINE decide
    if cfg.perceptual_weight > 0 and not cfg.perceptual_random_backbone:
        find_lpips_backbone("vgg", cfg.lpips_backbone_path, offline)
    if cfg.eval_video_path and cfg.eval_lpips and not cfg.perceptual_random_backbone:
        find_lpips_backbone("alex", cfg.eval_lpips_backbone_path, offline)
    return spatial, temporal


class _LossAverager:
    """Running means of detached scalars between two log steps (no device sync until read)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        keys = list(self.sums)
        means = torch.stack([self.sums[k] / self.counts[k] for k in keys]).tolist() if keys else []  # one sync
        out = dict(zip(keys, means))
        self.sums.clear()
        self.counts.clear()
        return out


# ---- the trainer -----------------------------------------------------------------------------------------
class Trainer:
    """Builds every part from a validated :class:`TrainConfig` and runs the loop."""

    # core configs
    cfg: TrainConfig
    env: DistEnv
    # swappable components
    model: nn.Module            # the generator (unwrapped under DDP; sharded in place under --fsdp)
    model_fwd: nn.Module        # DDP wrapper in multi-process runs, else the model itself
    loss_fn: nn.Module          # VAEGANLoss: logvar, perceptual_loss, discriminator (saved as "dics_model")
    gen_opt: torch.optim.Optimizer
    disc_opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    dataset: Any
    sampler: Any
    val_loader: DataLoader | None
    # runtime utilities
    ckpt: CheckpointManager
    metrics: Any                # MetricsLogger on the main process, else None

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        from wfvae.data import datasets as data_mod
        from wfvae.data.sampler import ResumableDistributedSampler
        from wfvae.losses.vae_gan_loss import build_loss
        from wfvae.models import MODEL_CLASSES, load_model

        self.cfg, self.env = cfg, env
        self.device = env.device
        self.amp_dtype = PRECISIONS[cfg.mix_precision]
        self.step, self.epoch = 0, 0
        self.counters = {"nan_skips_total": 0, "amp_overflows": 0, "nan_reloads": 0}
        self.nonfinite = NonFinitePolicy(cfg.max_nan_skips, cfg.nan_policy)
        self._stop_signal: int | None = None  # set by the signal handler of this process
        self._stop_agreed = False  # set when any rank had a signal at the last update (all ranks agree)
        self._old_handlers: dict[int, Any] = {}
        self.metrics = None

        # --- run folder and checkpoint manager -------------------------------------------------------
        self.run_dir = cfg.run_dir
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt = CheckpointManager(self.run_dir, keep_last_k=cfg.keep_last_k, save_delay_s=cfg.debug_save_delay_s)
        if env.is_main:
            self.ckpt.remove_stale_temporaries()
        barrier(env)

        resume_path, ckpt = self._resume_checkpoint()

        # --- model (identical init on every rank: same seed) -----------------------------------------
        seed_everything(cfg.seed)
        model_cls = MODEL_CLASSES[cfg.model_name]
        if cfg.pretrained_model_name_or_path and ckpt is None:
            logger.info("loading pretrained weights from %s", cfg.pretrained_model_name_or_path)
            model = load_model(cfg.pretrained_model_name_or_path, config=cfg.model_config, model_name=cfg.model_name,
                               ignore_mismatched_sizes=cfg.ignore_mismatched_sizes, offline=cfg.offline or None)
        else:
            model = model_cls.from_config(_read_model_config(cfg, ckpt))
        if not isinstance(model, model_cls):
            raise ConfigError(f"--model_name {cfg.model_name} but the weights are a {type(model).__name__}")
        self.model_config = dict(model.config)
        if cfg.enable_tiling:
            if not hasattr(model, "enable_tiling"):
                raise ConfigError(f"{cfg.model_name} has no tiling support (--enable_tiling)")
            model.enable_tiling()
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        if cfg.freeze_encoder:
            for m in _encoder_side(model):
                m.requires_grad_(False)
        if ckpt is not None:
            model.load_weights(ck_get(ckpt, ck.STATE_DICT, ck.GEN_MODEL), strict=True,
                               ignore_mismatched_sizes=cfg.ignore_mismatched_sizes)
        self.model = model.to(self.device)

        # --- loss + discriminator --------------------------------------------------------------------
        self.loss_fn = build_loss(
            cfg.disc_class_name, disc_start=cfg.disc_start, disc_weight=cfg.disc_weight, kl_weight=cfg.kl_weight,
            logvar_init=cfg.logvar_init, perceptual_weight=cfg.perceptual_weight, loss_type=cfg.loss_type,
            wavelet_weight=cfg.wavelet_weight, lpips_backbone_path=cfg.lpips_backbone_path,
            perceptual_random_backbone=cfg.perceptual_random_backbone,
            disc_base_channels=cfg.disc_base_channels, disc_num_layers=cfg.disc_num_layers,
        ).to(self.device)

        # --- data ------------------------------------------------------------------------------------
        # Every rank probes a share of the new files; rank 0 stores them and shares the merged index.
        self.dataset = data_mod.VideoFolderDataset(
            cfg.video_path, num_frames=cfg.num_frames, sample_rate=cfg.sample_rate, resolution=cfg.resolution,
            train=True, seed=cfg.seed, across_ranks=env.distributed, resize=cfg.resize,
            random_crop=cfg.random_crop)
        self.sampler = ResumableDistributedSampler(len(self.dataset), num_replicas=env.world_size, rank=env.rank,
                                                   shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = self.sampler.num_samples // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{len(self.dataset)} usable videos give {self.sampler.num_samples} per rank, fewer than "
                f"--batch_size {cfg.batch_size} (world size {env.world_size}); add videos or lower the batch size")
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch

        # --- parallelism (before the optimizers: FSDP replaces the parameters by their shards) ---------
        # DDP: generator gradients are all-reduced during backward. FSDP: they are reduce-scattered, except
        # the replicated last layer's (``gen_replicated_params``), which _apply_update all-reduces.
        # The discriminator is not wrapped either way: it runs twice per step (real, fake) and is frozen in
        # generator steps, which DDP's hooks do not handle; its gradients are all-reduced explicitly instead.
        self.model_fwd = wrap_generator(self.model, env, fsdp=cfg.fsdp,
                                        find_unused_parameters=cfg.find_unused_parameters)
        self.fsdp = cfg.fsdp and env.distributed
        self.gen_replicated_params = replicated_generator_params(self.model, self.fsdp)

        # --- optimizers, scaler ----------------------------------------------------------------------
        self.gen_params = generator_parameters(self.model)
        self.disc_params = [p for p in self.loss_fn.discriminator.parameters() if p.requires_grad]
        self.gen_opt = torch.optim.AdamW(self.gen_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.disc_opt = torch.optim.AdamW(self.disc_params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.mix_precision == "fp16")

        # --- resume ----------------------------------------------------------------------------------
        rng_to_restore = None
        if ckpt is not None:
            rng_to_restore = self._load_training_state(ckpt, resume_path)

        # --- EMA (after the weights are final) -------------------------------------------------------
        self.ema = None
        if cfg.ema:
            self.ema = EMA(self.model, cfg.ema_decay)
            ema_state = ckpt.get(ck.EMA_STATE) if ckpt is not None else None
            if ema_state:
                self.ema.load_state_dict(ema_state, strict=False)
            elif ckpt is not None:
                logger.warning("checkpoint has no EMA weights; EMA starts from the current weights")

        # --- validation data -------------------------------------------------------------------------
        self.val_loader = self._build_val_loader(data_mod) if cfg.eval_video_path else None
        self.eval_lpips_model = None
        if cfg.eval_video_path and cfg.eval_lpips:
            from wfvae.networks.lpips import load_lpips

            self.eval_lpips_model = load_lpips("alex", backbone_path=cfg.eval_lpips_backbone_path,
                                               random_backbone=cfg.perceptual_random_backbone, device=self.device)

        # --- tracker (main process only) -------------------------------------------------------------
        if env.is_main:
            from wfvae.training.metrics_logger import MetricsLogger

            tracker_config = {**{f"model/{k}": v for k, v in self.model_config.items()}, **cfg.to_dict()}
            self.metrics = MetricsLogger(self.run_dir, report_to=cfg.report_to, run_name=cfg.run_name,
                                         project=cfg.wandb_project, config=tracker_config)
            if ckpt is not None:
                self.metrics.log({"event": "resume", "from": str(resume_path)}, step=self.step)

        # --- RNG: per-rank streams (posterior noise, dropout); restored last so nothing above shifts them
        seed_everything(cfg.seed + env.rank)
        if rng_to_restore is not None:
            restore_rng_state(rng_to_restore)
        self._set_train_mode()
        self._log_summary()

    # ---- set-up pieces ----------------------------------------------------------------------------------
    def _build_val_loader(self, data_mod) -> DataLoader | None:
        cfg, env = self.cfg, self.env
        ds = data_mod.VideoFolderDataset(
            cfg.eval_video_path, num_frames=cfg.eval_num_frames, sample_rate=cfg.eval_sample_rate,
            resolution=cfg.eval_resolution, crop_size=cfg.eval_resolution, train=False, seed=cfg.seed,
            across_ranks=env.distributed, resize=cfg.resize)
        n = len(ds) if cfg.eval_subset_size == 0 else min(len(ds), cfg.eval_subset_size)
        # Each video is evaluated by exactly one rank (no padding), so none is counted twice.
        shard = list(range(n))[env.rank::env.world_size]
        self.val_size = n
        return DataLoader(Subset(ds, shard), batch_size=cfg.eval_batch_size, shuffle=False,
                          num_workers=min(cfg.dataset_num_worker, 2), pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(cfg.seed))

    def _load_training_state(self, ckpt: dict, path: Path) -> dict | None:
        """Optimizers, discriminator, scaler, data position, step; returns this rank's RNG state (or None)."""
        cfg = self.cfg
        if not cfg.not_resume_optimizer:
            load_optimizer_state_dict(self.model, self.gen_opt, ck_get(ckpt, ck.OPTIMIZER_STATE, ck.GEN_OPTIMIZER),
                                      self.fsdp)
        if not cfg.not_resume_discriminator:
            self._load_disc_state(ck_get(ckpt, ck.STATE_DICT, ck.DISC_MODEL))
            self.disc_opt.load_state_dict(ck_get(ckpt, ck.OPTIMIZER_STATE, ck.DISC_OPTIMIZER))
            scaler_state = ckpt.get(ck.SCALER_STATE) or {}
            if self.scaler.is_enabled() and scaler_state:
                self.scaler.load_state_dict(scaler_state)
        for opt in (self.gen_opt, self.disc_opt):  # constant LR: the command line wins over the stored value
            for group in opt.param_groups:
                group["lr"] = cfg.lr
        self.sampler.load_state_dict(ckpt[ck.SAMPLER_STATE])
        self.epoch = int(ckpt[ck.SAMPLER_STATE].get("epoch", ckpt[ck.EPOCH]))
        self.step = int(ckpt[ck.STEP])
        self.counters.update({k: int(v) for k, v in (ckpt.get("counters") or {}).items() if k in self.counters})
        rng_states = ckpt.get(ck.RNG_STATES)
        logger.info("resumed from %s: step %d, epoch %d, %d samples into the epoch", path, self.step, self.epoch,
                    self.sampler.consumed)
        if rng_states and len(rng_states) == self.env.world_size:
            return rng_states[self.env.rank]
        logger.warning("checkpoint has no RNG state for world size %d; random streams restart from the seed "
                       "(training continues, but not bit-identically)", self.env.world_size)
        return None

    def _load_disc_state(self, state: dict) -> None:
        own = self.loss_fn.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(f"discriminator state does not fit: missing {missing[:5]} ({len(missing)}), "
                                  f"unexpected {unexpected[:5]} ({len(unexpected)}); pass --not_resume_discriminator "
                                  "to start a fresh discriminator")
        self.loss_fn.load_state_dict(state, strict=True)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_encoder:
            for m in _encoder_side(self.model):
                m.eval()
        self.loss_fn.train()  # the discriminator trains; the perceptual net stays in eval by construction

    def _log_summary(self) -> None:
        if not self.env.is_main:
            return
        count = lambda ps: sum(p.numel() for p in ps)
        logger.info("config: %s", self.cfg.to_dict())
        logger.info("generator %.2fM params (%.2fM trained), discriminator %.2fM params",
                    count(self.model.parameters()) / 1e6, count(self.gen_params) / 1e6, count(self.disc_params) / 1e6)
        logger.info("Trainer is initialized with world size %d, local batch %d, global batch %d, %d steps/epoch, "
                    "%d total steps, precision %s, device %s; training starts at step %d",
                    self.env.world_size, self.cfg.batch_size, self.cfg.batch_size * self.env.world_size,
                    self.steps_per_epoch, self.total_steps, self.cfg.mix_precision, self.device, self.step)

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full checkpoint payload (collective: every rank must call it; only rank 0's result is written)."""
        rng = all_gather_object(capture_rng_state(), self.env)
        return {
            ck.EPOCH: self.epoch,
            ck.STEP: self.step,
            ck.OPTIMIZER_STATE: {ck.GEN_OPTIMIZER: full_optimizer_state_dict(self.model, self.gen_opt, self.fsdp),
                                 ck.DISC_OPTIMIZER: self.disc_opt.state_dict()},
            ck.STATE_DICT: {ck.GEN_MODEL: full_model_state_dict(self.model, self.fsdp),
                            ck.DISC_MODEL: self.loss_fn.state_dict()},
            ck.EMA_STATE: self.ema.state_dict() if self.ema is not None else {},
            ck.SCALER_STATE: self.scaler.state_dict(),
            ck.SAMPLER_STATE: self.sampler.state_dict(),
            ck.RNG_STATES: rng,
            ck.CONFIG: self.cfg.to_dict(),
            "model_name": self.cfg.model_name,
            "model_config": self.model_config,
            "counters": dict(self.counters),
            "wfvae_version": _version(),
        }

    def _replicas_identical(self) -> bool:
        """Whether every rank holds the same generator and discriminator weights (collective).

        All-reduced gradients are identical on every rank, so the weights must be bit-identical; a difference
        means a rank skipped or repeated an update. Under --fsdp only the replicated parameters are compared
        (each rank holds a different shard of the rest).
        """
        params = [p for p in self.model.parameters() if not is_sharded(p)]
        params += list(self.loss_fn.discriminator.parameters())
        fingerprint = torch.stack([p.detach().double().sum() for p in params]).cpu()
        gathered = all_gather_object(fingerprint, self.env)
        same = all(torch.equal(gathered[0], g) for g in gathered[1:])
        if not same:
            logger.error("step %d: model replicas differ between ranks", self.step)
        return same

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>.ckpt`` (collective; rank 0 writes). Not during a non-finite streak nor right
        after a reload: only weights from before a streak count as good (reload, 'latest', keep_last_k)."""
        if not self.nonfinite.may_save():
            logger.warning("step %d: no checkpoint saved (inside a non-finite streak, or no finite update since the "
                           "last reload)", self.step)
            return None
        if self.env.distributed:
            identical = self._replicas_identical()
            if self.metrics is not None:
                self.metrics.log({"sys/replicas_identical": int(identical)}, step=self.step)
        payload = self.state_dict()
        path = self.ckpt.save(payload, self.step) if self.env.is_main else None
        barrier(self.env)
        self._last_saved_step = self.step
        return path

    def export_pretrained(self) -> Path | None:
        """``save_pretrained`` folder for inference: EMA weights when --ema, else the trained weights."""
        if self.fsdp:
            return self._export_pretrained_sharded()
        if not self.env.is_main:
            return None
        out = self.run_dir / "pretrained"
        ctx = self.ema.swapped_into(self.model) if self.ema is not None else contextlib.nullcontext()
        with ctx:
            self.model.save_pretrained(out)
        logger.info("exported %s weights for inference to %s", "EMA" if self.ema else "trained", out)
        return out

    def _export_pretrained_sharded(self) -> Path | None:
        """``export_pretrained`` under --fsdp (collective): gather the full weights, then rank 0 writes them
        from a plain copy of the model."""
        from wfvae.models import MODEL_CLASSES

        state = full_model_state_dict(self.model, fsdp=True)  # on rank 0 only
        ema = self.ema.state_dict() if self.ema is not None else {}
        if not self.env.is_main:
            return None
        state.update({k.removeprefix("module."): v for k, v in ema.items()})
        plain = MODEL_CLASSES[self.cfg.model_name].from_config(self.model_config)
        plain.load_weights(state, strict=True)
        out = self.run_dir / "pretrained"
        plain.save_pretrained(out)
        logger.info("exported %s weights for inference to %s", "EMA" if self.ema else "trained", out)
        return out

    # ---- one step ---------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _poisoned(self) -> bool:
        k = self.cfg.debug_inject_nan_step
        return k is not None and k <= self.step + 1 < k + self.cfg.debug_inject_nan_count

    def _generator_step(self, video: torch.Tensor) -> tuple[str, dict]:
        disc = self.loss_fn.discriminator
        disc.requires_grad_(False)  # the adversarial term needs d(logits)/d(recon) only
        try:
            with self._autocast():
                out = self.model_fwd(video)
                wavelet = out.extra if self.cfg.wavelet_loss else None
                loss, parts = self.loss_fn.generator_loss(video, out.sample, out.posterior, self.step,
                                                          last_layer=self.model.get_last_layer(),
                                                          wavelet_coeffs=wavelet)
        finally:
            disc.requires_grad_(True)
        if self._poisoned():
            loss = loss * float("nan")
        self.gen_opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        status, grad_norm = self._apply_update(self.gen_opt, self.gen_params, loss,
                                               all_reduce=self.gen_replicated_params)
        if status == "ok" and self.ema is not None:
            self.ema.update(self.model)
        parts["grad_norm_g"] = grad_norm
        parts["latents_std"] = out.posterior.mean.detach().float().std()
        return status, parts

    def _discriminator_step(self, video: torch.Tensor) -> tuple[str, dict]:
        with torch.no_grad(), self._autocast():
            recon = self.model(video).sample  # no graph: the generator is not updated in this step
        with self._autocast():
            loss, parts = self.loss_fn.discriminator_loss(video, recon, self.step)
        if self._poisoned():
            loss = loss * float("nan")
        self.disc_opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        status, grad_norm = self._apply_update(self.disc_opt, self.disc_params, loss, all_reduce=self.disc_params)
        parts["grad_norm_d"] = grad_norm
        return status, parts

    def _apply_update(self, opt, params, loss, all_reduce: list[nn.Parameter]) -> tuple[str, torch.Tensor]:
        """Sync, check, clip and step. Returns ("ok" | "nonfinite" | "overflow", pre-clip grad norm).

        ``all_reduce``: parameters whose gradients no wrapper has averaged over ranks yet (the discriminator;
        under --fsdp also the generator's replicated last layer).
        """
        env = self.env
        if all_reduce and env.distributed:
            grads = [p.grad for p in all_reduce if p.grad is not None]
            if grads:
                flat = torch._utils._flatten_dense_tensors(grads)
                all_reduce_sum_(flat, env).div_(env.world_size)
                for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                    g.copy_(synced)
        self.scaler.unscale_(opt)
        grad_norm = clip_grad_norm_(params, self.cfg.clip_grad_norm)  # global norm, also over FSDP shards
        # One small all-reduce carries the loss (for the log), the norm and the stop request, so every rank
        # takes the same decision; .tolist() is the step's one host-device sync point.
        flags = torch.stack([loss.detach().float(), grad_norm.detach().float().to(self.device),
                             # torch.full, not torch.tensor: no second, blocking host-to-device copy
                             torch.full((), float(self._stop_signal is not None), device=self.device)])
        loss_sum, norm_sum, stop = all_reduce_sum_(flags, env).tolist()
        if stop > 0:
            self._stop_agreed = True  # every rank sees the same sum, so every rank stops at the same step
        self._last_loss = loss_sum / env.world_size
        loss_ok, grad_ok = math.isfinite(loss_sum), math.isfinite(norm_sum)
        if loss_ok and not grad_ok and self.scaler.is_enabled():
            # fp16 overflow: GradScaler's job. step() skips the update and update() lowers the scale.
            self.scaler.step(opt)
            self.scaler.update()
            self.counters["amp_overflows"] += 1
            return "overflow", grad_norm
        if not (loss_ok and grad_ok):
            opt.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                # unscale_ above recorded this optimizer's inf check; update() consumes it (and lowers the scale),
                # else the next unscale_ raises "unscale_() has already been called ... since the last update()"
                self.scaler.update()
            return "nonfinite", grad_norm
        self.scaler.step(opt)
        self.scaler.update()
        return "ok", grad_norm

    def _handle_nonfinite(self, which: str) -> None:
        """A skipped update: count it; at the limit reload the last good checkpoint or stop (NonFinitePolicy)."""
        self.counters["nan_skips_total"] += 1
        action = self.nonfinite.skipped(self.step)
        logger.warning("step %d: non-finite %s loss or gradient; update skipped (%d in a row, %d in total)",
                       self.step, which, self.nonfinite.consecutive, self.counters["nan_skips_total"])
        if self.metrics is not None:
            self.metrics.log({"event": "nonfinite_skip", "which": which, "consecutive": self.nonfinite.consecutive,
                              "train/nan_skips_total": self.counters["nan_skips_total"]}, step=self.step)
        if action == "continue":
            return
        target = self._reload_target() if action == "reload" else None
        if target is None:
            why = "--nan_policy stop" if action == "stop" else \
                f"no checkpoint with finite weights saved before step {self.nonfinite.streak_start} to reload"
            raise TrainingDiverged(
                f"{self.nonfinite.consecutive} consecutive non-finite updates at step {self.step} ({why}). Lower "
                f"--lr, use --mix_precision fp32/bf16, or resume from an earlier checkpoint.")
        from_step, path = target
        self.nonfinite.reloaded(from_step)  # raises TrainingDiverged when this checkpoint keeps diverging
        self._reload_weights(path)

    def _reload_target(self) -> tuple[int, Path] | None:
        """The newest checkpoint saved before the non-finite streak whose generator weights are all finite
        (chosen on rank 0, broadcast); None when there is none."""
        chosen = None
        if self.env.is_main:
            for step, path in self.nonfinite.reload_candidates(self.ckpt.list()):
                try:
                    ckpt = load_checkpoint(path)
                except CheckpointError as e:
                    logger.warning("not reloading %s: %s", path, e)
                    continue
                if all(bool(torch.isfinite(t).all()) for t in ck_get(ckpt, ck.STATE_DICT, ck.GEN_MODEL).values()
                       if t.is_floating_point()):
                    chosen = (step, str(path))
                    break
                logger.warning("not reloading %s: its generator weights hold NaN/Inf", path)
        chosen = broadcast_object(chosen, self.env)
        return (chosen[0], Path(chosen[1])) if chosen else None

    def _resume_checkpoint(self) -> tuple[Path | None, dict | None]:
        """--resume_from_checkpoint: a file, or 'latest' (see :meth:`_latest_of_experiment`); (None, None): fresh."""
        cfg, env = self.cfg, self.env
        if cfg.resume_from_checkpoint != "latest":
            if not cfg.resume_from_checkpoint:
                return None, None
            return Path(cfg.resume_from_checkpoint), load_checkpoint(cfg.resume_from_checkpoint)
        found = self._latest_of_experiment() if env.is_main else None
        path = broadcast_object(str(found[0]) if found else None, env)
        if path is None:
            logger.warning("--resume_from_checkpoint latest: experiment %r has no checkpoint under %s (run folders "
                           "%s-*); starting a NEW run in %s", cfg.exp_name, cfg.ckpt_dir, cfg.exp_name, self.run_dir)
            return None, None
        return Path(path), (found[1] if found else load_checkpoint(path))

    def _latest_of_experiment(self) -> tuple[Path, dict] | None:
        """The newest intact checkpoint of this experiment, whatever hyperparameters its run folder name holds.

        Run folders are ``<ckpt_dir>/<exp_name>-lr..-bs..``: a rerun with another --lr or --batch_size gets a new
        folder name, yet 'latest' must continue the experiment. Newest = last written (mtime), then highest
        step; a damaged checkpoint is skipped with a warning (see :func:`find_resumable`).
        """
        root = Path(self.cfg.ckpt_dir)
        folders = {self.run_dir}
        if root.is_dir():
            folders |= {d for d in root.glob(f"{glob_escape(self.cfg.exp_name)}-lr*") if d.is_dir()}
        found = [(path.stat().st_mtime_ns, step, path) for folder in folders
                 for step, path in CheckpointManager(folder).list()]
        result = find_resumable([path for _, _, path in sorted(found, reverse=True)])
        if result is not None and result[0].parent.resolve() != self.run_dir.resolve():
            logger.warning("--resume_from_checkpoint latest: resuming experiment %r from %s, written by run folder %s "
                           "(other hyperparameters); this run writes to %s", self.cfg.exp_name, result[0],
                           result[0].parent.name, self.run_dir)
        return result

    def _reload_weights(self, path: Path) -> None:
        """Restore weights, optimizers, EMA and scaler from ``path``; keep the step and data position, so the
        batches that produced the non-finite values are not replayed."""
        ckpt = load_checkpoint(path)
        load_model_state_dict(self.model, ck_get(ckpt, ck.STATE_DICT, ck.GEN_MODEL), self.fsdp)
        load_optimizer_state_dict(self.model, self.gen_opt, ck_get(ckpt, ck.OPTIMIZER_STATE, ck.GEN_OPTIMIZER),
                                  self.fsdp)
        self._load_disc_state(ck_get(ckpt, ck.STATE_DICT, ck.DISC_MODEL))
        self.disc_opt.load_state_dict(ck_get(ckpt, ck.OPTIMIZER_STATE, ck.DISC_OPTIMIZER))
        if self.scaler.is_enabled() and ckpt.get(ck.SCALER_STATE):
            self.scaler.load_state_dict(ckpt[ck.SCALER_STATE])
        if self.ema is not None and ckpt.get(ck.EMA_STATE):
            self.ema.load_state_dict(ckpt[ck.EMA_STATE], strict=False)
        self.counters["nan_reloads"] += 1
        logger.warning("reloaded weights and optimizer state from %s (the last good checkpoint, saved before the "
                       "streak) after %d non-finite updates; continuing at step %d with new data",
                       path, self.cfg.max_nan_skips, self.step)
        if self.metrics is not None:
            self.metrics.log({"event": "nan_reload", "from": str(path),
                              "train/nan_reloads": self.counters["nan_reloads"]}, step=self.step)

    # ---- validation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, prefix: str = "val") -> dict[str, float]:
        """PSNR (and LPIPS) of the posterior-mean reconstruction, averaged over videos on all ranks."""
        from wfvae.evaluation.metrics import psnr
        from wfvae.networks.lpips import lpips_video

        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # psnr, lpips, count
        videos: list[np.ndarray] = []
        start = time.perf_counter()
        num_batches = 0
        for batch in self.val_loader:
            num_batches += 1
            video = batch["video"].to(self.device, non_blocking=True)
            with self._autocast():
                recon = self.model(video, sample_posterior=False).sample
            recon = recon.float().clamp(-1.0, 1.0)
            sums[0] += psnr(video, recon).sum().to(sums)
            if self.eval_lpips_model is not None:
                sums[1] += lpips_video(self.eval_lpips_model, video, recon).double().sum()
            sums[2] += video.shape[0]
            if self.env.is_main and len(videos) < self.cfg.eval_num_video_log:
                for real, fake in zip(video, recon):
                    if len(videos) >= self.cfg.eval_num_video_log:
                        break
                    side = torch.cat([real, fake], dim=-1)  # (3, T, H, 2W): input | reconstruction
                    videos.append(((side.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255)
                                  .to(torch.uint8).cpu().numpy())
        if self.fsdp:
            self._pad_sharded_forwards(num_batches)
        all_reduce_sum_(sums, self.env)
        self._set_train_mode()
        n = int(sums[2].item())
        result = {f"{prefix}/psnr": (sums[0] / max(n, 1)).item(), f"{prefix}/num_videos": n,
                  f"{prefix}/time_s": time.perf_counter() - start}
        if self.eval_lpips_model is not None:
            result[f"{prefix}/lpips"] = (sums[1] / max(n, 1)).item()
        if self.metrics is not None:
            self.metrics.log(result, step=self.step)
            if videos:
                self.metrics.log_videos(f"{prefix}/recon", videos, step=self.step)
            logger.info("%s at step %d: %s", prefix, self.step,
                        {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
        return result

    def _pad_sharded_forwards(self, num_batches: int) -> None:
        """Under --fsdp every forward is a collective (it gathers each block's shards), so a rank with fewer
        validation batches (videos are split unevenly over ranks) runs throw-away forwards until all ranks
        have run as many as the busiest one."""
        most = max(all_gather_object(num_batches, self.env))
        cfg = self.cfg
        size = cfg.eval_resolution
        dummy = torch.zeros(1, 3, cfg.eval_num_frames, size, size, device=self.device)  # (B, C, T, H, W)
        for _ in range(most - num_batches):
            with self._autocast():
                self.model(dummy, sample_posterior=False)

    # ---- signals ----------------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self._stop_signal = signum
        logger.warning("received %s: saving a checkpoint at the next step boundary, then exiting",
                       signal.Signals(signum).name)

    def _install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    # ---- the loop ---------------------------------------------------------------------------------------
    def _make_loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch)  # keeps a resumed position inside the same epoch
        self.dataset.set_epoch(self.epoch)  # before iter(): workers copy the dataset
        workers = self.cfg.dataset_num_worker
        return DataLoader(
            self.dataset, batch_size=self.cfg.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=workers, pin_memory=self.device.type == "cuda", persistent_workers=False,
            # own generator: creating the iterator must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(self.cfg.seed + 1000 * self.epoch + self.env.rank),
            **({"prefetch_factor": 2} if workers > 0 else {}),
        )

    def train(self) -> int:
        """Run until ``total_steps``, a stop signal, or divergence. Returns the process exit code."""
        cfg, env = self.cfg, self.env
        self._install_signal_handlers()
        self._last_saved_step = self.step if cfg.resume_from_checkpoint else -1
        averager = _LossAverager()
        bar = None
        if env.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                       disable=None, file=sys.stderr)
        logger.info("Training starts at step %d (epoch %d)", self.step, self.epoch)
        t_last, clips_since = time.perf_counter(), 0
        data_time = 0.0
        stopped_by_signal = False
        try:
            while self.step < self.total_steps and not stopped_by_signal:
                epoch_at_start = self.epoch
                t_data = time.perf_counter()
                for batch in self._make_loader():
                    data_time += time.perf_counter() - t_data
                    video = batch["video"].to(self.device, non_blocking=True)
                    disc_turn = self.step % 2 == 1 and self.step >= cfg.disc_start
                    self._set_lr()
                    status, parts = self._discriminator_step(video) if disc_turn else self._generator_step(video)
                    self.sampler.advance(video.shape[0])
                    self.step += 1
                    clips_since += video.shape[0] * env.world_size
                    if status == "ok":
                        self.nonfinite.finite(self.step)
                        averager.add(parts)
                    elif status == "nonfinite":
                        self._handle_nonfinite("discriminator" if disc_turn else "generator")
                    # Epoch bookkeeping before any save, so a checkpoint at the end of an epoch resumes at the
                    # start of the next one.
                    if self.sampler.consumed + cfg.batch_size > self.sampler.num_samples:
                        self.epoch += 1
                        self.sampler.set_epoch(self.epoch)  # position 0 of the new epoch
                        self.dataset.set_epoch(self.epoch)

                    if bar is not None:
                        bar.update(1)
                    if self.step % cfg.log_steps == 0:
                        now = time.perf_counter()
                        self._log_train(averager.pop(), batch, now - t_last, clips_since, data_time, bar)
                        t_last, clips_since, data_time = now, 0, 0.0
                    if self.val_loader is not None and (self.step % cfg.eval_steps == 0 or self.step == 1):
                        self.validate("val")
                        if self.ema is not None:
                            with self.ema.swapped_into(self.model):
                                self.validate("val_ema")
                    if self.step % cfg.save_ckpt_step == 0:
                        self.save_checkpoint()
                    # Multi-process runs stop on the agreed flag only (a local flag could split the ranks);
                    # a single process may stop as soon as its own flag is set.
                    if self._stop_agreed or (not env.distributed and self._stop_signal is not None):
                        stopped_by_signal = True
                        break
                    if self.step >= self.total_steps or self.epoch != epoch_at_start:
                        break
                    t_data = time.perf_counter()
                else:
                    # The loader ran dry without the bookkeeping above noticing (should not happen with
                    # drop_last); start the next epoch rather than loop forever.
                    if self.epoch == epoch_at_start:
                        self.epoch += 1
            if stopped_by_signal:
                if self._last_saved_step != self.step:
                    self.save_checkpoint()
                logger.warning("stopped by signal at step %d; resume with --resume_from_checkpoint latest", self.step)
            else:
                if self._last_saved_step != self.step:
                    self.save_checkpoint()
                bad = [] if self.fsdp else [n for n, t in self.model.state_dict().items()
                                            if t.is_floating_point() and not bool(torch.isfinite(t).all())]
                if bad:
                    raise TrainingDiverged(f"training ended with NaN/Inf in {len(bad)} generator tensors (first: "
                                           f"{bad[0]}); nothing exported. Lower --lr or resume from an earlier "
                                           "checkpoint.")
                self.export_pretrained()
                logger.info("training finished at step %d", self.step)
            return 0
        finally:
            if bar is not None:
                bar.close()
            self._restore_signal_handlers()

    def _set_lr(self) -> None:
        """The schedule's learning rate for this step, on both optimizers (a function of the step alone)."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg.lr, self.total_steps, cfg.lr_warmup_steps, cfg.lr_scheduler)
        for opt in (self.gen_opt, self.disc_opt):
            for group in opt.param_groups:
                group["lr"] = lr

    def _log_train(self, values: dict[str, float], batch, seconds: float, clips: int, data_time: float, bar) -> None:
        if not self.env.is_main:
            return
        record = {f"train/{k}": v for k, v in values.items()}
        record.update({
            "train/loss": self._last_loss,  # loss of the last update (G or D), averaged over ranks
            "train/lr": self.gen_opt.param_groups[0]["lr"],
            "train/epoch": self.epoch,
            "perf/it_per_s": self.cfg.log_steps / max(seconds, 1e-9),
            "perf/clips_per_s": clips / max(seconds, 1e-9),
            "perf/data_time_frac": data_time / max(seconds, 1e-9),
            "train/nan_skips_total": self.counters["nan_skips_total"],
            "data/index": [int(i) for i in batch["index"]],  # which samples this rank trained on last
        })
        if self.device.type == "cuda":
            record["sys/gpu_mem_max_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            import resource

            record["sys/cpu_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.metrics.log(record, step=self.step)
        if bar is not None and not bar.disable:
            bar.set_postfix(loss=f"{self._last_loss:.4g}", clips_s=f"{record['perf/clips_per_s']:.2f}")
        def shown(key: str) -> str:  # "-": not computed in this logging window (e.g. no D step yet)
            return f"{values[key]:.4g}" if key in values else "-"

        logger.info("step %d/%d g_total %s rec %s kl %s g_adv %s d %s | %.2f it/s %.2f clips/s",
                    self.step, self.total_steps, shown("loss_g_total"), shown("loss_rec"), shown("loss_kl"),
                    shown("loss_g_adv"), shown("loss_d"), record["perf/it_per_s"], record["perf/clips_per_s"])

    def close(self) -> None:
        self._restore_signal_handlers()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def ck_get(ckpt: dict, outer: str, inner: str):
    try:
        return ckpt[outer][inner]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint lacks {outer}.{inner}") from e


def _version() -> str:
    from wfvae import __version__

    return __version__


# ---- entry point -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``wfvae train`` / ``python -m wfvae.train``. Returns 0 on success or a clean signal stop, 1 when
    training diverged or failed, 2 for bad arguments."""
    from wfvae.utils.logging import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_train_config(argv, prog="wfvae train")
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import os  # only for the rank used in log lines before the process group exists

    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        cfg.validate()
        preflight(cfg)
    except (ConfigError, CheckpointError, MissingWeightsError) as e:
        logger.error("%s", e)
        return 2
    if cfg.check_only:
        print(f"configuration OK: run folder {cfg.run_dir}")
        return 0

    env = init_distributed(cfg.device)
    trainer = None
    try:
        trainer = Trainer(cfg, env)
        return trainer.train()
    except TrainingDiverged as e:
        logger.error("training stopped: %s", e)
        return 1
    except (ConfigError, CheckpointError, MissingWeightsError) as e:
        logger.error("%s", e)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
        cleanup(env)


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("wfvae train", main))
