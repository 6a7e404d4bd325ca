"""Safe HTML building blocks for notebook reprs and every review surface.

Everything a request carries is untrusted. Every string that reaches HTML goes through
:func:`esc` (or through Pygments, whose formatter escapes each token), so a request whose
source holds ``<script>`` shows as text. Nothing here emits script, event handlers or
links built from request text. The reprs of requests, runs, budgets and dataset cards
built from these blocks are :func:`fednb.client.request_html` and its neighbours.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CSS",
    "PRE_STYLE",
    "TONE",
    "badge",
    "card",
    "code_html",
    "esc",
    "facts_html",
    "kv_table",
    "meter_html",
    "svg_lines",
    "table_html",
]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, var(--jp-code-font-family, monospace)"
PRE_STYLE = (
    f"font-family: {_MONO}; font-size: 12px; line-height: 1.45; "
    "max-height: 28em; overflow: auto; border: 1px solid #d0d7de; border-radius: 6px; "
    "padding: 6px 8px; background: #f6f8fa; margin: 0"
)
"""The inline style of a block of code or log text (a scrolled, monospaced box)."""

# One look for every review surface (notebook reprs, the Inbox, the Panel console; the lab
# extension's style/index.css uses the same colours): GitHub Primer's palette, whose text
# colours pass WCAG AA on their backgrounds. Rules are scoped under .fednb-ui and carried
# by each fragment, so they work in a Panel pane's shadow root and in a notebook output.
CSS = (
    "<style>"
    ".fednb-ui{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;"
    "font-size:13px;line-height:1.45;color:#1f2328;max-width:1080px}"
    ".fednb-ui .fednb-card{border:1px solid #d0d7de;border-radius:8px;background:#fff;"
    "margin:10px 0;padding:10px 14px}"
    ".fednb-ui .fednb-card>h4{margin:0 0 8px;font-size:12px;font-weight:600;letter-spacing:.04em;"
    "text-transform:uppercase;color:#57606a}"
    ".fednb-ui table.fednb-table{border-collapse:collapse;margin:2px 0 6px;font-size:inherit}"
    ".fednb-ui table.fednb-table caption{text-align:left;font-weight:600;padding:4px 0}"
    ".fednb-ui .fednb-table th,.fednb-ui .fednb-table td{padding:3px 10px;text-align:left;"
    "vertical-align:top;border-bottom:1px solid #d8dee4}"
    ".fednb-ui .fednb-table thead th{background:#f6f8fa;color:#57606a;font-weight:600}"
    ".fednb-ui .fednb-kv th{color:#57606a;font-weight:600;white-space:nowrap;width:1%}"
    ".fednb-ui .fednb-kv td{overflow-wrap:anywhere}"
    f".fednb-ui .fednb-mono,.fednb-ui .fednb-numbers td{{font-family:{_MONO};font-size:12px}}"
    ".fednb-ui .fednb-numbers td{text-align:right}"
    ".fednb-ui .fednb-muted{color:#57606a}"
    ".fednb-ui .fednb-decision{border:1px solid;border-left-width:6px;border-radius:8px;"
    "padding:10px 16px;margin:8px 0}"
    ".fednb-ui .fednb-tone-raw{border-color:#d4a72c;background:#fff8c5}"
    ".fednb-ui .fednb-tone-dp{border-color:#54aeff;background:#ddf4ff}"
    ".fednb-ui .fednb-tone-danger{border-color:#ff8182;background:#ffebe9}"
    ".fednb-ui .fednb-tone-ok{border-color:#4ac26b;background:#dafbe1}"
    ".fednb-ui .fednb-headline{font-size:16px;font-weight:600;margin:0 0 6px}"
    ".fednb-ui .fednb-facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:4px 0}"
    ".fednb-ui .fednb-facts>dt{color:#3d444d;font-weight:600}.fednb-ui .fednb-facts>dd{margin:0}"
    ".fednb-ui .fednb-badge{display:inline-block;padding:0 8px;border-radius:999px;font-size:11px;"
    "font-weight:600;border:1px solid;vertical-align:1px;margin-right:6px;background:#fff}"
    ".fednb-ui .fednb-badge.fednb-tone-raw{color:#7d4e00}"
    ".fednb-ui .fednb-badge.fednb-tone-dp{color:#0550ae}"
    ".fednb-ui .fednb-badge.fednb-tone-danger{color:#a40e26}"
    ".fednb-ui .fednb-badge.fednb-tone-ok{color:#116329}"
    ".fednb-ui .fednb-bar{width:340px;max-width:100%;height:10px;background:#eaeef2;border-radius:5px;"
    "display:flex;overflow:hidden;margin:3px 0 6px}"
    ".fednb-ui .fednb-bar>span{display:block;height:100%}"
    "</style>"
)
TONE = {"dp": "fednb-tone-dp", "raw": "fednb-tone-raw", "danger": "fednb-tone-danger", "ok": "fednb-tone-ok"}


def esc(value: Any) -> str:
    """``value`` as HTML text: quotes too, so it is safe in attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def badge(text: str, tone: str) -> str:
    """A small pill (``tone``: dp, raw, danger, ok); ``text`` is escaped."""
    return f"<span class='fednb-badge {TONE[tone]}'>{esc(text)}</span>"


def card(title: str, body: str, cls: str = "") -> str:
    """A titled box around ``body`` (HTML already made safe); the title is escaped."""
    return f"<section class='fednb-card {cls}'><h4>{esc(title)}</h4>{body}</section>"


def facts_html(items: Sequence[tuple[str, str]]) -> str:
    """Label and value pairs as a definition list; the values are HTML already made safe."""
    return "<dl class='fednb-facts'>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def code_html(text: str, language: str = "python") -> str:
    """Source (or a unified diff, ``language="diff"``) highlighted by Pygments when it is
    installed, else escaped into ``<pre>``. Pygments escapes every token it emits."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import DiffLexer, PythonLexer
    except ImportError:
        return f'<pre style="{PRE_STYLE}">{esc(text)}</pre>'
    lexer = DiffLexer() if language == "diff" else PythonLexer()
    body = highlight(text, lexer, HtmlFormatter(noclasses=True, nobackground=True))
    return f'<div class="fednb-code" style="{PRE_STYLE}">{body}</div>'


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "",
               cls: str = "") -> str:
    """A plain table; every cell escaped (``cls``: more classes, e.g. ``fednb-numbers``)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f"<table class='fednb-table {cls}'>{cap}<thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def kv_table(items: Mapping[str, Any], caption: str = "") -> str:
    """Two columns, a name and its value; every cell escaped."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items.items())
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table class='fednb-table fednb-kv'>{cap}<tbody>{body}</tbody></table>"


def _span(fraction: float, colour: str, title: str, extra: str = "") -> str:
    return (f"<span style='width:{100 * fraction:.1f}%;background:{colour};{extra}' "
            f"title='{esc(title)}'></span>") if fraction > 0 else ""


def meter_html(label: str, spent: float, total: float | None, reserved: float = 0.0,
               projected: float = 0.0) -> str:
    """One bar: spent (solid), reserved (grey) and ``projected`` (striped: what a request
    under review would add) out of ``total`` epsilon (None: no cap)."""
    held = f", {reserved:.3g} reserved" if reserved else ""
    if total is None or total <= 0:
        more = f"; this request would add {projected:.3g}" if projected else ""
        return f"<div class='fednb-meter'>{esc(label)}: ε {spent:.3g} spent{held} (no cap){more}</div>"
    left = max(0.0, total - spent - reserved)
    used = max(0.0, min(1.0, spent / total))
    rsv = max(0.0, min(1.0 - used, reserved / total))
    proj = max(0.0, min(1.0 - used - rsv, projected / total))
    colour = "#1a7f37" if used < 0.5 else "#bf8700" if used < 0.9 else "#cf222e"
    text = f"{esc(label)}: ε {spent:.3g} of {total:.3g} spent{held}, {left:.3g} left"
    if projected:
        after = left - projected
        text += (f"; <b>this request would take {projected:.3g}</b>, leaving {after:.3g}" if after >= 0 else
                 f"; <b class='fednb-over' style='color:#a40e26'>this request would take {projected:.3g}, "
                 f"{-after:.3g} more than is left</b>")
    stripes = "background-image:repeating-linear-gradient(45deg,#fff6 0 3px,transparent 3px 6px)"
    return (
        f"<div class='fednb-meter'><div>{text}</div><div class='fednb-bar' role='img' "
        f"aria-label='{esc(label)}: {100 * (used + rsv + proj):.0f}% of the budget'>"
        f"{_span(used, colour, 'spent')}{_span(rsv, '#8c959f', 'reserved')}"
        f"{_span(proj, '#0969da' if projected <= left else '#cf222e', 'this request', stripes)}</div></div>"
    )


def svg_lines(
    series: Mapping[str, Sequence[float]], title: str = "", width: int = 360, height: int = 160
) -> str:
    """A small line chart (no script) of ``series`` (name -> values per round); NaN gaps."""
    import math

    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    n = max((len(s) for s in series.values()), default=1)
    pad = 28

    def xy(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * (i / max(1, n - 1))
        y = height - pad - (height - 2 * pad) * ((v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"class='fednb-chart' style='font: 10px sans-serif'>",
        f"<text x='{pad}' y='12'>{esc(title)}</text>",
        f"<text x='2' y='{pad}'>{hi:.3g}</text><text x='2' y='{height - pad}'>{lo:.3g}</text>",
        f"<text x='{width - pad - 40}' y='{height - 6}'>round {n - 1}</text>",
    ]
    for k, (name, s) in enumerate(series.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        pts = " ".join(xy(i, v) for i, v in enumerate(s) if v is not None and math.isfinite(v))
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{pts}'/>")
        parts.append(f"<text x='{width - pad + 2 - 60}' y='{24 + 11 * k}' fill='{colour}'>{esc(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)
