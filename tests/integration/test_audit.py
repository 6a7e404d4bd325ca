"""The HMAC-chained audit log detects edits, deletions and truncation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fednb.domain import Domain
from tests._stores import execute_sql
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
