"""A busy or broken store over real HTTP: clear 503s and retries, and 500s that echo nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

import fednb
from fednb.domain import _store
from fednb.errors import DomainBusy, InternalError, InvalidInput
from tests._stores import execute_sql, libpq_conninfo
from tests.conftest import Hospital, NewStore, make_hospital

pytestmark = pytest.mark.stores  # on SQLite and on PostgreSQL


@pytest.fixture
def hospital(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
             new_store: NewStore) -> Iterator[Hospital]:
    monkeypatch.setattr(_store, "BUSY_TIMEOUT_MS", 100)  # give up on a held lock quickly
    h = make_hospital(tmp_path_factory.mktemp("store") / "st-mary", store_url=new_store())
    yield h
    h.server.stop()


@fednb.remote
def mean_x(data):
    return fednb.Update(weights={"m": np.asarray(data["x"].mean("patient"))})


def hold_write_lock(h: Hospital) -> Callable[[], None]:
    """Another process's writer (the owner's CLI, say) holding the database's write lock;
    returns the call that ends its transaction."""
    url = h.dom.store.url
    if url.startswith("sqlite"):
        conn = sqlite3.connect(h.dom.home / "store.sqlite", isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        return conn.close  # closing rolls back, which releases the lock
    import psycopg

    pg = psycopg.connect(libpq_conninfo(url))  # a transaction from the first statement
    pg.execute("SELECT pg_advisory_xact_lock(%s)", (_store.WRITE_LOCK_KEY,))
    return pg.close


def test_a_write_against_a_held_lock_is_a_503_busy_not_a_crash(hospital: Hospital) -> None:
    alice = hospital.alice()
    release = hold_write_lock(hospital)
    try:
        with pytest.raises(DomainBusy, match="busy; try again"):
            mean_x.request(alice, "breast-cancer")  # a POST: not retried, the caller decides
    finally:
        release()
    assert mean_x.request(alice, "breast-cancer").status == "pending"  # and it serves on


def test_the_client_retries_an_idempotent_run_until_the_lock_is_released(hospital: Hospital) -> None:
    alice = hospital.alice()
    req = mean_x.request(alice, "breast-cancer", runs=1)
    hospital.owner().requests.get(req.id).approve()
    threading.Timer(0.5, hold_write_lock(hospital)).start()
    run = req.run()  # a PUT with the client's run id: 503s are retried with back-off
    info = run.wait(120)
    assert info.status == "succeeded", hospital.dom.runs.owner_view(run.id).owner_log
    assert [r.id for r in alice.runs.list()] == [run.id]  # one run, not one per retry


def test_an_unforeseen_store_failure_is_a_500_that_echoes_nothing(hospital: Hospital) -> None:
    alice = hospital.alice()
    cascade = "" if hospital.dom.store.url.startswith("sqlite") else " CASCADE"  # runs refer to it
    execute_sql(hospital.dom.store.url, "DROP TABLE requests" + cascade)  # corrupt the running store
    with pytest.raises(InternalError) as err:
        alice.requests.list()
    text = str(err.value)
    assert "owner can find the details" in text
    assert "requests" not in text and "SELECT" not in text
    assert not any(word in text.lower() for word in ("sqlite", "postgres", "psycopg", "relation"))


@fednb.remote
def log_nul(data):
    import sys

    print("a NUL \x00 in the log", file=sys.stderr)  # PostgreSQL's text cannot hold one
    return fednb.Update(weights={"m": np.asarray(data["x"].mean("patient"))})


def test_text_holding_nul_is_kept_or_not_found_never_a_500(hospital: Hospital) -> None:
    """SQLite keeps U+0000 in text; PostgreSQL refuses it. Hostile ids and an untrusted
    job's log that hold one behave alike on both stores; reviewed text (a request's source
    and description, a deny reason) holding one is refused, never rewritten."""
    alice, auth = hospital.alice(), {"Authorization": f"Bearer {hospital.alice_token}"}
    base = hospital.url + "/api/v1"
    assert httpx.get(f"{base}/requests/abcdefgh%00ijk", headers=auth).status_code == 404
    assert httpx.get(f"{base}/runs/abcdefgh%00ijk", headers=auth).status_code == 404
    r = httpx.get(f"{base}/runs", params={"request_id": "a\x00b"}, headers=auth)
    assert r.status_code == 200 and r.json() == []
    body = fednb.protocol.RequestCreate(
        id="nul-description-1", function_name="log_nul", source=log_nul.source, code_hash=log_nul.code_hash,
        datasets=["breast-cancer"], runs=1).model_dump(mode="json")
    r = httpx.post(f"{base}/requests", json={**body, "description": "see \x00 here"}, headers=auth)
    assert r.status_code == 422 and "NUL" in r.json()["error"]["message"]
    req = log_nul.request(alice, "breast-cancer", runs=1, description="see here")
    hospital.owner().requests.get(req.id).approve()
    info = req.run().wait(120)
    log = hospital.dom.runs.owner_view(info.id).owner_log or ""
    assert info.status == "succeeded", log
    assert "a NUL \x00 in the log" in log or "a NUL \ufffd in the log" in log
    denied = mean_x.request(alice, "breast-cancer")
    with pytest.raises(InvalidInput):
        hospital.owner().requests.get(denied.id).deny("no \x00 thanks")
    assert alice.requests.get(denied.id).info.status == "pending"
    hospital.owner().requests.get(denied.id).deny("no thanks")
    assert hospital.dom.verify_audit().ok
