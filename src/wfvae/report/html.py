"""A self-contained HTML report of a training and/or evaluation run: one file that opens offline.

How to run::

    wfvae report runs/exp1                          # writes runs/exp1/report.html
    wfvae report demo/ --out demo_report.html --max_videos 12

    # from Python
    from wfvae.report.html import ReportConfig, build_report
    path = build_report(ReportConfig(run_dir="runs/exp1"))

What it shows, for whatever the folder holds (see :mod:`wfvae.report.discover` for the search rules):

* a summary of what was found and, for each missing part, the command that makes it;
* loss and metric curves from every ``metrics.jsonl`` (one panel per logged value), last/best values;
* per reconstruction folder: dataset metrics, a per-video table (click a header to sort; it opens worst
  first), and for the worst videos a still grid (original | reconstruction | error map at evenly spaced
  frames) and an animated GIF of the three side by side;
* config files, checkpoints, ``save_pretrained`` folders, and the environment that made the report.

Every image is embedded as a base64 ``data:`` URI and the only script is a few lines of inline
JavaScript for sorting, so the file can be mailed or archived as is. Nothing is fetched over the network.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import logging
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wfvae.errors import InputError, VideoDecodeError
from wfvae.options import REQUIRED, option, run_config, validate
from wfvae.report import figures
from wfvae.report.discover import MetricFile, ReconFolder, RunContents, discover_run

logger = logging.getLogger(__name__)

__all__ = ["ReportConfig", "build_report", "load_metrics_log", "main", "render_report"]

#: metrics where a larger value is better; every other metric (lpips, fvd, losses) is better smaller.
HIGHER_IS_BETTER = frozenset({"psnr", "ssim"})
#: frames decoded per video at most (long videos are cut; the table says so).
MAX_FRAMES = 65
#: characters of a config file shown at most.
MAX_CONFIG_CHARS = 100_000
_PACKAGES = ("wfvae", "torch", "torchvision", "numpy", "av", "Pillow", "matplotlib", "scikit-image", "lpips")


# ------------------------------------------------------------------------------------------------
# Training log
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainingLog:
    """A parsed ``metrics.jsonl``.

    Attributes:
        series: ``{key: (steps, values)}`` float arrays, NaN where a record logged "nan"/"inf".
        events: records with an ``event`` key (resume, nonfinite_skip, ...), as logged.
        bad_lines: lines that were not JSON objects (e.g. a line cut off by a crash).
    """

    series: dict[str, tuple[np.ndarray, np.ndarray]]
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)  # MetricsLogger writes non-finite values as strings
    return None


def load_metrics_log(path: str | os.PathLike) -> TrainingLog:
    """Read a trainer ``metrics.jsonl``: numeric values per key against ``step``; other values are ignored.

    Raises:
        OSError: the file cannot be read.
    """
    points: dict[str, list[tuple[float, float]]] = {}
    events: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            step = _as_float(record.get("step")) if isinstance(record, dict) else None
            if step is None:
                bad += 1
                continue
            if "event" in record:
                events.append(record)
            for key, value in record.items():
                number = _as_float(value)
                if key in ("step", "time") or number is None:
                    continue
                points.setdefault(key, []).append((step, number))
    series = {}
    for key, pts in points.items():
        arr = np.asarray(pts, dtype=np.float64)  # (N, 2): step, value
        arr[~np.isfinite(arr[:, 1]), 1] = np.nan
        series[key] = (arr[:, 0], arr[:, 1])
    return TrainingLog(series, events, bad)


def _metric_name(key: str) -> str:
    return key.rsplit("/", 1)[-1].lower()


def _higher_is_better(key: str) -> bool:
    return _metric_name(key) in HIGHER_IS_BETTER


def _group_series(series: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[tuple[str, dict]]:
    """Split logged keys into figures: losses, validation metrics, everything else that changes."""
    losses = {k: v for k, v in series.items() if k.startswith("train/loss")}
    val = {k: v for k, v in series.items() if k.startswith("val/")}
    rest = {}
    for k, v in series.items():
        if k in losses or k in val:
            continue
        finite = v[1][np.isfinite(v[1])]
        if len(finite) >= 2 and finite.min() != finite.max():  # constants (epoch 0, flags) are noise here
            rest[k] = v
    order = ["train/loss", "train/loss_rec", "train/loss_kl", "train/loss_lpips", "train/loss_g_adv", "train/loss_d"]
    losses = dict(sorted(losses.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    groups = [("Training losses", losses), ("Validation metrics", val), ("Other logged values", rest)]
    return [(title, s) for title, s in groups if s]


# ------------------------------------------------------------------------------------------------
# Reconstructions
# ------------------------------------------------------------------------------------------------


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
    from wfvae.data.video_io import probe_video, read_video
    from wfvae.formats import is_image_path

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


# ------------------------------------------------------------------------------------------------
# HTML pieces
# ------------------------------------------------------------------------------------------------

_CSS = """
:root { --fg: #1d2430; --muted: #5c6675; --line: #d9dee5; --bg: #f5f7fa; --card: #fff; --ok: #1a7f37; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 8px; }
.sub { color: var(--muted); margin: 0 0 16px; word-break: break-all; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; margin: 12px 0; }
.found { list-style: none; padding: 0; margin: 0; }
.found li { padding: 3px 0; }
.found .mark { display: inline-block; width: 1.4em; font-weight: 700; }
.found .yes .mark { color: var(--ok); } .found .no .mark { color: var(--bad); }
.found .hint { color: var(--muted); }
code { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #eef1f5; padding: 1px 4px; border-radius: 4px; }
pre { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f0f2f6; padding: 10px;
      border-radius: 6px; overflow: auto; max-height: 420px; margin: 6px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; white-space: normal; word-break: break-all; }
thead th { position: sticky; top: 0; background: #e9edf2; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " \\2195"; color: #9aa3ad; }
table.sortable th.asc::after { content: " \\2191"; color: var(--fg); }
table.sortable th.desc::after { content: " \\2193"; color: var(--fg); }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef4ff; }
.tablewrap { max-height: 520px; overflow: auto; border: 1px solid var(--line); border-radius: 6px; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 110px; }
.stat .v { font-size: 20px; font-weight: 600; } .stat .k { color: var(--muted); font-size: 12px; }
.video { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin: 14px 0; }
.video h4 { margin: 0 0 6px; font-size: 14px; word-break: break-all; }
.video .meta { color: var(--muted); font-size: 12.5px; margin-bottom: 8px; }
.panels { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.panels figure { margin: 0; }
.panels figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
img { max-width: 100%; height: auto; image-rendering: pixelated; }
img.plot { image-rendering: auto; display: block; margin: 6px 0; }
.legend { display: inline-block; width: 160px; height: 10px; vertical-align: middle; border-radius: 2px;
          background: linear-gradient(to right, #000004, #57106e, #bc3754, #f98e09, #fcffa4); }
.warn { color: var(--bad); }
table.kv td { text-align: left; } table.kv td:first-child { width: 180px; color: var(--muted); }
.muted { color: var(--muted); }
details summary { cursor: pointer; padding: 4px 0; }
"""

# Sort a table by a column. First click on a metric sorts worst first (ascending when higher is better).
_JS = """
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const worstFirst = th.dataset.better === 'higher' ? 'asc' : 'desc';
  const dir = th.classList.contains('asc') ? 'desc' : th.classList.contains('desc') ? 'asc'
            : (th.dataset.better ? worstFirst : 'asc');
  table.querySelectorAll('th').forEach(h => h.classList.remove('asc', 'desc'));
  th.classList.add(dir);
  const key = tr => { const td = tr.children[col]; const v = td.dataset.v;
                      return v === undefined ? td.textContent.trim() : (v === '' ? null : parseFloat(v)); };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);   // blanks last
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return dir === 'asc' ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => sortTable(th)));
"""

_HINTS = {
    "log": "no <code>metrics.jsonl</code>: <code>wfvae train</code> writes one into its run folder.",
    "recon": "no reconstruction folder (a folder with an <code>origin/</code> sub-folder): run "
             "<code>wfvae reconstruct ... --output_origin</code>.",
    "metrics": "no per-video metrics file: add <code>--metrics psnr,ssim</code> to <code>wfvae reconstruct</code> "
               "or run <code>wfvae evaluate ... --json FILE</code> (the table still shows the PSNR of the files).",
    "config": "no config file (<code>config.json</code>, <code>*config*.yaml</code>, ...).",
    "ckpt": "no checkpoint (<code>*.ckpt</code>) or <code>save_pretrained</code> folder.",
}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"


def _stats(values: dict[str, float]) -> str:
    cells = "".join(f'<div class="stat"><div class="v">{_fmt(v)}</div><div class="k">{_e(k)}</div></div>'
                    for k, v in values.items())
    return f'<div class="stats">{cells}</div>'


def _found_list(run: RunContents) -> str:
    n_pairs = sum(len(f.pairs) for f in run.recon_dirs)
    n_metric = sum(len(f.metric_files) for f in run.recon_dirs) + len(run.metric_files)
    items = [
        ("log", bool(run.metrics_logs), f"training log: {len(run.metrics_logs)} <code>metrics.jsonl</code>"),
        ("recon", bool(run.recon_dirs), f"reconstructions: {len(run.recon_dirs)} folder(s), {n_pairs} video pair(s)"),
        ("metrics", n_metric > 0, f"per-video metrics: {n_metric} file(s)"),
        ("config", bool(run.configs), f"config: {len(run.configs)} file(s)"),
        ("ckpt", bool(run.checkpoints or run.pretrained_dirs),
         f"weights: {len(run.checkpoints)} checkpoint(s), {len(run.pretrained_dirs)} <code>save_pretrained</code> folder(s)"),
    ]
    lines = []
    for key, ok, text in items:
        if ok:
            lines.append(f'<li class="yes"><span class="mark">✓</span>{text}</li>')
        else:
            lines.append(f'<li class="no"><span class="mark">✗</span><span class="hint">{_HINTS[key]}</span></li>')
    return f'<ul class="found">{"".join(lines)}</ul>'


def _training_section(run: RunContents) -> str:
    if not run.metrics_logs:
        return f'<h2 id="training">Training</h2><p class="muted">{_HINTS["log"]}</p>'
    parts = ['<h2 id="training">Training</h2>']
    for path in run.metrics_logs:
        parts.append(f"<h3>{_e(run.rel(path))}</h3>")
        try:
            log = load_metrics_log(path)
        except OSError as e:
            parts.append(f'<p class="warn">cannot read: {_e(e)}</p>')
            continue
        if log.bad_lines:
            parts.append(f'<p class="warn">{log.bad_lines} line(s) are not JSON records with a step '
                         f'(e.g. cut off by a crash) and were skipped.</p>')
        groups = _group_series(log.series)
        if not groups:
            parts.append('<p class="muted">the log has no numeric values yet.</p>')
        steps = [int(s) for v in log.series.values() for s in v[0]]
        if steps:
            parts.append(f'<p class="muted">steps {min(steps)} to {max(steps)}, {len(log.series)} logged values.</p>')
        summary = _summary_table(log.series)
        if summary:
            parts.append(summary)
        for title, series in groups:
            png = figures.curves_png(series, title)
            parts.append(f'<img class="plot" alt="{_e(title)}" src="{_data_uri(png, "image/png")}">')
        if log.events:
            rows = "".join(
                f"<tr><td>{_e(ev.get('event'))}</td><td>{int(_as_float(ev.get('step')) or 0)}</td>"
                f"<td>{_e(json.dumps({k: v for k, v in ev.items() if k not in ('event', 'step', 'time')})[:300])}</td></tr>"
                for ev in log.events[-50:])
            parts.append(f"<details><summary>{len(log.events)} event(s) (resume, skipped steps, ...)</summary>"
                         f"<table><thead><tr><th>event</th><th>step</th><th>details</th></tr></thead>"
                         f"<tbody>{rows}</tbody></table></details>")
    return "".join(parts)


def _summary_table(series: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Last and best value of every validation metric and loss."""
    keys = [k for k in series if k.startswith(("val/", "train/loss"))]
    rows = []
    for k in keys:
        steps, values = series[k]
        finite = np.isfinite(values)
        if not finite.any():
            continue
        s, v = steps[finite], values[finite]
        best = int(np.argmax(v) if _higher_is_better(k) else np.argmin(v))
        rows.append(f"<tr><td>{_e(k)}</td><td>{_fmt(v[-1])}</td><td>{int(s[-1])}</td>"
                    f"<td>{_fmt(v[best])}</td><td>{int(s[best])}</td></tr>")
    if not rows:
        return ""
    return ('<div class="card"><table><thead><tr><th>value</th><th>last</th><th>at step</th><th>best</th>'
            f'<th>at step</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _metric_file_block(run: RunContents, mf: MetricFile) -> str:
    label = "wfvae evaluate" if mf.kind == "evaluate" else "wfvae reconstruct --metrics"
    parts = [f'<p><b>{_e(run.rel(mf.path))}</b> <span class="muted">({label}, {len(mf.per_video)} videos)</span></p>']
    if mf.dataset:
        parts.append(_stats(mf.dataset))
    parts += [f'<p class="muted">note: {_e(n)}</p>' for n in mf.notes]
    if mf.kind == "reconstruct":
        parts.append('<p class="muted">these values are measured on the in-memory tensors, before the video codec.</p>')
    cfg = mf.raw.get("config")
    if isinstance(cfg, dict):
        parts.append(f"<details><summary>settings</summary><pre>{_e(json.dumps(cfg, indent=2))}</pre></details>")
    return "".join(parts)


def _recon_section(run: RunContents, max_videos: int, max_decode: int) -> str:
    parts = ['<h2 id="reconstructions">Reconstructions</h2>']
    if not run.recon_dirs:
        parts.append(f'<p class="muted">{_HINTS["recon"]}</p>')
    for n, folder in enumerate(run.recon_dirs):
        parts.append(_recon_folder(run, folder, n, max_videos, max_decode))
    if run.metric_files:
        parts.append("<h3>Metric files not tied to a reconstruction folder here</h3>")
        for mf in run.metric_files:
            parts.append(f'<div class="card">{_metric_file_block(run, mf)}{_plain_metric_table(mf)}</div>')
    return "".join(parts)


def _plain_metric_table(mf: MetricFile) -> str:
    names = sorted({m for row in mf.per_video.values() for m in row})
    head = "".join(f'<th data-better="{"higher" if m in HIGHER_IS_BETTER else "lower"}">{_e(m)}</th>' for m in names)
    rank = next((m for m in ("psnr", "lpips", "ssim") if m in names), None)
    keys = sorted(mf.per_video)
    if rank:
        keys.sort(key=lambda k: mf.per_video[k].get(rank, math.nan), reverse=rank not in HIGHER_IS_BETTER)
    rows = "".join(
        f"<tr><td>{_e(k)}</td>" + "".join(_num_cell(mf.per_video[k].get(m)) for m in names) + "</tr>" for k in keys)
    return (f'<div class="tablewrap"><table class="sortable"><thead><tr><th>video</th>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _num_cell(value: float | None) -> str:
    if value is None or math.isnan(value):
        return '<td data-v="">–</td>'
    v = "1e308" if math.isinf(value) else repr(float(value))
    return f'<td data-v="{v}">{_fmt(value)}</td>'


def _recon_folder(run: RunContents, folder: ReconFolder, n: int, max_videos: int, max_decode: int) -> str:
    parts = [f'<h3>{_e(run.rel(folder.path))} <span class="muted">({len(folder.pairs)} video pairs)</span></h3>']
    if folder.unpaired:
        shown = ", ".join(_e(p) for p in folder.unpaired[:10])
        more = f" and {len(folder.unpaired) - 10} more" if len(folder.unpaired) > 10 else ""
        parts.append(f'<p class="warn">{len(folder.unpaired)} file(s) without a partner: {shown}{more}</p>')
    for mf in folder.metric_files:
        parts.append(f'<div class="card">{_metric_file_block(run, mf)}</div>')
    if not folder.metric_files:
        parts.append(f'<p class="muted">{_HINTS["metrics"]}</p>')

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
        head += f'<th title="{_e(c.title)}" data-better="{better}"{order}>{_e(c.label)}</th>'
    head += "<th>note</th>"
    rows = []
    for it in items:
        name = f'<a href="#{anchors[it.key]}">{_e(it.key)}</a>' if it.key in anchors else _e(it.key)
        cells = "".join(_num_cell(it.values.get(c.id)) for c in cols)
        rows.append(f"<tr><td>{name}</td>{cells}<td>{_e(it.note)}</td></tr>")
    parts.append(f'<p class="muted">sorted worst first by <b>{_e(rank.label)}</b>; click a header to sort by it.</p>')
    parts.append(f'<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table></div>')

    # Preview cards for the worst videos.
    if shown:
        parts.append(f"<h3>The {len(shown)} worst videos by {_e(rank.label)}</h3>")
        parts.append(f'<p class="muted">error map: mean |original − reconstruction| over RGB, '
                     f'<span class="legend"></span> 0 to {figures.ERROR_MAX:g} of 255 (or more).</p>')
    for it in shown:
        origin, recon = it.frames
        png, idx, png_width = figures.comparison_png(origin, recon)
        gif, gif_width = figures.comparison_gif(origin, recon)
        values = ", ".join(f"{c.label} {_fmt(it.values[c.id])}" for c in cols if c.id in it.values)
        t, h, w = origin.shape[:3]
        parts.append(
            f'<div class="video" id="{anchors[it.key]}"><h4>{_e(it.key)}</h4>'
            f'<div class="meta">{t} frames, {w}x{h}; {_e(values)}'
            f'{"; " + _e(it.note) if it.note else ""}<br>origin: <code>{_e(run.rel(it.origin))}</code> · '
            f'reconstruction: <code>{_e(run.rel(it.recon))}</code></div>'
            f'<div class="panels"><figure><img alt="frames of {_e(it.key)}" style="width:{png_width}px" '
            f'src="{_data_uri(png, "image/png")}">'
            f'<figcaption>rows: original, reconstruction, error map · frames {", ".join(map(str, idx))}</figcaption></figure>'
            f'<figure><img alt="animation of {_e(it.key)}" style="width:{gif_width}px" '
            f'src="{_data_uri(gif, "image/gif")}">'
            f"<figcaption>original | reconstruction | error map (animated)</figcaption></figure></div></div>")
    return "".join(parts)


def _config_section(run: RunContents) -> str:
    parts = ['<h2 id="config">Configuration</h2>']
    if not run.configs:
        parts.append(f'<p class="muted">{_HINTS["config"]}</p>')
    for i, path in enumerate(run.configs):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            parts.append(f'<p class="warn">{_e(run.rel(path))}: cannot read ({_e(e)})</p>')
            continue
        if path.suffix == ".json":
            try:
                text = json.dumps(json.loads(text), indent=2)
            except json.JSONDecodeError:
                pass  # show it as it is; the reader sees why it does not parse
        if len(text) > MAX_CONFIG_CHARS:
            text = text[:MAX_CONFIG_CHARS] + f"\n... ({len(text) - MAX_CONFIG_CHARS} more characters)"
        parts.append(f'<details{" open" if i == 0 else ""}><summary><code>{_e(run.rel(path))}</code></summary>'
                     f"<pre>{_e(text)}</pre></details>")
    if run.checkpoints or run.pretrained_dirs:
        parts.append("<h3>Weights</h3><table><thead><tr><th>file</th><th>size</th><th>modified (UTC)</th></tr></thead><tbody>")
        for path in run.checkpoints + run.pretrained_dirs:
            try:
                st = path.stat()
            except OSError:
                continue
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) if path.is_dir() else st.st_size
            when = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
            kind = " (save_pretrained folder)" if path.is_dir() else ""
            shown = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
            parts.append(f"<tr><td><code>{_e(run.rel(path))}</code>{kind}</td><td>{shown}</td><td>{when}</td></tr>")
        parts.append("</tbody></table>")
    return "".join(parts)


def _environment() -> dict[str, str]:
    from importlib import metadata

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    for name in _PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    return env


def _environment_section() -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in _environment().items())
    return ('<h2 id="environment">Environment</h2><p class="muted">of the machine that made this report '
            '(the run itself may have used another).</p>'
            f'<div class="card"><table class="kv"><tbody>{rows}</tbody></table></div>')


def render_report(run: RunContents, *, title: str | None = None, max_videos: int = 6, max_decode: int = 200) -> str:
    """The report's HTML for an already discovered run folder.

    Args:
        run: from :func:`wfvae.report.discover.discover_run`.
        title: page heading (default: the folder's name).
        max_videos: worst videos per reconstruction folder that get a still grid and an animation.
        max_decode: videos per folder decoded for the file PSNR column (all are listed).

    Returns:
        A complete HTML document with everything embedded.
    """
    title = title or f"wfvae report: {run.root.name}"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(run.root)} · made {now}</p>',
        f'<div class="card"><b>Found in this folder</b>{_found_list(run)}</div>',
    ]
    if run.problems:
        body.append('<div class="card warn">' + "<br>".join(_e(p) for p in run.problems) + "</div>")
    body.append(_training_section(run))
    body.append(_recon_section(run, max_videos, max_decode))
    body.append(_config_section(run))
    body.append(_environment_section())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main><script>{_JS}</script></body></html>\n"
    )


@dataclass(kw_only=True)
class ReportConfig:
    """Settings of ``wfvae report``."""

    run_dir: str = option(REQUIRED, "Training run, reconstruction folder, or any folder above them.", positional=True)
    out: str | None = option(None, "Output HTML file (default RUN_DIR/report.html).")
    title: str | None = option(None, "Page heading (default: the folder's name).")
    max_videos: int = option(6, "Worst videos per folder shown as frames + animation.")
    max_decode: int = option(200, "Videos per folder decoded for the file PSNR column (all are listed).")

    def check(self) -> list[str]:
        return [f"--{name} must be >= 0, got {getattr(self, name)}" for name in ("max_videos", "max_decode")
                if getattr(self, name) < 0]


def build_report(cfg: ReportConfig) -> Path:
    """Discover what ``cfg.run_dir`` holds and write the HTML report.

    ``cfg.run_dir``: a training run, a reconstruction folder, or a folder above them (e.g. the demo's);
    ``cfg.out``: output file (default ``run_dir/report.html``); ``title``, ``max_videos``, ``max_decode``:
    see :func:`render_report`.

    Returns:
        The path of the written report.

    Raises:
        InputError: ``run_dir`` is not a folder.
    """
    validate(cfg)
    if not Path(cfg.run_dir).is_dir():
        raise InputError(f"run folder '{cfg.run_dir}' does not exist or is not a folder; pass a training run, "
                         "a reconstruction folder or a folder above them")
    run = discover_run(cfg.run_dir)
    out = Path(cfg.out) if cfg.out else run.root / "report.html"
    text = render_report(run, title=cfg.title, max_videos=cfg.max_videos, max_decode=cfg.max_decode)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    logger.info("wrote %s (%.1f MiB)", out, out.stat().st_size / 2**20)
    return out


def _run(cfg: ReportConfig) -> int:
    from wfvae.utils.logging import setup_logging

    setup_logging()
    print(build_report(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_config(ReportConfig, _run, argv, "wfvae report",
                      "Write a self-contained HTML report (curves, reconstructions, metrics, config) of a run folder.")


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("wfvae report", main))
