"""The owner's desk for stats templates: ``DomainClient.templates`` over HTTP and the
console's "Templates" tab (templates, requests they approved, disclosure refusals),
against a real domain on loopback holding lifelines' Rossi recidivism data."""

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
from fednb.ui import ConsoleModel, _panel
from fednb.ui._console import approved_by

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
