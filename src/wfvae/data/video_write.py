"""Writing uint8 RGB frames into a video file; the container and a fitting codec follow the extension.

How to use::

    from wfvae.data.video_write import write_video
    write_video("out.mp4", frames, fps=24)             # H.264 (mpeg4 where libx264 is missing)
    write_video("out.mkv", frames, lossless=True)       # FFV1: a bit-exact RGB round trip
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["write_video"]

_DEFAULT_CODEC = {
    ".mp4": "libx264",
    ".m4v": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".ts": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mjpeg",
    ".gif": "gif",
}
_LOSSLESS_CODEC = {".mp4": "libx264rgb", ".mov": "libx264rgb", ".mkv": "ffv1", ".avi": "ffv1"}


def _codec_for(ext: str, lossless: bool) -> str:
    import av  # lazy: wfvae.inference and the training logger import this module; only writing needs PyAV
    table = _LOSSLESS_CODEC if lossless else _DEFAULT_CODEC
    if ext not in table:
        kind = "lossless " if lossless else ""
        raise ValueError(f"no default {kind}codec for '{ext}'; choose one of {sorted(table)} or pass codec=")
    codec = table[ext]
    if codec in ("libx264", "libx264rgb") and codec not in av.codecs_available:
        if lossless:
            raise ValueError(f"lossless {ext} needs libx264rgb, which this FFmpeg lacks; use .mkv (ffv1)")
        codec = "mpeg4"
    return codec


def _pix_fmt_and_options(codec: str, width: int, height: int, lossless: bool) -> tuple[str, dict]:
    even = width % 2 == 0 and height % 2 == 0
    if codec == "libx264":
        if lossless:
            return "yuv444p", {"crf": "0", "preset": "medium"}
        return ("yuv420p" if even else "yuv444p"), {"crf": "18", "preset": "medium"}
    if codec == "libx264rgb":
        return "rgb24", {"crf": "0" if lossless else "18", "preset": "medium"}
    if codec in ("libvpx-vp9", "vp9"):
        opts = {"crf": "30", "b": "0", "row-mt": "1", "cpu-used": "4", "deadline": "good"}
        if lossless:
            opts = {"lossless": "1", "row-mt": "1", "cpu-used": "4"}
            return "yuv444p", opts
        return ("yuv420p" if even else "yuv444p"), opts
    if codec == "mjpeg":
        return ("yuvj420p" if even else "yuvj444p"), {"qmin": "1", "qmax": "3"}
    if codec == "mpeg4":
        if not even:
            raise ValueError(f"mpeg4 needs even width and height; got {width}x{height}")
        return "yuv420p", {"qmin": "1", "qmax": "3"}
    if codec == "ffv1":
        return "bgr0", {}
    if codec == "gif":
        return "rgb8", {}
    return "yuv420p", {}


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 24,
    codec: str | None = None,
    lossless: bool = False,
    *,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
    rotation: int = 0,
    gop_size: int | None = None,
) -> Path:
    """Encode RGB frames into a video file.

    Args:
        path: output file; the extension picks the container (and the codec when ``codec`` is
            None: .mp4/.mov/.mkv -> libx264 (mpeg4 if absent), .webm -> VP9, .avi -> MJPEG,
            .gif -> GIF; with ``lossless``: .mp4/.mov -> libx264rgb crf 0, .mkv/.avi -> FFV1).
        frames: uint8 array (T, H, W, 3), RGB.
        fps: frame rate.
        codec: FFmpeg encoder name to force, e.g. ``"mpeg4"``.
        lossless: pick a lossless codec (bit-exact RGB round trip).
        pix_fmt: encoder pixel format override (e.g. ``"yuv420p10le"``, ``"gray"``).
        options: extra encoder options, override the defaults (e.g. ``{"crf": "23"}``).
        rotation: counter-clockwise display rotation in degrees written into the display matrix
            (the frames themselves are stored unrotated, as phones do).
        gop_size: key-frame interval in frames (encoder default when None).

    Returns:
        The output path.

    Raises:
        ValueError: bad array shape/dtype or no suitable codec for the extension.
    """
    import av  # lazy, as in _codec_for

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3); got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty (T == 0)")
    path = Path(path)
    ext = path.suffix.lower()
    codec = codec or _codec_for(ext, lossless)
    _, height, width, _ = frames.shape
    default_fmt, default_opts = _pix_fmt_and_options(codec, width, height, lossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    container = av.open(str(path), mode="w")
    try:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or default_fmt
        stream.options = {**default_opts, **(options or {})}
        if gop_size:
            stream.codec_context.gop_size = int(gop_size)
        if rotation:
            stream.set_display_rotation(int(rotation))
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path
