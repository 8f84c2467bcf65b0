"""What the inference commands (reconstruct, encode, decode) share: loading a model, its identity in an
output folder's manifest, precision, and writing decoded videos.

How to use::

    model = load_for_command(cfg, device)  # load_for_inference with the command's options
    with torch.inference_mode(), inference_autocast(device, cfg.dtype):
        recon = model.decode(model.encode(video).mode())
    write_output(folder, "clip.mkv", to_uint8_frames(recon[0]), "mkv", fps=24.0, is_image=False)
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from PIL import Image

from wfvae.data.video_write import write_video
from wfvae.errors import CheckpointError, ConfigError, VideoDecodeError
from wfvae.models.loading import load_model, non_finite_tensors, resolve_pretrained, resolve_weights_file
from wfvae.utils.output_folder import OutputFolder, file_sha256

__all__ = ["DTYPES", "DecodedItems", "check_num_frames", "config_hash", "inference_autocast", "load_for_command",
           "load_for_inference", "model_identity", "to_uint8_frames", "write_output"]

#: ``--dtype`` -> torch dtype.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_for_inference(ckpt: str, conv: str = "auto", **load_kwargs):
    """``load_model`` set up the way the inference commands run it.

    Convolution weights are stored channels-last, and ``conv`` picks the CPU kernel of the 3x3
    convolutions: ``"auto"`` measures direct vs Winograd per layer shape (see
    ``VideoAutoencoder.set_conv_kernels``).
    """
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


def load_for_command(cfg, device: torch.device):
    """The model of ``reconstruct``, ``encode`` or ``decode`` (``cfg``: their ``ModelOptions`` and
    ``MemoryBudgetOptions``), with what a memory budget implies set up first: on CPU freed memory leaves
    the process at once, and ``--conv auto`` runs direct kernels (see ``MemoryBudgetOptions``)."""
    cfg.release_memory_promptly(device.type)
    return load_for_inference(cfg.ckpt, cfg.conv_kernels(cfg.conv), config=cfg.config, model_name=cfg.model_name,
                              device=device, offline=cfg.offline or None)


def config_hash(config: dict) -> str:
    """Short, stable hash of a model config (to tell outputs of different models apart)."""
    text = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_identity(ckpt: str, model) -> dict:
    """What an output folder records about the model: the weights file's name, size and SHA-256,
    and the config hash. Two runs with the same identity produce the same outputs."""
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


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3), rounding to nearest (converted on the tensor's device)."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def write_output(folder: OutputFolder, rel: str, frames: np.ndarray, fmt: str, fps: float, is_image: bool) -> None:
    """Write output ``rel`` of ``folder`` atomically: a temporary sibling, then claim and rename.

    ``fmt`` png writes a folder of frames (renamed into place whole, replacing an older one).
    """
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


def inference_autocast(device: torch.device, dtype: str):
    """Autocast to ``dtype`` (a :data:`DTYPES` name) on ``device``; fp32 is a no-op. bf16 works on CUDA and CPU
    (the caller refuses fp16 on CPU)."""
    autocast_dtype = DTYPES[dtype]
    return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32)
