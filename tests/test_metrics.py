"""PSNR / SSIM against hand computations and scikit-image, on videos that went through real files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from wfvae.data.synthetic import make_synthetic_video
from wfvae.data.video_read import read_video
from wfvae.data.video_write import write_video
from wfvae.evaluation import metrics as M


def _to_bcthw(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (1, 3, T, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)


def _to_model_range(video_u8: torch.Tensor) -> torch.Tensor:
    return video_u8.to(torch.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def real_and_lossy(tmp_path_factory):
    """A synthetic clip and its decoded lossy-H.264 version (real codec error, not synthetic noise)."""
    tmp = tmp_path_factory.mktemp("metrics")
    clip = make_synthetic_video(9, 48, 64, seed=3)
    path = write_video(tmp / "lossy.mp4", clip, options={"crf": "35"})
    decoded = read_video(path)
    assert decoded.shape == clip.shape
    assert np.abs(decoded.astype(int) - clip).max() > 0  # the codec really changed pixels
    return clip, decoded


def test_psnr_matches_skimage_on_whole_video(real_and_lossy):
    clip, decoded = real_and_lossy
    expected = peak_signal_noise_ratio(clip, decoded, data_range=255)
    got = M.psnr(_to_bcthw(clip), _to_bcthw(decoded))
    assert got.shape == (1,)
    assert got.dtype == torch.float64
    assert abs(float(got[0]) - expected) < 1e-9
    # Same value from [-1, 1] float input.
    got_float = M.psnr(_to_model_range(_to_bcthw(clip)), _to_model_range(_to_bcthw(decoded)))
    assert abs(float(got_float[0]) - expected) < 1e-4


def test_psnr_constant_offset_is_analytic():
    rng = np.random.default_rng(0)
    a = rng.integers(20, 200, size=(2, 3, 5, 16, 16), dtype=np.uint8)
    b = a + np.uint8(10)
    got = M.psnr(torch.from_numpy(a), torch.from_numpy(b))
    expected = 20 * math.log10(255 / 10)  # MSE = (10/255)^2 everywhere
    torch.testing.assert_close(got, torch.full((2,), expected, dtype=torch.float64), rtol=0, atol=1e-10)


def test_psnr_per_frame_mean_by_hand():
    a = torch.zeros(1, 3, 2, 8, 8, dtype=torch.uint8)
    b = a.clone()
    b[:, :, 0] = 5  # frame 0 error 5 levels, frame 1 error 50 levels
    b[:, :, 1] = 50
    frame_psnr = [20 * math.log10(255 / 5), 20 * math.log10(255 / 50)]
    whole = 10 * math.log10(1 / (((5 / 255) ** 2 + (50 / 255) ** 2) / 2))
    assert abs(float(M.psnr(a, b, per_frame=True)[0]) - sum(frame_psnr) / 2) < 1e-10
    assert abs(float(M.psnr(a, b)[0]) - whole) < 1e-10


def test_psnr_identical_is_capped_and_finite():
    a = torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8)
    got = M.psnr(a, a.clone())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.full((2,), M.PSNR_CAP_DB, dtype=torch.float64))
    assert "capped at 100 dB" in M.psnr_cap_note(got)
    assert M.psnr_cap_note(torch.tensor([30.0])) == ""


def test_ssim_matches_skimage_on_decoded_video(real_and_lossy):
    clip, decoded = real_and_lossy
    per_frame = [
        structural_similarity(
            clip[t],
            decoded[t],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=-1,
        )
        for t in range(clip.shape[0])
    ]
    # float32 on the inputs' device (the default) is within 1e-6 of scikit-image's float64 ...
    got_frames = M.ssim_frames(_to_bcthw(clip), _to_bcthw(decoded))[0].numpy()
    assert np.abs(got_frames - np.asarray(per_frame)).max() < 1e-6
    got = float(M.ssim(_to_bcthw(clip), _to_bcthw(decoded))[0])
    assert abs(got - float(np.mean(per_frame))) < 1e-6
    # ... and the same separable filter in float64 agrees to rounding, for any frame batching
    for frame_batch in (1, 4, 100):
        got64 = M.ssim_frames(_to_bcthw(clip), _to_bcthw(decoded), frame_batch=frame_batch, dtype=torch.float64)
        assert np.abs(got64[0].numpy() - np.asarray(per_frame)).max() < 1e-10
    assert 0.2 < got < 0.999  # a meaningful, non-trivial value
    # [-1, 1] float input (float32) agrees within 1e-4.
    got_float = float(M.ssim(_to_model_range(_to_bcthw(clip)), _to_model_range(_to_bcthw(decoded)))[0])
    assert abs(got_float - float(np.mean(per_frame))) < 1e-4


def test_ssim_identical_is_one_and_batch_independent():
    a = torch.randint(0, 256, (3, 3, 2, 20, 24), dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 3, 2, 20, 24), dtype=torch.uint8)
    torch.testing.assert_close(M.ssim(a, a), torch.ones(3, dtype=torch.float64))
    batched = M.ssim(a, b)
    single = torch.cat([M.ssim(a[i : i + 1], b[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single)


def test_metric_input_errors():
    a = torch.zeros(1, 3, 2, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(a, torch.zeros(1, 3, 2, 16, 17))
    with pytest.raises(ValueError, match="B, C, T, H, W"):
        M.psnr(a[0], a[0])
    with pytest.raises(ValueError, match="at least 11x11"):
        M.ssim(torch.zeros(1, 3, 2, 8, 8), torch.zeros(1, 3, 2, 8, 8))
    with pytest.raises(TypeError, match="uint8 or floating"):
        M.to_unit_range(torch.zeros(2, dtype=torch.int64))
