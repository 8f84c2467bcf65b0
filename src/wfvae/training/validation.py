"""Validation during training: PSNR (and LPIPS) of the posterior-mean reconstruction of held-out clips.

How to use::

    result, videos = validate(model, val_loader, env, autocast=autocast, lpips_model=None,
                              num_video_log=2, pad_shape=(1, 3, 17, 256, 256), fsdp=False)
    # result: {"psnr": mean dB, "lpips": mean (when lpips_model), "num_videos": n, "time_s": s}

Each rank validates its own share of the videos (see ``builders.build_val_loader``); the sums are all-reduced,
so every rank returns the same means. The caller sets the model's train/eval mode around the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from wfvae.distributed import DistEnv, all_gather_object, all_reduce_sum_
from wfvae.evaluation.registry import METRICS, Networks

__all__ = ["side_by_side_uint8", "validate"]


def side_by_side_uint8(real: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) pair in [-1, 1] -> uint8 (T, H, 2W, 3): input | reconstruction."""
    side = torch.cat([real, fake], dim=-1)  # (3, T, H, 2W)
    return ((side.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, env: DistEnv, *, autocast: Callable[[], AbstractContextManager],
             lpips_model: nn.Module | None, num_video_log: int, pad_shape: tuple[int, ...],
             fsdp: bool) -> tuple[dict[str, float], list[np.ndarray]]:
    """Means over all ranks' videos, and up to ``num_video_log`` side-by-side clips (main process only).

    ``pad_shape``: input shape of the throw-away forwards that keep FSDP ranks in step (see below).
    """
    device = env.device
    names = ["psnr"] + (["lpips"] if lpips_model is not None else [])  # entries of the metric registry
    nets = Networks(lpips=lpips_model)
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)  # one sum per metric, then the count
    videos: list[np.ndarray] = []
    start = time.perf_counter()
    num_batches = 0
    for batch in loader:
        num_batches += 1
        video = batch["video"].to(device, non_blocking=True)
        with autocast():
            recon = model(video, sample_posterior=False).sample
        recon = recon.float().clamp(-1.0, 1.0)
        for j, name in enumerate(names):
            sums[j] += METRICS[name].per_video(video, recon, nets).to(sums).sum()
        sums[-1] += video.shape[0]
        if env.is_main:
            for real, fake in zip(video, recon):
                if len(videos) >= num_video_log:
                    break
                videos.append(side_by_side_uint8(real, fake))
    if fsdp:
        # Under FSDP every forward is a collective (it gathers each block's shards), so a rank with fewer
        # batches (videos are split unevenly over ranks) runs throw-away forwards until all ranks have run as
        # many as the busiest one.
        most = max(all_gather_object(num_batches, env))
        dummy = torch.zeros(pad_shape, device=device)  # (B, C, T, H, W)
        for _ in range(most - num_batches):
            with autocast():
                model(dummy, sample_posterior=False)
    all_reduce_sum_(sums, env)
    totals = sums.tolist()  # one transfer
    n = int(totals[-1])
    result = {name: totals[j] / max(n, 1) for j, name in enumerate(names)}
    result.update(num_videos=n, time_s=time.perf_counter() - start)
    return result, videos
