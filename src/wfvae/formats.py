"""File formats wfvae reads and writes: the one list of extensions every command uses.

How to use::

    from wfvae.formats import VIDEO_EXTENSIONS, is_media_path
    is_media_path("clip.M4V")          # True (case-insensitive)
    OUTPUT_FORMATS["mkv"]              # ".mkv": the suffix written by --format mkv

Extensions are lower-case with the dot; matching is case-insensitive (".MP4" is a video).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "MEDIA_EXTENSIONS", "OUTPUT_FORMATS", "VIDEO_EXTENSIONS", "is_image_path",
           "is_media_path", "is_video_path"]

#: Containers read as videos (anything FFmpeg decodes; the probe decides whether a file is usable).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".gif", ".ts"}
)
#: Still images, read as one-frame clips where a command accepts images.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS

#: ``--format`` of the commands that write videos -> file suffix ("png": a folder of frames, no suffix).
OUTPUT_FORMATS: dict[str, str] = {"mp4": ".mp4", "mkv": ".mkv", "png": ""}


def is_video_path(path: str | os.PathLike) -> bool:
    """True when ``path`` has a video extension (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_image_path(path: str | os.PathLike) -> bool:
    """True when ``path`` has a still-image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_media_path(path: str | os.PathLike) -> bool:
    """True for a video or a still image."""
    return Path(path).suffix.lower() in MEDIA_EXTENSIONS
