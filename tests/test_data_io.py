"""Video probe/read/write on real files: round trips per container/codec, seeking, pixel formats, rotation, bad files."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import MESSY_BAD, MESSY_GOOD
from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_probe import probe_video
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video
from wfvae.errors import VideoDecodeError


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize(
    "name, codec, tol",
    [
        ("x.mp4", None, 6),
        ("x.webm", None, 8),
        ("x.avi", None, 8),
        ("y.avi", "mpeg4", 8),
        ("x.mkv", None, 6),
        ("x.MOV", None, 6),
    ],
)
def test_round_trip_per_container(tmp_path, name, codec, tol):
    clip = make_synthetic_video(9, 64, 96, seed=5)
    path = write_video(tmp_path / name, clip, fps=24, codec=codec)
    info = probe_video(path)
    assert (info.frames, info.width, info.height, info.rotation) == (9, 96, 64, 0)
    assert info.fps == pytest.approx(24.0)
    out = read_video(path)
    assert out.shape == clip.shape and out.dtype == np.uint8
    assert _mae(out, clip) < tol
    assert _mae(out, make_synthetic_video(9, 64, 96, seed=6)) > 2 * tol  # tolerance is discriminative


@pytest.mark.parametrize("name", ["x.mkv", "x.mp4"])
def test_lossless_is_bit_exact(tmp_path, name):
    clip = make_synthetic_video(5, 16, 24, seed=6)
    out = read_video(write_video(tmp_path / name, clip, lossless=True))
    np.testing.assert_array_equal(out, clip)


def test_seek_read_equals_sequential_and_actually_seeks(tmp_path, caplog):
    clip = make_synthetic_video(40, 32, 32, seed=7)
    path = write_video(tmp_path / "gop.mp4", clip, gop_size=8)
    info = probe_video(path)
    full = read_video(path)
    with caplog.at_level(logging.DEBUG, logger="wfvae.data.video_read"):
        part = read_video(path, start=21, num_frames=5, step=3, info=info)
    np.testing.assert_array_equal(part, full[21:36:3])
    # The reader jumped to the key frame at 16 instead of decoding from frame 0.
    assert "seeked to frame 16 for a clip starting at frame 21" in caplog.text
    # Without the probe result it derives the grid from the header and gets the same frames.
    np.testing.assert_array_equal(read_video(path, start=21, num_frames=5, step=3), part)


def test_messy_folder_videos_decode(messy_dir):
    for rel, frames in MESSY_GOOD.items():
        info = probe_video(messy_dir / rel)
        if frames is not None:
            assert info.frames == frames, rel
        video = read_video(messy_dir / rel, info=info)
        assert video.shape[0] == info.frames and video.shape[1:] == (info.height, info.width, 3), rel


def test_pixel_formats_convert_to_rgb(messy_dir):
    ref = read_video(messy_dir / "a_h264.mp4")
    for rel, pix_fmt in [
        ("i_10bit.mkv", "yuv420p10le"),
        ("j_gray.mkv", "gray"),
        ("nested/deeper/c_mjpeg.AVI", "yuvj420p"),
    ]:
        info = probe_video(messy_dir / rel)
        assert info.pix_fmt == pix_fmt
        out = read_video(messy_dir / rel)
        assert out.shape == ref.shape
        if pix_fmt == "gray":
            np.testing.assert_array_equal(out[..., 0], out[..., 1])  # gray stays gray in RGB
            assert _mae(out[..., 0], ref.mean(-1).astype(np.uint8)) < 25
        else:
            assert _mae(out, ref) < 8


def test_rotation_metadata_is_applied(tmp_path):
    clip = make_synthetic_video(6, 32, 48, seed=8)
    clip[:, :4, :4] = (255, 0, 0)  # red marker top-left in the stored (landscape) frame
    path = write_video(tmp_path / "phone.mp4", clip, rotation=90)
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (90, 32, 48)
    out = read_video(path)
    assert out.shape == (6, 48, 32, 3)
    raw = read_video(path, apply_rotation=False)
    assert raw.shape == clip.shape
    # 90 degrees counter-clockwise (as ffmpeg's autorotate shows it): stored top-left -> bottom-left.
    np.testing.assert_array_equal(out, np.rot90(raw, k=1, axes=(1, 2)))
    assert _mae(out, np.rot90(clip, k=1, axes=(1, 2))) < 10 < _mae(out, np.rot90(clip, k=-1, axes=(1, 2)))
    assert out[0, -2, 1, 0] > 200 and out[0, 1, 1, 0] < 200


def test_short_side_resize(messy_dir):
    out = read_video(messy_dir / "a_h264.mp4", num_frames=2, short_side=64)
    assert out.shape == (2, 64, 96, 3)  # 32x48 -> short side 64, aspect kept
    portrait = read_video(messy_dir / "g_portrait.mp4", num_frames=2, short_side=16)
    assert portrait.shape == (2, 24, 16, 3)  # displayed 32 wide x 48 high


def test_header_that_lies_about_length(messy_dir):
    path = messy_dir / "k_truncated_tail.mkv"
    info = probe_video(path)
    assert 5 < info.frames < 48  # 48 frames were written, the tail was cut off
    assert read_video(path, start=info.frames - 4, num_frames=4, info=info).shape[0] == 4
    with pytest.raises(VideoDecodeError, match="only 3 of 4"):
        read_video(path, start=info.frames - 3, num_frames=4, info=info)


@pytest.mark.parametrize("rel", [r for r, why in MESSY_BAD.items() if why != "too short"])
def test_bad_files_raise_with_reason(messy_dir, rel):
    with pytest.raises(VideoDecodeError) as exc:
        probe_video(messy_dir / rel)
    assert exc.value.path.endswith(rel)
    assert MESSY_BAD[rel] in exc.value.reason
    with pytest.raises(VideoDecodeError):
        read_video(messy_dir / rel)


def test_missing_file_and_bad_arguments(tmp_path, messy_dir):
    with pytest.raises(VideoDecodeError, match="does not exist"):
        probe_video(tmp_path / "nope.mp4")
    with pytest.raises(ValueError):
        read_video(messy_dir / "a_h264.mp4", step=0)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="codec"):
        write_video(tmp_path / "x.xyz", np.zeros((2, 8, 8, 3), np.uint8))


def test_images_are_one_frame_clips(tmp_path):
    from PIL import Image

    img = make_synthetic_video(1, 20, 30, seed=9)[0]
    Image.fromarray(img).save(tmp_path / "a.PNG")
    info = probe_video(tmp_path / "a.PNG")
    assert (info.frames, info.width, info.height, info.is_image) == (1, 30, 20, True)
    np.testing.assert_array_equal(read_video(tmp_path / "a.PNG")[0], img)
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match="cannot decode image"):
        probe_video(tmp_path / "b.jpg")


def test_synthetic_video_is_deterministic_and_moving():
    a = make_synthetic_video(5, 32, 40, seed=3)
    np.testing.assert_array_equal(a, make_synthetic_video(5, 32, 40, seed=3))
    assert a.shape == (5, 32, 40, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, make_synthetic_video(5, 32, 40, seed=4))
    assert _mae(a[0], a[-1]) > 1.0  # things move
    assert a.std() > 20  # texture, not a flat image
