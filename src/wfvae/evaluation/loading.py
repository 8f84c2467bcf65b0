"""Loading a (real, generated) pair the way evaluation compares them: the same frames, resize and crop as the
training and reconstruction data pipeline.

How to use::

    dataset = PairDataset(pairs, cfg)          # cfg: an EvalConfig; one item per pair
    item = dataset[0]                          # {"key", "real", "generated"} (3, T, H, W), or {"key", "error"}

Real videos are read from frame 0 with step ``cfg.sample_rate``; generated videos with step 1, because
reconstructions are already subsampled. Both sides are resized (short side to ``cfg.resolution``) and
centre-cropped to a square; frames already of that size are left untouched, so everything stays uint8 and
lossless files compare exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wfvae.data.transforms import (
    clip_indices,
    crop_offsets,
    resize_crop,
    resized_size,
    to_model_tensor,
)
from wfvae.data.video_read import read_video
from wfvae.errors import InputError, UserError

if TYPE_CHECKING:  # for the annotation only: evaluate.py imports this module
    from wfvae.evaluation.evaluate import EvalConfig

__all__ = ["PairDataset", "center_crop"]


def center_crop(video: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Centred ``resolution x resolution`` crop of a ``(C, T, H, W)`` clip (no-op for ``None``/0).

    Uses the training data pipeline's centre rule (:func:`wfvae.data.transforms.crop_offsets`).
    """
    if not resolution:
        return video
    top, left = crop_offsets(video.shape[2], video.shape[3], resolution, resolution)
    return video[:, :, top : top + resolution, left : left + resolution]


class PairDataset(torch.utils.data.Dataset):
    """Decodes one (real, generated) pair per item; worker processes parallelise decoding."""

    def __init__(self, pairs: Sequence[tuple[str, Path, Path]], cfg: EvalConfig):
        self.pairs = list(pairs)
        self.num_frames = cfg.num_frames or None
        self.sample_rate = cfg.sample_rate
        self.resolution = cfg.resolution or None
        self.resize = cfg.resize

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path, step: int) -> torch.Tensor:
        # The same frames, resize and crop as the training/reconstruction data pipeline; frames
        # already at the target size are not touched, so lossless files compare exactly.
        fast = self.resize == "fast" or not self.resolution
        where = {"start": 0, "num_frames": self.num_frames, "step": step}
        if self.num_frames:
            where = {"indices": clip_indices(0, self.num_frames, step)}
        frames = read_video(path, short_side=self.resolution if fast else None, **where)
        if fast or resized_size(frames.shape[1], frames.shape[2], self.resolution) == frames.shape[1:3]:
            video = torch.from_numpy(frames).permute(3, 0, 1, 2)  # (3, T, H, W) uint8, exact
            return center_crop(video, self.resolution)
        return to_model_tensor(resize_crop(frames, self.resolution, self.resolution, self.resolution))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One pair, or ``{"key", "error"}`` for a user-fixable problem: an exception raised in a
        DataLoader worker would reach the main process as a traceback text, not as itself."""
        key = self.pairs[index][0]
        try:
            return self._pair(index)
        except UserError as e:
            return {"key": key, "error": str(e)}

    def _pair(self, index: int) -> dict[str, Any]:
        key, real_path, gen_path = self.pairs[index]
        real = self._load(real_path, self.sample_rate)
        generated = self._load(gen_path, 1)
        if real.shape != generated.shape:
            raise InputError(
                f"'{key}': real {real_path} gives (C, T, H, W) {tuple(real.shape)} but generated "
                f"{gen_path} gives {tuple(generated.shape)}; set --num_frames / --resolution so both agree"
            )
        return {"key": key, "real": real, "generated": generated}
