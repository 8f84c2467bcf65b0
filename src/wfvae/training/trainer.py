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
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from wfvae.config import TrainConfig, parse_train_config
from wfvae.distributed import (
    DistEnv,
    all_reduce_sum_,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from wfvae.errors import CheckpointError, ConfigError, MissingWeightsError
from wfvae.runtime import configure_backends, free_memory_promptly, resolve_precision
from wfvae.training import builders
from wfvae.training.builders import PRECISIONS, preflight, seed_everything
from wfvae.training.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    restore_rng_state,
)
from wfvae.training.lr_schedule import lr_at
from wfvae.training.meters import LossAverager, ThroughputWindow
from wfvae.training.metrics_logger import MetricsLogger
from wfvae.training.nonfinite import NonFinitePolicy, TrainingDiverged
from wfvae.training.parallel import (
    clip_grad_norm_,
    replicas_identical,
    replicated_generator_params,
    wrap_generator,
)
from wfvae.training.signals import StopRequest
from wfvae.training.state import (
    Progress,
    TrainingParts,
    capture,
    export_pretrained,
    latest_of_experiment,
    reload_target,
    restore,
)
from wfvae.training.validation import validate
from wfvae.utils.logging import setup_logging

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainingDiverged", "main", "preflight"]


class Trainer:
    """Builds every part from a validated :class:`TrainConfig` (see :mod:`wfvae.training.builders`), restores
    a checkpoint into them (:func:`wfvae.training.state.restore`) and runs the loop (:meth:`train`)."""

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg, self.env, self.device = cfg, env, env.device
        # bf16 autocast needs an Ampere or newer GPU: older ones fall back to fp32 with a warning
        self.amp_dtype = PRECISIONS[resolve_precision(cfg.mix_precision, self.device)]
        configure_backends(self.device, benchmark=cfg.cudnn_benchmark, allow_tf32=cfg.allow_tf32)
        self.run_dir = cfg.run_dir
        self.metrics: MetricsLogger | None = None  # the main process's tracker
        self.stop = StopRequest()  # this process's signal
        self._stop_agreed = False  # any rank had a signal at the last update (all ranks agree)
        self._last_loss = float("nan")
        self.nonfinite = NonFinitePolicy(cfg.max_nan_skips, cfg.nan_policy)
        self.ckpt = self._open_run_folder()
        resume_path, ckpt = self._resume_checkpoint()

        seed_everything(cfg.seed)  # identical init on every rank; the model and the discriminator draw from it
        self.model = builders.build_model(cfg, ckpt).to(self.device)
        self.model_config = dict(self.model.config)
        self.loss_fn = builders.build_loss_module(cfg).to(self.device)
        self.dataset, self.sampler = builders.build_train_data(cfg, env)
        self.steps_per_epoch = self.sampler.num_samples // cfg.batch_size
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * self.steps_per_epoch
        # Before the optimizers: FSDP replaces the parameters by their shards. DDP all-reduces generator
        # gradients during backward; FSDP reduce-scatters them, except the replicated last layer's
        # (``gen_replicated_params``), which _apply_update all-reduces. The discriminator is not wrapped either
        # way: it runs twice per step (real, fake) and is frozen in generator steps, which DDP's hooks do not
        # handle; its gradients are all-reduced explicitly instead.
        self.model_fwd = wrap_generator(self.model, env, fsdp=cfg.fsdp, find_unused_parameters=cfg.find_unused_parameters,
                                        param_dtype=PRECISIONS[cfg.fsdp_param_dtype])
        self.fsdp = cfg.fsdp and env.distributed
        self.gen_replicated_params = replicated_generator_params(self.model, self.fsdp)
        self.opts = builders.build_optimizers(cfg, self.model, self.loss_fn, self.device)
        self.ema = builders.build_ema(cfg, self.model)
        self.parts = TrainingParts(self.model, self.loss_fn, self.opts, self.ema, self.sampler, self.fsdp)
        self.progress = Progress()
        if ckpt is not None:
            self.progress = restore(ckpt, self.parts, lr=cfg.lr, env=env,
                                    generator_optimizer=not cfg.not_resume_optimizer,
                                    discriminator=not cfg.not_resume_discriminator,
                                    ignore_mismatched_sizes=cfg.ignore_mismatched_sizes)
            logger.info("resumed from %s: step %d, epoch %d, %d samples into the epoch", resume_path,
                        self.progress.step, self.progress.epoch, self.sampler.consumed)
        self.val_loader = builders.build_val_loader(cfg, env, self.device)
        self.eval_lpips_model = builders.build_eval_lpips(cfg, self.device)
        if env.is_main:
            tracker_config = {**{f"model/{k}": v for k, v in self.model_config.items()}, **cfg.to_dict()}
            self.metrics = MetricsLogger(self.run_dir, report_to=cfg.report_to, run_name=cfg.run_name,
                                         project=cfg.wandb_project, config=tracker_config)
            if ckpt is not None:
                self.metrics.log({"event": "resume", "from": str(resume_path)}, step=self.progress.step)
        # Per-rank random streams (posterior noise, dropout), restored last so nothing above shifts them.
        seed_everything(cfg.seed + env.rank)
        if self.progress.rng_state is not None:
            restore_rng_state(self.progress.rng_state)
        self._set_train_mode()
        self._log_summary()

    # ---- set-up ----------------------------------------------------------------------------------------
    def _open_run_folder(self) -> CheckpointManager:
        manager = CheckpointManager(self.run_dir, keep_last_k=self.cfg.keep_last_k)
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            manager.remove_stale_temporaries()
        barrier(self.env)
        return manager

    def _resume_checkpoint(self) -> tuple[Path | None, dict | None]:
        """--resume_from_checkpoint: a file, or 'latest' (see ``latest_of_experiment``); (None, None): fresh."""
        cfg, env = self.cfg, self.env
        if cfg.resume_from_checkpoint != "latest":
            if not cfg.resume_from_checkpoint:
                return None, None
            return Path(cfg.resume_from_checkpoint), load_checkpoint(cfg.resume_from_checkpoint)
        found = latest_of_experiment(cfg.ckpt_dir, cfg.exp_name, self.run_dir) if env.is_main else None
        path = broadcast_object(str(found[0]) if found else None, env)
        if path is None:
            logger.warning("--resume_from_checkpoint latest: experiment %r has no checkpoint under %s (run folders "
                           "%s-*); starting a NEW run in %s", cfg.exp_name, cfg.ckpt_dir, cfg.exp_name, self.run_dir)
            return None, None
        return Path(path), (found[1] if found else load_checkpoint(path))

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_encoder:
            for m in builders.encoder_side(self.model):
                m.eval()
        self.loss_fn.train()  # the discriminator trains; the perceptual net stays in eval by construction

    def _log_summary(self) -> None:
        if not self.env.is_main:
            return
        count = lambda ps: sum(p.numel() for p in ps)
        logger.info("config: %s", self.cfg.to_dict())
        logger.info("generator %.2fM params (%.2fM trained), discriminator %.2fM params",
                    count(self.model.parameters()) / 1e6, count(self.opts.gen_params) / 1e6,
                    count(self.opts.disc_params) / 1e6)
        logger.info("Trainer is initialized with world size %d, local batch %d, global batch %d, %d steps/epoch, "
                    "%d total steps, precision %s, device %s; training starts at step %d",
                    self.env.world_size, self.cfg.batch_size, self.cfg.batch_size * self.env.world_size,
                    self.steps_per_epoch, self.total_steps, self.cfg.mix_precision, self.device, self.progress.step)

    # ---- the loop ---------------------------------------------------------------------------------------
    def train(self) -> int:
        """Run until ``total_steps``, a stop signal, or divergence. Returns the process exit code."""
        cfg, env, progress = self.cfg, self.env, self.progress
        self._last_saved_step = progress.step if cfg.resume_from_checkpoint else -1
        averager, window, stopped = LossAverager(), ThroughputWindow(), False
        bar = tqdm(total=self.total_steps, initial=progress.step, desc="train", dynamic_ncols=True, disable=None,
                   file=sys.stderr) if env.is_main else None
        logger.info("Training starts at step %d (epoch %d)", progress.step, progress.epoch)
        with self.stop.installed(), (bar if bar is not None else contextlib.nullcontext()):
            while progress.step < self.total_steps and not stopped:
                epoch = progress.epoch
                loader = builders.build_train_loader(cfg, self.dataset, self.sampler, epoch, env.rank, self.device)
                for batch in self._timed(loader, window):
                    video = batch["video"].to(self.device, non_blocking=True)
                    self._update(video, averager)
                    window.clips += video.shape[0] * env.world_size
                    # -- step boundary: log, validate, save, stop --
                    if bar is not None:
                        bar.update(1)
                    if progress.step % cfg.log_steps == 0:
                        self._log_train(averager.pop(), batch, *window.pop(), bar)
                    if self.val_loader is not None and (progress.step % cfg.eval_steps == 0 or progress.step == 1):
                        self.validate_all()
                    if progress.step % cfg.save_ckpt_step == 0:
                        self.save_checkpoint()
                    # Multi-process runs stop on the agreed flag only (a local flag could split the ranks).
                    stopped = self._stop_agreed or (not env.distributed and self.stop.requested)
                    if stopped or progress.step >= self.total_steps or progress.epoch != epoch:
                        break
                else:  # the loader ran dry before the bookkeeping noticed (not with drop_last): next epoch
                    if progress.epoch == epoch:
                        progress.epoch += 1
            if self._last_saved_step != progress.step:
                self.save_checkpoint()
        if stopped:
            logger.warning("stopped by signal at step %d; resume with --resume_from_checkpoint latest", progress.step)
            return 0
        self._check_final_weights()
        export_pretrained(self.parts, self.run_dir, env, cfg.model_name, self.model_config)
        logger.info("training finished at step %d", progress.step)
        return 0

    @staticmethod
    def _timed(loader, window: ThroughputWindow):
        """The loader's batches, adding the time spent waiting for each to ``window.data_time``."""
        batches = iter(loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            window.data_time += time.perf_counter() - start
            yield batch

    def _update(self, video: torch.Tensor, averager: LossAverager) -> None:
        """One step: a discriminator update on odd steps once ``disc_start`` is reached, else a generator one."""
        progress, sampler = self.progress, self.sampler
        disc_turn = progress.step % 2 == 1 and progress.step >= self.cfg.disc_start
        self._set_lr()
        status, parts = self.discriminator_step(video) if disc_turn else self.generator_step(video)
        sampler.advance(video.shape[0])
        progress.step += 1
        if status == "ok":
            self.nonfinite.finite(progress.step)
            averager.add(parts)
        elif status == "nonfinite":
            self._on_nonfinite("discriminator" if disc_turn else "generator")
        # Epoch bookkeeping before any save, so a checkpoint at the end of an epoch resumes at the start of
        # the next one.
        if sampler.consumed + self.cfg.batch_size > sampler.num_samples:
            progress.epoch += 1
            sampler.set_epoch(progress.epoch)  # position 0 of the new epoch
            self.dataset.set_epoch(progress.epoch)

    def _set_lr(self) -> None:
        """The schedule's learning rate for this step, on both optimizers (a function of the step alone)."""
        cfg = self.cfg
        lr = lr_at(self.progress.step, cfg.lr, self.total_steps, cfg.lr_warmup_steps, cfg.lr_scheduler)
        for opt in (self.opts.gen, self.opts.disc):
            for group in opt.param_groups:
                group["lr"] = lr

    # ---- one update -------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def generator_step(self, video: torch.Tensor) -> tuple[str, dict]:
        """Forward, VAE-GAN loss, backward and update of the generator (and its EMA)."""
        disc = self.loss_fn.discriminator
        disc.requires_grad_(False)  # the adversarial term needs d(logits)/d(recon) only
        try:
            with self._autocast():
                out = self.model_fwd(video)
                wavelet = out.extra if self.cfg.wavelet_loss else None
                loss, parts = self.loss_fn.generator_loss(video, out.sample, out.posterior, self.progress.step,
                                                          last_layer=self.model.get_last_layer(),
                                                          wavelet_coeffs=wavelet)
        finally:
            disc.requires_grad_(True)
        self.opts.gen.zero_grad(set_to_none=True)
        self.opts.scaler.scale(loss).backward()
        status, grad_norm = self._apply_update(self.opts.gen, self.opts.gen_params, loss,
                                               all_reduce=self.gen_replicated_params)
        if status == "ok" and self.ema is not None:
            self.ema.update(self.model)
        parts["grad_norm_g"] = grad_norm
        parts["latents_std"] = out.posterior.mean.detach().float().std()
        return status, parts

    def discriminator_step(self, video: torch.Tensor) -> tuple[str, dict]:
        """Hinge loss on (real, reconstruction) and an update of the discriminator; the generator is not updated."""
        with torch.no_grad(), self._autocast():
            recon = self.model(video).sample  # no graph: the generator is not updated in this step
        with self._autocast():
            loss, parts = self.loss_fn.discriminator_loss(video, recon, self.progress.step)
        self.opts.disc.zero_grad(set_to_none=True)
        self.opts.scaler.scale(loss).backward()
        status, grad_norm = self._apply_update(self.opts.disc, self.opts.disc_params, loss,
                                               all_reduce=self.opts.disc_params)
        parts["grad_norm_d"] = grad_norm
        return status, parts

    def _apply_update(self, opt, params, loss, all_reduce: list[nn.Parameter]) -> tuple[str, torch.Tensor]:
        """Sync, check, clip and step. Returns ("ok" | "nonfinite" | "overflow", pre-clip grad norm).

        ``all_reduce``: parameters whose gradients no wrapper has averaged over ranks yet (the discriminator;
        under --fsdp also the generator's replicated last layer).
        """
        env, scaler = self.env, self.opts.scaler
        if all_reduce and env.distributed:
            grads = [p.grad for p in all_reduce if p.grad is not None]
            if grads:
                flat = torch._utils._flatten_dense_tensors(grads)
                all_reduce_sum_(flat, env).div_(env.world_size)
                for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                    g.copy_(synced)
        scaler.unscale_(opt)
        grad_norm = clip_grad_norm_(params, self.cfg.clip_grad_norm)  # global norm, also over FSDP shards
        # One small all-reduce carries the loss (for the log), the norm and the stop request, so every rank
        # takes the same decision; .tolist() is the step's one host-device sync point.
        flags = torch.stack([loss.detach().float(), grad_norm.detach().float().to(self.device),
                             # torch.full, not torch.tensor: no second, blocking host-to-device copy
                             torch.full((), float(self.stop.requested), device=self.device)])
        loss_sum, norm_sum, stop = all_reduce_sum_(flags, env).tolist()
        if stop > 0:
            self._stop_agreed = True  # every rank sees the same sum, so every rank stops at the same step
        self._last_loss = loss_sum / env.world_size
        loss_ok, grad_ok = math.isfinite(loss_sum), math.isfinite(norm_sum)
        if loss_ok and not grad_ok and scaler.is_enabled():
            # fp16 overflow: GradScaler's job. step() skips the update and update() lowers the scale.
            scaler.step(opt)
            scaler.update()
            self.progress.counters["amp_overflows"] += 1
            return "overflow", grad_norm
        if not (loss_ok and grad_ok):
            opt.zero_grad(set_to_none=True)
            if scaler.is_enabled():
                # unscale_ above recorded this optimizer's inf check; update() consumes it (and lowers the scale),
                # else the next unscale_ raises "unscale_() has already been called ... since the last update()"
                scaler.update()
            return "nonfinite", grad_norm
        scaler.step(opt)
        scaler.update()
        return "ok", grad_norm

    def _on_nonfinite(self, which: str) -> None:
        """A skipped update: count it; at the limit reload the last good checkpoint or stop (NonFinitePolicy)."""
        counters, step, policy = self.progress.counters, self.progress.step, self.nonfinite
        counters["nan_skips_total"] += 1
        action = policy.skipped(step)
        logger.warning("step %d: non-finite %s loss or gradient; update skipped (%d in a row, %d in total)",
                       step, which, policy.consecutive, counters["nan_skips_total"])
        self._event({"event": "nonfinite_skip", "which": which, "consecutive": policy.consecutive,
                     "train/nan_skips_total": counters["nan_skips_total"]})
        if action == "continue":
            return
        target = reload_target(policy, self.ckpt, self.env) if action == "reload" else None
        if target is None:
            why = "--nan_policy stop" if action == "stop" else \
                f"no checkpoint with finite weights saved before step {policy.streak_start} to reload"
            raise TrainingDiverged(f"{policy.consecutive} consecutive non-finite updates at step {step} ({why}). "
                                   "Lower --lr, use --mix_precision fp32/bf16, or resume from an earlier checkpoint.")
        from_step, path = target
        policy.reloaded(from_step)  # raises TrainingDiverged when this checkpoint keeps diverging
        # Weights, optimizers, EMA and scaler come back; the step and data position stay, so the batches that
        # produced the non-finite values are not replayed.
        restore(load_checkpoint(path), self.parts, lr=self.cfg.lr, env=self.env, progress=False)
        counters["nan_reloads"] += 1
        logger.warning("reloaded weights and optimizer state from %s (the last good checkpoint, saved before the "
                       "streak) after %d non-finite updates; continuing at step %d with new data",
                       path, self.cfg.max_nan_skips, step)
        self._event({"event": "nan_reload", "from": str(path), "train/nan_reloads": counters["nan_reloads"]})

    # ---- step-boundary work -----------------------------------------------------------------------------
    def validate_all(self) -> None:
        """Validate the trained weights ("val") and, with --ema, the EMA weights ("val_ema")."""
        self.validate("val")
        if self.ema is not None:
            with self.ema.swapped_into(self.model):
                self.validate("val_ema")

    def validate(self, prefix: str = "val") -> dict[str, float]:
        """PSNR (and LPIPS) of the posterior-mean reconstruction, averaged over videos on all ranks."""
        cfg = self.cfg
        self.model.eval()
        values, videos = validate(self.model, self.val_loader, self.env, autocast=self._autocast,
                                  lpips_model=self.eval_lpips_model, num_video_log=cfg.eval_num_video_log,
                                  pad_shape=(1, 3, cfg.eval_num_frames, cfg.eval_resolution, cfg.eval_resolution),
                                  fsdp=self.fsdp)
        self._set_train_mode()
        order = ("psnr", "num_videos", "time_s", "lpips")
        result = {f"{prefix}/{k}": values[k] for k in order if k in values}
        if self.metrics is not None:
            self.metrics.log(result, step=self.progress.step)
            if videos:
                self.metrics.log_videos(f"{prefix}/recon", videos, step=self.progress.step)
            logger.info("%s at step %d: %s", prefix, self.progress.step,
                        {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
        return result

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>.ckpt`` (collective; rank 0 writes). Not during a non-finite streak nor right
        after a reload: only weights from before a streak count as good (reload, 'latest', keep_last_k)."""
        step = self.progress.step
        if not self.nonfinite.may_save():
            logger.warning("step %d: no checkpoint saved (inside a non-finite streak, or no finite update since the "
                           "last reload)", step)
            return None
        if self.env.distributed:
            identical = replicas_identical([self.model, self.loss_fn.discriminator], self.env)
            if not identical:
                logger.error("step %d: model replicas differ between ranks", step)
            self._event({"sys/replicas_identical": int(identical)})
        payload = capture(self.parts, self.progress, self.env, config=self.cfg.to_dict(),
                          model_name=self.cfg.model_name, model_config=self.model_config)
        path = self.ckpt.save(payload, step) if self.env.is_main else None
        barrier(self.env)
        self._last_saved_step = step
        return path

    def _check_final_weights(self) -> None:
        """Nothing is exported from weights that hold NaN/Inf (checked on unsharded weights)."""
        if self.fsdp:
            return
        bad = [n for n, t in self.model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise TrainingDiverged(f"training ended with NaN/Inf in {len(bad)} generator tensors (first: {bad[0]}); "
                                   "nothing exported. Lower --lr or resume from an earlier checkpoint.")

    def _event(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(record, step=self.progress.step)

    def _log_train(self, values: dict[str, float], batch, seconds: float, clips: int, data_time: float, bar) -> None:
        if not self.env.is_main:
            return
        record = {f"train/{k}": v for k, v in values.items()}
        record.update({
            "train/loss": self._last_loss,  # loss of the last update (G or D), averaged over ranks
            "train/lr": self.opts.gen.param_groups[0]["lr"],
            "train/epoch": self.progress.epoch,
            "perf/it_per_s": self.cfg.log_steps / max(seconds, 1e-9),
            "perf/clips_per_s": clips / max(seconds, 1e-9),
            "perf/data_time_frac": data_time / max(seconds, 1e-9),
            "train/nan_skips_total": self.progress.counters["nan_skips_total"],
            "data/index": [int(i) for i in batch["index"]],  # which samples this rank trained on last
        })
        if self.device.type == "cuda":
            record["sys/gpu_mem_max_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            import resource  # Unix only (not on Windows), hence here and not at the top

            record["sys/cpu_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.metrics.log(record, step=self.progress.step)
        if bar is not None and not bar.disable:
            bar.set_postfix(loss=f"{self._last_loss:.4g}", clips_s=f"{record['perf/clips_per_s']:.2f}")

        def shown(key: str) -> str:  # "-": not computed in this logging window (e.g. no D step yet)
            return f"{values[key]:.4g}" if key in values else "-"

        logger.info("step %d/%d g_total %s rec %s kl %s g_adv %s d %s | %.2f it/s %.2f clips/s",
                    self.progress.step, self.total_steps, shown("loss_g_total"), shown("loss_rec"),
                    shown("loss_kl"), shown("loss_g_adv"), shown("loss_d"), record["perf/it_per_s"],
                    record["perf/clips_per_s"])

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


# ---- entry point -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``wfvae train`` / ``python -m wfvae.train``. Returns 0 on success or a clean signal stop, 1 when
    training diverged or failed, 2 for bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_train_config(argv, prog="wfvae train")
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging(int(os.environ.get("RANK", "0")))  # the rank, before the process group exists
    try:
        cfg.validate()
        preflight(cfg)
    except (ConfigError, CheckpointError, MissingWeightsError) as e:
        logger.error("%s", e)
        return 2
    if cfg.check_only:
        print(f"configuration OK: run folder {cfg.run_dir}")
        return 0

    # before the model and the data exist, so that every large allocation of the run is affected
    if cfg.release_host_memory:
        if free_memory_promptly():
            logger.info("--release_host_memory: glibc mmap threshold fixed at 128 KiB (freed memory leaves at once)")
        else:
            logger.warning("--release_host_memory has no effect here: the C library has no mallopt (not glibc)")
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
