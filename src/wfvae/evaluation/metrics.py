"""Per-video reconstruction metrics: PSNR, SSIM, LPIPS.

How to use::

    from wfvae.evaluation.metrics import psnr, ssim, lpips
    p = psnr(real, recon)    # (B,) dB, capped at PSNR_CAP_DB
    s = ssim(real, recon)    # (B,)
    d = lpips(real, recon, model=load_lpips("alex"))  # (B,)

Input convention for every function here: two videos of identical shape ``(B, C, T, H, W)``, either
floating point in ``[-1, 1]`` (the model's range) or ``uint8`` in ``[0, 255]`` (decoded files). Both
are mapped to ``[0, 1]`` first, so ``data_range`` is 1 and results do not depend on which form was
passed. Floating inputs are clamped to ``[-1, 1]`` (a decoder output slightly out of range is
what a saved video would contain after clipping).

Everything is computed on the inputs' device (the accelerator of a GPU run): PSNR exactly in
integers for two ``uint8`` videos, else in float32; SSIM in float32 with a separable Gaussian, a
few frames at a time. Each function returns one value per video (shape ``(B,)``, float64 on the
CPU for PSNR/SSIM); dataset values are the mean over videos (see :mod:`wfvae.evaluation.evaluate`).
"""

from __future__ import annotations

import math

import torch

from wfvae.networks.lpips import lpips_video

#: PSNR reported for a video whose MSE is 0 (identical videos). PSNR is infinite there; we report
#: this finite cap instead so means stay finite, and the evaluation output states the cap and how
#: many videos hit it. 100 dB corresponds to MSE = 1e-10 on the [0, 1] scale, far below one
#: uint8 quantisation step (~ 48 dB for an error of one level everywhere).
PSNR_CAP_DB = 100.0

#: SSIM constants of Wang et al. 2004 (https://ieeexplore.ieee.org/document/1284395).
SSIM_K1, SSIM_K2 = 0.01, 0.03
#: Gaussian window: 11x11, sigma 1.5 (the same window scikit-image builds with
#: ``gaussian_weights=True, sigma=1.5``: radius ``int(3.5 * 1.5 + 0.5) = 5``).
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def to_unit_range(video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map a ``uint8`` [0, 255] or float [-1, 1] tensor to ``dtype`` in [0, 1], on its own device."""
    if video.dtype == torch.uint8:
        return video.to(dtype) / 255.0
    if not video.is_floating_point():
        raise TypeError(f"expected uint8 or floating point video, got {video.dtype}")
    return (video.to(dtype).clamp(-1.0, 1.0) + 1.0) / 2.0


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"videos must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim != 5:
        raise ValueError(f"expected (B, C, T, H, W) videos, got shape {tuple(a.shape)}")


def _squared_error_mean(real: torch.Tensor, recon: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mean squared error on the [0, 1] scale over ``dims``, computed on the inputs' device.

    Two ``uint8`` videos are compared exactly: integer differences, squares summed in int64, one
    division at the end. Anything else is compared in float32 (the value changes by ~1e-6 dB of
    PSNR against float64). Returns float64.
    """
    if real.dtype == torch.uint8 and recon.dtype == torch.uint8:
        diff = real.to(torch.int32) - recon.to(torch.int32)
        total = diff.square().sum(dim=dims, dtype=torch.int64)
        count = math.prod(real.shape[d] for d in dims)
        return total.to(torch.float64) / (count * 255.0**2)
    diff = to_unit_range(real) - to_unit_range(recon)
    return diff.square().mean(dim=dims).to(torch.float64)


def mse_per_video(real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the [0, 1] scale over all channels, frames and pixels; ``(B,)``."""
    _check_pair(real, recon)
    return _squared_error_mean(real, recon, (1, 2, 3, 4))


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """``10 log10(1 / mse)`` (peak 1), with ``mse == 0`` mapped to :data:`PSNR_CAP_DB`."""
    out = 10.0 * torch.log10(1.0 / mse.clamp_min(torch.finfo(mse.dtype).tiny))
    return out.clamp(max=PSNR_CAP_DB)


def psnr(real: torch.Tensor, recon: torch.Tensor, per_frame: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio of each video, in dB, computed on the inputs' device.

    Args:
        real, recon: ``(B, C, T, H, W)``; see the module docstring for the value range.
        per_frame: ``False`` (default): one MSE over all frames of a video, then PSNR — the same
            as ``skimage.metrics.peak_signal_noise_ratio`` on the whole ``(T, H, W, C)`` array.
            ``True``: PSNR of each frame, then the mean over frames (what the original WF-VAE
            ``cal_psnr.py`` reports); it is never smaller than the default and differs when
            error varies across frames.

    Returns:
        ``(B,)`` float64 on the CPU; identical videos (or frames) give :data:`PSNR_CAP_DB`.
        ``uint8`` pairs are exact; float pairs are computed in float32.
    """
    _check_pair(real, recon)
    if not per_frame:
        return psnr_from_mse(_squared_error_mean(real, recon, (1, 2, 3, 4))).cpu()
    frame_mse = _squared_error_mean(real, recon, (1, 3, 4))  # (B, T)
    return psnr_from_mse(frame_mse).mean(dim=1).cpu()


def _gaussian_taps(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The normalised 1-D Gaussian of the SSIM window; the 2-D window is its outer product."""
    radius = SSIM_WINDOW // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(device=device, dtype=dtype)


def _ssim_planes(x: torch.Tensor, y: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each plane pair; ``x``, ``y``: (N, H, W) in [0, 1]; returns (N,).

    The 11x11 Gaussian is separable, so the five local moments are filtered with an 11x1 and
    then a 1x11 pass (22 instead of 121 multiply-adds per pixel), all five in one batch.
    Values are shifted by -0.5 before the moments: variances and covariance do not change, and
    ``E[x^2] - E[x]^2`` cancels less in float32.
    """
    n, h, w = x.shape
    x, y = x - 0.5, y - 0.5
    moments = torch.stack((x, y, x * x, y * y, x * y), dim=1)  # (N, 5, H, W)
    k = taps.numel()
    weights = taps.tolist()
    # "valid" filtering as k shifted, weighted in-place adds per direction: on CPU about 3x less work
    # than conv2d with a one-channel 11x1 kernel (measured; see benchmarks/RESULTS.md)
    rows = moments[:, :, 0 : h - k + 1] * weights[0]  # (N, 5, H - 10, W)
    for i in range(1, k):
        rows.add_(moments[:, :, i : i + h - k + 1], alpha=weights[i])
    local = rows[..., 0 : w - k + 1] * weights[0]  # (N, 5, H - 10, W - 10)
    for i in range(1, k):
        local.add_(rows[..., i : i + w - k + 1], alpha=weights[i])
    m_x, m_y, m_xx, m_yy, m_xy = local.unbind(dim=1)
    # population (biased) local variances, as with use_sample_covariance=False
    var_x = m_xx - m_x * m_x
    var_y = m_yy - m_y * m_y
    cov_xy = m_xy - m_x * m_y
    mu_x, mu_y = m_x + 0.5, m_y + 0.5
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data_range = 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def ssim_frames(real: torch.Tensor, recon: torch.Tensor, frame_batch: int = 8,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SSIM of each frame, averaged over channels; ``(B, T)`` float64 on the CPU.

    The local statistics use the 11x11 Gaussian window only where it fits entirely inside the
    frame (a "valid" filter), and the SSIM map is averaged over that region. This is what
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)`` computes (it filters with
    reflection padding and then crops the 5-pixel border) and what the original WF-VAE
    ``cal_ssim.py`` computes with OpenCV. Frames must be at least 11x11 pixels.

    Computed on the inputs' device in ``dtype`` (float32: within 1e-5 of scikit-image's float64;
    ``benchmarks/RESULTS.md``), ``frame_batch`` frames at a time, so memory does not grow with
    the video's length.
    """
    _check_pair(real, recon)
    b, c, t, h, w = real.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    taps = _gaussian_taps(real.device, dtype)
    out = torch.empty(b, t, dtype=torch.float64)
    for i in range(b):
        for t0 in range(0, t, frame_batch):
            t1 = min(t, t0 + frame_batch)
            x = to_unit_range(real[i, :, t0:t1], dtype).transpose(0, 1).reshape(-1, h, w)  # (frames*C, H, W)
            y = to_unit_range(recon[i, :, t0:t1], dtype).transpose(0, 1).reshape(-1, h, w)
            per_plane = _ssim_planes(x, y, taps).view(t1 - t0, c)
            out[i, t0:t1] = per_plane.to(torch.float64).mean(dim=1).cpu()
    return out


def ssim(real: torch.Tensor, recon: torch.Tensor, frame_batch: int = 8) -> torch.Tensor:
    """Structural similarity of each video: mean of per-frame SSIM (see :func:`ssim_frames`); ``(B,)``."""
    return ssim_frames(real, recon, frame_batch=frame_batch).mean(dim=1)


def lpips(real: torch.Tensor, recon: torch.Tensor, model: torch.nn.Module, frame_batch: int = 64) -> torch.Tensor:
    """LPIPS of each video: mean over frames of the per-frame distance; ``(B,)`` float32.

    Args:
        real, recon: ``(B, 3, T, H, W)``; uint8 or [-1, 1] float.
        model: from :func:`wfvae.networks.lpips.load_lpips` (its device is used).
        frame_batch: frames per forward pass; memory only.
    """
    _check_pair(real, recon)
    device = next(model.parameters()).device
    # LPIPS expects [-1, 1]; compute in float32 as the network does.
    x = (to_unit_range(real, torch.float64) * 2.0 - 1.0).to(device=device, dtype=torch.float32)
    y = (to_unit_range(recon, torch.float64) * 2.0 - 1.0).to(device=device, dtype=torch.float32)
    with torch.no_grad():
        return lpips_video(model, x, y, frame_batch=frame_batch).cpu()


def psnr_cap_note(values: torch.Tensor) -> str:
    """Human-readable note on how many PSNR values hit the cap (empty string if none)."""
    capped = int((values >= PSNR_CAP_DB).sum())
    if capped == 0:
        return ""
    return f"{capped} of {values.numel()} videos identical: PSNR capped at {PSNR_CAP_DB:g} dB"


__all__ = [
    "PSNR_CAP_DB",
    "lpips",
    "mse_per_video",
    "psnr",
    "psnr_cap_note",
    "psnr_from_mse",
    "ssim",
    "ssim_frames",
    "to_unit_range",
]
