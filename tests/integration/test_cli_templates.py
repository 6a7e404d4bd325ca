"""``fednb domain templates``: list, add, approve and remove stats templates on a real
domain home through the real command line; the domain then matches requests with them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from lifelines.datasets import load_rossi

from fednb.cli import main
from fednb.domain import Domain
from fednb.protocol import RequestCreate, code_hash
from fednb.protocol._stats import StatsSpec

BOUNDS = {"arrest": (0.0, 1.0), "fin": (0.0, 1.0), "wexp": (0.0, 1.0), "paro": (0.0, 1.0)}
TABLE = {"op": "table", "variables": ["wexp", "paro"], "levels": {"wexp": [0, 1], "paro": [0, 1]}}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def file_table(dom: Domain, token: str) -> str:
    """File one 2-D table as the scientist holding ``token``; the request's status on submission."""
    source = StatsSpec.model_validate(TABLE).model_dump_json()
    body = RequestCreate(id=uuid.uuid4().hex, function_name="stats_table", kind="stats", source=source,
                         code_hash=code_hash(source), datasets=["rossi"], runs=1)
    return dom.requests.submit(dom.authenticate(token), body).status


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "general"
    dom = Domain.create(home, name="General")
    dom.add_user("olivia", role="owner")
    dom.add_user("oscar", role="owner")
    (tmp_path / "alice.token").write_text(dom.add_user("alice", epsilon=10.0))
    d = load_rossi().astype(np.float64)
    data = xr.Dataset({c: ("patient", d[c].to_numpy()) for c in BOUNDS})
    dom.add_dataset("rossi", data, bounds=BOUNDS)
    dom.policy.update(stats_protection={"rossi": "disclosure"})
    dom.close()
    return home


def test_templates_through_the_cli(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = ["--home", str(home)]
    assert run_cli(capsys, "domain", "templates", "list", *h)[1].startswith("no stats templates")
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps({"name": "table-2p", "functions": ["crosstab"], "datasets": ["rossi"],
                                "scientists": ["alice"], "protection": "disclosure", "reviewers": 2}))
    rc, out, _ = run_cli(capsys, "domain", "templates", "add", str(spec), "--reviewer", "olivia", *h)
    assert rc == 0 and "waiting for a second owner" in out
    rc, out, _ = run_cli(capsys, "domain", "templates", "list", *h)
    row = next(line for line in out.splitlines() if line.startswith("table-2p"))
    assert "crosstab" in row and "alice" in row and "olivia (1/2)" in row and "waiting" in row

    dom = Domain.open(home)
    try:
        assert file_table(dom, (tmp_path / "alice.token").read_text()) == "pending"  # not active yet
    finally:
        dom.close()
    # the two-person rule: the one who added it cannot be the second
    rc, _, err = run_cli(capsys, "domain", "templates", "approve", "table-2p", "--reviewer", "olivia", *h)
    assert rc == 2 and "two-person rule" in err
    rc, out, _ = run_cli(capsys, "domain", "templates", "approve", "table-2p", "--reviewer", "oscar", *h)
    assert rc == 0 and "active" in out
    assert "olivia, oscar (2/2)" in run_cli(capsys, "domain", "templates", "list", *h)[1]

    dom = Domain.open(home)
    try:
        assert file_table(dom, (tmp_path / "alice.token").read_text()) == "approved"
        approved = [r for r in dom.requests.list(status="approved")]
        assert [r.reviewed_by for r in approved] == ["template:table-2p"]
    finally:
        dom.close()
    rc, out, _ = run_cli(capsys, "domain", "show", approved[0].id, *h)
    assert rc == 0 and "approved by template table-2p" in out

    assert run_cli(capsys, "domain", "templates", "remove", "table-2p", "--reviewer", "oscar", *h)[0] == 0
    assert run_cli(capsys, "domain", "templates", "list", *h)[1].startswith("no stats templates")
    rc, _, err = run_cli(capsys, "domain", "templates", "remove", "table-2p", *h)
    assert rc == 2 and "no stats template called 'table-2p'" in err
    audit = run_cli(capsys, "domain", "audit", "--limit", "50", *h)[1]
    assert "template.added" in audit and "template.approved" in audit and "template.removed" in audit


def test_a_bad_template_file_is_refused_with_the_field(home: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "functions": ["no_such_function"]}))
    rc, _, err = run_cli(capsys, "domain", "templates", "add", str(bad), "--home", str(home))
    assert rc == 2 and "unknown stats functions" in err
    rc, _, err = run_cli(capsys, "domain", "templates", "add", str(tmp_path / "missing.json"),
                         "--home", str(home))
    assert rc == 2 and "cannot read template" in err
