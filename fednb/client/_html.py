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
    "CSS",
    "badge",
    "budget_html",
    "card",
    "card_html",
    "code_html",
    "esc",
    "facts_html",
    "kv_table",
    "meter_html",
    "request_decision_html",
    "request_html",
    "run_html",
    "spec_rows",
    "svg_lines",
    "table_html",
]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, var(--jp-code-font-family, monospace)"
_STYLE = (
    f"font-family: {_MONO}; font-size: 12px; line-height: 1.45; "
    "max-height: 28em; overflow: auto; border: 1px solid #d0d7de; border-radius: 6px; "
    "padding: 6px 8px; background: #f6f8fa; margin: 0"
)

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


def _bound(kind: str, value: float | None) -> float | int | None:
    """A parameter's bound as the owner approved it: 29, not 29.0, for an integer."""
    return int(value) if kind == "int" and value is not None else value


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
        return f'<pre style="{_STYLE}">{esc(text)}</pre>'
    lexer = DiffLexer() if language == "diff" else PythonLexer()
    body = highlight(text, lexer, HtmlFormatter(noclasses=True, nobackground=True))
    return f'<div class="fednb-code" style="{_STYLE}">{body}</div>'


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


def _eps(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def spec_rows(info: RequestInfo) -> tuple[list[str], list[list[str]], dict[str, str]] | None:
    """A ``query`` or ``dp-sgd`` request's spec (its source is JSON) as a table: header,
    rows and the settings beside it; None for code or a spec that does not parse."""
    from pydantic import ValidationError

    from fednb.protocol import DPSGDSpec, QuerySpec

    try:
        if info.kind == "query":
            q = QuerySpec.model_validate_json(info.source)
            rows = [[str(i), a.op, a.variable or "(all records)",
                     f"{a.bins} bins" if a.bins else ", ".join(f"{x:g}" for x in a.quantiles or []),
                     f"{i}:{a.op}:{a.variable or ''}"] for i, a in enumerate(q.aggregations)]
            return (["#", "aggregation", "variable", "bins / quantiles", "released as"], rows,
                    {"noise multiplier": f"{q.noise_multiplier:g}", "quantile ε": f"{q.quantile_epsilon:g}"})
        if info.kind == "dp-sgd":
            d = DPSGDSpec.model_validate_json(info.source)
            rows = [[str(i), layer.type, ", ".join(f"{k}={v}" for k, v in layer.model_dump().items()
                                                   if k != "type")] for i, layer in enumerate(d.layers)]
            keep = ("loss", "features", "target", "epochs", "batch_size", "lr", "optimizer",
                    "max_grad_norm", "noise_multiplier")
            return ["#", "layer", "settings"], rows, {k: str(getattr(d, k)) for k in keep}
    except ValidationError:
        return None
    return _generic_spec(info.source) if info.kind != "update" else None


def _generic_spec(source: str) -> tuple[list[str], list[list[str]], dict[str, str]] | None:
    """Any other spec sent as a JSON object (e.g. ``stats``): one row per field."""
    import json

    try:
        spec = json.loads(source)
    except ValueError:
        return None
    if not isinstance(spec, dict):
        return None
    rows = [[str(k), v if isinstance(v, str) else json.dumps(v, separators=(", ", ": "))]
            for k, v in spec.items()]
    return ["field", "value"], rows, {}


def _releases(info: RequestInfo) -> str:
    """What each run hands back, as the request declares it."""
    parts = [f"{esc(k)} <span class='fednb-muted'>{esc(t.dtype)} {esc(tuple(t.shape))}</span>"
             for k, t in (info.weights or {}).items()]
    if info.kind == "query" and (spec := spec_rows(info)) is not None:
        parts = [f"{esc(r[4])} <span class='fednb-muted'>({esc(r[1])})</span>" for r in spec[1]]
    parts += [f"metric {esc(k)} <span class='fednb-muted'>in [{lo:g}, {hi:g}]</span>"
              for k, (lo, hi) in info.metrics.items()]
    none = "<span class='fednb-muted'>what the function returns (no shapes declared)</span>"
    return " · ".join(parts) or none


def request_decision_html(info: RequestInfo) -> str:
    """The decision and its consequences: who runs what on which data, how often, what each
    run releases, and the privacy cost against the budgets left."""
    head = (f"{esc(info.scientist)} asks to run <span class='fednb-mono'>{esc(info.function_name)}</span> "
            f"({esc(info.kind)}) on {esc(', '.join(info.datasets))}, {_plural(info.runs, 'run')}")
    tones = {"pending": "raw", "approved": "ok", "denied": "danger"}
    status = badge(info.status, tones.get(info.status, "dp"))
    facts = [("Each run releases", _releases(info))]
    if info.projected_epsilon is None:
        tone = "raw"
        facts.append(("Privacy", badge("no DP", "raw") + "none: results are the code's exact output; "
                      "every result is held for your review before it leaves"))
    else:
        tone = "dp"
        delta = f", δ {info.delta:.2g}" if info.delta else ""
        facts.append(("Privacy cost", badge("DP", "dp") + f"ε {_eps(info.epsilon_per_run)} per run, "
                      f"<b>ε {_eps(info.projected_epsilon)} for {_plural(info.runs, 'run')}</b>{delta}"))
    b = info.budget
    if b is not None:
        proj = info.projected_epsilon or 0.0
        if b.epsilon_budget is not None and b.epsilon_remaining is not None and proj > b.epsilon_remaining:
            tone = "danger"
        facts.append(("Budget", meter_html(f"{b.scientist} on {b.dataset}", b.epsilon_spent, b.epsilon_budget,
                                           b.epsilon_reserved, proj)
                      + meter_html(f"all scientists on {b.dataset}", b.dataset_spent, b.dataset_cap,
                                   projected=proj)))
    if info.previous_hash:
        facts.append(("Code", "a new version of an approved function: read the diff below"))
    return (f"<div class='fednb-decision fednb-request-decision {TONE[tone]}'>"
            f"<div class='fednb-headline'>{status}{head}</div>{facts_html(facts)}</div>")


def request_html(info: RequestInfo, *, source: bool = True) -> str:
    """A request as its reviewer needs it: the decision and its consequences first (the
    privacy cost against the budgets left, what each run releases), then who and what, the
    schemas, the code or the spec as a table, and the diff. All of it escaped."""
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
    parts = [f"<div class='fednb-request'><div class='fednb-ui'>{CSS}{request_decision_html(info)}",
             card("Request", kv_table(facts))]
    if info.params:
        parts.append(card("Parameters the scientist may set", table_html(
            ("parameter", "type", "low", "high", "choices"),
            [(k, p.type, _bound(p.type, p.low), _bound(p.type, p.high), ", ".join(p.choices or []))
             for k, p in info.params.items()])))
    outputs = ""
    if info.weights:
        outputs += table_html(("tensor", "shape", "dtype"),
                              [(k, tuple(t.shape), t.dtype) for k, t in info.weights.items()],
                              "Weights in and out")
    if info.metrics:
        outputs += table_html(("metric", "low", "high"),
                              [(k, lo, hi) for k, (lo, hi) in info.metrics.items()], "Metrics (clipped)")
    if outputs:
        parts.append(card("What each run returns", outputs))
    spec = spec_rows(info) if source else None
    if spec is not None:
        header, rows, settings = spec
        parts.append(card(f"The {info.kind} spec (what runs: no code)",
                          table_html(header, rows) + (kv_table(settings) if settings else ""), "fednb-spec"))
    elif source:
        parts.append(card("Source", code_html(info.source)))
    if source and info.diff:
        parts.append(card("Diff against the last approved version", code_html(info.diff, "diff")))
    parts.append("</div></div>")
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
    log = "" if not info.owner_log else card("Log (owner only)",
                                             f"<pre style='{_STYLE}'>{esc(info.owner_log)}</pre>")
    run = card("Run", kv_table(facts))
    return f"<div class='fednb-run'><div class='fednb-ui'>{CSS}{run}{log}</div></div>"


def budget_html(rows: Sequence[BudgetInfo]) -> str:
    """Per (scientist, dataset) meters, then one per dataset across all scientists."""
    if not rows:
        return "<div class='fednb-budget'>no budgets yet</div>"
    parts = [f"<div class='fednb-budget'><div class='fednb-ui'>{CSS}"
             "<h4 style='margin:4px 0'>Privacy budget</h4>"]
    parts += [
        meter_html(f"{b.scientist} on {b.dataset}", b.epsilon_spent, b.epsilon_budget, b.epsilon_reserved)
        for b in rows
    ]
    per_dataset = {b.dataset: b for b in rows}
    parts += [
        meter_html(f"{d} (all scientists)", b.dataset_spent, b.dataset_cap)
        for d, b in sorted(per_dataset.items())
    ]
    return "".join(parts) + "</div></div>"


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
    return f"<div class='fednb-dataset'><div class='fednb-ui'>{CSS}{head}{variables}{preview}</div></div>"
