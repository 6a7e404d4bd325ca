"""The HTML reprs of requests, runs, budgets and dataset cards, for notebooks and the UI.

Everything a request carries is untrusted: the reprs are built from the escaping blocks
of :mod:`fednb.client.html` and never emit script, event handlers or links built from
request text. They are public as ``fednb.client.request_html`` and its neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fednb.client.html import (
    CSS,
    PRE_STYLE,
    TONE,
    badge,
    card,
    code_html,
    esc,
    facts_html,
    kv_table,
    meter_html,
    table_html,
)
from fednb.protocol import BudgetInfo, DatasetCard, RequestInfo, RunInfo

__all__ = [
    "budget_html",
    "card_html",
    "request_decision_html",
    "request_html",
    "run_html",
    "spec_rows",
]


def _bound(kind: str, value: float | None) -> float | int | None:
    """A parameter's bound as the owner approved it: 29, not 29.0, for an integer."""
    return int(value) if kind == "int" and value is not None else value


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
                                             f"<pre style='{PRE_STYLE}'>{esc(info.owner_log)}</pre>")
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
