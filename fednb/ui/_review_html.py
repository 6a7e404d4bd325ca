"""The review of a held result (:mod:`fednb.client._review`) as HTML, for the Inbox widget
and the Panel console: the decision and its consequences first (what leaves, to whom,
from which dataset, at what epsilon), then the values (small arrays in full, large ones
summarised with a histogram), the metrics, the parameters and the change since the
previous release. No script; every string from the request goes through ``esc``.
"""

from __future__ import annotations

from typing import Any

from fednb.client._html import esc
from fednb.client._review import Review, epsilon_text, fmt, params_text, released_text

__all__ = ["decision_html", "histogram_svg", "review_body_html", "review_html"]

_CELL = "padding:2px 8px;text-align:right;font-family:var(--jp-code-font-family,monospace)"
_HEAD = "padding:2px 8px;text-align:left;color:#555;font-weight:600"
_CARD = "border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;margin:8px 0;background:#fff"


def histogram_svg(hist: dict[str, Any], width: int = 320, height: int = 90) -> str:
    """Bars of a histogram (``{"edges", "counts"}``), its range under them; no script."""
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    bar_w = (width - 8) / len(counts)
    plot_h = height - 18
    bars = "".join(
        f"<rect x='{4 + i * bar_w:.1f}' y='{plot_h - plot_h * c / top:.1f}' width='{max(bar_w - 1, 1):.1f}' "
        f"height='{plot_h * c / top:.1f}' fill='#3b6ea8'><title>{esc(fmt(edges[i]))} to "
        f"{esc(fmt(edges[i + 1]))}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' class='fednb-histogram' width='{width}' height='{height}' "
        f"style='font:10px sans-serif'>{bars}"
        f"<line x1='4' y1='{plot_h}' x2='{width - 4}' y2='{plot_h}' stroke='#999'/>"
        f"<text x='4' y='{height - 4}'>{esc(fmt(edges[0]))}</text>"
        f"<text x='{width - 4}' y='{height - 4}' text-anchor='end'>{esc(fmt(edges[-1]))}</text></svg>"
    )


def _row(cells: list[str], head: bool = False) -> str:
    tag, style = ("th", _HEAD) if head else ("td", _CELL)
    return "<tr>" + "".join(
        f"<{tag} style='{style}{';text-align:left' if i == 0 else ''}'>{esc(c)}</{tag}>"
        for i, c in enumerate(cells)) + "</tr>"


def _nested(v: Any) -> str:
    return "[" + ", ".join(_nested(x) for x in v) + "]" if isinstance(v, list) else fmt(v)


def _values_html(t: dict[str, Any]) -> str:
    v, shape = t["values"], t["shape"]
    if len(shape) == 1:
        rows = _row([str(i) for i in range(len(v))], head=True) + _row([fmt(x) for x in v])
    elif len(shape) == 2:
        rows = _row(["", *map(str, range(shape[1]))], head=True) + "".join(
            _row([str(i), *map(fmt, r)]) for i, r in enumerate(v))
    else:
        return f"<code class='fednb-values'>{esc(_nested(v))}</code>"
    return f"<table class='fednb-values' style='border-collapse:collapse'>{rows}</table>"


def _summary_html(t: dict[str, Any]) -> str:
    s = t["summary"]
    cells = [("min", s["min"]), ("max", s["max"]), ("mean", s["mean"]), ("std", s["std"]),
             ("NaN", s["nan"]), ("Inf", s["inf"])]
    table = ("<table class='fednb-summary' style='border-collapse:collapse'>"
             + _row([k for k, _ in cells], head=True) + _row([fmt(v) for _, v in cells]) + "</table>")
    plot = histogram_svg(s["histogram"]) if s["histogram"] else "<i>no finite values</i>"
    return f"<div style='display:flex;gap:16px;align-items:flex-end;flex-wrap:wrap'>{table}{plot}</div>"


def _tensor_html(t: dict[str, Any]) -> str:
    head = (f"<div><b>{esc(t['name'])}</b> <span style='color:#555'>{esc(t['dtype'])} "
            f"{esc(tuple(t['shape']))}, {t['size']} value{'s' * (t['size'] != 1)}</span></div>")
    body = _values_html(t) if t["values"] is not None else _summary_html(t)
    return f"<div class='fednb-tensor' data-tensor='{esc(t['name'])}' style='margin:6px 0'>{head}{body}</div>"


def decision_html(review: Review) -> str:
    """The decision and its consequences: what leaves, to whom, from where, at what ε."""
    run, req = review["run"], review["request"]
    dp = run["epsilon"] is not None
    colour, tint = ("#1f6feb", "#eef5ff") if dp else ("#b45309", "#fff7ed")
    return (
        f"<div class='fednb-decision' style='border-left:5px solid {colour};background:{tint};"
        "padding:8px 12px;border-radius:4px'>"
        f"<div style='font-size:15px'><b>Releasing sends</b> {esc(released_text(review))}</div>"
        f"<div>from dataset <b>{esc(run['dataset'])}</b> ({esc(fmt(run['num_examples']))} examples) · "
        f"ε charged: <b>{esc(epsilon_text(run['epsilon']))}</b></div>"
        f"<div style='color:#555'>{esc(req['function_name'])} ({esc(req['kind'])}) · parameters "
        f"{esc(params_text(run['params']))} · sha256 {esc(req['code_hash'][:16])}… · run {esc(run['id'])}"
        "</div></div>"
    )


def _diff_html(review: Review) -> str:
    diff, prev = review["diff"], review["previous"]
    if diff is None:
        return "<div class='fednb-diff'><i>No earlier released run of this request to compare with.</i></div>"
    rows = [_row(["", "change", "max |difference|", "changed values"], head=True)]
    for d in diff["tensors"]:
        changed = "; ".join(f"[{', '.join(map(str, c['index']))}] {fmt(c['before'])} → {fmt(c['after'])}"
                            for c in (d["changed"] or []))
        rows.append(_row([d["name"], d["status"], fmt(d["max_abs_diff"]), changed]))
    rows += [_row([f"metric {m['name']}", "changed", "", f"{fmt(m['before'])} → {fmt(m['after'])}"])
             for m in diff["metrics"]]
    return (f"<div class='fednb-diff'><div style='color:#555'>against run {esc(prev['id'])} "
            f"(parameters {esc(params_text(prev['params']))}), released before</div>"
            f"<table style='border-collapse:collapse'>{''.join(rows)}</table></div>")


def review_html(review: Review) -> str:
    """The whole review as one HTML block (class ``fednb-result-review``)."""
    return (f"<div class='fednb-result-review' style='max-width:980px'>{decision_html(review)}"
            f"{review_body_html(review)}</div>")


def review_body_html(review: Review) -> str:
    """The values, metrics and the change since the previous release (no decision line)."""
    metrics = review["metrics"]
    metrics_html = ("<table style='border-collapse:collapse'>" + _row(list(metrics), head=True)
                    + _row([fmt(v) for v in metrics.values()]) + "</table>") if metrics else "<i>none</i>"
    tensors = "".join(map(_tensor_html, review["tensors"])) or "<i>no tensors</i>"
    return (
        f"<div class='fednb-review-body' style='max-width:980px'><div style='{_CARD}'>"
        f"<h4 style='margin:2px 0'>What will be released</h4>{tensors}"
        f"<div style='margin-top:6px'><b>Metrics</b> {metrics_html}</div></div>"
        f"<div style='{_CARD}'><h4 style='margin:2px 0'>Change since the previous release</h4>"
        f"{_diff_html(review)}</div></div>"
    )
