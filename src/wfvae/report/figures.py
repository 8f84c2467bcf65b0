"""Pictures for the HTML report, returned as encoded bytes (PNG / GIF) ready to embed.

* :func:`comparison_png`: rows original | reconstruction | error map, a few frames as columns.
* :func:`comparison_gif`: the same three panels side by side, animated over all frames.
* :func:`curves_png`: small multiples of logged values against the step (matplotlib, Agg).

The error map is the per-pixel absolute error averaged over RGB, on a fixed scale of 0 to
:data:`ERROR_MAX` (of 255), coloured with matplotlib's ``inferno``: black is exact, yellow means an error
of ``ERROR_MAX`` or more. A fixed scale makes maps comparable between videos and runs.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["ERROR_MAX", "comparison_gif", "comparison_png", "curves_png", "display_scale", "error_map", "psnr_uint8"]

#: absolute error (0-255 scale) shown as the brightest colour of the error map.
ERROR_MAX = 64.0
#: the page enlarges frames until their short side is at least this many pixels,
_MIN_PANEL = 128
#: and shrinks them until their long side is at most this many pixels.
_MAX_PANEL = 256
_GIF_PANEL = 128  # stored long side of an animation panel (pixels)
_GIF_PIXELS = 600_000  # stored pixels of one animation at most (about 0.5 MiB)
_GAP = 2  # pixels between panels (stored size; the page enlarges small videos)
_BACKGROUND = 255


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 videos over all pixels (``inf`` when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _inferno_lut() -> np.ndarray:
    from matplotlib import colormaps  # lazy: slow import (~0.5 s), only when a figure is drawn

    return (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)  # (256, 3)


def error_map(original: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 pair -> ``(..., H, W, 3)`` uint8 inferno colours of |error| (see module doc)."""
    err = np.abs(original.astype(np.int16) - recon.astype(np.int16)).mean(axis=-1)  # (..., H, W)
    index = np.clip(err / ERROR_MAX * 255, 0, 255).astype(np.uint8)
    return _inferno_lut()[index]


def display_scale(height: int, width: int) -> float:
    """How much the page should enlarge (or shrink) a frame: short side >= 128 px, long side <= 256 px.

    Images are stored at their native size and scaled by the browser (``image-rendering: pixelated``
    keeps enlarged pixels sharp), which keeps the page several times smaller than enlarged files.
    """
    scale = max(1.0, _MIN_PANEL / min(height, width))
    return min(scale, _MAX_PANEL / max(height, width))


def _fit(frames: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink (Lanczos) ``(N, H, W, 3)`` frames so the long side is at most ``long_side``: page bytes saved."""
    h, w = frames.shape[1:3]
    scale = long_side / max(h, w)
    if scale >= 1:
        return frames
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS)) for f in frames])


def _grid(tiles: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of equally sized (h, w, 3) tiles -> one image with gaps."""
    h, w = tiles[0][0].shape[:2]
    rows, cols = len(tiles), max(len(r) for r in tiles)
    out = np.full((rows * h + (rows - 1) * _GAP, cols * w + (cols - 1) * _GAP, 3), _BACKGROUND, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            out[i * (h + _GAP) : i * (h + _GAP) + h, j * (w + _GAP) : j * (w + _GAP) + w] = tile
    return out


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def frame_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly from the first to the last frame."""
    if num_frames <= count:
        return list(range(num_frames))
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


def comparison_png(original: np.ndarray, recon: np.ndarray, num_columns: int = 5) -> tuple[bytes, list[int], int]:
    """A PNG grid (panels at most 256 px): rows original / reconstruction / error map, columns evenly spaced frames.

    Args:
        original, recon: uint8 ``(T, H, W, 3)`` of the same shape.
        num_columns: frames shown (first and last included).

    Returns:
        ``(png bytes, frame indices shown, width in CSS pixels to show it at)``.
    """
    idx = frame_indices(len(original), num_columns)
    rows = [_fit(f, _MAX_PANEL) for f in (original[idx], recon[idx], error_map(original[idx], recon[idx]))]
    grid = _grid([list(r) for r in rows])
    return _png(grid), idx, round(grid.shape[1] * display_scale(*rows[0].shape[1:3]))


def comparison_gif(original: np.ndarray, recon: np.ndarray, fps: float = 8.0, max_frames: int = 33) -> tuple[bytes, int]:
    """An animated GIF of original | reconstruction | error map, looping forever; also its display width.

    GIF stores about a byte per pixel for photos, so panels are shrunk to at most :data:`_GIF_PANEL` pixels
    and, when ``frames x sheet`` exceeds :data:`_GIF_PIXELS`, frames are subsampled evenly. Each frame gets
    its own adaptive 255-colour palette, so photos keep their colours.
    """
    originals = _fit(original[:1], _GIF_PANEL)
    sheet_pixels = originals.shape[1] * (3 * originals.shape[2] + 2 * _GAP)
    idx = frame_indices(len(original), max(2, min(max_frames, _GIF_PIXELS // sheet_pixels)))
    originals = _fit(original[idx], _GIF_PANEL)
    panels = zip(originals, _fit(recon[idx], _GIF_PANEL), _fit(error_map(original[idx], recon[idx]), _GIF_PANEL))
    sheets = [_grid([[o, r, e]]) for o, r, e in panels]
    images = [Image.fromarray(s).quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
              for s in sheets]
    buf = io.BytesIO()
    duration = max(20, round(1000 / max(fps, 1e-3)))  # ms per frame; browsers clamp below 20 ms
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0, disposal=1)
    return buf.getvalue(), round(sheets[0].shape[1] * display_scale(*originals.shape[1:3]))


def curves_png(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "", ncols: int = 3) -> bytes:
    """Small multiples, one panel per series (each with its own y scale), as PNG bytes.

    Args:
        series: ``{name: (steps, values)}``; NaN values leave gaps. Losses with more than 20 points
            are drawn faint with an exponential moving average on top.
        title: figure title.
        ncols: panels per row.
    """
    # Figure + Agg canvas directly: no pyplot, so no global backend switch and nothing to close.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: slow import, only when a figure is drawn
    from matplotlib.figure import Figure

    n = len(series)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.7 * ncols, 2.4 * nrows + (0.35 if title else 0)), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.flat, series.items()):
        finite = np.isfinite(values)
        if len(values) > 20 and name.startswith("train/loss"):
            # Noisy per-step losses: raw values faint, a short EMA (about 4% of the points) on top.
            ax.plot(steps, values, color="#1f77b4", alpha=0.3, linewidth=0.8)
            window = max(2, len(values) // 25)
            ax.plot(steps, _ema(values, 1 - 2 / (window + 1)), color="#1f77b4", linewidth=1.5)
        elif len(values) > 20:
            ax.plot(steps, values, color="#1f77b4", linewidth=1.5)
        else:
            ax.plot(steps, values, color="#1f77b4", marker="o", markersize=3, linewidth=1.5)
        positive = values[finite]
        if len(positive) > 1 and positive.min() > 0 and positive.max() / positive.min() > 50:
            ax.set_yscale("log")  # losses that fall by orders of magnitude
        last = values[finite][-1] if finite.any() else float("nan")
        ax.set_title(f"{name}  (last {last:.4g})", fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.get_yscale() == "linear":  # log axes already label in powers of ten
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)  # 1e-4, not 0.000100
        ax.yaxis.get_offset_text().set_fontsize(7)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("step", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    # Fixed margins instead of a layout engine: each panel has the same furniture, and it is much faster.
    top = 1 - (0.35 + 0.35) / fig.get_figheight() if title else 1 - 0.35 / fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.45 / fig.get_figheight(), top=top,
                        hspace=0.75, wspace=0.28)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no tool URL in the file
    return buf.getvalue()


def _ema(values: np.ndarray, decay: float) -> np.ndarray:
    out = np.empty_like(values, dtype=np.float64)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            acc = decay * acc + (1 - decay) * v
            weight = decay * weight + (1 - decay)
        out[i] = acc / weight if weight > 0 else np.nan
    return out
