"""Reconstruct videos with a trained VAE — step 1 of the spec's validation (``gen_video.sh``).

How to run::

    wfvae reconstruct --real_video_dir test_video --generated_video_dir video_gen/test_sr1_nf33_res256_subset0 \\
        --ckpt path/to/model_dir --num_frames 33 --sample_rate 1 --resolution 256 --output_origin
    torchrun --nproc_per_node 8 -m wfvae.inference.reconstruct ...        # sharded over processes
    wfvae reconstruct --real_video_dir clip.mp4 --generated_video_dir out --ckpt ...   # one video
    wfvae reconstruct --real_video_dir photo.png --generated_video_dir out --ckpt ...  # one image
    wfvae reconstruct --real_video_dir val.csv --generated_video_dir out --ckpt ...    # a manifest

Outputs keep the input's relative sub-path (``a/b/clip.mp4`` -> ``OUT/a/b/clip.mp4``; a manifest
row's path relative to the manifest's folder, an absolute one without its leading ``/``); with
``--output_origin`` the model's exact input (same frames, resize and crop) goes to ``OUT/origin/``.
Two inputs that differ only by extension (``a.mp4``, ``a.mkv``) keep it in their output names
(``OUT/a.mp4.mp4``, ``OUT/a.mkv.mp4``), so no input is ever mistaken for another's output.

``OUT/wfvae-manifest.json`` records the checkpoint (SHA-256 of the weights, config hash) and the
settings that decide the outputs; a rerun with other settings stops and names the differences
(``--overwrite`` redoes everything). Outputs are written under a temporary name and renamed, and
listed in ``OUT/wfvae-outputs-r*.txt`` just before, so a run killed at any point (any format,
any process) resumes where it stopped and "already done" means done with these settings.
Videos are decoded by ``--num_workers`` processes and outputs written by a background thread,
so the accelerator is not kept waiting on either.
``--format mkv`` writes lossless FFV1 (mp4 is lossy and moves the metrics a little).
``--metrics psnr,ssim,lpips`` also measures the in-memory tensors, before any codec.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from tqdm import tqdm

from wfvae.data.datasets import VideoFolderDataset
from wfvae.data.manifest import is_manifest, output_key
from wfvae.data.transforms import (
    clip_indices,
    crop_offsets,
    resize_crop,
    resized_size,
    to_model_tensor,
)
from wfvae.data.video_probe import probe_video
from wfvae.data.video_read import read_video
from wfvae.distributed import (
    all_gather_object,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from wfvae.errors import ConfigError, InputError, OutputError
from wfvae.evaluation.registry import METRICS, PER_VIDEO_METRICS, Networks, needed_networks
from wfvae.formats import OUTPUT_FORMATS
from wfvae.inference.common import (
    DecodedItems,
    check_num_frames,
    inference_autocast,
    load_for_command,
    model_identity,
    to_uint8_frames,
    write_output,
)
from wfvae.layout import ORIGIN_DIR, RECONSTRUCT_METRICS
from wfvae.networks.lpips import load_lpips
from wfvae.options import (
    REQUIRED,
    ClipOptions,
    DecodeWorkerOptions,
    EncodeChunkOptions,
    IndexCacheOptions,
    LpipsOptions,
    MemoryBudgetOptions,
    ModelOptions,
    OverwriteOptions,
    ResizeOptions,
    VideoFormatOptions,
    option,
    run_config,
    settings,
    too_small,
    validate,
)
from wfvae.runtime import resolve_precision
from wfvae.utils.io import atomic_write_bytes
from wfvae.utils.logging import setup_logging
from wfvae.utils.output_folder import (
    OutputFolder,
    check_not_nested,
    collision_free_stems,
)
from wfvae.utils.writer import BackgroundWriter

logger = logging.getLogger(__name__)

#: Metrics ``--metrics`` computes on the in-memory tensors: every per-video metric of the registry.
IN_MEMORY_METRICS = PER_VIDEO_METRICS


@dataclass(kw_only=True)
class ReconstructConfig(ModelOptions, ClipOptions, ResizeOptions, EncodeChunkOptions, MemoryBudgetOptions,
                        VideoFormatOptions, OverwriteOptions, DecodeWorkerOptions, LpipsOptions, IndexCacheOptions):
    """Settings of ``wfvae reconstruct`` (the original's gen_video.sh flags keep their names)."""

    ALLOW_ABBREV: ClassVar[bool] = True  # unique prefixes of a flag were accepted before; still are

    real_video_dir: str = option(REQUIRED, "A folder (searched recursively), a manifest (.csv/.jsonl/.parquet), a "
                                 "single video file, or an image.")
    generated_video_dir: str = option(REQUIRED, "Output folder.")
    subset_size: int = option(0, "0: every video; N: a deterministic random subset of N videos (seed --seed).")
    output_origin: bool = option(False, f"Also write the ground truth exactly as fed to the model under "
                                 f"OUT/{ORIGIN_DIR}/.")
    decode_chunk_size: int | None = option(None, "Decode this many latent frames at a time; exact.")
    dtype: Literal["fp32", "bf16", "fp16"] = option(
        "fp32", "Autocast precision (weights stay fp32): bf16 runs on CUDA and on CPUs (fast where the CPU has bf16 "
        "instructions, AVX512-BF16 or AMX; many times slower than fp32 elsewhere, with a warning; see "
        "benchmarks/RESULTS.md), fp16 on CUDA only.")
    sample_fps: float = option(24.0, "Frame rate written into the output videos.")
    metrics: list[str] = option([], f"Comma list of {','.join(IN_MEMORY_METRICS)}, measured on the in-memory tensors (before the "
                                "codec).")
    json: str | None = option(None, f"Write per-video metrics here (default OUT/{RECONSTRUCT_METRICS} when "
                              "--metrics is set).")
    seed: int = option(42, "Seed of the --subset_size choice.")
    batch_size: int = option(1, "Videos per forward pass; always 1 here.", ignored=True)

    def check(self) -> list[str]:
        """Every value out of range, all at once."""
        problems = []
        bad = sorted(set(self.metrics) - set(IN_MEMORY_METRICS))
        if bad:
            problems.append(f"--metrics {','.join(bad)}: choose from {', '.join(IN_MEMORY_METRICS)}")
        problems += self.clip_errors()
        problems += too_small(self, ("chunk_size", "decode_chunk_size"), when_given=True)
        problems += self.budget_errors()
        if self.subset_size < 0:
            problems.append(f"--subset_size must be >= 0 (0 = all), got {self.subset_size}")
        problems += too_small(self, ("num_workers",), at_least=0)
        if not self.sample_fps > 0:
            problems.append(f"--sample_fps must be > 0, got {self.sample_fps}")
        return problems


# ------------------------------------------------------------------------------ inputs
class _SingleFile:
    """The one-file case, shaped like the folder dataset (same resize/crop/normalisation)."""

    def __init__(self, path: Path, cfg: ReconstructConfig, temporal_factor: int):
        info = probe_video(path)
        short_side = cfg.resolution if cfg.resize == "fast" else None
        if info.is_image:
            frames = read_video(path, info=info, short_side=short_side)[:1]
        else:
            indices = clip_indices(0, cfg.num_frames, cfg.sample_rate)
            frames = read_video(path, info=info, short_side=short_side, indices=indices)
            usable = (len(frames) - 1) // temporal_factor * temporal_factor + 1
            if usable < len(frames):
                logger.warning("%s: using %d of %d frames (clips need 1 + %dk frames)", path, usable, len(frames), temporal_factor)
            frames = frames[:usable]
        crop = cfg.crop_size or cfg.resolution
        _, h, w, _ = frames.shape
        if cfg.resize == "fast":
            top, left = crop_offsets(h, w, min(crop, h), min(crop, w))
            frames = frames[:, top : top + crop, left : left + crop]
        else:
            out_h, out_w = resized_size(h, w, cfg.resolution)
            frames = resize_crop(frames, cfg.resolution, min(crop, out_h), min(crop, out_w))
        self.item = {"video": to_model_tensor(frames), "path": path.name, "is_image": info.is_image}

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.item


def output_names(stem: str, fmt: str, is_image: bool) -> tuple[str, str]:
    """(reconstruction, origin) paths relative to the output folder for an output ``stem``."""
    suffix = ".png" if is_image else OUTPUT_FORMATS[fmt]
    return f"{stem}{suffix}", f"{ORIGIN_DIR}/{stem}{suffix}"


def _select_subset(n: int, subset_size: int, seed: int) -> list[int]:
    if subset_size <= 0 or subset_size >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), subset_size))


# ------------------------------------------------------------------------------ main work
def reconstruct(cfg: ReconstructConfig) -> dict:
    """Reconstruct every selected video; returns a summary dict (and per-video metrics if asked)."""
    validate(cfg)
    src = Path(cfg.real_video_dir)
    out_dir = Path(cfg.generated_video_dir)
    if not src.exists():
        raise InputError(f"--real_video_dir {src} does not exist; pass a video folder, a video or an image")
    # a manifest's outputs (named by its rows) must not land in its own folder, over its inputs
    check_not_nested(src.parent if is_manifest(src) and src.is_file() else src, out_dir, "--real_video_dir",
                     "--generated_video_dir")
    env = init_distributed(cfg.device)
    try:
        if cfg.dtype == "fp16" and env.device.type != "cuda":
            raise ConfigError(f"--dtype fp16 runs on CUDA only (the device is {env.device}); on a CPU use --dtype bf16 "
                              "or fp32")
        # what runs: fp32 on a GPU older than Ampere; bf16 on a CPU without bf16 instructions warns (slow)
        dtype = resolve_precision(cfg.dtype, env.device, what="--dtype")
        model = load_for_command(cfg, env.device)
        if src.is_file() and not is_manifest(src):
            dataset = _SingleFile(src, cfg, model.temporal_compression_ratio)
            names = [dataset.item["path"]]
        else:
            check_num_frames(model, cfg.num_frames)  # before decoding anything
            try:
                dataset = VideoFolderDataset(
                    src, cfg.num_frames, cfg.sample_rate, cfg.resolution, train=False,
                    crop_size=cfg.crop_size, cache_dir=cfg.cache_dir, include_images=False,
                    show_progress=env.is_main, across_ranks=env.distributed, resize=cfg.resize,
                )
            except ValueError as e:  # no usable video: the message lists the reasons
                raise InputError(f"--real_video_dir {src}: {e}") from e
            # manifest rows may hold absolute paths: their outputs go under OUT by the path without its "/"
            names = [output_key(v.path) for v in dataset.videos]
        stems = collision_free_stems(names + [output_key(p) for p, _ in getattr(dataset, "skipped", [])])
        is_image = bool(getattr(dataset, "item", {}).get("is_image", False))
        if cfg.output_origin and any(stems[n].split("/")[0] == ORIGIN_DIR for n in names):
            raise InputError(f"--real_video_dir {src} has a subfolder '{ORIGIN_DIR}/', where --output_origin "
                             "writes the ground truth; rename that subfolder or drop --output_origin")
        outputs = {}  # dataset index -> output paths relative to OUT
        for i, name in enumerate(names):
            recon_rel, origin_rel = output_names(stems[name], cfg.format, is_image)
            outputs[i] = [recon_rel] + ([origin_rel] if cfg.output_origin else [])

        folder = OutputFolder(out_dir, "reconstruct", {
            "ckpt": model_identity(cfg.ckpt, model), "real_video_dir": os.path.realpath(src),
            "num_frames": cfg.num_frames, "sample_rate": cfg.sample_rate, "resolution": cfg.resolution,
            "crop_size": cfg.crop_size, "resize": cfg.resize, "format": cfg.format, "dtype": dtype, "sample_fps": cfg.sample_fps,
        }, rank=env.rank, output_option="--generated_video_dir")
        problem = None
        if env.is_main:
            try:
                folder.prepare(overwrite=cfg.overwrite)
            except OutputError as e:
                problem = str(e)
        problem = broadcast_object(problem, env)  # every rank stops, not only rank 0
        if problem:
            raise OutputError(problem)
        chosen = _select_subset(len(dataset), cfg.subset_size, cfg.seed)
        mine = chosen[env.rank :: env.world_size]
        if not cfg.overwrite:
            folder.check_no_foreign([rel for i in mine for rel in outputs[i]])
        done = folder.done_outputs()
        todo = [i for i in mine if cfg.metrics or not all(rel in done for rel in outputs[i])]
        skipped_existing = len(mine) - len(todo)

        wanted = [name for name in IN_MEMORY_METRICS if name in cfg.metrics]
        nets = Networks()
        if "lpips" in needed_networks(wanted):
            nets.lpips = load_lpips(cfg.lpips_net, cfg.lpips_backbone_path, device=env.device,
                                    offline=cfg.offline or None)
        on_cuda = env.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            DecodedItems(dataset, todo), batch_size=None, num_workers=cfg.num_workers if len(todo) > 1 else 0,
            pin_memory=on_cuda,  # page-locked frames copy to the GPU asynchronously
        )
        rows, failed = [], []
        bar = tqdm(loader, total=len(todo), desc="reconstruct", disable=not env.is_main or not sys.stderr.isatty())
        with BackgroundWriter(max_pending=2) as writer:  # codecs and disk I/O off the main thread
            for item in bar:
                i = item["index"]
                if "error" in item:
                    logger.warning("skipping %s: %s", names[i], item["error"])
                    failed.append((names[i], item["error"]))
                    continue
                video = item["video"].unsqueeze(0).to(env.device, non_blocking=True)  # (1, 3, T, H, W)
                with torch.inference_mode(), inference_autocast(env.device, dtype):
                    z = model.encode(video, **cfg.chunking(cfg.chunk_size)).mode()
                    recon = model.decode(z, **cfg.chunking(cfg.decode_chunk_size)).float().clamp(-1, 1)
                row = {"path": names[i]}
                for name in wanted:
                    row[name] = float(METRICS[name].per_video(video, recon, nets)[0])
                rows.append(row)
                if all(rel in done for rel in outputs[i]):
                    skipped_existing += 1  # computed for --metrics only
                    continue
                for rel, tensor in zip(outputs[i], (recon[0], video[0])):
                    if rel not in done:
                        writer.submit(write_output, folder, rel, to_uint8_frames(tensor), cfg.format,
                                      cfg.sample_fps, is_image)
        gathered = [r for part in all_gather_object(rows, env) for r in part]
        skipped_total = sum(all_gather_object(skipped_existing, env))
        failed_total = [f for part in all_gather_object(failed, env) for f in part]
        summary = {"videos": len(chosen), "skipped_existing": skipped_total, "output_dir": str(out_dir),
                   "reconstructed": len(chosen) - skipped_total - len(failed_total)}
        skipped_inputs = [{"path": p, "reason": r} for p, r in getattr(dataset, "skipped", [])]
        skipped_inputs += [{"path": p, "reason": r} for p, r in failed_total]
        if skipped_inputs:
            summary["skipped_inputs"] = skipped_inputs
        if cfg.metrics and gathered:
            summary["metrics"] = {m: float(np.mean([r[m] for r in gathered])) for m in cfg.metrics}
            summary["per_video"] = sorted(gathered, key=lambda r: r["path"])
        barrier(env)
        if env.is_main and cfg.metrics:
            json_path = Path(cfg.json) if cfg.json else out_dir / RECONSTRUCT_METRICS
            json_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(json_path, json.dumps({"config": settings(cfg), **summary}, indent=2).encode())
        return summary
    finally:
        cleanup(env)


def run_reconstruct(cfg: ReconstructConfig) -> int:
    """``wfvae reconstruct`` on a parsed config: reconstruct, then print the summary (rank 0)."""
    setup_logging()
    summary = reconstruct(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"reconstructed {summary['reconstructed']} videos "
              f"({summary['skipped_existing']} already done) -> {summary['output_dir']}")
        for item in summary.get("skipped_inputs", []):
            print(f"skipped input {item['path']}: {item['reason']}")
        for name, value in summary.get("metrics", {}).items():
            print(f"{name} (in memory, before the codec): {value:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_config(ReconstructConfig, run_reconstruct, argv, "wfvae reconstruct", __doc__)


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("wfvae reconstruct", main))
