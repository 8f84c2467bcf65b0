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

import datetime
import json
import logging
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from wfvae.errors import InputError
from wfvae.options import REQUIRED, option, run_config, too_small, validate
from wfvae.report import figures
from wfvae.report.discover import RunContents, discover_run
from wfvae.report.markup import HINTS, asset, data_uri, esc, fmt
from wfvae.report.recon_table import recon_section
from wfvae.report.training_log import as_float, group_series, higher_is_better, load_metrics_log
from wfvae.utils.logging import setup_logging

logger = logging.getLogger(__name__)

__all__ = ["ReportConfig", "build_report", "main", "render_report"]

#: characters of a config file shown at most.
MAX_CONFIG_CHARS = 100_000
_PACKAGES = ("wfvae", "torch", "torchvision", "numpy", "av", "Pillow", "matplotlib", "scikit-image", "lpips")


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
            lines.append(f'<li class="no"><span class="mark">✗</span><span class="hint">{HINTS[key]}</span></li>')
    return f'<ul class="found">{"".join(lines)}</ul>'


def _training_section(run: RunContents) -> str:
    if not run.metrics_logs:
        return f'<h2 id="training">Training</h2><p class="muted">{HINTS["log"]}</p>'
    parts = ['<h2 id="training">Training</h2>']
    for path in run.metrics_logs:
        parts.append(f"<h3>{esc(run.rel(path))}</h3>")
        try:
            log = load_metrics_log(path)
        except OSError as e:
            parts.append(f'<p class="warn">cannot read: {esc(e)}</p>')
            continue
        if log.bad_lines:
            parts.append(f'<p class="warn">{log.bad_lines} line(s) are not JSON records with a step '
                         f'(e.g. cut off by a crash) and were skipped.</p>')
        groups = group_series(log.series)
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
            parts.append(f'<img class="plot" alt="{esc(title)}" src="{data_uri(png, "image/png")}">')
        if log.events:
            rows = "".join(
                f"<tr><td>{esc(ev.get('event'))}</td><td>{int(as_float(ev.get('step')) or 0)}</td>"
                f"<td>{esc(json.dumps({k: v for k, v in ev.items() if k not in ('event', 'step', 'time')})[:300])}</td></tr>"
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
        best = int(np.argmax(v) if higher_is_better(k) else np.argmin(v))
        rows.append(f"<tr><td>{esc(k)}</td><td>{fmt(v[-1])}</td><td>{int(s[-1])}</td>"
                    f"<td>{fmt(v[best])}</td><td>{int(s[best])}</td></tr>")
    if not rows:
        return ""
    return ('<div class="card"><table><thead><tr><th>value</th><th>last</th><th>at step</th><th>best</th>'
            f'<th>at step</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _config_section(run: RunContents) -> str:
    parts = ['<h2 id="config">Configuration</h2>']
    if not run.configs:
        parts.append(f'<p class="muted">{HINTS["config"]}</p>')
    for i, path in enumerate(run.configs):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            parts.append(f'<p class="warn">{esc(run.rel(path))}: cannot read ({esc(e)})</p>')
            continue
        if path.suffix == ".json":
            try:
                text = json.dumps(json.loads(text), indent=2)
            except json.JSONDecodeError:
                pass  # show it as it is; the reader sees why it does not parse
        if len(text) > MAX_CONFIG_CHARS:
            text = text[:MAX_CONFIG_CHARS] + f"\n... ({len(text) - MAX_CONFIG_CHARS} more characters)"
        parts.append(f'<details{" open" if i == 0 else ""}><summary><code>{esc(run.rel(path))}</code></summary>'
                     f"<pre>{esc(text)}</pre></details>")
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
            parts.append(f"<tr><td><code>{esc(run.rel(path))}</code>{kind}</td><td>{shown}</td><td>{when}</td></tr>")
        parts.append("</tbody></table>")
    return "".join(parts)


def _environment() -> dict[str, str]:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    for name in _PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    return env


def _environment_section() -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in _environment().items())
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
        f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{esc(run.root)} · made {now}</p>',
        f'<div class="card"><b>Found in this folder</b>{_found_list(run)}</div>',
    ]
    if run.problems:
        body.append('<div class="card warn">' + "<br>".join(esc(p) for p in run.problems) + "</div>")
    body.append(_training_section(run))
    body.append(recon_section(run, max_videos, max_decode))
    body.append(_config_section(run))
    body.append(_environment_section())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>\n{asset('report.css')}</style></head>"
        f"<body><main>{''.join(body)}</main><script>\n{asset('report.js')}</script></body></html>\n"
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
        return too_small(self, ("max_videos", "max_decode"), at_least=0)


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
    setup_logging()
    print(build_report(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_config(ReportConfig, _run, argv, "wfvae report",
                      "Write a self-contained HTML report (curves, reconstructions, metrics, config) of a run folder.")


if __name__ == "__main__":
    from wfvae.errors import run_command

    sys.exit(run_command("wfvae report", main))
