"""The models behind fednb's widgets and Panel apps: plain Python over a ``DomainClient``
or a ``History``, tested without a browser. Views (ipywidgets, Panel) only draw what a
model says and call its actions.

Everything a request carries is untrusted: the models hand views escaped HTML
(``fednb.client.html``) and plain-text labels, never raw request text as markup.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fednb.client import DomainClient, budget_html, request_html, run_html
from fednb.client.html import CSS, esc, svg_lines, table_html
from fednb.client.review import Review, review_of
from fednb.errors import FednbError, InvalidInput
from fednb.protocol import BudgetInfo, ReleaseMode, RequestInfo, RunInfo
from fednb.scientist import History
from fednb.ui._review_html import decision_html, review_body_html, review_html

__all__ = ["BudgetModel", "InboxModel", "ResultsModel"]

Listener = Callable[[], None]
F = TypeVar("F", bound=Callable[..., Any])


def _locked(fn: F) -> F:
    """Run a model method (and the views' redraws it triggers) under the model's lock."""

    @functools.wraps(fn)
    def inner(self: _Observable, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return fn(self, *args, **kwargs)

    return inner  # type: ignore[return-value]


class _Observable:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.message = ""  # the last action's outcome, for a status line
        # a view's poller thread and its click handlers both change the model: one at a time
        self.lock = threading.RLock()

    def on_change(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in list(self._listeners):
            fn()


def _label(text: str, limit: int = 60) -> str:
    """A one-line plain-text label (request text is untrusted: views show it as text)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _empty(text: str) -> str:
    """An empty state: a muted line in the review's place."""
    return (f"<div class='fednb-ui fednb-empty'>{CSS}<div class='fednb-card fednb-muted' "
            f"style='border-style:dashed'>{esc(text)}</div></div>")


def plural(n: int, word: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _owner(client: DomainClient, what: str) -> DomainClient:
    if client.me.role != "owner":
        raise InvalidInput(f"{what} needs the domain owner's token; {client.me.name!r} is a {client.me.role}")
    return client


class InboxModel(_Observable):
    """The owner's review desk: pending requests and held results, with the actions.

    ``refresh()`` reads the domain; ``select()`` picks a request (its full view, with the
    diff and the projected epsilon, is fetched then); ``approve``/``deny`` act on the
    selected request; ``release``/``withhold`` on a held run. ``select_run()`` fetches the
    held result's review (:mod:`fednb.client.review`: values or summaries, metrics,
    parameters, the change since the previous release), so the owner sees what leaves.
    Each action refreshes and leaves a one-line ``message``; a refused action leaves the
    domain's message instead of raising, so a view can show it.
    """

    def __init__(self, owner: DomainClient) -> None:
        super().__init__()
        self.client = _owner(owner, "the inbox")
        self.pending: list[RequestInfo] = []
        self.held: list[RunInfo] = []
        self.selected: RequestInfo | None = None
        self.selected_run: RunInfo | None = None
        self.review: Review | None = None  # of selected_run
        self.review_error = ""
        self.refresh()

    # -- reading ------------------------------------------------------------------
    @_locked
    def refresh(self) -> bool:
        """Re-read pending requests and held results; True when something changed."""
        pending = [r.info for r in self.client.requests.pending()]
        held = [r.info for r in self.client.results.held()]
        changed = [r.id for r in pending] != [r.id for r in self.pending] or [r.id for r in held] != [
            r.id for r in self.held
        ]
        self.pending, self.held = pending, held
        if self.selected is not None and self.selected.id not in {r.id for r in pending}:
            self.selected = None
        if self.selected_run is not None and self.selected_run.id not in {r.id for r in held}:
            self.selected_run, self.review = None, None
        if changed:
            self._changed()
        return changed

    def request_options(self) -> list[tuple[str, str]]:
        """(label, request id) per pending request, oldest first; labels are plain text."""
        return [
            (
                _label(
                    f"{r.scientist} · {r.function_name} ({r.kind}) on {', '.join(r.datasets)}"
                    f" · {plural(r.runs, 'run')}",
                    64,
                )
                + f" · #{r.id}",
                r.id,
            )
            for r in self.pending
        ]

    def run_options(self) -> list[tuple[str, str]]:
        """(label, run id) per held result."""
        return [
            (_label(f"{r.scientist} · {r.dataset} · {r.status}", 64) + f" · run {r.id}", r.id)
            for r in self.held
        ]

    @_locked
    def select(self, request_id: str | None) -> RequestInfo | None:
        """Pick a pending request; fetches its full review view (diff, projected epsilon)."""
        self.selected = None if not request_id else self.client.requests.get(request_id).info
        self._changed()
        return self.selected

    @_locked
    def select_run(self, run_id: str | None) -> RunInfo | None:
        """Pick a held result; fetches its review (what releasing it would hand over)."""
        self.selected_run = None if not run_id else self.client.runs.get(run_id).info
        self.review, self.review_error = None, ""
        if run_id:
            try:
                self.review = review_of(self.client, run_id)
            except FednbError as exc:  # shown in place of the values, never hidden
                self.review_error = f"cannot read this result: {exc}"
        self._changed()
        return self.selected_run

    def detail_html(self) -> str:
        if self.selected is None:
            return _empty("Select a pending request to review it: what it runs, on which data, what "
                          "each run releases and what it costs." if self.pending else "Nothing to review.")
        return request_html(self.selected)

    def run_html(self) -> str:
        """The selected held result: its review (the decision first), then the run's facts."""
        if self.selected_run is None:
            return _empty("Select a held result." if self.held else "No results are held.")
        top = (review_html(self.review) if self.review is not None
               else f"<div class='fednb-error' role='alert' style='color:#cf222e'>"
                    f"{esc(self.review_error)}</div>")
        return top + run_html(self.selected_run)

    def decision_html(self) -> str:
        """Only the decision line of the selected held result ("" without one)."""
        return "" if self.review is None else decision_html(self.review)

    def run_body_html(self) -> str:
        """:meth:`run_html` without the decision line (a view shows that above its buttons)."""
        if self.review is None:
            return self.run_html()
        assert self.selected_run is not None
        return review_body_html(self.review) + run_html(self.selected_run)

    # -- acting -------------------------------------------------------------------
    def _act(self, verb: str, done: str, fn: Callable[[], Any]) -> bool:
        try:
            fn()
        except FednbError as exc:
            self.message = f"{verb} refused: {exc}"
            self.refresh()
            self._changed()
            return False
        self.message = done
        self.refresh()
        self._changed()
        return True

    @_locked
    def approve(self, release: ReleaseMode = "manual") -> bool:
        """Approve the selected request; ``release`` is "auto" or "manual"."""
        req = self.selected
        if req is None:
            self.message = "select a request first"
            self._changed()
            return False
        if release not in ("auto", "manual"):
            raise InvalidInput(f"release must be 'auto' or 'manual', not {release!r}")
        return self._act(
            "approve",
            f"approved {req.function_name} of {req.scientist} ({release} release)",
            lambda: self.client.requests.get(req.id).approve(release=release),
        )

    @_locked
    def deny(self, reason: str) -> bool:
        """Deny the selected request; the reason is recorded and shown to the scientist."""
        req = self.selected
        if req is None:
            self.message = "select a request first"
            self._changed()
            return False
        if not reason.strip():
            self.message = "give a reason to deny (the scientist sees it)"
            self._changed()
            return False
        return self._act(
            "deny",
            f"denied {req.function_name} of {req.scientist}",
            lambda: self.client.requests.get(req.id).deny(reason.strip()),
        )

    @_locked
    def _held(self, verb: str, done: str, run_id: str | None) -> bool:
        rid = run_id or (self.selected_run.id if self.selected_run else None)
        if rid is None:
            self.message = "select a held result first"
            self._changed()
            return False
        return self._act(verb, f"{done} run {rid}", lambda: getattr(self.client.runs.get(rid), verb)())

    @_locked
    def release(self, run_id: str | None = None) -> bool:
        """Release a held result (the selected one by default)."""
        return self._held("release", "released", run_id)

    @_locked
    def withhold(self, run_id: str | None = None) -> bool:
        """Withhold a held result for good (the selected one by default)."""
        return self._held("withhold", "withheld", run_id)


@dataclass(frozen=True)
class Gauge:
    """One bar: epsilon spent (and reserved) of a budget; ``budget`` None means no cap."""

    label: str
    spent: float
    reserved: float
    budget: float | None

    @property
    def remaining(self) -> float | None:
        return None if self.budget is None else max(0.0, self.budget - self.spent - self.reserved)

    @property
    def fraction(self) -> float:
        """Spent and reserved over the budget, in [0, 1] (0 without a cap)."""
        if self.budget is None or self.budget <= 0:
            return 0.0
        return min(1.0, (self.spent + self.reserved) / self.budget)


class BudgetModel(_Observable):
    """Epsilon per (scientist, dataset) and per dataset, as the domain's ledger says.

    A scientist's client sees their own rows; the owner's sees everyone's.
    """

    def __init__(self, client: DomainClient) -> None:
        super().__init__()
        self.client = client
        self.rows: list[BudgetInfo] = []
        self.refresh()

    @_locked
    def refresh(self) -> bool:
        rows = list(self.client.budget)
        changed = rows != self.rows
        self.rows = rows
        if changed:
            self._changed()
        return changed

    def gauges(self) -> list[Gauge]:
        """Per (scientist, dataset): spent, reserved, budget."""
        return [
            Gauge(f"{b.scientist} on {b.dataset}", b.epsilon_spent, b.epsilon_reserved, b.epsilon_budget)
            for b in self.rows
        ]

    def dataset_gauges(self) -> list[Gauge]:
        """Per dataset, all scientists together, against the dataset's cap."""
        per: dict[str, BudgetInfo] = {}
        for b in self.rows:
            per.setdefault(b.dataset, b)
        return [
            Gauge(f"{d} (all scientists)", b.dataset_spent, 0.0, b.dataset_cap)
            for d, b in sorted(per.items())
        ]

    def html(self) -> str:
        return budget_html(self.rows)


class ResultsModel(_Observable):
    """Per-round metrics of a :class:`~fednb.History`, per hospital and aggregated; follows
    the history live (the driver notifies it after every round)."""

    EXTRA = ("num_examples", "seconds", "bytes")

    def __init__(self, history: History) -> None:
        super().__init__()
        self.history = history
        self._unwatch = history.watch(lambda _h: self._changed())

    def close(self) -> None:
        self._unwatch()

    def metric_names(self) -> list[str]:
        """Metrics the functions reported (loss, accuracy ...), epsilon (with DP), then
        examples, seconds, bytes."""
        dp = ["epsilon"] if any(r.epsilon is not None for r in self.history.records) else []
        return sorted({k for r in self.history.records for k in r.metrics}) + dp + list(self.EXTRA)

    def default_metric(self) -> str | None:
        """What a view opens on: the loss when reported, else the first metric the functions
        reported, else the first name (examples, seconds and bytes are flat lines mostly)."""
        names = self.metric_names()
        reported = [k for k in names if k not in self.EXTRA and k != "epsilon"]
        if "loss" in reported:
            return "loss"
        return reported[0] if reported else (names[0] if names else None)

    def series(self, metric: str, domains: list[str] | None = None) -> dict[str, list[float]]:
        """``metric`` per round: "all domains" (weighted by examples; bytes summed; epsilon
        the most-charged domain's) first, then each domain (NaN where it did not take part)."""
        h = self.history
        if not h.num_rounds:
            return {}
        if metric not in self.metric_names():
            raise InvalidInput(f"no metric {metric!r}; there are {self.metric_names()}")
        m = h.metrics
        if metric == "bytes":
            per = m["bytes_up"].fillna(0) + m["bytes_down"].fillna(0)
            total = per.sum("domain").values.tolist()
        else:
            per = m[metric]
            total = (
                h.rounds[metric].values.tolist() if metric in h.rounds else per.sum("domain").values.tolist()
            )
        out: dict[str, list[float]] = {"all domains": [float(v) for v in total]}
        for d in domains if domains is not None else h.domains:
            out[d] = [float(v) for v in per.sel(domain=d).values.tolist()]
        return out

    def chart_html(self, metric: str, domains: list[str] | None = None) -> str:
        if not self.history.num_rounds:
            return "<i>No rounds yet.</i>"
        return svg_lines(self.series(metric, domains), title=metric, width=520, height=240)

    def summary_html(self) -> str:
        h = self.history
        if not h.num_rounds:
            return f"<div>{esc(repr(h))}</div>"
        last = h.rounds.isel(round=-1)
        names = [k for k in self.metric_names() if k in h.rounds]
        cells = [(k, f"{float(last[k]):.4g}") for k in names if math.isfinite(float(last[k]))]
        status = h.metrics["status"].isel(round=-1).values.tolist()
        cells.append(
            ("domains in the last round", f"{sum(s == 'succeeded' for s in status)} of {len(status)}")
        )
        return table_html(("", f"round {h.num_rounds - 1}"), cells, _label(repr(h), 120))
