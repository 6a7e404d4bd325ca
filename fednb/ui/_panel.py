"""The owner's console of ``fednb dashboard`` (:mod:`fednb.ui.dashboard` serves it).

The console holds no credential of its own. Each browser session logs in with an owner
token, which the server checks against the domain and keeps only in that session's
Python objects; until then the page shows the login form and nothing else. The server
binds to loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import panel as pn

from fednb.client import connect
from fednb.client.html import esc
from fednb.errors import ConnectionFailed, FednbError, InsecureSetting, InvalidInput
from fednb.ui._console import ConsoleModel

__all__ = ["console_app"]

REFRESH_MS = 5000
TYPED_WAIT_S = 2.0
SETTLE_S = 0.2


def _pooled() -> bool:
    """Whether Panel runs this server's events in a thread pool (``nthreads``); a Panel
    without that private attribute is taken as pooled."""
    return getattr(pn.state, "_thread_pool", True) is not None


def _settle() -> None:
    """Let a change made just before a click land before the click's handler reads it.

    With a pool, Panel starts applying a change (a request picked, the release mode
    switched) before the click that follows it, but in another thread: an action read at
    once could act on the request or the release mode shown before. The change's own work
    is a parameter update; ``SETTLE_S`` is far more than it takes, and less than a person
    notices."""
    if _pooled():
        time.sleep(SETTLE_S)


def _typed(field: pn.widgets.TextInput | pn.widgets.PasswordInput) -> str:
    """The text in ``field`` as seen by a button's handler.

    With ``nthreads`` set, Panel applies a field's update and runs the click that follows
    it in two threads of its pool: the click's handler can start first and find the field
    still empty (a token pasted and "Log in" clicked at once). The update was queued before
    the click, so it is already being applied: an empty field gets up to ``TYPED_WAIT_S``
    seconds for it to land before the handler takes it as empty. Without a pool, events
    run in order on the server's loop and nothing is waited for.

    Only ``value_input`` (sent on every keystroke) is read: ``value`` is sent when the
    field loses focus, so after a handler clears the field its update may still land and
    put the old text back there, which a later click would then reuse."""
    deadline = time.monotonic() + (TYPED_WAIT_S if _pooled() else 0.0)
    while True:
        text = field.value_input or ""
        if text or time.monotonic() >= deadline:
            return text
        time.sleep(0.02)


# The console's look: the palette of fednb.client.html.CSS (GitHub Primer's colours).
_NAVY, _MUTED = "#0b3d62", "#57606a"
_HEADER = {"background": _NAVY, "color": "#fff", "padding": "10px 18px", "border-radius": "0 0 8px 8px"}
_TOOLBAR = {"background": "#f6f8fa", "border": "1px solid #d0d7de", "border-radius": "8px",
            "padding": "4px 8px", "margin": "6px 10px 0", "align-items": "center"}
_LIST_CSS = (
    "select{font:13px system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1f2328;"
    "border:1px solid #d0d7de;border-radius:8px;padding:4px;background:#fff}"
    "select option{padding:5px 8px;border-radius:4px}"
    "select option:checked{background:#ddf4ff linear-gradient(#ddf4ff,#ddf4ff);color:#0a3069}"
    "label{font:600 12px system-ui,sans-serif;color:#57606a;text-transform:uppercase;letter-spacing:.04em}"
)
# Panel's default success and warning colours carry white text at under 3:1; these pass AA
_BUTTON_CSS = (
    ".bk-btn{font-weight:600;border-radius:6px}"
    ".bk-btn-success{background-color:#1a7f37!important;border-color:#116329!important;color:#fff!important}"
    ".bk-btn-danger{background-color:#cf222e!important;border-color:#a40e26!important;color:#fff!important}"
    ".bk-btn-warning{background-color:#fff!important;border-color:#9a6700!important;color:#7d4e00!important}"
    ".bk-btn:disabled,.bk-btn[disabled]{opacity:.45}"
)
_HELP = "<div class='fednb-ui' style='color:#57606a;margin:2px 0 4px'>{}</div>"
_HELD_HELP = _HELP.format(
    "Results of runs without differential privacy wait here. Pick one: its exact values, "
    "metrics and parameters, and what changed since the previous release, show before "
    "anything leaves the hospital.")

_TEMPLATES_HELP = _HELP.format(
    "A stats request within an active template's limits is approved on submission, with no "
    "review here; change templates with <code>fednb domain templates</code>. Refusals are "
    "exact statistics the disclosure rules stopped before anything was released.")


def _options(pairs: list[tuple[str, str]], none: str) -> dict[str, str]:
    """Select options with a placeholder first: a rendered Select cannot hold "nothing", so
    without it the first item would look selected while the model has none."""
    return {none: "", **dict(pairs)}  # labels end with the full id: unique


_WIDTH = 1080  # the review's width (fednb.client.html.CSS): lists and toolbars line up with it


def _html(cls: str) -> pn.pane.HTML:
    return pn.pane.HTML(sizing_mode="stretch_width", css_classes=[cls], margin=(0, 10))


def _list(name: str, cls: str) -> pn.widgets.Select:
    return pn.widgets.Select(name=name, size=6, sizing_mode="stretch_width", max_width=_WIDTH,
                             css_classes=[cls], stylesheets=[_LIST_CSS])


def _toolbar(*items: Any) -> pn.Row:
    return pn.Row(*items, styles=_TOOLBAR, sizing_mode="stretch_width", max_width=_WIDTH - 20)


def _header(model: ConsoleModel, out: pn.widgets.Button) -> pn.Row:
    info = model.client.info
    return pn.Row(
        pn.pane.HTML(
            "<div style='font:13px system-ui,sans-serif;color:#fff'>"
            f"<div style='font-size:22px;font-weight:600'>{esc(info.name)}</div>"
            f"<div style='color:#d0e4f5'>owner console · signed in as <b>{esc(model.client.me.name)}</b>"
            f" at {esc(model.client.url)}</div></div>"
        ),
        pn.layout.HSpacer(),
        out,
        styles=_HEADER,
        sizing_mode="stretch_width",
        css_classes=["fednb-header"],
    )


def _console_view(model: ConsoleModel, logout: Callable[[], None]) -> pn.viewable.Viewable:
    inbox = model.inbox
    requests = _list("Pending requests", "fednb-pending")
    detail = _html("fednb-detail")
    release = pn.widgets.RadioButtonGroup(
        name="release", options={"manual release": "manual", "auto release": "auto"}, value="manual",
        button_type="primary", button_style="outline")
    approve = pn.widgets.Button(name="Approve", button_type="success", css_classes=["fednb-approve"],
                                width=110, stylesheets=[_BUTTON_CSS])
    reason = pn.widgets.TextInput(placeholder="reason to deny (the scientist sees it)", width=380)
    deny = pn.widgets.Button(name="Deny", button_type="danger", css_classes=["fednb-deny"], width=110,
                             stylesheets=[_BUTTON_CSS])
    held = _list("Held results", "fednb-held-list")
    decision = _html("fednb-decision-pane")
    run = _html("fednb-held-detail")
    release_btn = pn.widgets.Button(name="Release", button_type="success", css_classes=["fednb-release"],
                                    min_width=160, stylesheets=[_BUTTON_CSS])
    withhold_btn = pn.widgets.Button(name="Withhold", button_type="warning", css_classes=["fednb-withhold"],
                                     width=110, stylesheets=[_BUTTON_CSS])
    budgets = _html("fednb-budgets")
    users = _html("fednb-users")
    templates = _html("fednb-templates-pane")
    audit = _html("fednb-audit")
    status = pn.pane.HTML(css_classes=["fednb-status"], sizing_mode="stretch_width", margin=(4, 10))
    syncing = [False]

    def draw() -> None:
        syncing[0] = True
        try:
            requests.options = _options(inbox.request_options(), "— select a request to review —")
            requests.value = inbox.selected.id if inbox.selected else ""
            held.options = _options(inbox.run_options(), "— select a held result —")
            held.value = inbox.selected_run.id if inbox.selected_run else ""
        finally:
            syncing[0] = False
        detail.object = inbox.detail_html()
        decision.object = inbox.decision_html()
        run.object = inbox.run_body_html()
        to = inbox.selected_run.scientist if inbox.selected_run else ""
        release_btn.name = f"Release to {to}" if to else "Release"
        budgets.object = model.budget.html()
        status.object = (
            "<div role='status' style='font:13px system-ui,sans-serif;background:#ddf4ff;color:#0a3069;"
            f"border:1px solid #54aeff;border-radius:6px;padding:6px 12px'>{esc(inbox.message)}</div>"
            if inbox.message else "")
        approve.disabled = deny.disabled = inbox.selected is None
        release_btn.disabled = withhold_btn.disabled = inbox.selected_run is None
    def draw_slow() -> None:
        users.object = model.users_html()
        templates.object = model.templates_html()
        audit.object = model.audit_html()

    def on_select(event: Any) -> None:
        if not syncing[0]:
            inbox.select(event.new or None)

    def on_select_run(event: Any) -> None:
        if not syncing[0]:
            inbox.select_run(event.new or None)

    def on_deny(_e: Any) -> None:
        _settle()
        if inbox.deny(_typed(reason)):
            reason.value = reason.value_input = ""
        draw_slow()

    def act(fn: Callable[[], bool]) -> Callable[[Any], None]:
        def handler(_e: Any) -> None:
            _settle()  # the selection and release mode as the owner last set them
            fn()
            draw_slow()

        return handler

    requests.param.watch(on_select, "value")
    held.param.watch(on_select_run, "value")
    approve.on_click(act(lambda: inbox.approve(release.value)))
    deny.on_click(on_deny)
    release_btn.on_click(act(inbox.release))
    withhold_btn.on_click(act(inbox.withhold))
    inbox.on_change(draw)
    model.budget.on_change(draw)
    draw()
    draw_slow()

    def tick() -> None:
        with contextlib.suppress(FednbError, OSError):
            model.refresh()
            draw_slow()

    poll = None
    with contextlib.suppress(RuntimeError):  # outside a server session (tests), no periodic refresh
        poll = pn.state.add_periodic_callback(tick, period=REFRESH_MS)

    def on_logout(_e: Any) -> None:
        if poll is not None:
            poll.stop()  # the session forgets the model, its client and the token
        model.client.close()
        logout()

    out = pn.widgets.Button(name="Log out", button_type="light", width=90, css_classes=["fednb-logout"])
    out.on_click(on_logout)
    # each tab: its list, then the actions, then the decision and what follows from it
    requests_tab = pn.Column(
        requests,
        _toolbar(release, approve),
        _toolbar(reason, deny),
        detail,
        sizing_mode="stretch_width",
    )
    held_tab = pn.Column(
        pn.pane.HTML(_HELD_HELP, sizing_mode="stretch_width", margin=(0, 10)),
        held,
        decision,
        _toolbar(release_btn, withhold_btn),
        run,
        sizing_mode="stretch_width",
    )
    tabs = pn.Tabs(
        ("Pending requests", requests_tab),
        ("Held results", held_tab),
        ("Budgets", budgets),
        ("Templates", pn.Column(pn.pane.HTML(_TEMPLATES_HELP, sizing_mode="stretch_width", margin=(0, 10)),
                                templates, sizing_mode="stretch_width")),
        ("Users", users),
        ("Audit log", audit),
        dynamic=False,
        sizing_mode="stretch_width",
    )
    return pn.Column(_header(model, out), status, tabs, sizing_mode="stretch_width",
                     css_classes=["fednb-console"])


def console_app(domain_url: str | None, *, insecure: bool = False, relay: str | None = None,
                relay_name: str | None = None,
                identity: str | None = None) -> Callable[[], pn.viewable.Viewable]:
    """A function building one session of the owner's console for ``domain_url``, or for
    the domain named ``relay_name`` behind ``relay`` (its key pinned to ``identity``)."""
    where = f"{relay_name} via {relay}" if relay else str(domain_url)

    def make() -> pn.viewable.Viewable:
        token = pn.widgets.PasswordInput(
            name="Owner token", placeholder="fednb_…", width=440, css_classes=["fednb-token"]
        )
        login = pn.widgets.Button(name="Log in", button_type="primary", css_classes=["fednb-login"],
                                  width=120)
        error = pn.pane.HTML(css_classes=["fednb-login-error"])
        form = pn.Column(
            pn.pane.HTML(
                "<div style='font:14px system-ui,sans-serif;color:#1f2328'>"
                f"<div style='font-size:22px;font-weight:600;color:{_NAVY}'>fednb owner console</div>"
                f"<div style='color:{_MUTED};margin:6px 0 2px'>Domain: <b>{esc(where)}</b></div>"
                f"<div style='color:{_MUTED}'>Log in with the domain owner's token. It stays in this "
                "browser session's server-side state and is dropped when you log out.</div></div>"
            ),
            token,
            login,
            error,
            css_classes=["fednb-login-form"],
            styles={"border": "1px solid #d0d7de", "border-top": f"6px solid {_NAVY}",
                    "border-radius": "8px", "padding": "12px 16px", "background": "#fff"},
            width=480,
            margin=(40, 20),
        )
        page = pn.Column(form, sizing_mode="stretch_width")

        def logout() -> None:
            # a field's late update may have put the token back (see _typed): the form
            # comes back empty, without the last error
            token.value = token.value_input = ""
            error.object = ""
            page[:] = [form]

        def on_login(_e: Any) -> None:
            secret = _typed(token)
            token.value = token.value_input = ""  # the field keeps nothing
            if not secret:
                error.object = "<span role='alert' style='color:#cf222e'>enter a token</span>"
                return
            try:
                model = ConsoleModel(connect(domain_url, secret, insecure=insecure, relay=relay,
                                             domain=relay_name, identity=identity))
            except (InvalidInput, InsecureSetting) as exc:
                error.object = f"<span role='alert' style='color:#cf222e'>{esc(exc)}</span>"
                return
            except ConnectionFailed as exc:  # through a relay: also a key that is not the pinned one
                error.object = f"<span role='alert' style='color:#cf222e'>{esc(exc.message)}</span>"
                return
            except FednbError:
                error.object = "<span role='alert' style='color:#cf222e'>the domain refused this token</span>"
                return
            except OSError:
                error.object = f"<span role='alert' style='color:#cf222e'>cannot reach {esc(where)}"\
                    "</span>"
                return
            error.object = ""
            page[:] = [_console_view(model, logout)]

        login.on_click(on_login)
        return page

    return make
