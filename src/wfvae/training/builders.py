"""Pure builders of the training parts: each takes the config (and what it depends on) and returns a part.

How to use::

    spatial, temporal = preflight(cfg)                 # cheap checks, before any process group exists
    model = build_model(cfg, ckpt)                     # fresh, pretrained, or the architecture of ``ckpt``
    loss_fn = build_loss_module(cfg)
    dataset, sampler = build_train_data(cfg, env)
    opts = build_optimizers(cfg, model, loss_fn)

Nothing here reads a checkpoint's weights or optimizer state (that is :func:`wfvae.training.state.restore`)
and nothing here runs a step (that is :class:`wfvae.training.trainer.Trainer`). The order in which the
trainer calls these matters for reproducibility: every builder that draws random numbers (model init, the
discriminator init) draws from the global generator seeded with ``--seed``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from wfvae import checkpoint_keys as K
from wfvae.config import TrainConfig
from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.sampler import ResumableDistributedSampler
from wfvae.distributed import DistEnv
from wfvae.errors import ConfigError
from wfvae.losses.vae_gan_loss import VAEGANLoss, build_loss
from wfvae.models import MODEL_CLASSES, VideoAutoencoder, load_model
from wfvae.models.base import read_config
from wfvae.models.loading import resolve_pretrained
from wfvae.networks.lpips import find_lpips_backbone, load_lpips
from wfvae.runtime import decoder_threads
from wfvae.training.ema import EMA

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "Optimizers",
    "build_ema",
    "build_eval_lpips",
    "build_loss_module",
    "build_model",
    "build_optimizers",
    "build_train_data",
    "build_train_loader",
    "build_val_loader",
    "encoder_side",
    "generator_parameters",
    "preflight",
    "read_model_config",
    "seed_everything",
]

#: ``--mix_precision`` -> autocast dtype (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ---- model -----------------------------------------------------------------------------------------------
def read_model_config(cfg: TrainConfig, ckpt: dict | None) -> dict:
    """Architecture source, in order: the resumed checkpoint's stored config, --model_config, the pretrained
    folder's config.json (a Hub id is fetched into the Hub cache here, before any worker starts). A
    --model_config that differs from the checkpoint's is ignored with a warning."""
    stored = ckpt.get(K.MODEL_CONFIG) if ckpt is not None else None
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
    ckpt = None
    if cfg.resume_from_checkpoint not in (None, "latest") and not cfg.model_config:
        ckpt = torch.load(cfg.resume_from_checkpoint, map_location="cpu", weights_only=True, mmap=True)
    config = read_model_config(cfg, ckpt)
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
    offline = cfg.offline or None  # None: WFVAE_OFFLINE / HF_HUB_OFFLINE decide
    if cfg.perceptual_weight > 0 and not cfg.perceptual_random_backbone:
        find_lpips_backbone("vgg", cfg.lpips_backbone_path, offline)
    if cfg.eval_video_path and cfg.eval_lpips and not cfg.perceptual_random_backbone:
        find_lpips_backbone("alex", cfg.eval_lpips_backbone_path, offline)
    return spatial, temporal


def build_model(cfg: TrainConfig, ckpt: dict | None) -> VideoAutoencoder:
    """The generator with its initial weights: pretrained (when starting fresh from --pretrained_model_name_or_path)
    or a random init of the architecture (a resumed checkpoint's weights are loaded later, by
    :func:`wfvae.training.state.restore`). Seed the global generator first: the init draws from it."""
    model_cls = MODEL_CLASSES[cfg.model_name]
    if cfg.pretrained_model_name_or_path and ckpt is None:
        logger.info("loading pretrained weights from %s", cfg.pretrained_model_name_or_path)
        model = load_model(cfg.pretrained_model_name_or_path, config=cfg.model_config, model_name=cfg.model_name,
                           ignore_mismatched_sizes=cfg.ignore_mismatched_sizes, offline=cfg.offline or None)
    else:
        model = model_cls.from_config(read_model_config(cfg, ckpt))
    if not isinstance(model, model_cls):
        raise ConfigError(f"--model_name {cfg.model_name} but the weights are a {type(model).__name__}")
    if not cfg.fsdp:  # FSDP2 shards parameters along dim 0 of their default layout
        model.use_channels_last_weights()
    model.set_conv_backward_layout(cfg.conv_backward)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.freeze_encoder:
        for m in encoder_side(model):
            m.requires_grad_(False)
    return model


def encoder_side(model: nn.Module) -> list[nn.Module]:
    """The modules --freeze_encoder freezes: quant_conv and the encoder."""
    return [m for m in (getattr(model, "quant_conv", None), getattr(model, "encoder", None)) if isinstance(m, nn.Module)]


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


# ---- loss, optimizers, EMA -------------------------------------------------------------------------------
def build_loss_module(cfg: TrainConfig) -> VAEGANLoss:
    """The VAE-GAN loss with its discriminator (saved as ``dics_model``)."""
    return build_loss(
        cfg.disc_class_name, disc_start=cfg.disc_start, disc_weight=cfg.disc_weight, kl_weight=cfg.kl_weight,
        logvar_init=cfg.logvar_init, perceptual_weight=cfg.perceptual_weight, loss_type=cfg.loss_type,
        wavelet_weight=cfg.wavelet_weight, lpips_backbone_path=cfg.lpips_backbone_path,
        perceptual_random_backbone=cfg.perceptual_random_backbone,
        disc_base_channels=cfg.disc_base_channels, disc_num_layers=cfg.disc_num_layers,
    )


@dataclass
class Optimizers:
    """The two AdamW optimizers, the parameters they update, and the fp16 GradScaler (disabled otherwise)."""

    gen_params: list[nn.Parameter]
    disc_params: list[nn.Parameter]
    gen: torch.optim.Optimizer
    disc: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def build_optimizers(cfg: TrainConfig, model: nn.Module, loss_fn: VAEGANLoss, device: torch.device) -> Optimizers:
    """Call after FSDP sharding: the optimizers must hold the shards, not the full parameters."""
    gen_params = generator_parameters(model)
    disc_params = [p for p in loss_fn.discriminator.parameters() if p.requires_grad]
    return Optimizers(
        gen_params=gen_params, disc_params=disc_params,
        gen=torch.optim.AdamW(gen_params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        disc=torch.optim.AdamW(disc_params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        scaler=torch.amp.GradScaler(device.type, enabled=cfg.mix_precision == "fp16"),
    )


def build_ema(cfg: TrainConfig, model: nn.Module) -> EMA | None:
    return EMA(model, cfg.ema_decay) if cfg.ema else None


# ---- data ------------------------------------------------------------------------------------------------
def build_train_data(cfg: TrainConfig, env: DistEnv) -> tuple[VideoFolderDataset, ResumableDistributedSampler]:
    """The training dataset and this rank's resumable sampler. Raises ConfigError when a rank gets no batch."""
    # Every rank probes a share of the new files; rank 0 stores them and shares the merged index.
    dataset = VideoFolderDataset(cfg.video_path, num_frames=cfg.num_frames, sample_rate=cfg.sample_rate,
                                 resolution=cfg.resolution, train=True, seed=cfg.seed, across_ranks=env.distributed,
                                 resize=cfg.resize, random_crop=cfg.random_crop,
                                 decoder_threads=decoder_threads(cfg.dataset_num_worker, env.local_world_size))
    sampler = ResumableDistributedSampler(len(dataset), num_replicas=env.world_size, rank=env.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
    if sampler.num_samples // cfg.batch_size < 1:
        raise ConfigError(
            f"{len(dataset)} usable videos give {sampler.num_samples} per rank, fewer than "
            f"--batch_size {cfg.batch_size} (world size {env.world_size}); add videos or lower the batch size")
    return dataset, sampler


def build_train_loader(cfg: TrainConfig, dataset, sampler, epoch: int, rank: int, device: torch.device) -> DataLoader:
    """The loader of one epoch (rebuilt per epoch so a resumed position inside the epoch is honoured)."""
    sampler.set_epoch(epoch)  # keeps a resumed position inside the same epoch
    dataset.set_epoch(epoch)  # before iter(): workers copy the dataset
    workers = cfg.dataset_num_worker
    return DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False,
        # own generator: creating the iterator must not draw from the global RNG (exact resume)
        generator=torch.Generator().manual_seed(cfg.seed + 1000 * epoch + rank),
        **({"prefetch_factor": 2} if workers > 0 else {}),
    )


def build_val_loader(cfg: TrainConfig, env: DistEnv, device: torch.device) -> DataLoader | None:
    """This rank's share of the validation videos (each video on exactly one rank), or None without
    --eval_video_path."""
    if not cfg.eval_video_path:
        return None
    workers = min(cfg.dataset_num_worker, 2)
    ds = VideoFolderDataset(cfg.eval_video_path, num_frames=cfg.eval_num_frames, sample_rate=cfg.eval_sample_rate,
                            resolution=cfg.eval_resolution, crop_size=cfg.eval_resolution, train=False, seed=cfg.seed,
                            across_ranks=env.distributed, resize=cfg.resize,
                            decoder_threads=decoder_threads(workers, env.local_world_size))
    n = len(ds) if cfg.eval_subset_size == 0 else min(len(ds), cfg.eval_subset_size)
    shard = list(range(n))[env.rank::env.world_size]  # no padding, so no video is counted twice
    return DataLoader(Subset(ds, shard), batch_size=cfg.eval_batch_size, shuffle=False,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed))


def build_eval_lpips(cfg: TrainConfig, device: torch.device) -> nn.Module | None:
    """The AlexNet LPIPS of validation (--eval_lpips), or None."""
    if not (cfg.eval_video_path and cfg.eval_lpips):
        return None
    return load_lpips("alex", backbone_path=cfg.eval_lpips_backbone_path,
                      random_backbone=cfg.perceptual_random_backbone, device=device)
