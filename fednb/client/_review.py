"""The review of a held result: what the owner reads before it leaves the hospital.

A pure model (no HTTP, no browser) of one result, as :func:`build_review` makes it from
the decoded result, the request that produced it and the previous released run of the
same request: small arrays (at most :data:`SMALL` values) in full, larger ones summarised
(shape, dtype, min, max, mean, a histogram of :data:`BINS` bins, NaN and Inf counts),
the metrics, the run's parameters, and the difference from the previous release. The
review is plain JSON (non-finite numbers as the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"``, which ``JSON.parse`` accepts as text), so the lab server extension
sends it as it is; every view (Inbox, Panel console, JupyterLab, ``fednb domain results
show``) draws the same review.

Everything in it that came from the request (names, source, parameters) is untrusted
text: views escape it.

Examples
--------
>>> import numpy as np
>>> from fednb.protocol import Update
>>> t = tensor_review("w", np.arange(3.0))
>>> t["values"], t["summary"]["max"]
([0.0, 1.0, 2.0], 2.0)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from fednb.errors import FednbError
from fednb.protocol import RequestInfo, RunInfo, Update, decode_message, decompress

if TYPE_CHECKING:
    from fednb.client._client import DomainClient
    from fednb.client._http import Transport

__all__ = ["BINS", "SMALL", "build_review", "decode_result", "fetch_nearest", "fetch_review",
           "find_previous", "nearest_lines", "nearest_text", "review_lines", "review_of", "tensor_review"]

SMALL = 64
"""Arrays of at most this many values are shown in full."""
BINS = 20
"""Bins of a large array's histogram (over its finite values)."""

Review = dict[str, Any]


def jnum(x: Any) -> Any:
    """One number as JSON: bools and ints as they are, non-finite floats as strings."""
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    f = float(x)
    if math.isfinite(f):
        return f
    return "NaN" if math.isnan(f) else ("Infinity" if f > 0 else "-Infinity")


def _values(a: np.ndarray) -> Any:
    """A small array as nested lists of JSON numbers (a 0-d array: one number)."""
    if a.ndim == 0:
        return jnum(a.item())
    return [_values(a[i]) for i in range(a.shape[0])]


def _as_float(a: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(a):  # never released, but a review must not fail on one
        a = np.abs(a)
    return np.asarray(a, dtype=np.float64)


def summary(a: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """min, max, mean, std over the finite values; NaN and Inf counts; a histogram."""
    f = _as_float(a).ravel()
    finite = f[np.isfinite(f)]
    out: dict[str, Any] = {
        "nan": int(np.isnan(f).sum()),
        "inf": int(np.isinf(f).sum()),
        "finite": int(finite.size),
        "min": None, "max": None, "mean": None, "std": None, "histogram": None,
    }
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        counts, edges = np.histogram(finite, bins=bins, range=(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5))
        whole = np.asarray(a).dtype.kind in "biu"  # an integer's bounds read as integers
        out.update(min=jnum(int(lo) if whole else lo), max=jnum(int(hi) if whole else hi),
                   mean=jnum(finite.mean()), std=jnum(finite.std()),
                   histogram={"edges": [jnum(e) for e in edges], "counts": [int(c) for c in counts]})
    return out


def tensor_review(name: str, a: np.ndarray) -> dict[str, Any]:
    """One tensor: its values when small, else None; its summary (histogram when large)."""
    a = np.asarray(a)
    small = a.size <= SMALL
    s = summary(a)
    if small:
        s["histogram"] = None  # people read a handful of values; a plot is for many
    return {"name": name, "shape": [int(n) for n in a.shape], "dtype": str(a.dtype), "size": int(a.size),
            "values": _values(a) if small else None, "summary": s}


def _same(a: Any, b: Any) -> bool:
    return bool(a == b) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def tensor_diff(name: str, now: np.ndarray | None, before: np.ndarray | None) -> dict[str, Any]:
    """How one tensor moved since the previous release: ``status`` (same, changed, added,
    removed, reshaped), the largest absolute difference, and for small arrays each changed
    value (index, before, after)."""
    out: dict[str, Any] = {"name": name, "status": "changed", "max_abs_diff": None, "changed": None}
    if before is None or now is None:
        out["status"] = "added" if before is None else "removed"
        return out
    if now.shape != before.shape:
        out["status"] = "reshaped"
        out["shapes"] = [list(before.shape), list(now.shape)]
        return out
    x, y = _as_float(now), _as_float(before)
    moved = ~((x == y) | (np.isnan(x) & np.isnan(y)))
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(x - y)[moved]
    # a value that became (or stopped being) NaN moved by an unbounded amount
    out["max_abs_diff"] = jnum(np.where(np.isnan(d), np.inf, d).max()) if d.size else 0.0
    out["status"] = "changed" if d.size else "same"
    if now.size <= SMALL:
        out["changed"] = [{"index": [int(i) for i in idx], "before": jnum(y[tuple(idx)]),
                           "after": jnum(x[tuple(idx)])} for idx in np.argwhere(moved)]
    return out


def _run_facts(run: RunInfo) -> dict[str, Any]:
    return {"id": run.id, "request_id": run.request_id, "scientist": run.scientist, "dataset": run.dataset,
            "status": run.status, "release_state": run.release_state, "params": dict(run.params),
            "num_examples": run.num_examples, "epsilon": run.epsilon,
            "created": run.created.isoformat(),
            "finished": run.finished.isoformat() if run.finished else None}


def _diff(now: Update, before: Update) -> dict[str, Any]:
    names = list(now.weights) + [k for k in before.weights if k not in now.weights]
    metrics = [{"name": k, "before": jnum(before.metrics[k]) if k in before.metrics else None,
                "after": jnum(now.metrics[k]) if k in now.metrics else None}
               for k in list(now.metrics) + [k for k in before.metrics if k not in now.metrics]]
    return {"tensors": [tensor_diff(k, now.weights.get(k), before.weights.get(k)) for k in names],
            "metrics": [m for m in metrics if not _same(m["before"], m["after"])],
            "num_examples": [before.num_examples, now.num_examples]}


def build_review(result: Update, request: RequestInfo, run: RunInfo,
                 previous: tuple[RunInfo, Update] | None = None,
                 nearest: dict[str, Any] | None = None) -> Review:
    """The review of ``run``'s ``result`` (JSON-serialisable).

    Parameters
    ----------
    result
        The decoded result, as the scientist would get it once released.
    request
        The request the run belongs to (function, source, code hash, release mode).
    run
        The run (its parameters, dataset, epsilon charged: None without DP).
    previous
        The previous released run of the same request and its result, or None.
    nearest
        The domain's memorisation check of this result (``fednb.domain._nearest``:
        released values equal to private values), or None where it is not available.
    """
    return {
        "version": 1,
        "run": _run_facts(run),
        "request": {"id": request.id, "function_name": request.function_name, "kind": request.kind,
                    "code_hash": request.code_hash, "source": request.source, "release": request.release,
                    "datasets": list(request.datasets), "runs": request.runs,
                    "runs_used": request.runs_used, "description": request.description},
        "tensors": [tensor_review(k, v) for k, v in result.weights.items()],
        "metrics": {k: jnum(v) for k, v in result.metrics.items()},
        "num_examples": result.num_examples,
        "previous": None if previous is None else _run_facts(previous[0]),
        "diff": None if previous is None else _diff(result, previous[1]),
        "nearest": nearest,
    }


def find_previous(runs: list[RunInfo], run: RunInfo) -> RunInfo | None:
    """The latest run of ``run``'s request created before it whose result was released."""
    earlier = [r for r in runs if r.request_id == run.request_id and r.id != run.id
               and r.release_state == "released" and r.created <= run.created]
    return max(earlier, key=lambda r: r.created, default=None)


def decode_result(body: bytes) -> Update:
    """A result's bytes (safetensors + JSON header) as an :class:`~fednb.Update`."""
    header, tensors = decode_message(body)
    return Update(weights=decompress(tensors, header), metrics=header.get("metrics") or {},
                  num_examples=header.get("num_examples"))


def fetch_review(t: Transport, run_id: str) -> Review:
    """Build the review of ``run_id`` over HTTP (an owner's token: held or released)."""
    run = RunInfo.model_validate(t.json("GET", f"/runs/{run_id}"))
    request = RequestInfo.model_validate(t.json("GET", f"/requests/{run.request_id}"))
    result = decode_result(t.call("GET", f"/runs/{run_id}/result").content)
    runs = [RunInfo.model_validate(d) for d in t.json("GET", "/runs", params={"request_id": run.request_id})]
    prev = find_previous(runs, run)
    before = None if prev is None else (prev, decode_result(t.call("GET", f"/runs/{prev.id}/result").content))
    return build_review(result, request, run, before, fetch_nearest(t, run_id))


def fetch_nearest(t: Transport, run_id: str) -> dict[str, Any] | None:
    """The domain's memorisation check of a result (owner only), or None where the domain
    does not offer it (an older domain) or refuses it: the review goes on without it."""
    try:
        report = t.json("GET", f"/runs/{run_id}/nearest")
    except FednbError:
        return None
    return report if isinstance(report, dict) else None


def review_of(client: DomainClient, run_id: str) -> Review:
    """:func:`fetch_review` through a connected client (the owner's)."""
    return fetch_review(client._t, run_id)


# --------------------------------------------------------------------------- text


def fmt(x: Any) -> str:
    """A JSON number as people read it: ints as ints, floats to 6 significant digits."""
    if x is None:
        return "-"
    if isinstance(x, bool | int | str):
        return str(x)
    return f"{x:.6g}"


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "none"


def epsilon_text(epsilon: float | None) -> str:
    return ("none: no differential privacy, these exact values leave the hospital" if epsilon is None
            else f"{epsilon:.4g} (already charged; the values below are noised)")


def released_text(review: Review) -> str:
    """One line: what releasing hands to whom."""
    t, m = review["tensors"], review["metrics"]
    parts = [f"{len(t)} tensor{'s' * (len(t) != 1)} ({sum(x['size'] for x in t)} values)"]
    if m:
        parts.append(f"{len(m)} metric{'s' * (len(m) != 1)}")
    parts.append(f"num_examples {fmt(review['num_examples'])}")
    return f"to {review['run']['scientist']}: {', '.join(parts)}"


def _nested(v: Any) -> str:
    return "[" + ", ".join(_nested(x) for x in v) + "]" if isinstance(v, list) else fmt(v)


def _summary_line(s: dict[str, Any]) -> str:
    bad = f", {s['nan']} NaN, {s['inf']} Inf" if s["nan"] or s["inf"] else ""
    return f"min {fmt(s['min'])}  max {fmt(s['max'])}  mean {fmt(s['mean'])}  std {fmt(s['std'])}{bad}"


def _diff_lines(diff: dict[str, Any], prev: dict[str, Any]) -> list[str]:
    lines = [f"diff from the previous release: run {prev['id']} ({params_text(prev['params'])})"]
    for d in diff["tensors"]:
        if d["status"] in ("added", "removed", "reshaped"):
            lines.append(f"  {d['name']}: {d['status']}" + (f" {d['shapes'][0]} -> {d['shapes'][1]}"
                                                            if d["status"] == "reshaped" else ""))
            continue
        lines.append(f"  {d['name']}: {d['status']}, max |difference| {fmt(d['max_abs_diff'])}")
        lines += [f"    [{', '.join(map(str, c['index']))}] {fmt(c['before'])} -> {fmt(c['after'])}"
                  for c in (d["changed"] or [])]
    lines += [f"  metric {m['name']}: {fmt(m['before'])} -> {fmt(m['after'])}" for m in diff["metrics"]]
    before, after = diff["num_examples"]
    if before != after:
        lines.append(f"  num_examples: {fmt(before)} -> {fmt(after)}")
    return lines


def review_lines(review: Review) -> list[str]:
    """The review as text (``fednb domain results show``)."""
    run, req = review["run"], review["request"]
    lines = [
        f"release    {released_text(review)}",
        f"epsilon    {epsilon_text(run['epsilon'])}",
        f"run        {run['id']} ({run['status']}, result {run['release_state']})",
        f"scientist  {run['scientist']}",
        f"dataset    {run['dataset']} ({fmt(run['num_examples'])} examples)",
        f"function   {req['function_name']} ({req['kind']}), request {req['id']}",
        f"sha256     {req['code_hash']}",
        f"params     {params_text(run['params'])}",
        "tensors    " + ("none" if not review["tensors"] else ""),
    ]
    for t in review["tensors"]:
        lines.append(f"  {t['name']}: {t['dtype']}{tuple(t['shape'])}")
        if t["values"] is not None:
            lines.append(f"    values {_nested(t['values'])}")
        else:
            lines.append(f"    {_summary_line(t['summary'])}")
            h = t["summary"]["histogram"]
            if h:
                lines.append("    histogram " + " ".join(map(str, h["counts"])))
    lines.append("metrics    " + ("none" if not review["metrics"] else ""))
    lines += [f"  {k}: {fmt(v)}" for k, v in review["metrics"].items()]
    if review["diff"] is None:
        lines.append("diff       none: no earlier released run of this request")
    else:
        lines += _diff_lines(review["diff"], review["previous"])
    lines += nearest_lines(review.get("nearest"))
    return [s.rstrip() for s in lines]


def nearest_text(t: dict[str, Any]) -> str:
    """One released array's line of the memorisation check (the same words everywhere)."""
    if not t["checked"]:
        return "no finite values to check"
    if not t["matches"]:
        n = t["nearest"]
        return ("no value equals a private value" + (
            f"; the nearest, {fmt(n['value'])}, is {fmt(n['distance'])} from a value of {n['variable']}"
            if n else ""))
    what = f"{t['matches']} of {t['checked']} values equal private values of {', '.join(t['variables'])}"
    if not t["rare_matches"]:
        return what + " (values many entries share)"
    where = "; ".join(f"[{', '.join(map(str, e['index']))}] {fmt(e['value'])}" for e in t["examples"])
    return f"{what}; {t['rare_matches']} held by few entries, e.g. {where}"


def nearest_lines(report: dict[str, Any] | None) -> list[str]:
    """The memorisation check as text (``fednb domain results show``)."""
    if report is None:
        return ["private    none: this domain did not check released values against private data"]
    head = ("private    WARNING: released values equal rare private values (the code may copy patients' data)"
            if report["warning"] else "private    no released value equals a rare private value")
    lines = [head] + [f"  {t['name']}: {nearest_text(t)}" for t in report["tensors"]]
    if report["skipped"]:
        lines.append(f"  not checked (too large): {', '.join(report['skipped'])}")
    return lines
