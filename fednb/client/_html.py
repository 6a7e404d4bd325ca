"""Safe HTML for notebook reprs and the UI: everything a request carries is untrusted.

Every string that reaches HTML goes through :func:`esc` (or through Pygments, whose
formatter escapes each token), so a request whose source holds ``<script>`` shows as
text. Nothing here emits script, event handlers or links built from request text.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fednb.protocol import BudgetInfo, DatasetCard, RequestInfo, RunInfo

__all__ = [
    "budget_html",
    "card_html",
    "code_html",
    "esc",
    "kv_table",
    "meter_html",
    "request_html",
    "run_html",
    "svg_lines",
    "table_html",
]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_STYLE = (
    "font-family: var(--jp-code-font-family, monospace); font-size: 12px; "
    "max-height: 28em; overflow: auto; border: 1px solid #ddd; padding: 4px"
)



def _bound(kind: str, value: float | None) -> float | int | None:
    """A parameter's bound as the owner approved it: 29, not 29.0, for an integer."""
    return int(value) if kind == "int" and value is not None else value

def esc(value: Any) -> str:
    """``value`` as HTML text: quotes too, so it is safe in attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def code_html(text: str, language: str = "python") -> str:
    """Source (or a unified diff, ``language="diff"``) highlighted by Pygments when it is
    installed, else escaped into ``<pre>``. Pygments escapes every token it emits."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import DiffLexer, PythonLexer
    except ImportError:
        return f'<pre style="{_STYLE}">{esc(text)}</pre>'
    lexer = DiffLexer() if language == "diff" else PythonLexer()
    body = highlight(text, lexer, HtmlFormatter(noclasses=True, nobackground=True))
    return f'<div class="fednb-code" style="{_STYLE}">{body}</div>'


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """A plain table; every cell escaped."""
    head = "".join(f"<th style='text-align:left'>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption style='text-align:left'><b>{esc(caption)}</b></caption>" if caption else ""
    return f"<table class='fednb-table'>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv_table(items: Mapping[str, Any], caption: str = "") -> str:
    """Two columns, a name and its value; every cell escaped."""
    body = "".join(
        f"<tr><th style='text-align:left'>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items.items()
    )
    cap = f"<caption style='text-align:left'><b>{esc(caption)}</b></caption>" if caption else ""
    return f"<table class='fednb-table'>{cap}<tbody>{body}</tbody></table>"


def meter_html(label: str, spent: float, total: float | None, reserved: float = 0.0) -> str:
    """One horizontal bar: spent (dark), reserved (light) out of ``total`` (None: no cap)."""
    if total is None or total <= 0:
        return (
            f"<div class='fednb-meter'>{esc(label)}: ε {spent:.3g} spent"
            f"{f', {reserved:.3g} reserved' if reserved else ''} (no cap)</div>"
        )
    used = max(0.0, min(1.0, spent / total))
    held = max(0.0, min(1.0 - used, reserved / total))
    colour = "#2ca02c" if used < 0.5 else "#ff7f0e" if used < 0.9 else "#d62728"
    return (
        f"<div class='fednb-meter' style='margin:2px 0'>"
        f"<div>{esc(label)}: ε {spent:.3g} of {total:.3g} spent"
        f"{f', {reserved:.3g} reserved' if reserved else ''}, {max(0.0, total - spent - reserved):.3g} left"
        f"</div><div style='width:320px;height:10px;background:#eee;display:flex'>"
        f"<div style='width:{100 * used:.1f}%;background:{colour}'></div>"
        f"<div style='width:{100 * held:.1f}%;background:#bbb'></div></div></div>"
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


def _eps(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def request_html(info: RequestInfo, *, source: bool = True) -> str:
    """A request as its reviewer needs it: who, what, the code and its diff, the schemas and
    the privacy cost against the remaining budget. All of it escaped."""
    facts: dict[str, Any] = {
        "request": info.id,
        "requester": info.scientist,
        "function": f"{info.function_name} ({info.kind})",
        "datasets": ", ".join(info.datasets),
        "status": info.status,
        "runs": f"{info.runs_used} used of {info.runs}",
        "code hash (SHA-256)": info.code_hash,
        "previous approved hash": info.previous_hash or "none: first version",
    }
    if info.description:
        facts["description"] = info.description
    if info.review_reason:
        facts["review reason"] = info.review_reason
    if info.release:
        facts["release"] = info.release
    if info.dp is not None:
        facts["client-level DP"] = f"clip {info.dp.clip}, noise multiplier {info.dp.noise_multiplier}"
    elif info.kind == "update":
        facts["client-level DP"] = "none: every result held for manual release"
    if info.epsilon_per_run is not None:
        facts["ε per run"] = (
            f"{_eps(info.epsilon_per_run)} (δ {info.delta:.2g})" if info.delta else _eps(info.epsilon_per_run)
        )
    if info.projected_epsilon is not None:
        facts["projected ε (all runs)"] = _eps(info.projected_epsilon)
    parts = [f"<div class='fednb-request'>{kv_table(facts, 'Request')}"]
    if info.budget is not None:
        b = info.budget
        parts.append(
            meter_html(f"{b.scientist} on {b.dataset}", b.epsilon_spent, b.epsilon_budget, b.epsilon_reserved)
        )
        parts.append(meter_html(f"all scientists on {b.dataset}", b.dataset_spent, b.dataset_cap))
    if info.params:
        parts.append(
            table_html(
                ("parameter", "type", "low", "high", "choices"),
                [(k, p.type, _bound(p.type, p.low), _bound(p.type, p.high), p.choices)
                 for k, p in info.params.items()],
                "Parameters the scientist may set",
            )
        )
    if info.weights:
        parts.append(
            table_html(
                ("tensor", "shape", "dtype"),
                [(k, tuple(t.shape), t.dtype) for k, t in info.weights.items()],
                "Weights in and out",
            )
        )
    if info.metrics:
        parts.append(
            table_html(
                ("metric", "low", "high"),
                [(k, lo, hi) for k, (lo, hi) in info.metrics.items()],
                "Metrics (clipped)",
            )
        )
    if source:
        parts.append("<div><b>Source</b></div>" + code_html(info.source))
        if info.diff:
            parts.append(
                "<div><b>Diff against the last approved version</b></div>" + code_html(info.diff, "diff")
            )
    parts.append("</div>")
    return "".join(parts)


def run_html(info: RunInfo) -> str:
    facts: dict[str, Any] = {
        "run": info.id,
        "request": info.request_id,
        "scientist": info.scientist,
        "dataset": info.dataset,
        "status": info.status,
        "reason": info.reason or "",
        "release": info.release_state or "",
        "examples": info.num_examples,
        "ε": _eps(info.epsilon),
        "backend": info.backend or "",  # owner only: the device the run used (cpu, cuda:NAME)
        "created": info.created,
        "finished": info.finished,
    }
    if info.params:
        facts["params"] = info.params
    html_ = kv_table(facts, "Run")
    if info.owner_log:
        html_ += "<div><b>Log (owner only)</b></div>" + f'<pre style="{_STYLE}">{esc(info.owner_log)}</pre>'
    return html_


def budget_html(rows: Sequence[BudgetInfo]) -> str:
    """Per (scientist, dataset) meters, then one per dataset across all scientists."""
    if not rows:
        return "<div class='fednb-budget'>no budgets yet</div>"
    parts = ["<div class='fednb-budget'><b>Privacy budget</b>"]
    parts += [
        meter_html(f"{b.scientist} on {b.dataset}", b.epsilon_spent, b.epsilon_budget, b.epsilon_reserved)
        for b in rows
    ]
    per_dataset = {b.dataset: b for b in rows}
    parts += [
        meter_html(f"{d} (all scientists)", b.dataset_spent, b.dataset_cap)
        for d, b in sorted(per_dataset.items())
    ]
    return "".join(parts) + "</div>"


def card_html(card: DatasetCard, mock_rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """A dataset card, with a few rows of its mock twin when given."""
    head = kv_table(
        {
            "dataset": card.name,
            "description": card.description,
            "source": card.source,
            "examples": f"{card.num_examples} {card.example_dim}s",
            "dims": ", ".join(f"{k}={v}" for k, v in card.dims.items()),
            "mock": f"{card.mock.method}: {card.mock.note}",
        },
        "Dataset",
    )
    variables = table_html(
        ("variable", "dims", "dtype", "units", "bounds", "description"),
        [
            (k, ", ".join(v.dims), v.dtype, v.units or "", v.bounds or "", v.description)
            for k, v in card.variables.items()
        ],
        "Variables",
    )
    preview = ""
    if mock_rows:
        cols = list(mock_rows[0])
        preview = table_html(
            cols, [[r[c] for c in cols] for r in mock_rows], "Mock preview (not patient data)"
        )
    return f"<div class='fednb-dataset'>{head}{variables}{preview}</div>"
