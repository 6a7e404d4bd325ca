"""A busy or broken store over real HTTP: clear 503s and retries, and 500s that echo nothing."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import fednb
from fednb.domain import _store
from fednb.errors import DomainBusy, InternalError
from tests.conftest import Hospital, make_hospital


@pytest.fixture
def hospital(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hospital]:
    monkeypatch.setattr(_store, "BUSY_TIMEOUT_MS", 100)  # give up on a held lock quickly
    h = make_hospital(tmp_path_factory.mktemp("store") / "st-mary")
    yield h
    h.server.stop()


@fednb.remote
def mean_x(data):
    return fednb.Update(weights={"m": np.asarray(data["x"].mean("patient"))})


def hold_write_lock(h: Hospital) -> sqlite3.Connection:
    """Another process's writer (the owner's CLI, say) holding the database's write lock."""
    conn = sqlite3.connect(h.dom.home / "store.sqlite", isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_a_write_against_a_held_lock_is_a_503_busy_not_a_crash(hospital: Hospital) -> None:
    alice = hospital.alice()
    conn = hold_write_lock(hospital)
    try:
        with pytest.raises(DomainBusy, match="busy; try again"):
            mean_x.request(alice, "breast-cancer")  # a POST: not retried, the caller decides
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    assert mean_x.request(alice, "breast-cancer").status == "pending"  # and it serves on


def test_the_client_retries_an_idempotent_run_until_the_lock_is_released(hospital: Hospital) -> None:
    alice = hospital.alice()
    req = mean_x.request(alice, "breast-cancer", runs=1)
    hospital.owner().requests.get(req.id).approve()
    conn = hold_write_lock(hospital)
    threading.Timer(0.5, lambda: (conn.execute("ROLLBACK"), conn.close())).start()
    run = req.run()  # a PUT with the client's run id: 503s are retried with back-off
    info = run.wait(120)
    assert info.status == "succeeded", hospital.dom.runs.owner_view(run.id).owner_log
    assert [r.id for r in alice.runs.list()] == [run.id]  # one run, not one per retry


def test_an_unforeseen_store_failure_is_a_500_that_echoes_nothing(hospital: Hospital) -> None:
    alice = hospital.alice()
    with sqlite3.connect(hospital.dom.home / "store.sqlite") as conn:
        conn.execute("DROP TABLE requests")  # corrupt the store under the running server
    with pytest.raises(InternalError) as err:
        alice.requests.list()
    text = str(err.value)
    assert "owner can find the details" in text
    assert "requests" not in text and "sqlite" not in text.lower() and "SELECT" not in text
