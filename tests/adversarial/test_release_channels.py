"""The release boundary of DP runs: failure, timing, structure and the endpoints around them.

Each test is one channel. The attacker (``eve``, DP only) holds an approved function that
behaves differently on the two neighbouring datasets of :func:`neighbours` (patient 0's
first feature is 20.57 in one and 5000 in the other): it raises, sleeps, returns NaN,
changes shapes, exits... The scientist's whole view of the runs -- RunInfo field by field
(times relative to the run's creation, which the scientist chose), the result's names,
shapes and dtypes, the charge, the budget, what the long poll and the listing endpoints
say and when -- must be the same on both; the owner's view must show that the attack
really ran (the real outcomes differ), so each test has teeth.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import numpy as np
import pytest

import fednb
from fednb.errors import InvalidInput
from fednb.protocol import RunInfo
from tests.adversarial.conftest import DPDomain, scientist_view, wait_warm

SLOT = 3.0
"""The release slot the owner approves (seconds): the worker is up before a slot starts,
so this is the run's own time, with room for a busy machine."""
DP = fednb.ClientDP(clip=1.0, noise_multiplier=4.0)
W0 = {"w": np.zeros(4, dtype=np.float32)}


# -- the attacker's functions: each behaves one way on 20.57 and another on 5000 ---------
@fednb.remote(metrics={"loss": (0.0, 1.0)})
def raise_if_large(data, weights):
    if data.x.values[0, 0] > 100:
        raise ValueError("patient 0 is large")
    return {"w": weights["w"] + 0.25}


@fednb.remote
def nan_if_large(data, weights):
    big = data.x.values[0, 0] > 100
    return {"w": weights["w"] + (np.nan if big else 0.25)}


@fednb.remote
def shape_if_large(data, weights):
    n = 5 if data.x.values[0, 0] > 100 else 4
    return {"w": np.ones(n, dtype=np.float32)}


@fednb.remote
def complex_if_large(data, weights):
    if data.x.values[0, 0] > 100:
        return {"w": weights["w"].astype(np.complex64)}
    return {"w": weights["w"]}


@fednb.remote
def exit_if_large(data, weights):
    import os

    if data.x.values[0, 0] > 100:
        os._exit(3)
    return {"w": weights["w"]}


@fednb.remote
def kill_self_if_large(data, weights):
    import os
    import signal

    if data.x.values[0, 0] > 100:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"w": weights["w"]}


@fednb.remote
def sleep_by_value(data, weights):
    import time

    time.sleep(min(float(data.x.values[0, 0]) / 2000.0, 1.5))  # 0.01 s or 1.5 s
    return {"w": weights["w"]}


@fednb.remote
def overrun_if_large(data, weights):
    import time

    if data.x.values[0, 0] > 100:
        time.sleep(60)  # far past the slot: cut
    return {"w": weights["w"]}


@fednb.remote
def huge_if_large(data, weights):
    n = 200_000_000 if data.x.values[0, 0] > 100 else 4  # 800 MB: over the output cap
    return {"w": np.ones(n, dtype=np.float32)}


@fednb.remote
def flood_log_if_large(data, weights):
    if data.x.values[0, 0] > 100:
        print("x" * (1 << 20) * 64)  # 64 MiB to the owner's log
    return {"w": weights["w"]}


@fednb.remote(metrics={"loss": (0.0, 1.0), "acc": (0.0, 1.0)})
def metric_if_large(data, weights):
    big = data.x.values[0, 0] > 100
    metrics = {"loss": float("nan")} if big else {"loss": 0.5, "acc": 0.5, "extra": 1.0}
    return fednb.Update(weights={"w": weights["w"]}, metrics=metrics)


MODULE_LEVEL_SOURCE = '''import numpy as _np
import xarray as _xr

_peek = _xr.open_zarr("/data/breast-cancer").x.values[0, 0]
if _peek > 100:
    raise RuntimeError("module-level code saw patient 0")


def start_fail(data, weights):
    return {"w": weights["w"]}
'''


# -- observing a run as the scientist -------------------------------------------------
@dataclass
class Seen:
    """What ``eve`` saw of one run, and (for the test's teeth) what really happened."""

    view: dict[str, Any]
    relative: dict[str, float | None]
    structure: dict[str, tuple[tuple[int, ...], str]]
    metrics: list[str]
    epsilon_spent: float
    real_status: str
    real_reason: str | None
    real_seconds: float


def _relative(info: RunInfo) -> dict[str, float | None]:
    def since(t: datetime | None) -> float | None:
        return None if t is None else round((t - info.created).total_seconds(), 6)

    return {"finished": since(info.finished), "release_at": since(info.release_at)}


def _scrub(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("created", "finished", "release_at")}


def observe(domain: DPDomain, fn: fednb.RemoteFunction, *, runs: int = 1,
            weights: dict[str, np.ndarray] | None = None, dataset: str = "breast-cancer") -> list[Seen]:
    """File ``fn`` as ``eve`` (DP), approve it as the owner (auto release, slot SLOT), run it
    ``runs`` times and return what eve saw of each run."""
    eve = domain.eve()
    w = W0 if weights is None else weights
    req = fn.request(eve, dataset=dataset, runs=runs, weights=w, dp=DP)
    domain.owner().requests.get(req.id).approve(release="auto", slot_s=SLOT)
    if dataset == "breast-cancer":  # the approval warms the first dataset's worker
        wait_warm(domain, req.id)
    seen = []
    for _ in range(runs):
        run = req.run(w)
        info = run.wait(timeout=120)
        update = run.result(timeout=60)
        real = domain.dom.runs.owner_view(run.id)
        spent = next(b.epsilon_spent for b in eve.budget if b.dataset == dataset)
        seen.append(Seen(_scrub(scientist_view(info)), _relative(info),
                         {k: (v.shape, str(v.dtype)) for k, v in update.weights.items()},
                         sorted(update.metrics), spent, real.status, real.reason,
                         (real.finished - real.created).total_seconds() if real.finished else -1.0))
    return seen


def charge_states(domain: DPDomain, run_ids: set[str] | None = None) -> set[str]:
    """The ledger states of the domain's charges (of ``run_ids``, or all)."""
    from sqlalchemy import select

    from fednb.domain._store import ChargeRow

    with domain.dom.store.session() as s:
        rows = s.execute(select(ChargeRow)).scalars().all()
    return {r.state for r in rows if run_ids is None or r.run_id in run_ids}


def both(pair: tuple[DPDomain, DPDomain], attack: Callable[[DPDomain], Any]) -> tuple[Any, Any]:
    """Run ``attack`` on the two neighbours at once (half the wall time)."""
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(attack, pair)
    return a, b


def assert_same_view(a: list[Seen], b: list[Seen]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.view == y.view
        assert x.relative == y.relative == {"finished": SLOT, "release_at": SLOT}
        assert x.structure == y.structure
        assert x.metrics == y.metrics
        assert x.epsilon_spent == pytest.approx(y.epsilon_spent, rel=1e-12)
        assert x.view["status"] == "succeeded" and x.view["reason"] == "ok"


def _check(pair: tuple[DPDomain, DPDomain], fn: fednb.RemoteFunction, real_b: set[str],
           runs: int = 1) -> tuple[list[Seen], list[Seen]]:
    a, b = both(pair, lambda d: observe(d, fn, runs=runs))
    assert_same_view(a, b)
    assert {s.real_status for s in a} == {"succeeded"}, "the attack must run cleanly on patient 20.57"
    real = {f"{s.real_status}/{s.real_reason}" for s in b}
    # on a loaded machine the failing neighbour's run (or its worker's start) may overrun
    # the slot and be cut instead: another failure, released alike (the views above hold)
    assert real <= real_b | {"timeout/wall_clock"}, real
    return a, b


# -- issue item 1: failure is no channel -----------------------------------------------
def test_failure_channel_exception(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """A run that raises iff patient 0 is large looks exactly like one that succeeded, and
    the ledger charged both (the acceptance test of issue #17)."""
    a, b = _check(neighbours, raise_if_large, {"failed/exception"})
    assert a[0].epsilon_spent > 0 and b[0].epsilon_spent > 0
    for d in neighbours:  # charged and committed, whatever the outcome
        assert charge_states(d) == {"committed"}


def test_failure_channel_nan(neighbours: tuple[DPDomain, DPDomain]) -> None:
    _check(neighbours, nan_if_large, {"failed/nonfinite_output"})


def test_failure_channel_shape(neighbours: tuple[DPDomain, DPDomain]) -> None:
    _check(neighbours, shape_if_large, {"failed/shape_mismatch"})


def test_failure_channel_complex(neighbours: tuple[DPDomain, DPDomain]) -> None:
    _check(neighbours, complex_if_large, {"failed/invalid_output", "failed/exception"})


def test_failure_channel_exit(neighbours: tuple[DPDomain, DPDomain]) -> None:
    _check(neighbours, exit_if_large, {"failed/worker_crashed", "failed/exception", "killed/worker_crashed"})


def test_failure_channel_sigkill(neighbours: tuple[DPDomain, DPDomain]) -> None:
    _check(neighbours, kill_self_if_large, {"failed/worker_crashed", "killed/worker_crashed",
                                             "failed/exception"})


def test_failure_channel_output_size(neighbours: tuple[DPDomain, DPDomain]) -> None:
    _check(neighbours, huge_if_large, {"failed/output_too_large", "killed/memory_limit",
                                       "failed/memory_limit", "failed/exception"})


def test_failure_channel_metrics(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """NaN metrics, missing and undeclared ones: every declared metric is released, noised."""
    a, b = _check(neighbours, metric_if_large, {"failed/nonfinite_output"})
    assert a[0].metrics == b[0].metrics == ["acc", "loss"]


# -- issue item 2: timing -----------------------------------------------------------
def test_timing_channel_run_duration(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """``sleep(x[0, 0] / 2000)``: the scientist sees the run end at its scheduled slot on both
    neighbours, while the owner sees the real times differ."""
    a, b = _check(neighbours, sleep_by_value, {"succeeded/ok"})
    assert b[0].real_seconds > a[0].real_seconds + 1.0  # the owner sees the real durations


def test_timing_channel_overrun(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """A run that overruns its slot iff patient 0 is large is cut and releases the default at
    the same scheduled time."""
    _check(neighbours, overrun_if_large, {"timeout/wall_clock"})


def test_timing_channel_long_poll(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """The long poll (``GET /runs/{id}?wait=``) answers at the scheduled release, not at the
    run's end: a run that took 0.01 s is not shown done before its slot."""
    def attack(d: DPDomain) -> tuple[float, RunInfo]:
        eve = d.eve()
        req = sleep_by_value.request(eve, dataset="breast-cancer", runs=1, weights=W0, dp=DP)
        d.owner().requests.get(req.id).approve(release="auto", slot_s=SLOT)
        wait_warm(d, req.id)
        run = req.run(W0)
        info = run.refresh(wait=SLOT + 10).info  # one long poll
        return (datetime.now(timezone.utc) - info.created).total_seconds(), info

    (ta, ia), (tb, ib) = both(neighbours, attack)
    for t, info in ((ta, ia), (tb, ib)):
        assert info.status == "succeeded"
        assert t >= SLOT  # it did not answer before the schedule
        assert info.finished == info.release_at


# -- issue item 3: structure -------------------------------------------------------
def test_structure_channel_refused_without_weights_spec(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """A DP update request without a weights spec would release names, shapes and dtypes the
    code chooses: it is refused at submission, with a message that says what to do."""
    with pytest.raises(InvalidInput, match="needs weights="):
        raise_if_large.request(neighbours[0].eve(), dataset="breast-cancer", runs=1, dp=DP)


def test_structure_channel_names_from_spec(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """Tensor names the code chooses (patient 0's features spelled into them) never leave:
    the release carries the approved names, shapes and dtypes."""
    a, _ = _check(neighbours, shape_if_large, {"failed/shape_mismatch"})
    assert a[0].structure == {"w": ((4,), "float32")}


# -- found here: the endpoints around a run --------------------------------------------
def test_budget_poll_channel(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """Polling ``/budget`` during a run: the moment a charge moves from reserved to
    committed is the run's end. A scientist sees one figure, the same all along."""
    def attack(d: DPDomain) -> list[tuple[float, float]]:
        eve = d.eve()
        req = sleep_by_value.request(eve, dataset=["diabetes"], runs=1, weights=W0, dp=DP)
        d.owner().requests.get(req.id).approve(release="auto", slot_s=SLOT)
        wait_warm(d, req.id)
        before = next(b.epsilon_spent for b in eve.budget if b.dataset == "diabetes")
        run = req.run(W0, dataset="diabetes")
        polls = []
        while run.refresh().info.status != "succeeded":
            b = next(b for b in eve.budget if b.dataset == "diabetes")
            polls.append((round(b.epsilon_spent - before, 9), b.epsilon_reserved))
            time.sleep(0.2)
        return polls

    pa, pb = both(neighbours, attack)
    assert len(set(pa)) == len(set(pb)) == 1 and set(pa) == set(pb)


def test_listing_and_result_channel(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """Before its slot a DP run is absent from ``/runs?release_state=released`` and its result
    answers "not ready" with the same words, whether it finished or not."""
    def attack(d: DPDomain) -> list[tuple[bool, int, str]]:
        eve = d.eve()
        req = sleep_by_value.request(eve, dataset="breast-cancer", runs=1, weights=W0, dp=DP)
        d.owner().requests.get(req.id).approve(release="auto", slot_s=SLOT)
        wait_warm(d, req.id)
        run = req.run(W0)
        seen = []
        while (datetime.now(timezone.utc) - run.info.created).total_seconds() < SLOT - 0.5:
            listed = run.id in [r.id for r in eve.runs.list(release_state="released")]
            r = httpx.get(f"{d.url}/api/v1/runs/{run.id}/result",
                          headers={"Authorization": f"Bearer {d.eve_token}"})
            msg = str(r.json()["error"]["message"]).replace(run.id, "RUN")
            seen.append((listed, r.status_code, msg))
            time.sleep(0.25)
        run.wait(timeout=60)
        assert run.id in [r.id for r in eve.runs.list(release_state="released")]
        return seen

    sa, sb = both(neighbours, attack)
    assert set(sa) == set(sb) and len(set(sa)) == 1


def test_startup_failure_channel(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """Module-level code that reads the data and fails when the worker compiles it: a free
    "did it start" bit before. Now it looks like any success."""
    src = MODULE_LEVEL_SOURCE
    fn = fednb.RemoteFunction(lambda data, weights: None, source=src)
    fn.name = "start_fail"
    _check(neighbours, fn, {"failed/exception"})


def test_log_flood_channel(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """Flooding the owner's log iff patient 0 is large: the run looks the same, and the next
    run of the same request still runs (its real outcome succeeds on both)."""
    _, b = _check(neighbours, flood_log_if_large,
                  {"failed/worker_crashed", "succeeded/ok", "failed/exception", "killed/worker_crashed",
                   "failed/output_too_large"}, runs=2)
    assert b[1].real_status == "succeeded"


def test_withheld_result_is_charged(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """The owner's decision to withhold a DP result may depend on its values, and the
    scientist learns of it: the charge stays committed."""
    d = neighbours[0]
    eve = d.eve()
    req = raise_if_large.request(eve, dataset="diabetes", runs=1, weights=W0, dp=DP)
    d.owner().requests.get(req.id).approve(release="manual", slot_s=SLOT)
    wait_warm(d, req.id)
    before = next(b.epsilon_spent for b in eve.budget if b.dataset == "diabetes")
    run = req.run(W0, dataset="diabetes")
    run.wait(timeout=60)
    held = [r for r in d.owner().results.held() if r.id == run.id]
    assert held, "a manual DP result waits for the owner"
    held[0].withhold()
    after = next(b.epsilon_spent for b in eve.budget if b.dataset == "diabetes")
    assert after > before
    assert charge_states(d, {run.id}) == {"committed"}


def test_new_account_gets_no_fresh_budget(tmp_path: Any) -> None:
    """Each new scientist account was a full budget more on the same patients: a domain has
    a per-dataset cap across scientists by default."""
    from fednb.domain import Domain
    from tests.conftest import breast_cancer_dataset

    dom = Domain.create(tmp_path / "d", name="Cap")
    assert dom.policy.get().dataset_epsilon_cap is not None
    dom.add_dataset("breast-cancer", breast_cancer_dataset(), bounds={"x": (0, 5000), "y": (0, 1)})
    dom.close()


def test_delta_frozen_once_charged(neighbours: tuple[DPDomain, DPDomain]) -> None:
    """Changing delta after charges exist would re-price every epsilon already spent."""
    d = neighbours[0]
    assert d.dom.ledger.has_charges()
    with pytest.raises(InvalidInput, match="frozen"):
        d.dom.policy.update(delta=1e-3)


# keep the threads of one test from leaking into the next
@pytest.fixture(autouse=True)
def _no_stray_threads() -> Any:
    before = set(threading.enumerate())
    yield
    for t in set(threading.enumerate()) - before:
        t.join(timeout=5)
