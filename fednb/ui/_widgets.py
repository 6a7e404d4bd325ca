"""ipywidgets views over the models in :mod:`fednb.ui._models`: the owner's ``Inbox``,
the ``BudgetMeter`` and the scientist's ``ResultsViewer``.

Each view is a ``VBox`` with a CSS class (``fednb-inbox``, ``fednb-budget-meter``,
``fednb-results-viewer``) so saved widget state shows which are fednb's. Request text
reaches the page only as escaped HTML or as option labels (drawn as text).
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, ClassVar

import ipywidgets as w

from fednb.client import DomainClient
from fednb.client.html import CSS, esc
from fednb.errors import FednbError
from fednb.scientist import History
from fednb.ui._console import TemplatesModel
from fednb.ui._models import BudgetModel, InboxModel, ResultsModel, plural

__all__ = ["BudgetMeter", "Inbox", "ResultsViewer"]


class _Poller:
    """Calls ``fn`` every ``every`` seconds on a daemon thread until stopped (0: never).

    One poller per ``key`` (the view's kind, domain and user): a cell run again makes a new
    view, whose poller stops the old one, so re-running never piles up threads polling
    with the same token.
    """

    _live: ClassVar[dict[tuple[str, ...], _Poller]] = {}
    _live_lock = threading.Lock()

    def __init__(self, fn: Any, every: float, key: tuple[str, ...]) -> None:
        self._stop = threading.Event()
        self._fn, self._every = fn, every
        self._thread: threading.Thread | None = None
        with self._live_lock:
            old = self._live.pop(key, None)
            if old is not None:
                old.stop()
            if every > 0:
                self._live[key] = self
        if every > 0:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="fednb-ui-poll")
            self._thread.start()

    def _loop(self) -> None:
        delay = self._every
        while not self._stop.wait(delay):
            try:
                self._fn()
                delay = self._every
            except Exception as exc:  # the domain is away: back off, keep the view
                delay = min(delay * 2, 300.0)
                warnings.warn(
                    f"fednb: refresh failed ({type(exc).__name__}); retrying in {delay:.0f} s",
                    RuntimeWarning,
                    stacklevel=1,
                )

    def stop(self) -> None:
        self._stop.set()


def _button(text: str, colour: str, icon: str = "", *, outline: bool = False) -> w.Button:
    """A button in the colours of the console and the lab (white on ``colour``, or
    ``colour`` on white), which pass AA contrast where ipywidgets' defaults do not."""
    b = w.Button(description=text, icon=icon)
    b.style.button_color = "#ffffff" if outline else colour
    b.style.text_color = colour if outline else "#ffffff"
    b.style.font_weight = "600"
    return b


class Inbox(w.VBox):
    """Pending requests and held results of a domain, for its owner.

    Select a request to see its requester, datasets, highlighted source, hash, the diff
    against the last approved version, the parameter schema, runs, privacy parameters
    and the projected epsilon against the remaining budgets; then Approve (auto or manual
    release) or Deny with a reason. The second tab releases or withholds held results.
    The third shows the stats templates (limits, protection, approval state under the
    two-person rule), the requests they approved and the disclosure refusals, with Approve
    for a template waiting for a second owner (``templates``, a :class:`TemplatesModel`).
    Polls the domain every ``poll`` seconds (0: only on :meth:`refresh`); the templates
    tab is re-read while it is shown, and when it is picked.
    """

    TEMPLATES_TAB = 2

    def __init__(self, owner: DomainClient, poll: float = 5.0) -> None:
        self.model = InboxModel(owner)
        self.templates = TemplatesModel(owner)
        self._name = owner.info.name  # once: a redraw should not call the domain
        self._syncing = False
        self._list = w.Select(options=[], rows=8, layout=w.Layout(width="100%"))
        self._detail = w.HTML()
        self._release = w.ToggleButtons(
            options=[("manual release", "manual"), ("auto release", "auto")], value="manual"
        )
        self._approve = _button("Approve", "#1a7f37", "check")
        self._reason = w.Text(
            placeholder="reason to deny (the scientist sees it)", layout=w.Layout(width="40%")
        )
        self._deny = _button("Deny", "#cf222e", "times")
        self._held = w.Select(options=[], rows=6, layout=w.Layout(width="100%"))
        self._run = w.HTML()
        self._release_btn = _button("Release", "#1a7f37")
        self._withhold_btn = _button("Withhold", "#7d4e00", outline=True)
        self._status = w.HTML()
        self._title = w.HTML()
        review = w.VBox(
            [
                self._list,
                w.HBox([self._release, self._approve]),
                w.HBox([self._reason, self._deny]),
                self._detail,
            ]
        )
        held = w.VBox([self._held, w.HBox([self._release_btn, self._withhold_btn]), self._run])
        self._waiting = w.Dropdown(options=[], description="waiting", layout=w.Layout(width="40%"))
        self._approve_tpl = _button("Approve template", "#1a7f37", "check")
        self._templates = w.HTML()
        tpl = w.VBox([w.HBox([self._waiting, self._approve_tpl]), self._templates])
        self._tabs = w.Tab(children=[review, held, tpl])
        self._tabs.set_title(0, "Pending requests")
        self._tabs.set_title(1, "Held results")
        self._tabs.set_title(self.TEMPLATES_TAB, "Templates")
        super().__init__([self._title, self._tabs, self._status])
        self.add_class("fednb-inbox")
        self._list.observe(self._on_select, names="value")
        self._held.observe(self._on_select_run, names="value")
        self._approve.on_click(lambda _b: self.model.approve(self._release.value))
        self._deny.on_click(self._on_deny)
        self._release_btn.on_click(lambda _b: self.model.release())
        self._withhold_btn.on_click(lambda _b: self.model.withhold())
        self._approve_tpl.on_click(self._on_approve_template)
        self._tabs.observe(self._on_tab, names="selected_index")
        self.model.on_change(self._draw)
        self.templates.on_change(self._draw_templates)
        self._draw()
        self._draw_templates()
        self._poller = _Poller(self._poll, poll, ("inbox", owner.url, owner.me.name))

    def refresh(self) -> None:
        self.model.refresh()
        self.templates.refresh()

    def _poll(self) -> None:
        self.model.refresh()
        if self._tabs.selected_index == self.TEMPLATES_TAB:
            self.templates.refresh()

    def _on_tab(self, change: dict[str, Any]) -> None:
        if change["new"] == self.TEMPLATES_TAB:
            self.templates.refresh()

    def _on_approve_template(self, _b: Any) -> None:
        if self._waiting.value:
            self.templates.approve(self._waiting.value)

    def _draw_templates(self) -> None:
        t = self.templates
        with t.lock:
            waiting = t.waiting()
            self._waiting.options = waiting
            self._waiting.value = waiting[0] if waiting else None
            self._approve_tpl.disabled = not waiting
            self._tabs.set_title(self.TEMPLATES_TAB, f"Templates ({len(t.templates)})")
            note = (f"<div role='status' class='fednb-templates-message'>{esc(t.message)}</div>"
                    if t.message else "")
            self._templates.value = note + t.html()

    # a poll redraws under the model's lock: a selection waits for it instead of being
    # taken for the redraw's own change
    def _on_select(self, change: dict[str, Any]) -> None:
        with self.model.lock:
            if not self._syncing:
                self.model.select(change["new"])

    def _on_select_run(self, change: dict[str, Any]) -> None:
        with self.model.lock:
            if not self._syncing:
                self.model.select_run(change["new"])

    def _on_deny(self, _b: Any) -> None:
        if self.model.deny(self._reason.value):
            self._reason.value = ""

    def _draw(self) -> None:
        with self.model.lock:
            self._draw_locked()

    def _draw_locked(self) -> None:
        m = self.model
        self._syncing = True
        try:
            self._list.options = m.request_options()
            self._list.value = m.selected.id if m.selected else None
            self._held.options = m.run_options()
            self._held.value = m.selected_run.id if m.selected_run else None
        finally:
            self._syncing = False
        self._title.value = (
            f"<div class='fednb-ui'>{CSS}<div style='background:#0b3d62;color:#fff;padding:8px 14px;"
            f"border-radius:8px'><b style='font-size:16px'>{esc(self._name)}</b> · owner inbox"
            f"<span style='float:right;color:#d0e4f5'>{len(m.pending)} pending · "
            f"{plural(len(m.held), 'result')} held</span></div></div>")
        self._tabs.set_title(0, f"Pending requests ({len(m.pending)})")
        self._tabs.set_title(1, f"Held results ({len(m.held)})")
        self._detail.value = m.detail_html()
        self._run.value = m.run_html()
        self._status.value = (
            f"<div role='status' style='background:#ddf4ff;color:#0a3069;border:1px solid #54aeff;"
            f"border-radius:6px;padding:4px 10px'>{esc(m.message)}</div>" if m.message else "")
        to = m.selected_run.scientist if m.selected_run else ""
        self._release_btn.description = f"Release to {to}" if to else "Release"
        self._approve.disabled = self._deny.disabled = m.selected is None
        self._release_btn.disabled = self._withhold_btn.disabled = m.selected_run is None

    def close(self) -> None:
        self._poller.stop()
        super().close()


class BudgetMeter(w.VBox):
    """Epsilon spent and remaining per (scientist, dataset) and per dataset, as bars.

    Refreshes every ``poll`` seconds, on :meth:`refresh`, and after every round of the
    ``history`` it follows (``BudgetMeter(h, history=fed.history)``).
    """

    def __init__(self, client: DomainClient, poll: float = 10.0, history: History | None = None) -> None:
        self.model = BudgetModel(client)
        try:
            self._name = client.info.name  # the hospital's name, as its owner set it
        except FednbError:
            self._name = client.url
        super().__init__([])
        self.add_class("fednb-budget-meter")
        self.model.on_change(self._draw)
        self._draw()
        self._poller = _Poller(self.model.refresh, poll, ("budget", client.url, client.me.name))
        self._unwatch = None if history is None else history.watch(lambda _h: self.refresh())

    def refresh(self) -> None:
        self.model.refresh()

    @staticmethod
    def _bar(g: Any) -> w.Widget:
        left = "no cap" if g.budget is None else f"{g.remaining:.3g} left of {g.budget:.3g}"
        reserved = f" + {g.reserved:.3g} reserved" if g.reserved else ""
        text = w.HTML(
            f"{esc(g.label)}: ε {g.spent:.3g} spent{reserved}, {left}", layout=w.Layout(width="55%")
        )
        style = "success" if g.fraction < 0.5 else "warning" if g.fraction < 0.9 else "danger"
        bar = w.FloatProgress(
            value=g.fraction, min=0.0, max=1.0, bar_style=style, layout=w.Layout(width="40%")
        )
        return w.HBox([text, bar])

    def _draw(self) -> None:
        gauges, per_dataset = self.model.gauges(), self.model.dataset_gauges()
        head = w.HTML(
            f"<b>Privacy budget at {esc(self._name)}</b>"
            + ("" if gauges else ": nothing spent yet")
        )
        children: list[w.Widget] = [head, *map(self._bar, gauges)]
        if per_dataset:
            children += [w.HTML("<b>Per dataset, all scientists</b>"), *map(self._bar, per_dataset)]
        self.children = children

    def close(self) -> None:
        self._poller.stop()
        if self._unwatch is not None:
            self._unwatch()
        super().close()


class ResultsViewer(w.VBox):
    """Per-round metrics per hospital and aggregated (loss, accuracy, examples, seconds,
    bytes on the wire), redrawn after every round while ``Federation.run()`` goes::

        viewer = ResultsViewer(fed.history); display(viewer); fed.run()
    """

    def __init__(self, history: History) -> None:
        self.model = ResultsModel(history)
        self._metric = w.Dropdown(description="metric", options=[])
        self._domains = w.SelectMultiple(description="hospitals", options=[], rows=4)
        self._chart = w.HTML()
        self._summary = w.HTML()
        super().__init__([w.HBox([self._metric, self._domains]), self._chart, self._summary])
        self.add_class("fednb-results-viewer")
        self._chosen = False  # the person picked a metric: keep it as rounds come in
        self._syncing = False
        self._metric.observe(self._on_metric, names="value")
        self._domains.observe(lambda _c: self._draw_chart(), names="value")
        self.model.on_change(self._draw)
        self._draw()

    def _on_metric(self, _change: dict[str, Any]) -> None:
        if not self._syncing:
            self._chosen = True
        self._draw_chart()

    def _draw(self) -> None:
        names, domains = self.model.metric_names(), self.model.history.domains
        if list(self._metric.options) != names:
            keep = self._metric.value
            self._syncing = True
            try:
                self._metric.options = names
                self._metric.value = keep if self._chosen and keep in names else self.model.default_metric()
            finally:
                self._syncing = False
        if list(self._domains.options) != domains:
            self._domains.options = domains
            self._domains.value = tuple(domains)
        self._draw_chart()
        self._summary.value = self.model.summary_html()

    def _draw_chart(self) -> None:
        metric = self._metric.value
        self._chart.value = (
            "<i>No rounds yet.</i>"
            if metric is None
            else self.model.chart_html(metric, list(self._domains.value))
        )

    def close(self) -> None:
        self.model.close()
        super().close()
