"""Reconstruct videos with a trained VAE — step 1 of the spec's validation (``gen_video.sh``).

How to run::

    wfvae reconstruct --real_video_dir test_video --generated_video_dir video_gen/test_sr1_nf33_res256_subset0 \\
        --ckpt path/to/model_dir --num_frames 33 --sample_rate 1 --resolution 256 --output_origin
    torchrun --nproc_per_node 8 -m wfvae.inference.reconstruct ...        # sharded over processes
    wfvae reconstruct --real_video_dir clip.mp4 --generated_video_dir out --ckpt ...   # one video
    wfvae reconstruct --real_video_dir photo.png --generated_video_dir out --ckpt ...  # one image

Outputs keep the input's relative sub-path (``a/b/clip.mp4`` -> ``OUT/a/b/clip.mp4``); with
``--output_origin`` the model's exact input (same frames, resize and crop) goes to ``OUT/origin/``.
Existing outputs are skipped, so an interrupted run continues where it stopped; files are written
under a temporary name and renamed, so a half-written file is never mistaken for a finished one.
``--format mkv`` writes lossless FFV1 (mp4 is lossy and moves the metrics a little).
``--metrics psnr,ssim,lpips`` also measures the in-memory tensors, before any codec.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from wfvae.utils.paths import check_relative, safe_join

logger = logging.getLogger(__name__)

FORMATS = {"mp4": ".mp4", "mkv": ".mkv", "png": ""}  # png: a folder of frames per video
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_conv_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--conv`` option shared by reconstruct, encode and decode."""
    parser.add_argument("--conv", choices=["winograd", "direct"], default="winograd",
                        help="3x3 convolutions on CPU: Winograd F(2x2,3x3) or oneDNN's direct kernels "
                             "(GPUs always use cuDNN)")


def load_for_inference(ckpt: str, conv: str = "winograd", **load_kwargs):
    """``load_model`` set up the way the inference commands run it.

    Convolution weights are stored channels-last, and ``conv="winograd"`` turns on Winograd
    3x3 convolutions (CPU only; see ``VideoAutoencoder.use_winograd_convolutions``).
    """
    from wfvae import load_model

    model = load_model(ckpt, **load_kwargs).use_channels_last_weights()
    return model.use_winograd_convolutions(conv == "winograd")


@dataclass
class ReconstructConfig:
    real_video_dir: str
    """a folder (searched recursively), a single video file, or a single image"""
    generated_video_dir: str
    """output folder"""
    ckpt: str
    """anything `wfvae.load_model` takes: model dir, .ckpt or .safetensors (with --config)"""
    config: str | None = None
    """model config.json when --ckpt is a bare weights file"""
    model_name: str | None = None
    """WFVAE or CausalVAE, when the config has no _class_name"""
    num_frames: int = 33
    """frames per clip (1 + k * temporal factor)"""
    sample_rate: int = 1
    """frame interval when reading the clip"""
    resolution: int = 256
    """short side after resizing, pixels"""
    crop_size: int | None = None
    """centre crop after resizing (default: resolution x resolution)"""
    subset_size: int = 0
    """0: every video; N: a deterministic random subset of N videos (seed --seed)"""
    output_origin: bool = False
    """also write the ground truth exactly as fed to the model under OUT/origin/"""
    chunk_size: int | None = None
    """encode this many frames at a time (multiple of the temporal factor); exact"""
    decode_chunk_size: int | None = None
    """decode this many latent frames at a time; exact"""
    dtype: str = "fp32"
    """fp32 | bf16 | fp16 (autocast on CUDA; fp32 math is always used on CPU)"""
    conv: str = "winograd"
    """3x3 convolutions on CPU: winograd (F(2x2,3x3), fewer multiply-adds) | direct (oneDNN kernels)"""
    device: str = "auto"
    """auto | cpu | cuda"""
    format: str = "mp4"
    """mp4 (H.264, lossy) | mkv (FFV1, lossless) | png (frame folders, lossless)"""
    sample_fps: float = 24.0
    """fps written into the output videos"""
    metrics: list[str] = field(default_factory=list)
    """codec-free metrics on the in-memory tensors: psnr,ssim,lpips"""
    lpips_net: str = "alex"
    """LPIPS trunk for --metrics lpips"""
    lpips_backbone_path: str | None = None
    """local torchvision weights for the LPIPS trunk"""
    json: str | None = None
    """write per-video metrics here (default OUT/reconstruct_metrics.json when --metrics is set)"""
    cache_dir: str | None = None
    """where the dataset probe index is cached"""
    seed: int = 42
    """seed for the subset choice"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wfvae reconstruct", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real_video_dir", required=True)
    p.add_argument("--generated_video_dir", required=True)
    p.add_argument("--ckpt", "--from_pretrained", dest="ckpt", required=True, help="model dir or weights file")
    p.add_argument("--config", default=None)
    p.add_argument("--model_name", choices=["WFVAE", "CausalVAE"], default=None)
    p.add_argument("--num_frames", type=int, default=33)
    p.add_argument("--sample_rate", type=int, default=1)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--crop_size", type=int, default=None)
    p.add_argument("--subset_size", type=int, default=0)
    p.add_argument("--output_origin", action="store_true")
    p.add_argument("--chunk_size", type=int, default=None)
    p.add_argument("--decode_chunk_size", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    add_conv_argument(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--format", choices=sorted(FORMATS), default="mp4")
    p.add_argument("--sample_fps", type=float, default=24.0)
    p.add_argument("--metrics", default="", help="comma list of psnr,ssim,lpips (in-memory, before the codec)")
    p.add_argument("--lpips_net", choices=["alex", "vgg"], default="alex")
    p.add_argument("--lpips_backbone_path", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--seed", type=int, default=42)
    # accepted for command-line compatibility with the original scripts; they have no effect here
    p.add_argument("--batch_size", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--num_workers", type=int, default=0, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> ReconstructConfig:
    ns = vars(_parser().parse_args(argv))
    ns.pop("batch_size"), ns.pop("num_workers")
    ns["metrics"] = [m.strip() for m in ns["metrics"].split(",") if m.strip()]
    bad = sorted(set(ns["metrics"]) - {"psnr", "ssim", "lpips"})
    if bad:
        raise SystemExit(f"wfvae reconstruct: unknown --metrics {bad}; choose from psnr, ssim, lpips")
    return ReconstructConfig(**ns)


# ------------------------------------------------------------------------------ inputs
class _SingleFile:
    """The one-file case, shaped like the folder dataset (same resize/crop/normalisation)."""

    def __init__(self, path: Path, cfg: ReconstructConfig, temporal_factor: int):
        from wfvae.data.transforms import crop_offsets, to_model_tensor
        from wfvae.data.video_io import probe_video, read_video

        info = probe_video(path)
        if info.is_image:
            frames = read_video(path, info=info, short_side=cfg.resolution)[:1]
        else:
            frames = read_video(path, 0, cfg.num_frames, cfg.sample_rate, info=info, short_side=cfg.resolution)
            usable = (len(frames) - 1) // temporal_factor * temporal_factor + 1
            if usable < len(frames):
                logger.warning("%s: using %d of %d frames (clips need 1 + %dk frames)", path, usable, len(frames), temporal_factor)
            frames = frames[:usable]
        crop = cfg.crop_size or cfg.resolution
        _, h, w, _ = frames.shape
        top, left = crop_offsets(h, w, min(crop, h), min(crop, w))
        frames = frames[:, top : top + crop, left : left + crop]
        self.item = {"video": to_model_tensor(frames), "path": path.name, "is_image": info.is_image}

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.item


def _output_paths(out_dir: Path, rel: str, fmt: str, is_image: bool) -> tuple[Path, Path]:
    stem = check_relative(rel, "input file").with_suffix("")
    name = f"{stem.with_suffix('.png')}" if is_image else f"{stem}{FORMATS[fmt]}"
    return safe_join(out_dir, name, "input file"), safe_join(out_dir, f"origin/{name}", "input file")


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3), rounding to nearest."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_output(path: Path, frames: np.ndarray, fmt: str, fps: float, is_image: bool) -> None:
    """Write atomically: to a temporary sibling, then rename (folders for png frames)."""
    from PIL import Image

    from wfvae.data.video_io import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    if is_image:
        tmp = path.with_name(f".tmp-{path.name}")
        Image.fromarray(frames[0]).save(tmp, format="PNG")
        os.replace(tmp, path)
        return
    if fmt == "png":
        tmp_dir = path.with_name(f".tmp-{path.name}")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp_dir / f"{i:05d}.png")
        os.replace(tmp_dir, path)
        return
    tmp = path.with_name(f".tmp-{path.stem}{path.suffix}")
    write_video(tmp, frames, fps=fps, lossless=(fmt == "mkv"))
    os.replace(tmp, path)


def _select_subset(n: int, subset_size: int, seed: int) -> list[int]:
    if subset_size <= 0 or subset_size >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), subset_size))


# ------------------------------------------------------------------------------ main work
def reconstruct(cfg: ReconstructConfig) -> dict:
    """Reconstruct every selected video; returns a summary dict (and per-video metrics if asked)."""
    from tqdm import tqdm

    from wfvae.evaluation import metrics as M
    from wfvae.training.distributed import all_gather_object, barrier, cleanup, init_distributed

    env = init_distributed(cfg.device)
    try:
        model = load_for_inference(cfg.ckpt, cfg.conv, config=cfg.config, model_name=cfg.model_name, device=env.device)
        src = Path(cfg.real_video_dir)
        out_dir = Path(cfg.generated_video_dir)
        if src.is_file():
            dataset = _SingleFile(src, cfg, model.temporal_compression_ratio)
        else:
            from wfvae.data.datasets import VideoFolderDataset

            # fail before decoding anything: every clip has exactly num_frames frames
            sf = model.spatial_compression_ratio
            model.check_video(torch.zeros(1, 3, cfg.num_frames, sf, sf))

            dataset = VideoFolderDataset(
                src, cfg.num_frames, cfg.sample_rate, cfg.resolution, train=False,
                crop_size=cfg.crop_size, cache_dir=cfg.cache_dir, include_images=False,
                show_progress=env.is_main,
            )
        chosen = _select_subset(len(dataset), cfg.subset_size, cfg.seed)
        mine = chosen[env.rank :: env.world_size]
        lpips_model = None
        if "lpips" in cfg.metrics:
            from wfvae.losses.lpips import load_lpips

            lpips_model = load_lpips(cfg.lpips_net, cfg.lpips_backbone_path, device=env.device)
        autocast_dtype = DTYPES[cfg.dtype]
        use_autocast = env.device.type == "cuda" and autocast_dtype != torch.float32
        rows, skipped_existing = [], 0
        bar = tqdm(mine, desc="reconstruct", disable=not env.is_main or not sys.stderr.isatty())
        for i in bar:
            item = dataset[i]
            is_image = bool(item.get("is_image", False))
            recon_path, origin_path = _output_paths(out_dir, item["path"], cfg.format, is_image)
            done = recon_path.exists() and (not cfg.output_origin or origin_path.exists())
            if done and not cfg.metrics:
                skipped_existing += 1
                continue
            video = item["video"].unsqueeze(0).to(env.device)  # (1, 3, T, H, W)
            with torch.inference_mode(), torch.autocast(env.device.type, dtype=autocast_dtype, enabled=use_autocast):
                z = model.encode(video, chunk_size=cfg.chunk_size).mode()
                recon = model.decode(z, chunk_size=cfg.decode_chunk_size).float().clamp(-1, 1)
            row = {"path": item["path"]}
            if "psnr" in cfg.metrics:
                row["psnr"] = float(M.psnr(video.cpu(), recon.cpu())[0])
            if "ssim" in cfg.metrics:
                row["ssim"] = float(M.ssim(video.cpu(), recon.cpu())[0])
            if lpips_model is not None:
                row["lpips"] = float(M.lpips(video, recon, lpips_model)[0])
            rows.append(row)
            if not done:
                write_output(recon_path, to_uint8_frames(recon[0]), cfg.format, cfg.sample_fps, is_image)
                if cfg.output_origin:
                    write_output(origin_path, to_uint8_frames(video[0]), cfg.format, cfg.sample_fps, is_image)
            else:
                skipped_existing += 1
        gathered = [r for part in all_gather_object(rows, env) for r in part]
        skipped_total = sum(all_gather_object(skipped_existing, env))
        summary = {"videos": len(chosen), "skipped_existing": skipped_total, "output_dir": str(out_dir)}
        if hasattr(dataset, "skipped"):
            summary["skipped_inputs"] = [{"path": p, "reason": r} for p, r in dataset.skipped]
        if cfg.metrics and gathered:
            summary["metrics"] = {m: float(np.mean([r[m] for r in gathered])) for m in cfg.metrics}
            summary["per_video"] = sorted(gathered, key=lambda r: r["path"])
        barrier(env)
        if env.is_main:
            if cfg.metrics:
                json_path = Path(cfg.json) if cfg.json else out_dir / "reconstruct_metrics.json"
                json_path.parent.mkdir(parents=True, exist_ok=True)
                json_path.write_text(json.dumps({"config": asdict(cfg), **summary}, indent=2))
        return summary
    finally:
        cleanup(env)


def main(argv: list[str] | None = None) -> int:
    from wfvae.utils.logging import setup_logging

    setup_logging()
    cfg = parse_args(argv)
    summary = reconstruct(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"reconstructed {summary['videos'] - summary['skipped_existing']} videos "
              f"({summary['skipped_existing']} already done) -> {summary['output_dir']}")
        for item in summary.get("skipped_inputs", []):
            print(f"skipped input {item['path']}: {item['reason']}")
        for name, value in summary.get("metrics", {}).items():
            print(f"{name} (in memory, before the codec): {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
