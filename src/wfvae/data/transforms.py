"""Spatial crop and normalisation of decoded clips.

Resizing happens during decoding (``read_video(..., short_side=...)``, in FFmpeg's swscale),
which is much cheaper than resizing float tensors afterwards. What is left is cropping and
converting uint8 (T, H, W, 3) frames into the model's float (C, T, H, W) in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["crop_offsets", "to_model_tensor"]


def crop_offsets(
    height: int, width: int, crop_h: int, crop_w: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Top-left corner of a ``crop_h x crop_w`` window inside ``height x width``.

    Args:
        height, width: frame size in pixels.
        crop_h, crop_w: crop size in pixels; must fit inside the frame.
        generator: random corner drawn from it (training); None gives the centre (evaluation).

    Returns:
        (top, left) in pixels.

    Raises:
        ValueError: the crop is larger than the frame.
    """
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} does not fit in a {height}x{width} frame")
    if generator is None:
        # Same rounding as torchvision's center_crop.
        return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
    return top, left


def to_model_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) RGB -> float32 (3, T, H, W) in [-1, 1]."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {frames.shape}")
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)  # (3, T, H, W)
    return video.float().div_(127.5).sub_(1.0)
