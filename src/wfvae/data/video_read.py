"""Reading frames of a video (or an image, as one frame) as uint8 RGB arrays.

How to use::

    from wfvae.data.video_probe import probe_video
    from wfvae.data.video_read import read_video

    info = probe_video("clip.mp4")
    clip = read_video("clip.mp4", start=40, num_frames=33, step=2, info=info, short_side=256)  # (T, H, W, 3)

Frame indices are positions in presentation order, counted from 0. For a constant-frame-rate
stream (almost every real file) ``read_video`` seeks to the key frame before ``start`` and maps
each decoded frame's timestamp to its index, so reading a clip late in a long video costs about
one GOP of decoding instead of the whole prefix. Variable-frame-rate streams, GIFs and streams
whose timestamps do not sit on a regular grid are decoded from the start and counted instead.

Rotation: the display matrix (phone videos) is honoured, so frames come out the way a player shows them.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import av.logging
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import get_worker_info

from wfvae.data.video_probe import DECODE_ERRORS, VideoInfo, normalise_rotation, open_video, short_error
from wfvae.errors import VideoDecodeError
from wfvae.formats import is_image_path

logger = logging.getLogger(__name__)

__all__ = ["python_log_callback_off", "read_video"]

_logging_switched_off = False


def python_log_callback_off() -> None:
    """Switch off PyAV's Python log callback, which can deadlock threaded decoding (called before each read).

    With a log level set, FFmpeg's decoder threads hand each message to Python and wait for the GIL, while
    closing the stream waits, GIL held, for those threads (PyAV issues 751 and 909; PyAV leaves the callback
    off by default since 12.1). Older torchvision releases turn it on when imported (0.22 and 0.24 do:
    ``av.logging.set_level(ERROR)``); the test suite deadlocked that way under torch 2.7.1. FFmpeg's own
    messages then no longer reach Python logging (error reasons lose FFmpeg's last log line). Warns once per
    process; in DataLoader worker processes (which the dataset's ``set_epoch`` normally spares, by switching
    it off in the parent first) at debug level.
    """
    global _logging_switched_off
    if av.logging.get_level() is None:
        return
    av.logging.set_level(None)
    if not _logging_switched_off:
        _logging_switched_off = True
        level = logging.DEBUG if get_worker_info() is not None else logging.WARNING
        logger.log(level, "PyAV's Python logging was on (older torchvision releases turn it on when imported); it "
                          "can deadlock threaded video decoding, so wfvae switched it off (av.logging.set_level(None))")


# A timestamp is "on the grid" when it is within this fraction of a frame of k * pts_step.
_GRID_TOLERANCE = 0.25


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Size (w, h) with the short side scaled to ``short_side``; the long side is truncated
    like torchvision's ``Resize(int)``."""
    if not short_side:
        return width, height
    if width <= height:
        return short_side, max(1, int(short_side * height / width))
    return max(1, int(short_side * width / height)), short_side


class _RGBConverter:
    """Frame -> RGB array, optionally scaled, reusing FFmpeg's scaler between frames.

    Two details make this several times faster than ``frame.to_ndarray(width=..., ...)``:
    the swscale contexts are kept (PyAV builds a new one, filters included, per call
    otherwise), and the scaling runs in the source pixel format (e.g. 1.5 bytes/pixel for
    yuv420p) before the conversion to rgb24 at the already smaller size.
    """

    def __init__(self, short_side: int | None, apply_rotation: bool) -> None:
        self.short_side = short_side
        self.apply_rotation = apply_rotation
        self._scale = VideoReformatter()
        self._rgb = VideoReformatter()

    def __call__(self, frame) -> np.ndarray:
        # Scale in the coded orientation: the short side is the same before and after rotation.
        w, h = _target_size(frame.width, frame.height, self.short_side)
        if (w, h) != (frame.width, frame.height):
            frame = self._scale.reformat(frame, width=w, height=h, interpolation="BILINEAR")
        arr = self._rgb.reformat(frame, format="rgb24").to_ndarray()
        rotation = normalise_rotation(frame.rotation) if self.apply_rotation else 0
        if rotation:
            arr = np.ascontiguousarray(np.rot90(arr, k=rotation // 90))
        return arr


def read_video(
    path: str | os.PathLike,
    start: int = 0,
    num_frames: int | None = None,
    step: int = 1,
    *,
    info: VideoInfo | None = None,
    short_side: int | None = None,
    apply_rotation: bool = True,
    num_threads: int = 0,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Decode frames ``start, start + step, ...`` (or the given ``indices``) of a video as RGB.

    Args:
        path: video file (any container/codec FFmpeg reads) or image file.
        start: index of the first frame (0-based, presentation order).
        num_frames: how many frames to return; ``None`` reads to the end of the video.
        step: frame interval (the spec's ``sample_rate``), >= 1.
        info: the file's :class:`VideoInfo` from :func:`probe_video`; lets the reader seek
            without re-reading the header. Optional.
        short_side: if given, scale each frame (in FFmpeg's swscale, bilinear with area
            filtering when shrinking) so its shorter side has this many pixels.
        apply_rotation: rotate frames as the display matrix says (default True).
        num_threads: decoder threads; 0 lets FFmpeg choose.
        indices: explicit frame indices (ascending; repeats allowed) instead of ``start``,
            ``num_frames`` and ``step``, e.g. :func:`wfvae.data.transforms.clip_indices`.

    Returns:
        ``np.ndarray`` uint8 of shape (T, H, W, 3), RGB, whatever the source pixel format
        (8/10-bit YUV, full-range yuvj, gray, palette).

    Raises:
        VideoDecodeError: the file cannot be decoded, or holds fewer frames than requested.
        ValueError: ``start < 0``, ``step < 1`` or ``num_frames < 1``.
    """
    wanted = None
    if indices is not None:
        wanted = [int(i) for i in indices]
        if not wanted or wanted[0] < 0 or any(b < a for a, b in zip(wanted, wanted[1:])):
            raise ValueError(f"indices must be non-empty, >= 0 and ascending; got {wanted[:8]}...")
        start, num_frames, step = wanted[0], len(wanted), 1
    if start < 0 or step < 1 or (num_frames is not None and num_frames < 1):
        raise ValueError(f"need start >= 0, step >= 1, num_frames >= 1; got {start}, {step}, {num_frames}")
    if (info is not None and info.is_image) or is_image_path(path):
        return _read_image(path, start, num_frames, short_side, apply_rotation)

    python_log_callback_off()
    container, stream = open_video(path)
    try:
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = num_threads
        if wanted is None:
            last = None if num_frames is None else start + (num_frames - 1) * step
            keep = lambda index: (index - start) % step == 0  # noqa: E731
        else:
            last, keep = wanted[-1], set(wanted).__contains__
        convert = _RGBConverter(short_side, apply_rotation)
        frames = None
        if start > 0:
            frames = _read_seeking(container, stream, start, last, keep, info, convert)
        if frames is None:
            container.seek(0)
            frames = _read_counting(container, stream, start, last, keep, convert)
    except DECODE_ERRORS as e:
        raise VideoDecodeError(path, f"decoding failed ({short_error(e)})") from e
    finally:
        container.close()

    if wanted is None:
        frames = [array for _, array in frames]
    else:
        decoded = dict(frames)
        frames = [decoded[i] for i in wanted if i in decoded]
    if num_frames is not None and len(frames) < num_frames:
        got = len(frames)
        raise VideoDecodeError(
            path, f"only {got} of {num_frames} requested frames decoded (start={start}, step={step})"
        )
    if not frames:
        raise VideoDecodeError(path, f"no frame at or after index {start}")
    return np.stack(frames)


def _grid(stream, info: VideoInfo | None) -> tuple[float, float] | None:
    """(start_pts, pts_step) for timestamp -> index mapping, or None if it cannot be trusted."""
    if info is not None and info.pts_step > 0:
        return (float(info.start_pts), float(info.pts_step)) if info.constant_rate else None
    if stream.codec_context.name == "gif":
        return None
    rate, tb = stream.average_rate, stream.time_base
    if not rate or not tb:
        return None
    start = stream.start_time if stream.start_time is not None else 0
    return float(start), float(1 / (rate * tb))


def _read_seeking(container, stream, start, last, keep, info, convert):
    """Seek to the key frame before ``start`` and pick frames by timestamp.

    Returns None (caller falls back to counting from frame 0) when the timestamps do not
    behave: missing pts, off-grid pts, or a seek that landed after the requested frame.
    """
    grid = _grid(stream, info)
    if grid is None:
        return None
    start_pts, pts_step = grid
    # Aim half a frame early so rounding can never put the seek after the wanted frame.
    target = int(math.floor(start_pts + (start - 0.5) * pts_step))
    container.seek(max(target, int(start_pts)), stream=stream, backward=True, any_frame=False)
    out: list[tuple[int, np.ndarray]] = []
    first_seen = True
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        pos = (frame.pts - start_pts) / pts_step
        index = int(round(pos))
        if abs(pos - index) > _GRID_TOLERANCE:
            return None
        if first_seen:
            first_seen = False
            if index > start:
                return None
            logger.debug("seeked to frame %d for a clip starting at frame %d", index, start)
        if index < start:
            continue
        if last is not None and index > last:
            break
        if keep(index):
            out.append((index, convert(frame)))
    return out


def _read_counting(container, stream, start, last, keep, convert):
    out: list[tuple[int, np.ndarray]] = []
    for index, frame in enumerate(container.decode(stream)):
        if last is not None and index > last:
            break
        if index >= start and keep(index):
            out.append((index, convert(frame)))
    return out


def _read_image(path, start, num_frames, short_side, apply_rotation) -> np.ndarray:
    if start != 0 or (num_frames is not None and num_frames != 1):
        raise VideoDecodeError(path, f"an image has one frame; asked for start={start}, num_frames={num_frames}")
    try:
        with Image.open(path) as img:
            if apply_rotation:
                img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")
            w, h = _target_size(img.width, img.height, short_side)
            if (w, h) != img.size:
                img = img.resize((w, h), resample=Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot decode image ({short_error(e)})") from e
    return arr[None].copy()
