"""The owner's desk for stats templates: ``DomainClient.templates`` over HTTP, the
console's "Templates" tab and the ipywidgets Inbox's (templates, requests they approved,
disclosure refusals), against a real domain on loopback holding lifelines' Rossi
recidivism data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import xarray as xr
from lifelines.datasets import load_rossi

import fednb
from fednb.client import DomainClient, RemoteRequest
from fednb.domain import Domain, Server
from fednb.errors import Conflict, InvalidInput, PermissionDenied
from fednb.protocol import RequestCreate, code_hash
from fednb.protocol._stats import StatsSpec
from fednb.ui import ConsoleModel, Inbox, _panel
from fednb.ui._console import TemplatesModel, approved_by

BOUNDS = {"arrest": (0.0, 1.0), "wexp": (0.0, 1.0), "paro": (0.0, 1.0), "prio": (0.0, 20.0)}
HOSTILE = "<script>alert(1)</script>"


@dataclass
class Site:
    dom: Domain
    server: Server
    owner_token: str
    alice_token: str

    def owner(self) -> DomainClient:
        return fednb.connect(self.server.url, token=self.owner_token)

    def alice(self) -> DomainClient:
        return fednb.connect(self.server.url, token=self.alice_token)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    dom = Domain.create(tmp_path_factory.mktemp("ui-templates") / "general", name="General")
    olivia = dom.add_user("olivia", role="owner")
    alice = dom.add_user("alice", epsilon=10.0)
    d = load_rossi().astype(np.float64)
    dom.add_dataset("rossi", xr.Dataset({c: ("patient", d[c].to_numpy()) for c in BOUNDS}), bounds=BOUNDS)
    dom.policy.update(stats_protection={"rossi": "disclosure"})
    s = Site(dom, dom.serve(port=0), olivia, alice)
    yield s
    s.server.stop()


def file(client: DomainClient, **spec: object) -> RemoteRequest:
    source = StatsSpec.model_validate(spec).model_dump_json()
    return client.requests.submit(RequestCreate(
        id=uuid.uuid4().hex, function_name=f"stats_{spec['op']}", kind="stats", source=source,
        code_hash=code_hash(source), datasets=["rossi"], runs=1))


def test_the_client_manages_templates_and_the_console_shows_them(site: Site) -> None:
    owner, alice = site.owner(), site.alice()
    assert owner.templates.list() == [] and "no stats templates" in repr(owner.templates)
    info = owner.templates.add({"name": "tables", "functions": ["crosstab"], "datasets": ["rossi"],
                                "scientists": ["alice"], "max_runs": 1, "protection": "disclosure"})
    assert info.active and info.approved_by == ["olivia"]
    assert owner.templates.get("tables").template.functions == ["crosstab"]
    with pytest.raises(Conflict, match="exists"):
        owner.templates.add(info.template)
    with pytest.raises(Conflict, match="already approved"):
        owner.templates.approve("tables")
    with pytest.raises(PermissionDenied, match="owner"):  # the owner's desk only
        alice.templates.list()

    # within the template: approved with no owner action, and the console says by which
    ok = file(alice, op="table", variables=["wexp", "paro"], levels={"wexp": [0, 1], "paro": [0, 1]})
    assert ok.info.status == "approved" and ok.info.reviewed_by == "template:tables"
    assert approved_by(ok.info.reviewed_by) == "approved by template tables"
    assert approved_by("olivia") == "approved by olivia"

    # prio = 15 holds one prisoner: the template approves the table, the release is refused
    small = file(alice, op="table", variables=["prio"], levels={"prio": list(range(19))})
    assert small.info.status == "approved"
    with pytest.raises(InvalidInput, match="min_cell_count"):
        small.run()

    page = ConsoleModel(owner).templates_html()
    for text in ("tables", "crosstab", "rossi", "alice", "disclosure", "olivia (1/1)", "active",
                 "approved by template tables", ok.id, small.id, "min_cell_count",
                 "Disclosure refusals"):
        assert text in page, text
    refusals = page.split("fednb-refusals", 1)[1]
    assert small.id in refusals and ok.id not in refusals

    # the Panel console has the tab, filled after login
    app = _panel.console_app(site.server.url)()
    app[0][1].value_input = site.owner_token
    app[0][2].clicks += 1
    tabs = app[0][2]
    names = list(tabs._names)
    assert "Templates" in names
    pane = tabs[names.index("Templates")][1]
    assert "approved by template tables" in pane.object and small.id in pane.object

    owner.templates.remove("tables")
    assert owner.templates.list() == []
    assert file(alice, op="table", variables=["wexp"], levels={"wexp": [0, 1]}).info.status == "pending"
    with pytest.raises(KeyError):
        owner.templates.get("tables")


def test_template_text_is_escaped_in_the_console(site: Site) -> None:
    """Template fields are the owner's, but a dataset or scientist name typed into one may
    come from elsewhere: every cell is shown as text."""
    owner = site.owner()
    owner.templates.add({"name": "esc", "functions": ["describe"], "scientists": [HOSTILE]})
    try:
        page = ConsoleModel(owner).templates_html()
        assert HOSTILE not in page and "&lt;script&gt;" in page
    finally:
        owner.templates.remove("esc")


def test_the_inbox_has_a_templates_tab_and_a_second_owner_approves_there(site: Site) -> None:
    """The Inbox's third tab: the same rows as the console (template_row), the requests a
    template approved and the refusals; a template under the two-person rule waits until
    another owner approves it with the tab's button, and only then approves requests."""
    owner, alice = site.owner(), site.alice()
    oscar_token = site.dom.add_user(f"oscar-{uuid.uuid4().hex[:6]}", role="owner")
    oscar = fednb.connect(site.server.url, token=oscar_token)
    owner.templates.add({"name": "two.person", "functions": ["crosstab"], "datasets": ["rossi"],
                         "scientists": ["alice"], "protection": "disclosure", "reviewers": 2})
    try:
        waiting = file(alice, op="table", variables=["paro"], levels={"paro": [0, 1]})
        assert waiting.info.status == "pending"  # not active yet: reviewed as usual
        owner.requests.get(waiting.id).deny("test: filed before the template was active")

        mine = Inbox(owner, poll=0)  # the owner who added it may not approve it again
        assert mine._tabs.get_title(Inbox.TEMPLATES_TAB) == "Templates (1)"
        assert "waiting for a second owner" in mine._templates.value
        assert "olivia (1/2)" in mine._templates.value
        assert mine._waiting.options == () and mine._approve_tpl.disabled
        mine.close()

        view = Inbox(oscar, poll=0)
        assert view._waiting.options == ("two.person",) and not view._approve_tpl.disabled
        view._approve_tpl.click()
        assert owner.templates.get("two.person").active
        assert "approved template two.person: active" in view._templates.value
        assert "(2/2)" in view._templates.value and view._waiting.options == ()

        ok = file(alice, op="table", variables=["paro"], levels={"paro": [0, 1]})
        assert ok.info.reviewed_by == "template:two.person"
        small = file(alice, op="table", variables=["prio"], levels={"prio": list(range(19))})
        with pytest.raises(InvalidInput, match="min_cell_count"):
            small.run()
        view._tabs.selected_index = Inbox.TEMPLATES_TAB  # picking the tab re-reads it
        page = view._templates.value
        for text in ("two.person", "crosstab", "rossi", "disclosure", "active",
                     "approved by template two.person", ok.id, small.id, "min_cell_count"):
            assert text in page, text
        assert page.split("fednb-refusals", 1)[1].count(small.id) == 1
        # the console shows the same model's page
        assert TemplatesModel(owner).html().split("fednb-refusals")[0] in ConsoleModel(owner).templates_html()
        view._approve_tpl.click()  # nothing waits: a click does nothing
        view.close()
    finally:
        owner.templates.remove("two.person")


def test_the_inbox_shows_a_refused_template_approval(site: Site) -> None:
    """A second approval by someone who is not an owner account of the domain is refused
    by the domain, and the tab says why instead of raising."""
    owner = site.owner()
    owner.templates.add({"name": "refused", "functions": ["describe"], "reviewers": 2})
    try:
        model = TemplatesModel(owner)
        assert model.waiting() == []  # the adder's approval counts once
        assert model.approve("refused") is False
        assert "approve refused" in model.message and "already approved" in model.message
        assert not owner.templates.get("refused").active
    finally:
        owner.templates.remove("refused")
