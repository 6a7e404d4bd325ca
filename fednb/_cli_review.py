"""The owner's review of ``fednb domain ...``: code requests (list, show, approve, deny)
and runs and their results (list, show, release, withhold, logs).

Actions take the open domain (:func:`fednb._cli_domain.on_domain` wraps them) and name
the actor ``owner-cli`` in the audit log.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fednb._cli_domain import ACTOR, table, when

if TYPE_CHECKING:
    from fednb.domain import Domain
    from fednb.protocol import ParamSpec, RequestInfo, RequestStatus, RunInfo


# --------------------------------------------------------------------------- requests


def _request_row(r: RequestInfo) -> tuple[object, ...]:
    runs, datasets = f"{r.runs_used}/{r.runs}", ",".join(r.datasets)
    return (r.id, r.scientist, r.function_name, r.code_hash[:12], datasets, runs, r.status)


def cmd_requests(dom: Domain, args: argparse.Namespace) -> int:
    status: RequestStatus | None = args.status or (None if args.all else "pending")
    rows = [_request_row(r) for r in dom.requests.list(status=status)]
    headers = ("id", "scientist", "function", "hash", "datasets", "runs", "status")
    table(headers, rows, f"no {status} requests" if status else "no requests")
    return 0


def _param(spec: ParamSpec) -> str:
    if spec.type == "int":  # bounds are stored as floats; an int's read as ints (0, not 0.0)
        return f"int in [{int(spec.low or 0)}, {int(spec.high or 0)}]"
    if spec.type == "float":
        return f"float in [{spec.low}, {spec.high}]"
    return f"str, one of {spec.choices}" if spec.type == "str" else "bool"


def _review_line(r: RequestInfo) -> str:
    if r.status == "pending":
        return "pending review"
    how = f"release {r.release}" if r.status == "approved" else f"reason: {r.review_reason}"
    who = (r.reviewed_by or "").removeprefix("template:")
    by = f"template {who}" if who != r.reviewed_by else r.reviewed_by
    return f"{r.status} by {by} at {when(r.reviewed)} ({how})"


def _privacy_lines(r: RequestInfo) -> list[str]:
    if r.epsilon_per_run is None:
        return ["privacy    NONE: no differential privacy; results are held for your manual release"]
    dp = "" if r.dp is None else f"clip {r.dp.clip:g}, noise multiplier {r.dp.noise_multiplier:g}; "
    lines = [f"privacy    {dp}epsilon {r.epsilon_per_run:.3f} per run, {r.projected_epsilon:.3f} for all "
             f"{r.runs} runs (delta {r.delta:.1e})"]
    b = r.budget
    if b is not None:
        left = "no budget set" if b.epsilon_remaining is None else f"{b.epsilon_remaining:.3f} left"
        cap = "" if b.dataset_remaining is None else f"; dataset cap: {b.dataset_remaining:.3f} left"
        lines.append(f"budget     {r.scientist} on {b.dataset}: {b.epsilon_spent:.3f} spent, "
                     f"{b.epsilon_reserved:.3f} reserved, {left}{cap}")
    return lines


def _request_text(r: RequestInfo) -> list[str]:
    head = {
        "request": r.id,
        "scientist": r.scientist,
        "function": f"{r.function_name} (kind {r.kind})",
        "sha256": r.code_hash,
        "datasets": ", ".join(r.datasets),
        "runs": f"{r.runs_used}/{r.runs} used",
        "status": _review_line(r),
        "filed": when(r.created),
        "purpose": r.description or "-",
    }
    lines = [f"{k:<10} {v}" for k, v in head.items()]
    lines.append("params     " + ("none" if not r.params else ""))
    lines += [f"  {k}: {_param(v)}" for k, v in r.params.items()]
    lines.append("weights    " + ("none" if r.weights is None else ""))
    lines += [f"  {k}: {v.dtype}{v.shape}" for k, v in (r.weights or {}).items()]
    lines.append("metrics    " + ("none" if not r.metrics else ""))
    lines += [f"  {k}: in [{lo}, {hi}]" for k, (lo, hi) in r.metrics.items()]
    lines += _privacy_lines(r)
    lines += ["source", *(f"  | {s}" for s in r.source.rstrip("\n").splitlines())]
    if r.diff is None:
        lines.append("diff       none: no earlier approved request of this function")
    else:
        lines.append(f"diff against approved {(r.previous_hash or '')[:12]}")
        lines += [f"  {s}" for s in r.diff.rstrip("\n").splitlines()]
    return [s.rstrip() for s in lines]


def cmd_show(dom: Domain, args: argparse.Namespace) -> int:
    print("\n".join(_request_text(dom.requests.get(args.request_id))))
    return 0


def cmd_approve(dom: Domain, args: argparse.Namespace) -> int:
    r = dom.requests.approve(args.request_id, release=args.release, reviewer=ACTOR, slot_s=args.slot)
    held = "released automatically" if r.release == "auto" else "held for your release"
    print(f"approved {r.id} ({r.function_name}, sha256 {r.code_hash[:12]}) for {r.runs} runs; results {held}")
    return 0


def cmd_deny(dom: Domain, args: argparse.Namespace) -> int:
    r = dom.requests.deny(args.request_id, args.reason, reviewer=ACTOR)
    print(f"denied {r.id} ({r.function_name}): {r.review_reason}")
    return 0


# --------------------------------------------------------------------------- runs, results


def _run_row(r: RunInfo) -> tuple[object, ...]:
    outcome = (r.status, r.reason or "-", r.release_state or "-", when(r.created))
    return (r.id, r.request_id, r.scientist, r.dataset, *outcome)


def _held_row(r: RunInfo) -> tuple[object, ...]:
    return (r.id, r.request_id, r.scientist, r.dataset, r.num_examples, when(r.finished))


def cmd_results(dom: Domain, args: argparse.Namespace) -> int:
    headers = ("run", "request", "scientist", "dataset", "examples", "finished")
    table(headers, map(_held_row, dom.runs.held()), "no results held for release")
    return 0


def cmd_result_show(dom: Domain, args: argparse.Namespace) -> int:
    """One result as releasing it would hand it over, the way the Inbox and lab show it."""
    from fednb.client.review import build_review, decode_result, find_previous, review_lines
    from fednb.domain import UserRow, run_nearest

    me = UserRow(name=ACTOR, role="owner")  # the owner, on the domain's own files
    run = dom.runs.owner_view(args.run_id)
    result = decode_result(dom.runs.result(run.id, me))
    prev = find_previous(dom.runs.list(request_id=run.request_id), run)
    before = None if prev is None else (prev, decode_result(dom.runs.result(prev.id, me)))
    review = build_review(result, dom.requests.get(run.request_id), run, before, run_nearest(dom, run.id, me))
    print("\n".join(review_lines(review)))
    return 0


def cmd_release(dom: Domain, args: argparse.Namespace) -> int:
    r = dom.runs.release(args.run_id, reviewer=ACTOR)
    print(f"released the result of run {r.id} to {r.scientist}")
    return 0


def cmd_withhold(dom: Domain, args: argparse.Namespace) -> int:
    r = dom.runs.withhold(args.run_id, reviewer=ACTOR)
    print(f"withheld the result of run {r.id} for good (deleted); {r.scientist} cannot fetch it")
    return 0


def cmd_runs(dom: Domain, args: argparse.Namespace) -> int:
    if args.log is None:
        headers = ("run", "request", "scientist", "dataset", "status", "reason", "result", "created")
        table(headers, map(_run_row, dom.runs.list(request_id=args.request)), "no runs")
        return 0
    print(dom.runs.owner_view(args.log).owner_log or "(the log is empty)")
    return 0
