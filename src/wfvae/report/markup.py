"""How values look in the HTML report: escaping, numbers, metric direction, embedded files, hints.

How to use::

    from wfvae.report.markup import esc, fmt, num_cell, asset
    f"<td>{esc(name)}</td>{num_cell(0.91)}"        # a sortable numeric cell
    asset("report.css")                            # a static file shipped in wfvae/report/assets/
"""

from __future__ import annotations

import base64
import html
import math
from importlib import resources
from typing import Any

from wfvae.evaluation.registry import METRICS

__all__ = ["HIGHER_IS_BETTER", "HINTS", "asset", "data_uri", "esc", "fmt", "num_cell", "stats"]

#: metrics where a larger value is better (from the metric registry); everything else (lpips, fvd, losses) is
#: better smaller.
HIGHER_IS_BETTER = frozenset(name for name, metric in METRICS.items() if metric.higher_is_better)

#: What to run to get a part the report did not find.
HINTS = {
    "log": "no <code>metrics.jsonl</code>: <code>wfvae train</code> writes one into its run folder.",
    "recon": "no reconstruction folder (a folder with an <code>origin/</code> sub-folder): run "
             "<code>wfvae reconstruct ... --output_origin</code>.",
    "metrics": "no per-video metrics file: add <code>--metrics psnr,ssim</code> to <code>wfvae reconstruct</code> "
               "or run <code>wfvae evaluate ... --json FILE</code> (the table still shows the PSNR of the files).",
    "config": "no config file (<code>config.json</code>, <code>*config*.yaml</code>, ...).",
    "ckpt": "no checkpoint (<code>*.ckpt</code>) or <code>save_pretrained</code> folder.",
}



def asset(name: str) -> str:
    """Text of a static file of the report (``wfvae/report/assets/<name>``, shipped as package data)."""
    return resources.files("wfvae.report").joinpath("assets", name).read_text(encoding="utf-8")


def esc(text: Any) -> str:
    """``text`` safe inside HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    """An embedded file (``src="data:..."``), so the report needs nothing next to it."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for people: ``digits`` decimals, scientific when tiny or huge, a dash when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"


def stats(values: dict[str, float]) -> str:
    """A row of ``value / name`` cards (dataset metrics)."""
    cells = "".join(f'<div class="stat"><div class="v">{fmt(v)}</div><div class="k">{esc(k)}</div></div>'
                    for k, v in values.items())
    return f'<div class="stats">{cells}</div>'


def num_cell(value: float | None) -> str:
    """A table cell that the page's script sorts by its number (blank when missing, infinity last)."""
    if value is None or math.isnan(value):
        return '<td data-v="">–</td>'
    v = "1e308" if math.isinf(value) else repr(float(value))
    return f'<td data-v="{v}">{fmt(value)}</td>'
