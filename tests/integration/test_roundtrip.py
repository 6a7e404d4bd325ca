"""The request → review → run → release round trip against a real domain on loopback."""

from __future__ import annotations

import time

import numpy as np
import pytest

import fednb
from fednb.errors import ParamsOutOfSchema, RequestNotApproved, RunFailed, RunRefused
from tests.conftest import Hospital, breast_cancer_dataset

pytestmark = pytest.mark.stores  # on SQLite and on PostgreSQL


@fednb.remote(params={"col": (int, 0, 29)})
def column_mean(data, col=0):
    return np.asarray(data.x.values[:, col].mean())


def approve(h: Hospital, request_id: str, release: str = "manual") -> None:
    owner = h.owner()
    (req,) = [r for r in owner.requests.pending() if r.id == request_id]
    req.approve(release=release)


def release_all(h: Hospital) -> None:
    for held in h.owner().results.held():
        held.release()


def test_private_value_comes_back_after_approval_and_release(hospital: Hospital) -> None:
    alice = hospital.alice()
    on_mock = column_mean.run_on_mock(alice, "breast-cancer", col=0)
    req = column_mean.request(alice, "breast-cancer", runs=2)
    assert req.status == "pending"
    approve(hospital, req.id)
    run = req.run(col=0)
    info = run.wait(120)
    assert (info.status, info.reason, info.release_state) == ("succeeded", "ok", "held")
    with pytest.raises(fednb.errors.ResultNotReady):
        run.result(timeout=0.5)
    release_all(hospital)
    result = run.result(timeout=10)
    private = breast_cancer_dataset().x.values[:, 0].mean()
    assert float(result.weights["result"]) == pytest.approx(private)
    assert float(on_mock.weights["result"]) != pytest.approx(private)
    assert result.num_examples == 569


def test_unapproved_and_denied_requests_cannot_run(hospital: Hospital) -> None:
    alice = hospital.alice()
    pending = column_mean.request(alice, "breast-cancer")
    with pytest.raises(RequestNotApproved):
        pending.run(col=1)
    denied = column_mean.request(alice, "breast-cancer")
    (r,) = [r for r in hospital.owner().requests.pending() if r.id == denied.id]
    r.deny("uses too many runs")
    assert denied.refresh().info.review_reason == "uses too many runs"
    with pytest.raises(RequestNotApproved):
        denied.run(col=1)
    # clean up the pending one so other tests see a tidy inbox
    hospital.owner().requests.get(pending.id).deny("test cleanup")


def test_a_changed_function_is_pending_again_with_a_diff(hospital: Hospital) -> None:
    alice = hospital.alice()
    first = globals()["column_mean"].request(alice, "breast-cancer")
    approve(hospital, first.id)

    @fednb.remote(params={"col": (int, 0, 29)})
    def column_mean(data, col=0):  # the same function, one line changed
        return np.asarray(data.x.values[:, col].max())

    changed = column_mean
    assert changed.code_hash != first.info.code_hash
    again = changed.request(alice, "breast-cancer")
    assert again.status == "pending"
    (seen,) = [r for r in hospital.owner().requests.pending() if r.id == again.id]
    assert seen.info.previous_hash == first.info.code_hash
    assert "-    return np.asarray(data.x.values[:, col].mean())" in (seen.info.diff or "")
    assert "+    return np.asarray(data.x.values[:, col].max())" in (seen.info.diff or "")
    seen.deny("not now")


def test_parameters_and_weights_outside_the_approved_schema_are_refused(hospital: Hospital) -> None:
    @fednb.remote(params={"lr": (float, 1e-4, 1.0)})
    def step(data, weights, lr=0.1):
        return fednb.Update(weights={"w": weights["w"] - lr})

    alice = hospital.alice()
    w0 = {"w": np.zeros(30, dtype=np.float32)}
    req = step.request(alice, "breast-cancer", runs=3, weights=w0)
    approve(hospital, req.id)
    with pytest.raises(ParamsOutOfSchema, match="outside the approved range"):
        req.run(weights=w0, lr=5.0)
    with pytest.raises(ParamsOutOfSchema, match="not approved"):
        req.run(weights=w0, lr=0.1, epochs=3)
    with pytest.raises(ParamsOutOfSchema, match="approved"):
        req.run(weights={"w": np.zeros(31, dtype=np.float32)}, lr=0.1)
    with pytest.raises(ParamsOutOfSchema):
        req.run(weights={"w": np.zeros(30, dtype=np.float64)}, lr=0.1)
    assert req.refresh().info.runs_used == 0  # refusals happen before anything runs
    run = req.run(weights=w0, lr=0.5)
    assert run.wait(120).status == "succeeded"


def test_runs_are_capped_and_idempotent(hospital: Hospital) -> None:
    alice = hospital.alice()
    req = column_mean.request(alice, "breast-cancer", runs=2)
    approve(hospital, req.id)
    a = req.run(col=3, run_id="run-fixed-0001")
    again = req.run(col=3, run_id="run-fixed-0001")  # a resumed orchestrator re-sends
    assert again.id == a.id
    req.run(col=4)
    with pytest.raises(RunRefused, match="approved runs"):
        req.run(col=5)
    assert req.refresh().info.runs_used == 2
    for run in hospital.alice().runs.list(request_id=req.id):
        run.wait(120)
    deadline = time.monotonic() + 10
    while req.id in hospital.dom.pool().warm() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert req.id not in hospital.dom.pool().warm()  # its warm worker was retired


def test_a_scientist_outside_allow_no_dp_is_refused(hospital: Hospital) -> None:
    alice = hospital.alice()
    req = column_mean.request(alice, "breast-cancer")
    approve(hospital, req.id)
    hospital.dom.policy.update(allow_no_dp=["bob"])
    try:
        with pytest.raises(RunRefused, match="without differential privacy"):
            req.run(col=0)
    finally:
        hospital.dom.policy.update(allow_no_dp=["alice", "bob"])


def test_metrics_are_declared_clipped_and_undeclared_ones_dropped(hospital: Hospital) -> None:
    @fednb.remote(metrics={"loss": (0.0, 1.0)})
    def with_metrics(data):
        return fednb.Update(weights={"n": np.asarray(data.sizes["patient"])},
                            metrics={"loss": 7.5, "leak": float(data.x.values.sum())})

    alice = hospital.alice()
    req = with_metrics.request(alice, "breast-cancer")
    approve(hospital, req.id)
    run = req.run()
    assert run.wait(120).status == "succeeded"
    release_all(hospital)
    out = run.result(timeout=10)
    assert out.metrics == {"loss": 1.0}


def test_withheld_results_never_reach_the_scientist(hospital: Hospital) -> None:
    alice = hospital.alice()
    req = column_mean.request(alice, "breast-cancer")
    approve(hospital, req.id)
    run = req.run(col=2)
    run.wait(120)
    (held,) = [r for r in hospital.owner().results.held() if r.id == run.id]
    held.withhold()
    with pytest.raises(RunFailed, match="withheld"):
        run.result(timeout=5)
