"""The HMAC-chained audit log detects edits, deletions and truncation, also after growth."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest

import fednb
from fednb.domain import Domain
from fednb.errors import InternalError
from tests._stores import execute_sql
from tests.adversarial.conftest import require_sandbox
from tests.conftest import BC_BOUNDS, NewStore, breast_cancer_dataset

pytestmark = pytest.mark.stores  # on SQLite and on PostgreSQL


@pytest.fixture
def dom(tmp_path: Path, new_store: NewStore) -> Domain:
    d = Domain.create(tmp_path / "h", name="Audit Hospital", store_url=new_store())
    d.add_user("alice")
    d.add_user("olivia", role="owner")
    d.policy.update(allow_no_dp=["alice"])
    d.add_dataset("bc", breast_cancer_dataset(), bounds=BC_BOUNDS)
    d.revoke_user("alice")
    return d


def sql(dom: Domain, statement: str) -> None:
    dom.store.close()
    execute_sql(dom.store.url, statement)  # someone with write access to the database


def test_the_chain_verifies_and_the_key_is_private(dom: Domain) -> None:
    report = dom.verify_audit()
    assert report.ok, report.problems
    assert report.entries == 6
    assert stat.S_IMODE((dom.home / "audit.key").stat().st_mode) == 0o600
    key = (dom.home / "audit.key").read_bytes()
    if dom.store.url.startswith("sqlite"):
        assert key not in (dom.home / "store.sqlite").read_bytes()
    else:
        assert not (dom.home / "store.sqlite").exists()  # the store is the server's alone


def test_an_edit_is_detected(dom: Domain) -> None:
    sql(dom, "UPDATE audit SET details = '{\"user\": \"mallory\"}' WHERE seq = 2")
    report = Domain.open(dom.home).verify_audit()
    assert not report.ok
    assert any("entry 2" in p and "altered" in p for p in report.problems)


def test_a_deletion_is_detected(dom: Domain) -> None:
    sql(dom, "DELETE FROM audit WHERE seq = 3")
    report = Domain.open(dom.home).verify_audit()
    assert not report.ok
    assert any("missing" in p for p in report.problems)


def test_a_truncation_is_detected(dom: Domain) -> None:
    sql(dom, "DELETE FROM audit WHERE seq >= 5")
    report = Domain.open(dom.home).verify_audit()
    assert not report.ok
    assert any("truncated" in p for p in report.problems)


def test_a_forged_entry_without_the_key_is_detected(dom: Domain) -> None:
    sql(dom, "INSERT INTO audit (seq, ts, actor, action, details, prev, mac) "
             "SELECT 7, ts, 'owner', 'user.added', '{}', mac, 'f' || substr(mac, 2) "
             "FROM audit WHERE seq = 6")
    report = Domain.open(dom.home).verify_audit()
    assert not report.ok


@fednb.remote
def total(data):
    return {"n": np.asarray([float(data.sizes["patient"])])}


def test_a_truncation_is_still_detected_after_the_log_grows(dom: Domain) -> None:
    """Issue #18, item 6: delete the last ``result.released`` entry with write access to the
    database only, then let two ordinary submissions arrive through the domain's API. The
    domain must not extend a chain that lost its published head (that would move the head
    past the gap): it refuses, loudly, and verification keeps reporting the truncation."""
    require_sandbox()
    bob = dom.add_user("bob")
    dom.policy.update(allow_no_dp=["bob"])
    owner = dom.add_user("oscar", role="owner")
    with dom.serve(port=0) as server:
        req = total.request(fednb.connect(server.url, token=bob), "bc")
        fednb.connect(server.url, token=owner).requests.get(req.id).approve()
        info = req.run().wait(120)
        assert info.status == "succeeded", info
        fednb.connect(server.url, token=owner).runs.get(info.id).release()
        run_id = info.id
    last = dom.audit.entries(1)[0]
    assert (last.action, json.loads(last.details)["run"]) == ("result.released", run_id)
    head = (dom.home / "audit.head").read_bytes()
    sql(dom, f"DELETE FROM audit WHERE seq = {last.seq} AND action = 'result.released'")

    reopened = Domain.open(dom.home)
    assert any("truncated" in p for p in reopened.verify_audit().problems)
    with reopened.serve(port=0) as server:
        client = fednb.connect(server.url, token=bob)
        for _ in range(2):  # the growth that used to move the head past the gap
            with pytest.raises(InternalError, match="audit log was tampered with"):
                total.request(client, "bc")
        assert [r.id for r in client.requests.list()] == [req.id]  # nothing more was recorded
    assert (dom.home / "audit.head").read_bytes() == head
    report = Domain.open(dom.home).verify_audit()
    assert not report.ok
    assert any("truncated" in p for p in report.problems), report.problems
    assert report.entries == last.seq - 1
