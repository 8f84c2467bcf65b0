"""``VideoFolderDataset``: every video below one folder (or listed in a manifest), as fixed-length clips.

How to use::

    from torch.utils.data import DataLoader
    from wfvae.data.datasets import VideoFolderDataset
    from wfvae.data.sampler import ResumableDistributedSampler

    ds = VideoFolderDataset("data/train", num_frames=33, sample_rate=1, resolution=256, seed=0)
    sampler = ResumableDistributedSampler(len(ds), num_replicas=world, rank=rank, seed=0)
    loader = DataLoader(ds, batch_size=1, sampler=sampler, num_workers=8)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)          # before iterating: workers copy the dataset at iter()
        for batch in loader:         # batch["video"]: (B, 3, 33, 256, 256) in [-1, 1]
            ...
            sampler.advance(len(batch["video"]))

``video_path`` may also be a manifest file (``.csv``, ``.jsonl``, ``.parquet``; see
:mod:`wfvae.data.manifest`): a table of paths with optional frame counts and sizes.

What happens to messy folders:

* Every file is probed once (see :mod:`wfvae.data.index`); files that do not decode are
  skipped and listed in ``.skipped`` with the reason, each logged at WARNING.
* Videos with fewer than ``num_frames * sample_rate`` decodable frames are skipped too
  (``short_video_policy="skip"``, the default). With ``"pad"`` they are kept and the clip is
  filled up by repeating its last frame; the count of padded videos is logged.
* A file that fails while training (e.g. corruption past the probed parts) is logged with its
  path and reason and replaced by the next sample (index + 1, wrapping), so the replacement is
  deterministic. ``.failures`` counts failures in this process; each item also carries
  ``num_failures`` so a trainer can add them up across DataLoader workers. In evaluation mode
  (``train=False``) a failure raises instead: replacing it would count one video twice.
* A folder with no usable video raises ``ValueError`` with the skip reasons.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from wfvae.data.index import build_index, discover_videos, gc_paused, source_root
from wfvae.data.manifest import is_manifest
from wfvae.data.transforms import RESIZE_MODES, ResizeMode, clip_indices, crop_offsets, resize_crop, to_model_tensor
from wfvae.data.video_probe import VideoInfo
from wfvae.data.video_read import python_log_callback_off, read_video
from wfvae.errors import VideoDecodeError
from wfvae.formats import MEDIA_EXTENSIONS, VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = ["VideoEntry", "VideoFolderDataset", "discover_videos"]


@dataclasses.dataclass(slots=True)
class VideoEntry:
    """A usable file of the dataset.

    Attributes:
        path: path relative to the dataset root (``/`` separators).
        info: probe result (decodable frames, fps, displayed size, rotation, ...).
        padded: too short for one clip; clips are filled by repeating the last frame.
    """

    path: str
    info: VideoInfo
    padded: bool = False

    @property
    def frames(self) -> int:
        return self.info.frames


class VideoFolderDataset(Dataset):
    """Clips of ``num_frames`` frames, every ``sample_rate``-th frame, from all videos below a folder.

    Parameters:
        video_path (str | PathLike): dataset folder, searched recursively, or a manifest file
            (``.csv``, ``.jsonl``, ``.parquet``) whose ``path`` column lists the videos.
        num_frames (int): frames per clip.
        sample_rate (int, default 1): frame interval inside a clip (1 = consecutive frames).
        resolution (int, default 256): the short side is resized to this many pixels.
        train (bool, default True): random clip start (and crop, with ``random_crop``), drawn
            from a generator seeded by ``(seed, epoch, index)``; False: clip starts at frame 0.
        crop_size (int | tuple[int, int] | None, default None): crop (h, w) after resizing;
            an int is square; None means ``resolution x resolution``.
        cache_dir (str | PathLike | None): where the probe index is cached (SQLite); None means
            the user cache dir (see :func:`wfvae.data.index.default_cache_dir`).
        short_video_policy ("skip" | "pad", default "skip"): what to do with videos shorter
            than ``num_frames * sample_rate`` decodable frames.
        include_images (bool, default False): also use jpg/png/webp files as one-frame clips
            (shape (3, 1, H, W)); batch them separately from videos.
        seed (int, default 0): base seed for clip starts and crops.
        resize ("original" | "fast", default "original"): how frames are brought to
            ``resolution``; see :mod:`wfvae.data.transforms`. "original" gives the original
            WF-VAE's clips (within 0.5/255); "fast" resizes inside the decoder (different filter).
        random_crop (bool, default False): in training, a random crop instead of the centre one
            (the original crops the centre in training too).
        num_probe_workers (int | None): threads for probing; None means ``min(8, cpus)``.
        on_decode_error ("next" | "raise" | None): what a load-time failure does; None means
            "next" for training and "raise" for evaluation.
        strict (bool, default False): raise ``VideoDecodeError`` for the first bad or too-short
            file instead of skipping it.
        show_progress (bool | None): progress bar while probing; None = only on a terminal.
        verify (bool, default False): probe manifest rows even when they carry num_frames/fps/
            height/width, log where they disagree, and use the probed values.
        across_ranks (bool, default False): every rank of the initialised process group builds
            this dataset together and probes a share of the files (see
            :func:`wfvae.data.index.build_index`).
        decoder_threads (int, default 0): threads per FFmpeg decoder; 0 lets FFmpeg choose (about one per
            core). With several DataLoader workers or ranks per node use
            :func:`wfvae.runtime.decoder_threads` so that the decoders do not oversubscribe the CPUs.

    Raises:
        FileNotFoundError: ``video_path`` is neither a folder nor a manifest file.
        wfvae.data.manifest.ManifestError: the manifest cannot be read.
        ValueError: no usable video (the message lists the reasons), or bad arguments.
    """

    def __init__(
        self,
        video_path: str | os.PathLike,
        num_frames: int,
        sample_rate: int = 1,
        resolution: int = 256,
        train: bool = True,
        crop_size: int | tuple[int, int] | None = None,
        cache_dir: str | os.PathLike | None = None,
        short_video_policy: Literal["skip", "pad"] = "skip",
        include_images: bool = False,
        seed: int = 0,
        num_probe_workers: int | None = None,
        *,
        on_decode_error: Literal["next", "raise"] | None = None,
        strict: bool = False,
        show_progress: bool | None = None,
        verify: bool = False,
        across_ranks: bool = False,
        decoder_threads: int = 0,
        resize: ResizeMode = "original",
        random_crop: bool = False,
    ) -> None:
        if num_frames < 1 or sample_rate < 1 or resolution < 1:
            raise ValueError(
                f"num_frames, sample_rate and resolution must be >= 1; got {num_frames}, {sample_rate}, {resolution}"
            )
        if short_video_policy not in ("skip", "pad"):
            raise ValueError(f"short_video_policy must be 'skip' or 'pad', got {short_video_policy!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")
        if on_decode_error not in (None, "next", "raise"):
            raise ValueError(f"on_decode_error must be 'next', 'raise' or None, got {on_decode_error!r}")
        if crop_size is None:
            crop_size = (resolution, resolution)
        elif isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
        if min(crop_h, crop_w) > resolution:
            raise ValueError(
                f"crop_size {crop_h}x{crop_w} is larger than the resized short side ({resolution}); "
                f"use crop_size <= resolution"
            )

        self.source = Path(video_path).expanduser().absolute()
        self.root = source_root(self.source)  # entry paths are relative to this (or absolute)
        self.num_frames = int(num_frames)
        self.sample_rate = int(sample_rate)
        self.resolution = int(resolution)
        if decoder_threads < 0:
            raise ValueError(f"decoder_threads must be >= 0; got {decoder_threads}")
        self.decoder_threads = int(decoder_threads)
        self.train = bool(train)
        self.crop_size = (crop_h, crop_w)
        self.short_video_policy = short_video_policy
        self.include_images = include_images
        self.seed = int(seed)
        self.resize = resize
        self.random_crop = bool(random_crop)
        self.epoch = 0
        self.on_decode_error = on_decode_error or ("next" if train else "raise")
        self.failures = 0
        # Frames one clip spans (see clip_indices); the same rule as the original's evaluation
        # loader, so both pick the same videos.
        self.min_frames = self.num_frames * self.sample_rate

        entries, self.index_stats = build_index(
            self.source,
            include_images=include_images,
            cache_dir=cache_dir,
            num_workers=num_probe_workers,
            show_progress=show_progress,
            verify=verify,
            across_ranks=across_ranks,
        )
        if not entries and is_manifest(self.source) and not self.source.is_dir():
            raise ValueError(f"the manifest {self.source} lists no videos")
        if not entries:
            raise ValueError(
                f"no video files under {self.root} (looked recursively for {', '.join(sorted(_exts(include_images)))}, "
                f"any letter case)"
            )

        self.videos: list[VideoEntry] = []
        self.skipped: list[tuple[str, str]] = []
        self.mismatched: list[tuple[str, str]] = []  # verify: (path, how the manifest disagrees)
        with gc_paused():  # one VideoEntry per file: see wfvae.data.index.gc_paused
            for entry in entries:
                if entry.mismatch is not None:
                    self.mismatched.append((entry.path, entry.mismatch))
                reason = entry.error
                padded = False
                if reason is None and not entry.info.is_image and entry.info.frames < self.min_frames:
                    if short_video_policy == "pad":
                        padded = True
                    else:
                        reason = self._too_short_reason(entry.info)
                if reason is not None:
                    if strict:
                        raise VideoDecodeError(self.root / entry.path, reason)
                    logger.warning("skipping %s: %s", entry.path, reason)
                    self.skipped.append((entry.path, reason))
                else:
                    self.videos.append(VideoEntry(entry.path, entry.info, padded))

        if not self.videos:
            counts = collections.Counter(reason_kind(r) for _, r in self.skipped)
            summary = "; ".join(f"{n} x {kind}" for kind, n in counts.most_common())
            examples = "\n".join(f"  {p}: {r}" for p, r in self.skipped[:5])
            raise ValueError(
                f"no usable video in {self.source}: all {len(self.skipped)} files were skipped ({summary}).\n"
                f"{examples}\nRun `wfvae data-check --video_path {self.source} --num_frames {self.num_frames} "
                f"--sample_rate {self.sample_rate}` for the full list."
            )
        if self.mismatched:
            logger.warning(
                "%d manifest rows disagree with their files (the probed values are used), e.g. %s: %s",
                len(self.mismatched), *self.mismatched[0],
            )
        n_padded = sum(v.padded for v in self.videos)
        logger.info(
            "%d usable videos in %s (%d padded by repeating the last frame), %d skipped",
            len(self.videos),
            self.source,
            n_padded,
            len(self.skipped),
        )

    def _too_short_reason(self, info: VideoInfo) -> str:
        reason = (
            f"too short: {info.frames} decodable frames < num_frames*sample_rate = "
            f"{self.num_frames}*{self.sample_rate} = {self.min_frames}"
        )
        if info.header_frames > info.frames:
            reason += f" (header claims {info.header_frames}; truncated?)"
        return reason + "; lower --num_frames or --sample_rate to use it"

    # ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random clip starts/crops ``__getitem__`` draws (training).

        DataLoader workers copy the dataset when an iterator is created, so call this before
        ``iter(loader)``, and do not use ``persistent_workers=True`` with more than one epoch.
        Also switches PyAV's Python log callback off here, in the parent, so the workers start without it
        (:func:`~wfvae.data.video_read.python_log_callback_off`).
        """
        self.epoch = int(epoch)
        python_log_callback_off()

    def generator_for(self, index: int) -> torch.Generator:
        """The generator that decides clip start and crop of ``index`` in the current epoch."""
        state = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)

    def __getitem__(self, index: int) -> dict:
        """Load clip ``index``.

        Returns:
            dict with ``video`` float32 (3, T, H, W) in [-1, 1]; ``path`` (relative to the root);
            ``index`` (the sample actually loaded); ``start`` (first frame of the clip);
            ``num_failures`` (failed samples replaced to produce this one, normally 0).

        Raises:
            VideoDecodeError: a file failed and ``on_decode_error == "raise"`` (evaluation).
            RuntimeError: every sample failed.
        """
        n = len(self.videos)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} videos")
        failed = 0
        for attempt in range(n):
            j = (index + attempt) % n
            try:
                video, start = self._load(j)
            except VideoDecodeError as e:
                self.failures += 1
                failed += 1
                if self.on_decode_error == "raise":
                    logger.error("decode failure: %s: %s", self.videos[j].path, e.reason)
                    raise
                logger.warning(
                    "decode failure #%d in this process: %s: %s; using sample %d instead",
                    self.failures,
                    self.videos[j].path,
                    e.reason,
                    (j + 1) % n,
                )
                continue
            return {"video": video, "path": self.videos[j].path, "index": j, "start": start, "num_failures": failed}
        raise RuntimeError(f"all {n} videos under {self.root} failed to decode; see the warnings above")

    def _load(self, j: int) -> tuple[torch.Tensor, int]:
        entry = self.videos[j]
        info = entry.info
        path = self.root / entry.path
        gen = self.generator_for(j) if self.train else None
        # "fast" scales inside the decoder; "original" decodes full frames and resizes like torchvision.
        short_side = self.resolution if self.resize == "fast" else None
        start = 0
        if info.is_image:
            frames = read_video(path, info=info, short_side=short_side, num_threads=self.decoder_threads)
        elif entry.padded:
            frames = read_video(path, 0, None, self.sample_rate, info=info, short_side=short_side,
                                num_threads=self.decoder_threads)
            frames = frames[: self.num_frames]
            pad = np.repeat(frames[-1:], self.num_frames - len(frames), axis=0)
            frames = np.concatenate([frames, pad], axis=0)
        else:
            if gen is not None:
                start = int(torch.randint(0, info.frames - self.min_frames + 1, (1,), generator=gen))
            indices = clip_indices(start, self.num_frames, self.sample_rate)
            frames = read_video(path, info=info, short_side=short_side, indices=indices,
                                num_threads=self.decoder_threads)
        crop_h, crop_w = self.crop_size
        crop_gen = gen if self.random_crop else None
        if self.resize == "fast":
            _, height, width, _ = frames.shape
            top, left = crop_offsets(height, width, crop_h, crop_w, crop_gen)
            frames = frames[:, top : top + crop_h, left : left + crop_w]
        else:
            frames = resize_crop(frames, self.resolution, crop_h, crop_w, crop_gen)
        return to_model_tensor(frames), start


def _exts(include_images: bool) -> set[str]:
    return set(MEDIA_EXTENSIONS) if include_images else set(VIDEO_EXTENSIONS)


def reason_kind(reason: str) -> str:
    """Short category of a skip reason, for summaries ("too short", "cannot open ...")."""
    return reason.split(":")[0].split("(")[0].strip()
