"""Synthetic videos for tests, demos and benchmarks: no downloads needed.

How to use::

    from wfvae.data.synthetic import make_synthetic_video, write_synthetic_dataset

    clip = make_synthetic_video(17, 64, 64, seed=0)          # uint8 (17, 64, 64, 3)
    paths = write_synthetic_dataset("data/train", n_videos=8, num_frames=33, height=64, width=96)

The content is a slowly drifting textured background (sum of oriented sinusoids, like a
camera pan over a surface) with a few coloured discs and boxes moving in straight lines and
bouncing off the borders. It has edges, texture and motion, so a VAE has something to learn,
and it compresses like natural footage rather than like noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wfvae.data.video_write import write_video

__all__ = ["make_synthetic_video", "write_synthetic_dataset"]


def make_synthetic_video(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Make a clip of moving coloured shapes over a drifting textured background.

    Args:
        num_frames: number of frames T (>= 1).
        height: frame height H in pixels (>= 4).
        width: frame width W in pixels (>= 4).
        seed: the same seed gives the same clip.

    Returns:
        ``np.ndarray`` uint8 of shape (T, H, W, 3), RGB.
    """
    if num_frames < 1 or height < 4 or width < 4:
        raise ValueError(f"need num_frames >= 1 and a frame of at least 4x4; got {num_frames}, {height}x{width}")
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]  # (T, 1, 1)
    y = np.arange(height, dtype=np.float32)[None, :, None] / max(height, width)  # (1, H, 1)
    x = np.arange(width, dtype=np.float32)[None, None, :] / max(height, width)  # (1, 1, W)

    # Background: per channel, three oriented waves drifting with a shared "camera" velocity.
    pan = rng.uniform(-0.01, 0.01, size=2).astype(np.float32)  # image widths per frame
    video = np.empty((num_frames, height, width, 3), dtype=np.float32)
    for c in range(3):
        acc = np.zeros((num_frames, height, width), dtype=np.float32)
        for _ in range(3):
            freq = rng.uniform(2.0, 12.0)
            angle = rng.uniform(0, np.pi)
            phase = rng.uniform(0, 2 * np.pi)
            fy, fx = freq * np.sin(angle), freq * np.cos(angle)
            acc += np.sin(2 * np.pi * (fy * (y + pan[0] * t) + fx * (x + pan[1] * t)) + phase)
        base = rng.uniform(60, 190)
        video[..., c] = base + 18.0 * acc

    # Foreground: discs and boxes with constant velocity, reflected at the borders.
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    n_shapes = int(rng.integers(2, 5))
    for _ in range(n_shapes):
        size = rng.uniform(0.12, 0.3) * min(height, width)
        pos = rng.uniform([size, size], [height - size, width - size])
        vel = rng.uniform(-0.06, 0.06, size=2) * np.array([height, width])
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        is_disc = bool(rng.integers(0, 2))
        for i in range(num_frames):
            cy = _bounce(pos[0] + vel[0] * i, size / 2, height - size / 2)
            cx = _bounce(pos[1] + vel[1] * i, size / 2, width - size / 2)
            if is_disc:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size / 2) ** 2
            else:
                mask = (np.abs(yy - cy) <= size / 2) & (np.abs(xx - cx) <= size / 2)
            video[i][mask] = color
    return np.clip(video, 0, 255).astype(np.uint8)


def _bounce(v: float, lo: float, hi: float) -> float:
    """Reflect ``v`` into [lo, hi] (a ball bouncing between two walls)."""
    span = hi - lo
    if span <= 0:
        return lo
    m = (v - lo) % (2 * span)
    return lo + (m if m <= span else 2 * span - m)


def write_synthetic_dataset(
    root: str | os.PathLike,
    n_videos: int,
    num_frames: int,
    height: int,
    width: int,
    ext: str = ".mp4",
    seed: int = 0,
    nested: bool = True,
) -> list[Path]:
    """Write ``n_videos`` synthetic clips into a folder laid out like the spec's dataset.

    With ``nested`` the files are spread over ``sub_dataset1/sub_sub_dataset1/``,
    ``sub_dataset1/sub_sub_dataset2/``, ``sub_dataset2/`` and the root, round robin.

    Args:
        root: output folder (created).
        n_videos: number of clips.
        num_frames, height, width: clip shape.
        ext: container extension; the codec follows from it (see :func:`write_video`).
        seed: clip ``i`` uses seed ``seed + i``.
        nested: spread over sub-folders (True) or write all into ``root``.

    Returns:
        Sorted list of the written paths.
    """
    root = Path(root)
    folders = ["sub_dataset1/sub_sub_dataset1", "sub_dataset1/sub_sub_dataset2", "sub_dataset2", "."]
    paths = []
    for i in range(n_videos):
        folder = root / folders[i % len(folders)] if nested else root
        path = folder / f"video{i}{ext}"
        write_video(path, make_synthetic_video(num_frames, height, width, seed=seed + i), fps=24)
        paths.append(path)
    return sorted(paths)
