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

import argparse
import hashlib
import json
import logging
import os
import random
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from wfvae.data.manifest import is_manifest, output_key
from wfvae.data.transforms import RESIZE_MODES
from wfvae.errors import CheckpointError, ConfigError, InputError, OutputError, VideoDecodeError
from wfvae.layout import ORIGIN_DIR
from wfvae.utils.io import atomic_write_bytes
from wfvae.utils.output_folder import OutputFolder, check_not_nested, collision_free_stems, file_sha256
from wfvae.utils.writer import BackgroundWriter

logger = logging.getLogger(__name__)

FORMATS = {"mp4": ".mp4", "mkv": ".mkv", "png": ""}  # png: a folder of frames per video
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_conv_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--conv`` option shared by reconstruct, encode and decode."""
    parser.add_argument("--conv", choices=["auto", "winograd", "direct"], default="auto",
                        help="3x3 convolutions on CPU: auto = time oneDNN's direct kernel and Winograd F(2x2,3x3) "
                             "once per layer shape and keep the faster (cached in ~/.cache/wfvae, "
                             "$WFVAE_CONV_CACHE); winograd or direct force one (GPUs always use cuDNN)")


def add_offline_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--offline`` option of the commands that may download weights."""
    parser.add_argument("--offline", action="store_true",
                        help="never download (Hub models, metric weights); also WFVAE_OFFLINE=1 / HF_HUB_OFFLINE=1")


def load_for_inference(ckpt: str, conv: str = "auto", **load_kwargs):
    """``load_model`` set up the way the inference commands run it.

    Convolution weights are stored channels-last, and ``conv`` picks the CPU kernel of the 3x3
    convolutions: ``"auto"`` measures direct vs Winograd per layer shape (see
    ``VideoAutoencoder.set_conv_kernels``).
    """
    from wfvae.models.loading import load_model, non_finite_tensors

    try:
        model = load_model(ckpt, **load_kwargs)
    except FileNotFoundError as e:
        raise CheckpointError(f"--ckpt {ckpt}: {e}; pass a model folder (config.json + "
                              "diffusion_pytorch_model.safetensors), a .ckpt or a .safetensors file (with --config), "
                              "or a Hub id owner/name[@revision]") from e
    bad = non_finite_tensors(model)
    if bad:
        raise CheckpointError(f"--ckpt {ckpt}: {len(bad)} weight tensors hold NaN or Inf (first: {bad[0]}); every "
                              "output would be garbage. Use a checkpoint saved before the run diverged.")
    model = model.use_channels_last_weights()
    return model.set_conv_kernels(conv)


def config_hash(config: dict) -> str:
    """Short, stable hash of a model config (to tell outputs of different models apart)."""
    text = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_identity(ckpt: str, model) -> dict:
    """What an output folder records about the model: the weights file's name, size and SHA-256,
    and the config hash. Two runs with the same identity produce the same outputs."""
    from wfvae.models.loading import resolve_pretrained, resolve_weights_file

    # a Hub id was fetched into the Hub cache by load_model just before: read it from there
    weights = resolve_weights_file(resolve_pretrained(ckpt, offline=True))
    return {"file": weights.name, "size": weights.stat().st_size, "sha256": file_sha256(weights),
            "config": config_hash(model.config)}


def check_num_frames(model, num_frames: int) -> None:
    """ConfigError unless ``num_frames`` is a length the model takes (1 + k * temporal factor)."""
    sf = model.spatial_compression_ratio
    try:
        model.check_video(torch.zeros(1, 3, num_frames, sf, sf))
    except ValueError as e:
        raise ConfigError(f"--num_frames {num_frames}: {e}") from None


@dataclass
class ReconstructConfig:
    real_video_dir: str
    """a folder (searched recursively), a manifest (.csv/.jsonl/.parquet), a single video file, or an image"""
    generated_video_dir: str
    """output folder"""
    ckpt: str
    """anything `wfvae.load_model` takes: model dir, .ckpt, .safetensors (with --config), Hub id owner/name[@revision]"""
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
    resize: str = "original"
    """original: the original WF-VAE's resize (torchvision, antialiased) of full frames; fast: inside the decoder"""
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
    conv: str = "auto"
    """3x3 convolutions on CPU: auto (time direct and Winograd per layer shape, keep the faster) | winograd | direct"""
    device: str = "auto"
    """auto | cpu | cuda"""
    format: str = "mp4"
    """mp4 (H.264, lossy) | mkv (FFV1, lossless) | png (frame folders, lossless)"""
    sample_fps: float = 24.0
    """fps written into the output videos"""
    overwrite: bool = False
    """redo every output even if the folder holds results (of these or other settings)"""
    num_workers: int = 2
    """video-decoding worker processes (0 decodes in the main process)"""
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
    offline: bool = False
    """never download (Hub models, LPIPS trunk); also WFVAE_OFFLINE=1 / HF_HUB_OFFLINE=1"""

    def validate(self) -> None:
        """Raise ConfigError listing every value out of range."""
        problems = []
        bad = sorted(set(self.metrics) - {"psnr", "ssim", "lpips"})
        if bad:
            problems.append(f"--metrics {','.join(bad)}: choose from psnr, ssim, lpips")
        for name in ("num_frames", "sample_rate", "resolution"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("crop_size", "chunk_size", "decode_chunk_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"--{name} must be >= 1 when given, got {value}")
        if self.crop_size is not None and self.crop_size > self.resolution:
            problems.append(f"--crop_size {self.crop_size} is larger than --resolution {self.resolution}; "
                            "use --crop_size <= --resolution")
        if self.subset_size < 0:
            problems.append(f"--subset_size must be >= 0 (0 = all), got {self.subset_size}")
        if self.num_workers < 0:
            problems.append(f"--num_workers must be >= 0, got {self.num_workers}")
        if not self.sample_fps > 0:
            problems.append(f"--sample_fps must be > 0, got {self.sample_fps}")
        if problems:
            raise ConfigError("; ".join(problems))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wfvae reconstruct", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real_video_dir", required=True)
    p.add_argument("--generated_video_dir", required=True)
    p.add_argument("--ckpt", "--from_pretrained", dest="ckpt", required=True,
                   help="model dir, weights file, or Hugging Face Hub id owner/name[@revision]")
    p.add_argument("--config", default=None)
    p.add_argument("--model_name", choices=["WFVAE", "CausalVAE"], default=None)
    p.add_argument("--num_frames", type=int, default=33)
    p.add_argument("--sample_rate", type=int, default=1)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--crop_size", type=int, default=None)
    p.add_argument("--resize", choices=RESIZE_MODES, default="original",
                   help="original: the original WF-VAE's resize (torchvision, antialiased) of full frames; "
                   "fast: resize inside the decoder (a different filter)")
    p.add_argument("--subset_size", type=int, default=0)
    p.add_argument("--output_origin", action="store_true")
    p.add_argument("--chunk_size", type=int, default=None)
    p.add_argument("--decode_chunk_size", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    add_conv_argument(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--format", choices=sorted(FORMATS), default="mp4")
    p.add_argument("--sample_fps", type=float, default=24.0)
    p.add_argument("--overwrite", action="store_true",
                   help="redo all outputs, replacing results of earlier runs (of any settings)")
    p.add_argument("--num_workers", type=int, default=2, help="video-decoding worker processes (0: main process)")
    p.add_argument("--metrics", default="", help="comma list of psnr,ssim,lpips (in-memory, before the codec)")
    p.add_argument("--lpips_net", choices=["alex", "vgg"], default="alex")
    p.add_argument("--lpips_backbone_path", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--seed", type=int, default=42)
    add_offline_argument(p)
    # accepted for command-line compatibility with the original scripts; it has no effect here
    p.add_argument("--batch_size", type=int, default=1, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None) -> ReconstructConfig:
    ns = vars(_parser().parse_args(argv))
    ns.pop("batch_size")
    ns["metrics"] = [m.strip() for m in ns["metrics"].split(",") if m.strip()]
    cfg = ReconstructConfig(**ns)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------ inputs
class _SingleFile:
    """The one-file case, shaped like the folder dataset (same resize/crop/normalisation)."""

    def __init__(self, path: Path, cfg: ReconstructConfig, temporal_factor: int):
        from wfvae.data.transforms import clip_indices, crop_offsets, resize_crop, resized_size, to_model_tensor
        from wfvae.data.video_io import probe_video, read_video

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
    suffix = ".png" if is_image else FORMATS[fmt]
    return f"{stem}{suffix}", f"{ORIGIN_DIR}/{stem}{suffix}"


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3), rounding to nearest (converted on the tensor's device)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_output(folder: OutputFolder, rel: str, frames: np.ndarray, fmt: str, fps: float, is_image: bool) -> None:
    """Write output ``rel`` of ``folder`` atomically: a temporary sibling, then claim and rename.

    ``fmt`` png writes a folder of frames (renamed into place whole, replacing an older one).
    """
    from PIL import Image

    from wfvae.data.video_io import write_video

    tmp = folder.temporary_path(rel)
    if is_image:
        Image.fromarray(frames[0]).save(tmp, format="PNG")
    elif fmt == "png":
        tmp.mkdir()
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{i:05d}.png")
    else:
        write_video(tmp, frames, fps=fps, lossless=(fmt == "mkv"))
    folder.publish(tmp, rel)


class DecodedItems(torch.utils.data.Dataset):
    """The selected items of a dataset; a decoding failure comes back as a record, not an exception
    (an exception raised in a DataLoader worker loses its type and arrives as a traceback text)."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i = self.indices[k]
        try:
            return {**self.dataset[i], "index": i}
        except VideoDecodeError as e:
            return {"index": i, "error": e.reason}


def _select_subset(n: int, subset_size: int, seed: int) -> list[int]:
    if subset_size <= 0 or subset_size >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), subset_size))


# ------------------------------------------------------------------------------ main work
def reconstruct(cfg: ReconstructConfig) -> dict:
    """Reconstruct every selected video; returns a summary dict (and per-video metrics if asked)."""
    from tqdm import tqdm

    from wfvae.evaluation import metrics as M
    from wfvae.distributed import all_gather_object, barrier, broadcast_object, cleanup, init_distributed

    src = Path(cfg.real_video_dir)
    out_dir = Path(cfg.generated_video_dir)
    if not src.exists():
        raise InputError(f"--real_video_dir {src} does not exist; pass a video folder, a video or an image")
    # a manifest's outputs (named by its rows) must not land in its own folder, over its inputs
    check_not_nested(src.parent if is_manifest(src) and src.is_file() else src, out_dir, "--real_video_dir",
                     "--generated_video_dir")
    env = init_distributed(cfg.device)
    try:
        model = load_for_inference(cfg.ckpt, cfg.conv, config=cfg.config, model_name=cfg.model_name, device=env.device,
                                   offline=cfg.offline or None)
        if src.is_file() and not is_manifest(src):
            dataset = _SingleFile(src, cfg, model.temporal_compression_ratio)
            names = [dataset.item["path"]]
        else:
            from wfvae.data.datasets import VideoFolderDataset

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
            "crop_size": cfg.crop_size, "resize": cfg.resize, "format": cfg.format, "dtype": cfg.dtype, "sample_fps": cfg.sample_fps,
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

        lpips_model = None
        if "lpips" in cfg.metrics:
            from wfvae.networks.lpips import load_lpips

            lpips_model = load_lpips(cfg.lpips_net, cfg.lpips_backbone_path, device=env.device,
                                      offline=cfg.offline or None)
        autocast_dtype = DTYPES[cfg.dtype]
        use_autocast = env.device.type == "cuda" and autocast_dtype != torch.float32
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
                with torch.inference_mode(), torch.autocast(env.device.type, dtype=autocast_dtype, enabled=use_autocast):
                    z = model.encode(video, chunk_size=cfg.chunk_size).mode()
                    recon = model.decode(z, chunk_size=cfg.decode_chunk_size).float().clamp(-1, 1)
                row = {"path": names[i]}
                if "psnr" in cfg.metrics:
                    row["psnr"] = float(M.psnr(video, recon)[0])
                if "ssim" in cfg.metrics:
                    row["ssim"] = float(M.ssim(video, recon)[0])
                if lpips_model is not None:
                    row["lpips"] = float(M.lpips(video, recon, lpips_model)[0])
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
            json_path = Path(cfg.json) if cfg.json else out_dir / "reconstruct_metrics.json"
            json_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(json_path, json.dumps({"config": asdict(cfg), **summary}, indent=2).encode())
        return summary
    finally:
        cleanup(env)


def main(argv: list[str] | None = None) -> int:
    from wfvae.utils.logging import setup_logging

    setup_logging()
    cfg = parse_args(argv)
    summary = reconstruct(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"reconstructed {summary['reconstructed']} videos "
              f"({summary['skipped_existing']} already done) -> {summary['output_dir']}")
        for item in summary.get("skipped_inputs", []):
            print(f"skipped input {item['path']}: {item['reason']}")
        for name, value in summary.get("metrics", {}).items():
            print(f"{name} (in memory, before the codec): {value:.4f}")
    return 0


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("wfvae reconstruct", main))
