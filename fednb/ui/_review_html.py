"""The review of a held result (:mod:`fednb.client.review`) as HTML, for the Inbox widget
and the Panel console: the decision and its consequences first (what leaves, to whom,
from which dataset, at what epsilon, each released array's shape and summary and whether
it copies private values), then the values (small arrays in full, large ones summarised
with a histogram), the metrics and the change since the previous release. No script;
every string from the request goes through ``esc``. The lab extension draws the same
review with the same words and colours (``labextension/src/review.ts``).
"""

from __future__ import annotations

from typing import Any

from fednb.client.html import CSS, TONE, badge, card, esc, facts_html
from fednb.client.review import Review, epsilon_text, fmt, nearest_text, params_text, released_text

__all__ = ["decision_html", "histogram_svg", "review_body_html", "review_html"]


def histogram_svg(hist: dict[str, Any], width: int = 320, height: int = 90) -> str:
    """Bars of a histogram (``{"edges", "counts"}``), its range under them; no script."""
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    bar_w = (width - 8) / len(counts)
    plot_h = height - 18
    bars = "".join(
        f"<rect x='{4 + i * bar_w:.1f}' y='{plot_h - plot_h * c / top:.1f}' width='{max(bar_w - 1, 1):.1f}' "
        f"height='{plot_h * c / top:.1f}' fill='#0969da'><title>{esc(fmt(edges[i]))} to "
        f"{esc(fmt(edges[i + 1]))}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' class='fednb-histogram' width='{width}' height='{height}' "
        f"role='img' aria-label='histogram of {len(counts)} bins from {esc(fmt(edges[0]))} to "
        f"{esc(fmt(edges[-1]))}' style='font:11px sans-serif;fill:#57606a'>{bars}"
        f"<line x1='4' y1='{plot_h}' x2='{width - 4}' y2='{plot_h}' stroke='#8c959f'/>"
        f"<text x='4' y='{height - 4}'>{esc(fmt(edges[0]))}</text>"
        f"<text x='{width - 4}' y='{height - 4}' text-anchor='end'>{esc(fmt(edges[-1]))}</text></svg>"
    )


def _row(cells: list[str], head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{esc(c)}</{tag}>" for c in cells) + "</tr>"


def _table(rows: str, cls: str = "") -> str:
    return f"<table class='fednb-table {cls}'>{rows}</table>"


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
        return f"<code class='fednb-values fednb-mono'>{esc(_nested(v))}</code>"
    return _table(rows, "fednb-values fednb-numbers")


_STATS = (("min", "min"), ("max", "max"), ("mean", "mean"), ("std", "std"), ("NaN", "nan"), ("Inf", "inf"))


def _summary_html(t: dict[str, Any]) -> str:
    s = t["summary"]
    table = _table(_row([k for k, _ in _STATS], head=True) + _row([fmt(s[k]) for _, k in _STATS]),
                   "fednb-summary fednb-numbers")
    plot = histogram_svg(s["histogram"]) if s["histogram"] else "<i>no finite values</i>"
    return f"<div style='display:flex;gap:20px;align-items:flex-end;flex-wrap:wrap'>{table}{plot}</div>"


def _checks(review: Review) -> dict[str, dict[str, Any]]:
    report = review.get("nearest")
    return {} if report is None else {t["name"]: t for t in report["tensors"]}


def _check_html(check: dict[str, Any] | None, short: bool = False) -> str:
    """A released array's memorisation check: a badge, and (unless ``short``) its line."""
    if check is None:
        return ""
    tone = "danger" if check["rare_matches"] else "raw" if check["matches"] else "ok"
    label = {"danger": "copies private values", "raw": "common private values",
             "ok": "no private values"}[tone]
    text = "" if short else f"<span class='fednb-muted'>{esc(nearest_text(check))}</span>"
    return f"<div class='fednb-check' data-check='{tone}'>{badge(label, tone)}{text}</div>"


def _shape(t: dict[str, Any]) -> str:
    return "(" + ", ".join(map(str, t["shape"])) + ")"


def _tensor_html(t: dict[str, Any], check: dict[str, Any] | None) -> str:
    head = (f"<div><b class='fednb-mono'>{esc(t['name'])}</b> <span class='fednb-muted'>{esc(t['dtype'])} "
            f"{esc(_shape(t))}, {t['size']} value{'s' * (t['size'] != 1)}</span></div>")
    body = _values_html(t) if t["values"] is not None else _summary_html(t)
    return (f"<div class='fednb-tensor' data-tensor='{esc(t['name'])}' style='margin:8px 0 12px'>"
            f"{head}{_check_html(check)}{body}</div>")


def _short(t: dict[str, Any]) -> str:
    """A released array in one cell: its values when few, else its range and mean."""
    if t["values"] is not None:
        text = _nested(t["values"])
        return text if len(text) <= 48 else text[:47] + "…"
    s = t["summary"]
    return f"{fmt(s['min'])} … {fmt(s['max'])}, mean {fmt(s['mean'])}"


def _released_table(review: Review) -> str:
    checks = _checks(review)
    rows = "".join(
        f"<tr><td class='fednb-mono'>{esc(t['name'])}</td><td>{esc(t['dtype'])} {esc(_shape(t))}</td>"
        f"<td class='fednb-mono'>{esc(_short(t))}</td>"
        + (f"<td>{_check_html(checks.get(t['name']), short=True)}</td>" if checks else "") + "</tr>"
        for t in review["tensors"])
    head = "<th>released</th><th>dtype and shape</th><th>values</th>" + (
        "<th>private values</th>" if checks else "")
    return (f"<table class='fednb-table fednb-released'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
            "</table>") if rows else ""


def _check_fact(review: Review) -> tuple[str, str]:
    report = review.get("nearest")
    if report is None:
        return "Private values", "<span class='fednb-muted'>not checked by this domain</span>"
    if report["warning"]:
        names = ", ".join(t["name"] for t in report["tensors"] if t["rare_matches"])
        return "Private values", (badge("warning", "danger") + f"<b>{esc(names)}</b> hold values equal to "
                                  "private values few entries share: the code may copy patients' data")
    return "Private values", badge("checked", "ok") + "no released value equals a rare private value"


def decision_html(review: Review) -> str:
    """The decision and its consequences: what leaves, to whom, from where, at what ε."""
    run, req = review["run"], review["request"]
    dp = run["epsilon"] is not None
    warn = bool((review.get("nearest") or {}).get("warning"))
    tone = "danger" if warn else "dp" if dp else "raw"
    made = (f"<span class='fednb-mono'>{esc(req['function_name'])}</span> ({esc(req['kind'])}) · "
            f"parameters {esc(params_text(run['params']))} · sha256 "
            f"<span class='fednb-mono'>{esc(req['code_hash'][:16])}…</span> · run {esc(run['id'])}")
    facts = [
        ("Dataset", f"{esc(run['dataset'])} ({esc(fmt(run['num_examples']))} examples)"),
        ("ε charged", badge("DP" if dp else "no DP", tone="dp" if dp else "raw")
         + esc(epsilon_text(run["epsilon"]))),
        ("Produced by", made),
        _check_fact(review),
    ]
    return (
        f"<div class='fednb-ui'>{CSS}<div class='fednb-decision {TONE[tone]}'>"
        f"<div class='fednb-headline'>Releasing sends <span>{esc(released_text(review))}</span></div>"
        f"{facts_html(facts)}{_released_table(review)}</div></div>"
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
    return (f"<div class='fednb-diff'><div class='fednb-muted'>against run {esc(prev['id'])} "
            f"(parameters {esc(params_text(prev['params']))}), released before</div>"
            f"{_table(''.join(rows))}</div>")


def review_html(review: Review) -> str:
    """The whole review as one HTML block (class ``fednb-result-review``)."""
    return (f"<div class='fednb-ui fednb-result-review'>{decision_html(review)}"
            f"{review_body_html(review)}</div>")


def review_body_html(review: Review) -> str:
    """The values, metrics and the change since the previous release (no decision line)."""
    metrics, checks = review["metrics"], _checks(review)
    metrics_html = (_table(_row(list(metrics), head=True) + _row([fmt(v) for v in metrics.values()]),
                           "fednb-numbers") if metrics else "<i>none</i>")
    tensors = "".join(_tensor_html(t, checks.get(t["name"])) for t in review["tensors"])
    return (
        f"<div class='fednb-ui fednb-review-body'>{CSS}"
        + card("What will be released", (tensors or "<i>no tensors</i>")
               + "<h5 style='margin:8px 0 2px;font-size:13px'>Metrics</h5>" + metrics_html)
        + card("Change since the previous release", _diff_html(review))
        + "</div>"
    )
