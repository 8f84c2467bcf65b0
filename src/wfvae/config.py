"""Typed configuration for ``wfvae`` training, parsed once from the command line.

How to use::

    from wfvae.config import parse_train_config
    cfg = parse_train_config(["--video_path", "data/", "--model_name", "WFVAE",
                              "--model_config", "examples/configs/wfvae_tiny.json"])
    cfg.validate()          # cheap checks: paths, choices, numbers that depend on each other
    cfg.validate_against_model(spatial=8, temporal=4)

Every field of :class:`TrainConfig` is one command-line flag with the same name as in the original
WF-VAE ``train_ddp.py`` (``--num_frames``, ``--mix_precision``, ...), so the original command lines keep
working. Fields are declared with :func:`wfvae.options.option` (default and help once) and parsed by the
generator every command shares (:mod:`wfvae.options`): unknown flags name the closest valid one, values that do
not parse as the field's type are errors, and ``--help`` shows every flag's help and default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wfvae.data.manifest import is_manifest
from wfvae.downloads import parse_hub_id
from wfvae.errors import ConfigError
from wfvae.formats import VIDEO_EXTENSIONS, is_video_path
from wfvae.models import MODEL_NAMES
from wfvae.options import (
    DeviceOptions,
    OfflineOptions,
    ResizeOptions,
    build_parser,
    option,
    parse_config,
)
from wfvae.runtime import FSDP_MIN_TORCH, fsdp2_supported
from wfvae.training.metrics_logger import import_tensorboard_writer, parse_report_to

__all__ = ["DISC_CLASS_ALIASES", "TrainConfig", "build_train_parser", "parse_train_config"]

# Names accepted by ``--disc_cls``. The original passes a dotted import path; we map it through this
# explicit table instead of importing a string. Only one loss exists, so every alias points to it.
DISC_CLASS_ALIASES: dict[str, str] = {
    "causalvideovae.model.losses.LPIPSWithDiscriminator3D": "LPIPSWithDiscriminator3D",
    "causalvideovae.model.losses.perceptual_loss.LPIPSWithDiscriminator3D": "LPIPSWithDiscriminator3D",
    "LPIPSWithDiscriminator3D": "LPIPSWithDiscriminator3D",
}


@dataclass(kw_only=True)
class TrainConfig(DeviceOptions, OfflineOptions, ResizeOptions):
    """Every knob of ``wfvae train``. Grouped as in ``train_ddp.py``; one line of help per field."""

    # ---- experiment / I/O -------------------------------------------------------------------------
    exp_name: str = option("test", "Experiment name; the run folder is <ckpt_dir>/<exp_name>-lr..-bs..-rs..-sr..-fr...")
    seed: int = option(1234, "Global random seed (model init, posterior sampling, dropout, data shuffling).")
    ckpt_dir: str = option("./results/", "Parent folder of the run folder that holds checkpoints and metrics.jsonl.")
    save_ckpt_step: int = option(1000, "Write a checkpoint every this many steps (steps = optimizer steps of G or D).")
    keep_last_k: int = option(0, "Keep only the newest K checkpoints of this run (0 = keep all, like the original).")
    log_steps: int = option(5, "Log losses / lr / grad norm every this many steps.")
    report_to: str = option(
        "wandb", "Experiment trackers: none, wandb, tensorboard, or a comma list such as wandb,tensorboard. "
        "'wandb' honours WANDB_MODE=offline|disabled and WANDB_PROJECT; 'tensorboard' writes event files to "
        "<run folder>/tensorboard (scalars, validation frames, the config as text); "
        "metrics.jsonl in the run folder is written either way.")
    wandb_project: str | None = option(None, "W&B project (default: $WANDB_PROJECT, as wandb itself reads it).")

    # ---- training ---------------------------------------------------------------------------------
    epochs: int = option(10, "Number of passes over the training set (ignored once --max_steps is reached).")
    max_steps: int | None = option(None, "Stop after this many steps in total (default: epochs x steps per epoch).")
    batch_size: int = option(1, "Local batch size per process (clips).")
    lr: float = option(1e-5, "AdamW learning rate for the generator and the discriminator (constant).")
    weight_decay: float = option(1e-4, "AdamW weight decay.")
    lr_scheduler: Literal["constant", "cosine"] = option(
        "constant", "Learning-rate schedule of both optimizers: constant (the original's), or cosine decay to 0 "
        "at the last step (after the warm-up).")
    lr_warmup_steps: int = option(0, "Raise the learning rate linearly from ~0 to --lr over this many steps.")
    clip_grad_norm: float = option(1e5, "Clip the global gradient norm of each update to this value.")
    freeze_encoder: bool = option(False, "Freeze the encoder (and quant_conv); train the decoder only.")
    mix_precision: Literal["bf16", "fp16", "fp32"] = option(
        "bf16", "Autocast precision. fp16 also enables a GradScaler; fp32 runs without autocast.")
    ema: bool = option(False, "Keep an exponential moving average of the generator; validate and save it too.")
    ema_decay: float = option(0.999, "EMA decay per generator step.")
    find_unused_parameters: bool = option(False, "Passed to DistributedDataParallel.")
    fsdp: bool = option(
        False, "Shard the generator's parameters, gradients and optimizer state over the ranks with FSDP2 "
        "instead of replicating them with DDP (for models or resolutions where DDP runs out of memory). "
        "Checkpoints keep the same single-file layout, so a run can switch between DDP and FSDP on resume. "
        "Not with --mix_precision fp16; needs PyTorch >= 2.14.")
    gradient_checkpointing: bool = option(
        False, "Recompute each ResNet, attention and up/down-sampling block of the generator in the backward pass "
        "instead of keeping its activations (less memory, about one extra forward pass of time; gradients are "
        "unchanged, also under --mix_precision bf16).")
    release_host_memory: bool = option(
        False, "Fix glibc's mmap threshold at 128 KiB at start-up, so host memory a step frees goes back to the OS "
        "instead of staying resident: for training on the CPU, where glibc's retention can exceed the step's live "
        "tensors (benchmarks/RESULTS.md). Costs a fresh mapping (page faults) per allocation of 128 KiB or more, "
        "which can slow down steps made of many small tensors. No effect without glibc.")
    conv_backward: Literal["channels_last", "contiguous", "auto"] = option(
        "channels_last", "CPU, --mix_precision fp32: memory layout in which convolution gradients are computed. The "
        "model runs channels-last, and on some CPUs oneDNN's channels-last backward kernels are slower than its "
        "default-layout ones (1.24-1.6x on an AVX2 AMD Zen 3, benchmarks/RESULTS.md): 'auto' times both on the first "
        "backward call of each convolution shape and keeps the faster (cached with the --conv choices), "
        "'contiguous' always uses the default layout. Gradients agree up to float rounding. No effect on GPUs "
        "or under bf16/fp16 autocast.")
    fsdp_param_dtype: Literal["fp32", "bf16"] = option(
        "fp32", "With --fsdp: dtype in which the sharded parameters are gathered and used in forward and backward "
        "(FSDP2 MixedPrecisionPolicy). bf16 halves the all-gather traffic and the gathered weights; gradients are "
        "still reduced in fp32 and the optimizer keeps fp32 shards. Needs --mix_precision bf16.")
    cudnn_benchmark: bool = option(
        True, "CUDA: let cuDNN time its convolution algorithms once per input shape and keep the fastest (the "
        "training clip size is fixed, so the search is paid once). The chosen algorithms may differ between runs, so "
        "a resumed GPU run is then not bit-identical to an uninterrupted one: --cudnn_benchmark false for that.")
    allow_tf32: bool = option(
        False, "CUDA, Ampere or newer: run float32 matmuls in TF32 (faster, about 3 significant digits in the "
        "products). Off by default, as in PyTorch; matters for fp32 training, not for the bf16 autocast layers.")

    # ---- data -------------------------------------------------------------------------------------
    video_path: str | None = option(None, "Folder searched recursively for training videos, or a manifest "
                                      "(.csv/.jsonl/.parquet with a 'path' column; see wfvae data-check).")
    num_frames: int = option(17, "Frames per training clip; must be 1 + k * temporal_compression_ratio.")
    resolution: int = option(256, "Training clip side length in pixels; divisible by the spatial compression ratio.")
    sample_rate: int = option(2, "Take every n-th frame when cutting training clips.")
    dataset_num_worker: int = option(4, "DataLoader worker processes per rank.")
    random_crop: bool = option(
        False, "Crop training clips at a random place instead of the centre (the original crops the centre).")

    # ---- model ------------------------------------------------------------------------------------
    model_name: Literal[MODEL_NAMES] | None = option(None, "Model class: " + " or ".join(MODEL_NAMES) + ".")
    model_config: str | None = option(None, "config.json of the model (original format); used to train from scratch.")
    pretrained_model_name_or_path: str | None = option(
        None, "Folder (config.json + weights), .ckpt, or Hugging Face Hub id owner/name[@revision] to start "
        "from; loads weights only, no optimizer state.")
    ignore_mismatched_sizes: bool = option(False, "When loading pretrained weights, skip tensors whose shape differs.")
    enable_tiling: bool = option(
        False, "Accepted for the original's command lines and refused: tiling splits frames at inference "
        "(encode/decode); the training forward pass always runs whole frames, so it would do nothing.")
    resume_from_checkpoint: str | None = option(
        None, "A .ckpt file to resume from (weights, optimizers, EMA, data position, RNG), or 'latest' for the "
        "newest checkpoint in this run's folder (starts fresh when there is none).")
    not_resume_discriminator: bool = option(False, "On resume, keep the fresh discriminator and its optimizer.")
    not_resume_optimizer: bool = option(False, "On resume, keep a fresh generator optimizer.")

    # ---- loss -------------------------------------------------------------------------------------
    disc_cls: str = option(
        "causalvideovae.model.losses.LPIPSWithDiscriminator3D",
        "Loss/discriminator class. Accepted: " + ", ".join(sorted(DISC_CLASS_ALIASES)) + ".")
    disc_start: int = option(5, "Step at which the adversarial loss and discriminator updates begin.")
    disc_weight: float = option(0.5, "Scale of the adaptive adversarial weight.")
    kl_weight: float = option(1e-6, "Weight of the KL term.")
    perceptual_weight: float = option(1.0, "Weight of the LPIPS perceptual term (0 disables it).")
    loss_type: Literal["l1", "l2"] = option("l1", "Pixel reconstruction loss.")
    logvar_init: float = option(0.0, "Initial value of the (fixed) log-variance that divides the reconstruction loss.")
    wavelet_loss: bool = option(False, "Add the WF-VAE wavelet-coefficient loss (WFVAE only).")
    wavelet_weight: float = option(0.1, "Weight of the wavelet-coefficient loss.")
    disc_base_channels: int = option(64, "Width of the discriminator's first conv (64 as the original; smaller only "
                                 "for experiments, since original checkpoints then no longer fit).")
    disc_num_layers: int = option(4, "Strided stages of the 3D PatchGAN discriminator (4 as the original).")
    lpips_backbone_path: str | None = option(
        None, "Local VGG16 weights for the LPIPS perceptual loss (default: the torch hub cache, downloaded there "
        "from torchvision's URL on first use unless offline).")
    perceptual_random_backbone: bool = option(
        False, "Use a randomly initialised LPIPS backbone (tests and smoke runs only; the loss is meaningless).")

    # ---- validation -------------------------------------------------------------------------------
    eval_steps: int = option(1000, "Validate every this many steps (and after step 1, as the original).")
    eval_video_path: str | None = option(None, "Folder (or manifest) of validation videos (validation is skipped "
                                           "when unset).")
    eval_num_frames: int = option(17, "Frames per validation clip.")
    eval_resolution: int = option(256, "Validation clip side length (pixels, centre crop).")
    eval_sample_rate: int = option(1, "Frame stride for validation clips.")
    eval_batch_size: int = option(8, "Validation batch size per process.")
    eval_subset_size: int = option(100, "Validate on the first N videos (0 = all).")
    eval_num_video_log: int = option(2, "Number of side-by-side (input | reconstruction) videos to log.")
    eval_lpips: bool = option(False, "Also compute LPIPS (AlexNet) during validation.")
    eval_lpips_backbone_path: str | None = option(
        None, "Local AlexNet weights for validation LPIPS (default: the torch hub cache, downloaded on first use).")

    # ---- robustness -------------------------------------------------------------------------------
    max_nan_skips: int = option(10, "After this many consecutive non-finite updates, apply --nan_policy.")
    nan_policy: Literal["reload", "stop"] = option(
        "reload", "reload = restore the last good checkpoint's weights and optimizers and continue; stop = exit with an error.")
    check_only: bool = option(
        False, "Validate the arguments (paths, model config, frame/pixel arithmetic) and exit; train_ddp.sh "
        "runs this before starting any worker.")

    # ------------------------------------------------------------------------------------------------
    @property
    def run_name(self) -> str:
        """Run folder name, the same pattern as the original's ``get_exp_name``."""
        return (f"{self.exp_name}-lr{self.lr:.2e}-bs{self.batch_size}-rs{self.resolution}"
                f"-sr{self.sample_rate}-fr{self.num_frames}")

    @property
    def run_dir(self) -> Path:
        return Path(self.ckpt_dir) / self.run_name

    @property
    def disc_class_name(self) -> str:
        return DISC_CLASS_ALIASES[self.disc_cls]

    def to_dict(self) -> dict:
        """Plain-Python dict (stored in checkpoints and sent to the tracker)."""
        return dataclasses.asdict(self)

    # ---- validation -------------------------------------------------------------------------------
    def validate(self) -> TrainConfig:
        """Check everything that does not need the model. Raises :class:`ConfigError`; returns self."""
        errors: list[str] = []

        if self.model_name not in MODEL_NAMES:
            errors.append(f"--model_name {self.model_name!r} is not a known model; choose one of {list(MODEL_NAMES)}.")
        if self.disc_cls not in DISC_CLASS_ALIASES:
            close = difflib.get_close_matches(self.disc_cls, DISC_CLASS_ALIASES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            errors.append(f"--disc_cls {self.disc_cls!r} is unknown; accepted: {sorted(DISC_CLASS_ALIASES)}.{hint}")

        sources = [self.model_config, self.pretrained_model_name_or_path]
        resuming_file = self.resume_from_checkpoint not in (None, "latest")
        if not any(sources) and not resuming_file:
            errors.append("Give --model_config (train from scratch) or --pretrained_model_name_or_path "
                          "(or --resume_from_checkpoint <file.ckpt> whose config is stored inside).")
        if self.model_config and not Path(self.model_config).is_file():
            errors.append(f"--model_config {self.model_config!r} is not a file.")
        pretrained = self.pretrained_model_name_or_path
        if pretrained and not Path(pretrained).expanduser().exists() and parse_hub_id(pretrained) is None:
            errors.append(f"--pretrained_model_name_or_path {pretrained!r} does not exist (and is not a Hub id "
                          "owner/name[@revision]).")
        if resuming_file and not Path(self.resume_from_checkpoint).is_file():
            errors.append(f"--resume_from_checkpoint {self.resume_from_checkpoint!r} is not a .ckpt file "
                          "(pass a file, or 'latest').")

        errors += _check_video_folder("--video_path", self.video_path, required=True)
        if self.eval_video_path is not None:
            errors += _check_video_folder("--eval_video_path", self.eval_video_path, required=True)

        positive = ["num_frames", "resolution", "sample_rate", "batch_size", "epochs", "save_ckpt_step",
                    "log_steps", "eval_steps", "eval_num_frames", "eval_resolution", "eval_sample_rate",
                    "eval_batch_size", "max_nan_skips", "disc_base_channels", "disc_num_layers"]
        for name in positive:
            if getattr(self, name) < 1:
                errors.append(f"--{name} must be >= 1, got {getattr(self, name)}.")
        for name in ["keep_last_k", "eval_subset_size", "eval_num_video_log", "dataset_num_worker", "disc_start",
                     "lr_warmup_steps",
                     "lr", "weight_decay", "kl_weight", "perceptual_weight", "wavelet_weight", "disc_weight"]:
            if getattr(self, name) < 0:
                errors.append(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if self.keep_last_k == 1:
            # One file means the only good checkpoint is deleted the moment a new write starts to replace it.
            errors.append("--keep_last_k 1 would leave no fallback while a checkpoint is written; use 0 or >= 2.")
        if self.max_steps is not None and self.max_steps < 1:
            errors.append(f"--max_steps must be >= 1, got {self.max_steps}.")
        if not (0.0 <= self.ema_decay < 1.0):
            errors.append(f"--ema_decay must be in [0, 1), got {self.ema_decay}.")
        if not self.clip_grad_norm > 0:
            errors.append(f"--clip_grad_norm must be > 0, got {self.clip_grad_norm}.")
        if self.fsdp and not fsdp2_supported():
            import torch

            errors.append(f"--fsdp is verified with PyTorch >= {'.'.join(map(str, FSDP_MIN_TORCH))} (2.7.1, 2.9.1 and "
                          f"2.11.0 failed its 2-process test in torch's FSDP2 and state-dict code); this "
                          f"is torch {torch.__version__}. Upgrade torch, or train without --fsdp (DDP).")
        if self.fsdp and self.mix_precision == "fp16":
            # torch's GradScaler cannot unscale a mix of sharded (DTensor) and replicated gradients, and each
            # rank would only see the infs of its own shard.
            errors.append("--fsdp does not support --mix_precision fp16 (GradScaler); use bf16 or fp32.")
        if self.fsdp_param_dtype != "fp32" and not (self.fsdp and self.mix_precision == "bf16"):
            # bf16 parameters would meet fp32 activations and buffers (the wavelet filters) outside autocast
            errors.append(f"--fsdp_param_dtype {self.fsdp_param_dtype} needs --fsdp and --mix_precision bf16.")
        if self.enable_tiling:
            errors.append("--enable_tiling does nothing in training: spatial tiling applies to encode/decode at "
                          "inference, while the training forward pass runs whole frames. Remove the flag; to save "
                          "memory lower --resolution / --num_frames / --batch_size or use --fsdp.")
        if self.wavelet_loss and self.model_name == "CausalVAE":
            errors.append("--wavelet_loss needs the WFVAE's wavelet coefficients; CausalVAE has none.")
        if self.lpips_backbone_path and not Path(self.lpips_backbone_path).is_file():
            errors.append(f"--lpips_backbone_path {self.lpips_backbone_path!r} is not a file.")
        if self.eval_lpips_backbone_path and not Path(self.eval_lpips_backbone_path).is_file():
            errors.append(f"--eval_lpips_backbone_path {self.eval_lpips_backbone_path!r} is not a file.")
        try:
            trackers = parse_report_to(self.report_to)
        except ValueError as e:
            errors.append(f"--{e}.")
            trackers = []
        if "wandb" in trackers:
            try:
                import wandb  # noqa: F401  (optional extra: only checked when asked for)
            except ImportError:
                errors.append("--report_to wandb needs the wandb package: pip install wfvae[wandb] "
                              "(or pass --report_to none; metrics.jsonl is always written).")
        if "tensorboard" in trackers:
            try:
                import_tensorboard_writer()
            except ImportError:
                errors.append("--report_to tensorboard needs the tensorboard package: pip install "
                              "wfvae[tensorboard] (or pass --report_to none; metrics.jsonl is always written).")

        if errors:
            raise ConfigError("Invalid training configuration:\n  - " + "\n  - ".join(errors))
        return self

    def validate_against_model(self, spatial: int, temporal: int) -> TrainConfig:
        """Frame and pixel arithmetic that depends on the model's compression ratios."""
        errors = []
        for prefix in ("", "eval_"):
            frames = getattr(self, prefix + "num_frames")
            res = getattr(self, prefix + "resolution")
            if (frames - 1) % temporal != 0:
                lo = 1 + ((frames - 1) // temporal) * temporal
                errors.append(f"--{prefix}num_frames {frames} is not 1 + k*{temporal} (the model's temporal "
                              f"compression); use e.g. {lo} or {lo + temporal}.")
            if res % spatial != 0:
                lo = (res // spatial) * spatial
                errors.append(f"--{prefix}resolution {res} is not divisible by the spatial compression {spatial}; "
                              f"use e.g. {max(lo, spatial)} or {lo + spatial}.")
        if errors:
            raise ConfigError("Invalid training configuration for this model:\n  - " + "\n  - ".join(errors))
        return self


def _check_video_folder(flag: str, path: str | None, required: bool) -> list[str]:
    if path is None:
        return [f"{flag} is required."] if required else []
    p = Path(path)
    if is_manifest(p) and not p.is_dir():
        # rows are checked when the dataset is built (bad rows are reported and skipped)
        return [] if p.is_file() else [f"{flag} {path!r}: manifest file not found."]
    if not p.is_dir():
        return [f"{flag} {path!r} is not a folder (nor a .csv/.jsonl/.parquet manifest)."]
    # The same rule as the dataset's discovery (wfvae.data.index), stopping at the first video.
    seen: set[str] = set()
    for root, dirs, files in os.walk(p, followlinks=True):
        real = os.path.realpath(root)
        dirs[:] = [] if real in seen else [d for d in dirs if not d.startswith(".")]
        seen.add(real)
        if any(is_video_path(name) and not name.startswith(".") for name in files):
            return []
    return [f"{flag} {path!r} contains no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})."]


# ---- command line ----------------------------------------------------------------------------------------
DESCRIPTION = "Train a WFVAE / CausalVAE with the LPIPS + 3D PatchGAN loss (single process or under torchrun)."


def build_train_parser(prog: str = "wfvae train") -> argparse.ArgumentParser:
    """An argparse parser with one flag per :class:`TrainConfig` field."""
    return build_parser(TrainConfig, prog, DESCRIPTION)


def parse_train_config(argv: list[str], prog: str = "wfvae train") -> TrainConfig:
    """Parse ``argv`` into a :class:`TrainConfig`. Unknown flags raise :class:`ConfigError` with a suggestion."""
    try:
        return parse_config(TrainConfig, argv, prog, DESCRIPTION)
    except ConfigError as e:
        raise ConfigError(f"{prog}: {e}") from None
