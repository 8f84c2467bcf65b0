"""Probing video files: what a file holds (frames that really decode, rate, size, rotation, codec) and
whether it can be read at all. With :mod:`wfvae.data.video_read` and :mod:`wfvae.data.video_write`, the only
modules of ``wfvae`` that open video files.

Backend: PyAV (FFmpeg bundled in the ``av`` wheel, so no system FFmpeg is needed).
``benchmarks/bench_loader.py`` compares the full loader with decord (numbers in
``benchmarks/RESULTS.md``). torchcodec was tried as well and not chosen: it needs a system FFmpeg
that pip cannot install, and PyAV lets us scale inside swscale for free.

How to use::

    from wfvae.data.video_probe import probe_video
    info = probe_video("clip.mp4")                      # VideoInfo(frames=..., fps=..., ...)
    info.frames, info.fps, info.width, info.height

Rotation: the display matrix (phone videos) is honoured: :class:`VideoInfo` reports the displayed
width and height. A file that cannot be used raises :class:`~wfvae.errors.VideoDecodeError` with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from wfvae.errors import VideoDecodeError
from wfvae.formats import is_image_path

logger = logging.getLogger(__name__)

__all__ = ["DECODE_ERRORS", "VideoInfo", "existing_nonempty", "normalise_rotation", "open_video", "probe_video",
           "short_error"]

#: FFmpeg errors that mean "this file is bad". OSError covers missing/unreadable files,
# EOFError a stream that ends inside a packet, ValueError PyAV's own sanity checks.
DECODE_ERRORS = (av.error.FFmpegError, OSError, EOFError, ValueError, IndexError)



@dataclasses.dataclass(slots=True)
class VideoInfo:
    """What :func:`probe_video` learned about a file. JSON-serialisable via :meth:`to_dict`.

    Attributes:
        frames: number of frames that actually decode (not the header's claim).
        fps: frames per second (average for variable-frame-rate streams; 0 for still images).
        width: displayed width in pixels, i.e. after applying ``rotation``.
        height: displayed height in pixels, i.e. after applying ``rotation``.
        rotation: counter-clockwise rotation in degrees (0, 90, 180, 270) applied for display.
        codec: decoder name, e.g. ``"h264"``.
        pix_fmt: the stream's pixel format, e.g. ``"yuv420p10le"``.
        header_frames: frame count stated by the container header (0 when it states none).
        constant_rate: timestamps lie on a regular grid, so frame index <-> timestamp is exact.
        start_pts: timestamp of frame 0, in stream time-base units.
        pts_step: timestamp distance between consecutive frames, in stream time-base units.
            0 means unknown (values taken from a manifest): readers derive the grid from the
            stream header.
        is_image: a still image (jpg/png/webp) treated as a one-frame clip.
    """

    frames: int
    fps: float
    width: int
    height: int
    rotation: int = 0
    codec: str = ""
    pix_fmt: str = ""
    header_frames: int = 0
    constant_rate: bool = True
    start_pts: int = 0
    pts_step: float = 1.0
    is_image: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VideoInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def existing_nonempty(path: str | os.PathLike) -> str:
    """``path`` as a string; VideoDecodeError when it is missing or empty."""
    path = str(path)
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return path


def open_video(path: str | os.PathLike):
    path = existing_nonempty(path)
    try:
        container = av.open(path, mode="r")
    except DECODE_ERRORS as e:
        raise VideoDecodeError(path, f"cannot open as a media container ({short_error(e)})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream in the container")
    return container, container.streams.video[0]


def short_error(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 200 else text[:197] + "..."


def normalise_rotation(value: float | None) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    return int(round(float(value) / 90.0)) * 90 % 360


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Inspect a video (or image) file and count the frames that really decode.

    The container is demuxed once (no decoding) to list every frame's timestamp, then the
    first frame and the tail from the last key frame are decoded. A header that claims more
    frames than the file holds (truncated download, broken muxer) therefore gives the true,
    smaller count.

    Args:
        path: video file, or an image file (jpg/png/webp) which becomes a one-frame clip.

    Returns:
        :class:`VideoInfo`.

    Raises:
        VideoDecodeError: missing, empty, non-media, no video stream, or no decodable frame.
    """
    if is_image_path(path):
        return _probe_image(path)
    container, stream = open_video(path)
    # One decoder thread: probes run many files side by side (the index's thread pool, ranks), and
    # FFmpeg's default (one thread per core, up to 16, per decoder) would start threads for every
    # file to decode a frame or a GOP. The decoded frames, and so the result, are the same.
    stream.codec_context.thread_count = 1
    try:
        return _probe_container(str(path), container, stream)
    finally:
        container.close()


def _probe_container(path: str, container, stream) -> VideoInfo:
    header_frames = int(stream.frames or 0)
    codec = stream.codec_context.name
    pix_fmt = stream.codec_context.pix_fmt or ""

    # 1) Demux only: cheap, gives every frame's pts and the key frames.
    pts_list: list[int] = []
    key_pts: list[int] = []
    truncated = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue  # flush packet / packet without timestamp (rare, counted by decode)
            pts_list.append(int(packet.pts))
            if packet.is_keyframe:
                key_pts.append(int(packet.pts))
    except DECODE_ERRORS as e:
        truncated = True
        logger.debug("%s: demux stopped early (%s)", path, short_error(e))
    pts_list.sort()

    # 2) Decode the first frame: proves the stream decodes and gives rotation / pixel format.
    container.seek(0)
    first = _first_decodable_frame(container, stream)
    if first is None:
        reason = "no decodable video frame"
        if truncated:
            reason += " (file is truncated)"
        raise VideoDecodeError(path, reason)
    rotation = normalise_rotation(getattr(first, "rotation", 0))
    pix_fmt = pix_fmt or first.format.name

    if len(pts_list) < 2 or first.pts is None:
        # Streams without usable timestamps (some raw / old AVI files): count by decoding.
        frames = _count_by_decoding(container, stream)
        return _info(first, frames, rotation, codec, pix_fmt, header_frames, stream, False, 0, None)

    # 3) Regular timestamp grid? (webm uses 1 ms ticks, so 24 fps alternates 41/42 ticks.)
    start_pts = pts_list[0]
    pts_step = (pts_list[-1] - pts_list[0]) / (len(pts_list) - 1)
    diffs = np.diff(np.asarray(pts_list, dtype=np.float64))
    constant = bool(pts_step > 0 and np.all(np.abs(diffs - pts_step) <= max(1.0, 0.05 * pts_step)))
    if codec == "gif":
        constant = False  # GIF frame delays are per frame; count instead of mapping timestamps.

    # 4) Decode the tail from the last key frame whose decoding yields frames.
    last_pts = None
    for kp in sorted(set(key_pts), reverse=True)[:4]:
        last_pts = _last_decodable_pts(container, stream, kp)
        if last_pts is not None:
            break
    if last_pts is None:
        frames = _count_by_decoding(container, stream)
    else:
        frames = int(np.searchsorted(np.asarray(pts_list), last_pts, side="right"))
    if frames <= 0:
        raise VideoDecodeError(path, "no decodable video frame")
    if header_frames and frames < header_frames:
        logger.info("%s: header claims %d frames, %d decode", path, header_frames, frames)
    return _info(first, frames, rotation, codec, pix_fmt, header_frames, stream, constant, start_pts, pts_step)


def _info(first, frames, rotation, codec, pix_fmt, header_frames, stream, constant, start_pts, pts_step):
    w, h = int(first.width), int(first.height)
    if rotation in (90, 270):
        w, h = h, w
    tb = stream.time_base
    rate = stream.average_rate or stream.guessed_rate
    if constant and pts_step and tb:
        fps = float(1.0 / (pts_step * float(tb)))
        # Millisecond time bases (webm, flv) make the measured step slightly off; prefer the
        # header's rate when the two agree to 1%.
        if rate and abs(float(rate) - fps) <= 0.01 * fps:
            fps = float(rate)
    else:
        fps = float(rate) if rate else 0.0
        pts_step = float(1.0 / (fps * float(tb))) if (fps and tb) else 1.0
    return VideoInfo(
        frames=int(frames),
        fps=round(fps, 6),
        width=w,
        height=h,
        rotation=rotation,
        codec=codec,
        pix_fmt=pix_fmt,
        header_frames=header_frames,
        constant_rate=bool(constant),
        start_pts=int(start_pts),
        pts_step=float(pts_step),
    )


def _first_decodable_frame(container, stream):
    try:
        for frame in container.decode(stream):
            return frame
    except DECODE_ERRORS:
        return None
    return None


def _last_decodable_pts(container, stream, key_pts: int) -> int | None:
    last = None
    try:
        container.seek(key_pts, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is not None and (last is None or frame.pts > last):
                last = int(frame.pts)
    except DECODE_ERRORS:
        pass  # keep whatever decoded before the damage
    return last


def _count_by_decoding(container, stream) -> int:
    n = 0
    try:
        container.seek(0)
        for _ in container.decode(stream):
            n += 1
    except DECODE_ERRORS:
        pass
    return n


def _probe_image(path) -> VideoInfo:
    path = existing_nonempty(path)
    try:
        with Image.open(path) as img:
            img.load()
            orientation = img.getexif().get(0x0112, 1)
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot decode image ({short_error(e)})") from e
    if orientation in (5, 6, 7, 8):  # EXIF orientations that swap width and height
        w, h = h, w
    return VideoInfo(frames=1, fps=0.0, width=w, height=h, codec="image", is_image=True)
