"""Spatial resize, crop and normalisation of decoded clips.

Two ways to bring a clip to ``resolution`` (the ``resize`` option of every command that reads
videos):

* ``"original"`` (default): the original WF-VAE's preprocessing. Frames are decoded at full size
  and resized as torchvision's ``Resize(short_side)`` does on ``frames / 255`` (bilinear with
  antialiasing, ``align_corners=False``), then centre-cropped; within 0.5 / 255 of the original's
  float clips (:func:`resize_crop`; ``tests/test_data_preprocessing.py`` checks it on real files).
* ``"fast"``: FFmpeg's swscale scales the frame inside the decoder (uint8, before the conversion
  to RGB). Cheaper, but a different filter: pixels differ from the original's clips by up to
  ~0.5 on [-1, 1] near sharp edges and noise, so metrics are not comparable with the paper's.

Frame positions follow the original too: :func:`clip_indices`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RESIZE_MODES", "ResizeMode", "clip_indices", "crop_offsets", "resize_crop", "resized_size", "to_model_tensor"]

ResizeMode = Literal["original", "fast"]
RESIZE_MODES: tuple[str, ...] = ("original", "fast")


def clip_indices(start: int, num_frames: int, sample_rate: int) -> np.ndarray:
    """Frame indices of a clip, as the original samples them.

    ``num_frames`` positions spread evenly (rounded down) over the ``num_frames * sample_rate``
    frames starting at ``start``. With ``sample_rate == 1`` that is ``start, start + 1, ...``; with
    2 and 33 frames the step is 65/32, so a few gaps are 3 frames instead of 2.
    """
    span = num_frames * sample_rate
    return np.linspace(start, start + span - 1, num_frames, dtype=int)


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) after scaling the short side to ``short_side``; the long side is truncated as in
    torchvision's ``Resize(int)``."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def crop_offsets(
    height: int, width: int, crop_h: int, crop_w: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Top-left corner of a ``crop_h x crop_w`` window inside ``height x width``.

    Args:
        height, width: frame size in pixels.
        crop_h, crop_w: crop size in pixels; must fit inside the frame.
        generator: random corner drawn from it; None gives the centre (the original's rule).

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


def resize_crop(
    frames: np.ndarray | torch.Tensor,
    short_side: int,
    crop_h: int,
    crop_w: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Resize uint8 (T, H, W, 3) frames as torchvision ``Resize(short_side)`` does, then crop.

    The filter is torch's antialiased bilinear (``align_corners=False``), the one torchvision's
    ``Resize`` applies to the original's float clips. The long side is resized first, on uint8
    with torch's vectorised kernel (its one rounding moves a pixel by at most 0.5 / 255), and
    cropped; the short side is then resized in float on the cropped frames only. The result is
    within 0.5 / 255 (+ float rounding) of resizing ``frames / 255`` in float, at a fraction of
    the cost.

    Args:
        frames: uint8 RGB frames at their decoded size.
        short_side: the shorter side after resizing.
        crop_h, crop_w: crop size after resizing.
        generator: random crop corner from it; None crops the centre (torchvision's rounding).

    Returns:
        float32 (T, crop_h, crop_w, 3) in [0, 255], not rounded.
    """
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {x.dtype} {tuple(x.shape)}")
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = resized_size(height, width, short_side)
    top, left = crop_offsets(out_h, out_w, crop_h, crop_w, generator)
    x = x.permute(0, 3, 1, 2)  # (T, 3, H, W) in channels-last memory: what the uint8 kernel wants
    if (out_h, out_w) != (height, width):
        if width >= height:
            x = _resize(x, height, out_w)[..., left : left + crop_w]
            x = _resize(x.float(), out_h, crop_w)[..., top : top + crop_h, :]
        else:
            x = _resize(x, out_h, width)[..., top : top + crop_h, :]
            x = _resize(x.float(), crop_h, out_w)[..., left : left + crop_w]
    else:
        x = x[..., top : top + crop_h, left : left + crop_w].float()
    return x.permute(0, 2, 3, 1)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if (x.shape[-2], x.shape[-1]) == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def to_model_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) RGB in [0, 255] (uint8 or float) -> float32 (3, T, H, W) in [-1, 1]."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {tuple(frames.shape)}")
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    video = frames.permute(3, 0, 1, 2)  # (3, T, H, W)
    return video.float().div_(127.5).sub_(1.0)
