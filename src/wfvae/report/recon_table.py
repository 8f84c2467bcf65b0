"""The reconstruction part of the report: pairs decoded from a reconstruction folder, their metric columns,
the table sorted worst first, and preview cards (frames, error map, animation) of the worst videos.

How to use::

    html_text = recon_section(run, max_videos=6, max_decode=200)   # run from wfvae.report.discover.discover_run
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wfvae.data.video_probe import probe_video

from wfvae.data.video_read import read_video
from wfvae.errors import VideoDecodeError
from wfvae.formats import is_image_path
from wfvae.report import figures
from wfvae.report.discover import MetricFile, ReconFolder, RunContents
from wfvae.report.markup import HIGHER_IS_BETTER, HINTS, data_uri, esc, fmt, num_cell, stats

logger = logging.getLogger(__name__)

__all__ = ["MAX_FRAMES", "recon_section"]

#: frames decoded per video at most (long videos are cut; the table says so).
MAX_FRAMES = 65


@dataclass
class _VideoResult:
    key: str
    origin: Path
    recon: Path
    values: dict[str, float] = field(default_factory=dict)  # column id -> value
    frames: tuple[np.ndarray, np.ndarray] | None = None
    note: str = ""


def _read_frames(path: Path) -> tuple[np.ndarray, bool]:
    """Up to MAX_FRAMES frames of a video (or an image as one frame); also whether it was cut."""
    if is_image_path(path):
        return read_video(path), False
    info = probe_video(path)
    count = min(info.frames, MAX_FRAMES)
    return read_video(path, 0, count, info=info), info.frames > count


def _load_pair(item: _VideoResult) -> None:
    """Decode a pair, align frame counts, compute the file PSNR; problems go into ``item.note``."""
    try:
        origin, cut_o = _read_frames(item.origin)
        recon, cut_r = _read_frames(item.recon)
    except VideoDecodeError as e:
        item.note = f"cannot decode: {e}"
        return
    if origin.shape[1:] != recon.shape[1:]:
        item.note = f"frame sizes differ: origin {origin.shape[2]}x{origin.shape[1]}, reconstruction {recon.shape[2]}x{recon.shape[1]}"
        return
    notes = []
    if len(origin) != len(recon):
        notes.append(f"frame counts differ ({len(origin)} vs {len(recon)}); compared the first {min(len(origin), len(recon))}")
    if cut_o or cut_r:
        notes.append(f"only the first {MAX_FRAMES} frames are compared")
    t = min(len(origin), len(recon))
    origin, recon = origin[:t], recon[:t]
    item.frames = (origin, recon)
    item.values["file_psnr"] = figures.psnr_uint8(origin, recon)
    item.note = "; ".join(notes)


@dataclass
class _Column:
    id: str
    label: str
    title: str
    higher_is_better: bool


def _columns(folder: ReconFolder) -> list[_Column]:
    cols = [_Column("file_psnr", "PSNR files (dB)", "PSNR of the decoded files as saved (after the video codec), "
                    "computed by this report", True)]
    kinds = [mf.kind for mf in folder.metric_files]
    for mf in folder.metric_files:
        names = sorted({m for row in mf.per_video.values() for m in row}, key=lambda m: (m not in ("psnr", "ssim", "lpips"), m))
        suffix = f" [{mf.kind}]" if len(kinds) > 1 or mf.kind == "evaluate" else ""
        origin_note = ("in memory, before the codec" if mf.kind == "reconstruct" else "from wfvae evaluate")
        if kinds.count(mf.kind) > 1:
            suffix = f" [{mf.path.name}]"
        for m in names:
            cols.append(_Column(f"{mf.path}:{m}", f"{m}{suffix}", f"{m} from {mf.path.name} ({origin_note})",
                                m in HIGHER_IS_BETTER))
    return cols


def _rank_column(cols: list[_Column]) -> _Column:
    """The column that defines "worst": a stored PSNR, else LPIPS, else the file PSNR."""
    for wanted in ("psnr", "lpips", "ssim"):
        for c in cols[1:]:
            if c.id.endswith(f":{wanted}"):
                return c
    return cols[0]


def _metric_file_block(run: RunContents, mf: MetricFile) -> str:
    label = "wfvae evaluate" if mf.kind == "evaluate" else "wfvae reconstruct --metrics"
    parts = [f'<p><b>{esc(run.rel(mf.path))}</b> <span class="muted">({label}, {len(mf.per_video)} videos)</span></p>']
    if mf.dataset:
        parts.append(stats(mf.dataset))
    parts += [f'<p class="muted">note: {esc(n)}</p>' for n in mf.notes]
    if mf.kind == "reconstruct":
        parts.append('<p class="muted">these values are measured on the in-memory tensors, before the video codec.</p>')
    cfg = mf.raw.get("config")
    if isinstance(cfg, dict):
        parts.append(f"<details><summary>settings</summary><pre>{esc(json.dumps(cfg, indent=2))}</pre></details>")
    return "".join(parts)


def recon_section(run: RunContents, max_videos: int, max_decode: int) -> str:
    parts = ['<h2 id="reconstructions">Reconstructions</h2>']
    if not run.recon_dirs:
        parts.append(f'<p class="muted">{HINTS["recon"]}</p>')
    for n, folder in enumerate(run.recon_dirs):
        parts.append(_recon_folder(run, folder, n, max_videos, max_decode))
    if run.metric_files:
        parts.append("<h3>Metric files not tied to a reconstruction folder here</h3>")
        for mf in run.metric_files:
            parts.append(f'<div class="card">{_metric_file_block(run, mf)}{_plain_metric_table(mf)}</div>')
    return "".join(parts)


def _plain_metric_table(mf: MetricFile) -> str:
    names = sorted({m for row in mf.per_video.values() for m in row})
    head = "".join(f'<th data-better="{"higher" if m in HIGHER_IS_BETTER else "lower"}">{esc(m)}</th>' for m in names)
    rank = next((m for m in ("psnr", "lpips", "ssim") if m in names), None)
    keys = sorted(mf.per_video)
    if rank:
        keys.sort(key=lambda k: mf.per_video[k].get(rank, math.nan), reverse=rank not in HIGHER_IS_BETTER)
    rows = "".join(
        f"<tr><td>{esc(k)}</td>" + "".join(num_cell(mf.per_video[k].get(m)) for m in names) + "</tr>" for k in keys)
    return (f'<div class="tablewrap"><table class="sortable"><thead><tr><th>video</th>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _recon_folder(run: RunContents, folder: ReconFolder, n: int, max_videos: int, max_decode: int) -> str:
    parts = [f'<h3>{esc(run.rel(folder.path))} <span class="muted">({len(folder.pairs)} video pairs)</span></h3>']
    if folder.unpaired:
        shown = ", ".join(esc(p) for p in folder.unpaired[:10])
        more = f" and {len(folder.unpaired) - 10} more" if len(folder.unpaired) > 10 else ""
        parts.append(f'<p class="warn">{len(folder.unpaired)} file(s) without a partner: {shown}{more}</p>')
    for mf in folder.metric_files:
        parts.append(f'<div class="card">{_metric_file_block(run, mf)}</div>')
    if not folder.metric_files:
        parts.append(f'<p class="muted">{HINTS["metrics"]}</p>')

    items = [_VideoResult(k, o, r) for k, o, r in folder.pairs]
    for item in items[:max_decode]:
        _load_pair(item)
        if item.note:
            logger.warning("%s: %s", item.key, item.note)
    if len(items) > max_decode:
        parts.append(f'<p class="muted">PSNR of the files is computed for the first {max_decode} videos only.</p>')
    cols = _columns(folder)
    for item in items:
        for mf in folder.metric_files:
            for m, v in mf.per_video.get(item.key, {}).items():
                item.values[f"{mf.path}:{m}"] = v
    rank = _rank_column(cols)
    sign = 1 if rank.higher_is_better else -1

    def badness(item: _VideoResult) -> float:
        v = item.values.get(rank.id)
        return math.inf if v is None or math.isnan(v) else sign * v

    items.sort(key=lambda it: (badness(it), it.key))  # worst first
    if not items:
        parts.append('<p class="muted">no pairs to show.</p>')
        return "".join(parts)

    # Table (all videos). Rows link to their preview card when there is one.
    shown = [it for it in items if it.frames is not None][:max_videos]
    anchors = {it.key: f"v{n}-{i}" for i, it in enumerate(shown)}
    head = "<th>video</th>"
    for c in cols:
        better = "higher" if c.higher_is_better else "lower"
        order = (' class="asc"' if c.higher_is_better else ' class="desc"') if c is rank else ""  # as sorted below
        head += f'<th title="{esc(c.title)}" data-better="{better}"{order}>{esc(c.label)}</th>'
    head += "<th>note</th>"
    rows = []
    for it in items:
        name = f'<a href="#{anchors[it.key]}">{esc(it.key)}</a>' if it.key in anchors else esc(it.key)
        cells = "".join(num_cell(it.values.get(c.id)) for c in cols)
        rows.append(f"<tr><td>{name}</td>{cells}<td>{esc(it.note)}</td></tr>")
    parts.append(f'<p class="muted">sorted worst first by <b>{esc(rank.label)}</b>; click a header to sort by it.</p>')
    parts.append(f'<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table></div>')

    # Preview cards for the worst videos.
    if shown:
        parts.append(f"<h3>The {len(shown)} worst videos by {esc(rank.label)}</h3>")
        parts.append(f'<p class="muted">error map: mean |original − reconstruction| over RGB, '
                     f'<span class="legend"></span> 0 to {figures.ERROR_MAX:g} of 255 (or more).</p>')
    for it in shown:
        origin, recon = it.frames
        png, idx, png_width = figures.comparison_png(origin, recon)
        gif, gif_width = figures.comparison_gif(origin, recon)
        values = ", ".join(f"{c.label} {fmt(it.values[c.id])}" for c in cols if c.id in it.values)
        t, h, w = origin.shape[:3]
        parts.append(
            f'<div class="video" id="{anchors[it.key]}"><h4>{esc(it.key)}</h4>'
            f'<div class="meta">{t} frames, {w}x{h}; {esc(values)}'
            f'{"; " + esc(it.note) if it.note else ""}<br>origin: <code>{esc(run.rel(it.origin))}</code> · '
            f'reconstruction: <code>{esc(run.rel(it.recon))}</code></div>'
            f'<div class="panels"><figure><img alt="frames of {esc(it.key)}" style="width:{png_width}px" '
            f'src="{data_uri(png, "image/png")}">'
            f'<figcaption>rows: original, reconstruction, error map · frames {", ".join(map(str, idx))}</figcaption></figure>'
            f'<figure><img alt="animation of {esc(it.key)}" style="width:{gif_width}px" '
            f'src="{data_uri(gif, "image/gif")}">'
            f"<figcaption>original | reconstruction | error map (animated)</figcaption></figure></div></div>")
    return "".join(parts)
