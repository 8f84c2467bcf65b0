"""Shared fixtures: tiny real video files written with the package's own ``video_write``.

* ``video_dir``: 4 synthetic H.264 clips (17 frames, 32x48) in a spec-like nested folder.
* ``messy_dir``: a folder like real downloads: many containers and codecs, upper-case
  extensions, a portrait phone video, 10-bit and tiny videos, plus truncated, empty,
  text-as-.mp4, audio-only and too-short files. ``MESSY_GOOD`` / ``MESSY_BAD`` list what a scan
  must report.

Both are session-scoped (encoding costs time on small CI machines): tests must not modify
them; copy them first (see ``copy_tree``) when a test needs to change files.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

# Tests never reach the internet: downloads are off unless a test turns them on explicitly
# (offline=False, against a server on 127.0.0.1), and the download cache is a private folder.
# Set before wfvae or huggingface_hub is imported; subprocesses inherit it.
os.environ["WFVAE_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WFVAE_CACHE_DIR"] = tempfile.mkdtemp(prefix="wfvae-test-cache-")
atexit.register(shutil.rmtree, os.environ["WFVAE_CACHE_DIR"], ignore_errors=True)

from wfvae.data.synthetic import make_synthetic_video, write_synthetic_dataset
from wfvae.data.video_write import write_video

# relative path -> decodable frame count
MESSY_GOOD = {
    "a_h264.mp4": 24,
    "nested/b_vp9.webm": 24,
    "nested/deeper/c_mjpeg.AVI": 24,
    "nested/deeper/d_mpeg4.avi": 24,
    "e_h264.MKV": 24,
    "f_h264.mov": 24,
    "g_portrait.mp4": 24,
    "h_tiny.mp4": 24,
    "i_10bit.mkv": 24,
    "j_gray.mkv": 24,
    "k_truncated_tail.mkv": None,  # some frames decode; the count is checked in the tests
    "l_long_gop.m4v": 48,
}
# relative path -> words that must appear in the skip reason
MESSY_BAD = {
    "bad/empty.mp4": "empty",
    "bad/text.mp4": "cannot open",
    "bad/truncated_moov.mp4": "cannot open",
    "bad/audio_only.mp4": "no video stream",
    "bad/short.webm": "too short",
}
MESSY_NUM_FRAMES = 8  # with sample_rate 2 a clip needs 16 frames: short.webm (6) is too short
MESSY_SAMPLE_RATE = 2


# Tests never write the user's convolution-kernel cache (~/.cache/wfvae): the session has its own file, which
# subprocesses inherit, so every process of the session uses the same per-shape kernel choice (as a user's runs
# on one machine do) and outputs of two runs (resume tests) agree bit for bit.
_CONV_CACHE_DIR = tempfile.mkdtemp(prefix="wfvae_test_conv_cache_")
os.environ["WFVAE_CONV_CACHE"] = os.path.join(_CONV_CACHE_DIR, "conv_kernels.json")
atexit.register(shutil.rmtree, _CONV_CACHE_DIR, ignore_errors=True)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("video_dir")
    write_synthetic_dataset(root, n_videos=4, num_frames=17, height=32, width=48, seed=0)
    return root


def _write_audio_only(path: Path) -> None:
    container = av.open(str(path), mode="w")
    stream = container.add_stream("aac", rate=16000)
    stream.layout = "mono"
    samples = (np.sin(np.arange(16000) / 5.0) * 0.3).astype(np.float32)[None]
    frame = av.AudioFrame.from_ndarray(samples[:, :1024], format="fltp", layout="mono")
    frame.sample_rate = 16000
    frame.pts = 0
    frame.time_base = Fraction(1, 16000)
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


@pytest.fixture(scope="session")
def messy_dir(tmp_path_factory) -> Path:
    return build_messy_dir(tmp_path_factory.mktemp("messy"))


def build_messy_dir(root: Path) -> Path:
    """Write the messy folder described in the module docstring into ``root``."""
    clip = make_synthetic_video(24, 32, 48, seed=1)
    write_video(root / "a_h264.mp4", clip)
    write_video(root / "nested/b_vp9.webm", clip)
    write_video(root / "nested/deeper/c_mjpeg.AVI", clip)
    write_video(root / "nested/deeper/d_mpeg4.avi", clip, codec="mpeg4")
    write_video(root / "e_h264.MKV", clip)
    write_video(root / "f_h264.mov", clip)
    # A phone video: stored landscape 48x32, displayed portrait through the display matrix.
    write_video(root / "g_portrait.mp4", clip, rotation=90)
    write_video(root / "h_tiny.mp4", make_synthetic_video(24, 8, 12, seed=2))
    write_video(root / "i_10bit.mkv", clip, pix_fmt="yuv420p10le")
    write_video(root / "j_gray.mkv", clip, codec="ffv1", pix_fmt="gray")
    write_video(root / "l_long_gop.m4v", make_synthetic_video(48, 32, 48, seed=3), gop_size=8)

    # Matroska keeps its header at the front: cutting the tail leaves a playable prefix.
    full = write_video(root / "k_full.mkv", make_synthetic_video(48, 32, 48, seed=4), gop_size=8)
    data = full.read_bytes()
    (root / "k_truncated_tail.mkv").write_bytes(data[: int(len(data) * 0.6)])
    full.unlink()

    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("this is not a video, it is a text file with the wrong name\n" * 20)
    # ffmpeg's mp4 muxer writes the index (moov) at the end: a cut file has none.
    data = write_video(bad / "full.mp4", clip).read_bytes()
    (bad / "truncated_moov.mp4").write_bytes(data[: len(data) // 2])
    (bad / "full.mp4").unlink()
    _write_audio_only(bad / "audio_only.mp4")
    write_video(bad / "short.webm", clip[:6])

    # Files a scan must ignore: not video extensions, hidden files.
    (root / "notes.txt").write_text("ignore me")
    (root / "._a_h264.mp4").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    write_video(root / "nested/frame.png.mp4", clip[:20])  # weird name, still a good video
    return root


MESSY_GOOD["nested/frame.png.mp4"] = 20


def pytest_addoption(parser):
    parser.addoption(
        "--reference_repo", default=None,
        help="checkout of the original WF-VAE code for the tests that run it side by side "
             "(else $WFVAE_REFERENCE_REPO; those tests are skipped when neither is given)",
    )
