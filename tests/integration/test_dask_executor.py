"""A domain whose jobs run on a real Dask cluster (LocalCluster, worker processes): each
Dask worker launches the same bubblewrap sandbox, and only bytes cross the cluster."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fednb
from fednb.domain import Domain
from fednb.protocol import RunInfo
from tests.adversarial.conftest import require_sandbox
from tests.conftest import RUN_LIMIT_S, Hospital, make_hospital, run_limit

distributed = pytest.importorskip("distributed")
from distributed.diagnostics.plugin import SchedulerPlugin  # noqa: E402

MARKER = Path("/tmp/fednb-dask-unpickled-marker")


@pytest.fixture(scope="module", autouse=True)
def sandbox() -> None:
    require_sandbox()




class ResultTypes(SchedulerPlugin):  # type: ignore[misc]
    """Records the type of every task result the Dask workers report to the scheduler."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler, self.types = scheduler, {}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "memory" and key in self.scheduler.tasks:
            self.types[str(key)] = self.scheduler.tasks[key].type


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, ResultTypes]]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None, worker_dashboard_address=None) as c:
        types = ResultTypes(c.scheduler)
        c.scheduler.add_plugin(types)
        yield c, types


@pytest.fixture(scope="module")
def on_dask(tmp_path_factory: pytest.TempPathFactory, cluster: tuple[Any, ResultTypes]) -> Iterator[Hospital]:
    h = make_hospital(tmp_path_factory.mktemp("dask") / "st-mary", dask_address=cluster[0].scheduler_address,
                      run_timeout_s=RUN_LIMIT_S)
    yield h
    h.server.stop()


@pytest.fixture(scope="module")
def good(on_dask: Hospital) -> fednb.client.RemoteRequest:
    """An approved request with runs to spare: after each hostile job, one more of it runs."""
    req = summary.request(on_dask.alice(), "breast-cancer", runs=20)
    on_dask.owner().requests.get(req.id).approve()
    return req


@pytest.fixture(scope="module")
def on_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    h = make_hospital(tmp_path_factory.mktemp("local") / "st-mary", run_timeout_s=RUN_LIMIT_S)
    yield h
    h.server.stop()


def run_once(h: Hospital, fn: fednb.RemoteFunction, runs: int = 1,
             **params: object) -> tuple[RunInfo, fednb.client.RemoteRun]:
    req = fn.request(h.alice(), "breast-cancer", runs=runs)
    h.owner().requests.get(req.id).approve()
    run = req.run(**params)
    return run.wait(RUN_LIMIT_S + 180), run


@fednb.remote(params={"col": (int, 0, 29)})
def summary(data, col=0):
    x = data.x.values
    return fednb.Update(weights={"mean": x.mean(0), "cov": np.cov(x[:, :6].T),
                                 "lowest": np.sort(x[:, col])[:10], "n": np.asarray([len(x)])})


def test_a_job_runs_on_the_cluster_and_matches_the_local_executor(
        on_dask: Hospital, on_local: Hospital, cluster: tuple[Any, ResultTypes]) -> None:
    results, request_ids = [], []
    for h in (on_dask, on_local):
        info, run = run_once(h, summary, runs=2, col=3)  # a second run left: stays warm
        assert (info.status, info.reason, info.release_state) == ("succeeded", "ok", "held"), info
        h.owner().runs.get(run.id).release()
        results.append(run.result(timeout=60).weights)
        request_ids.append(info.request_id)
    on_cluster, local = results
    assert on_cluster.keys() == local.keys()
    for k in local:
        np.testing.assert_array_equal(on_cluster[k], local[k])
        assert on_cluster[k].dtype == local[k].dtype
    assert on_dask.dom._pool is not None and type(on_dask.dom._pool).__name__ == "DaskPool"
    with distributed.Client(cluster[0], set_as_default=False) as client:
        warm = client.run(fednb.domain.runner._dask.warm_requests)  # type: ignore[attr-defined]
    assert request_ids[0] in {r for rs in warm.values() for r in rs}  # its sandbox is on a Dask worker


@fednb.remote
def raises(data):
    raise ValueError("private value 14.127 in an exception")


@fednb.remote
def exits(data):
    import os

    os._exit(3)


@fednb.remote
def sleeps(data):
    import time

    time.sleep(3600)


@fednb.remote(params={"port": (int, 1, 65535)})
def dials_the_scheduler(data, port=1):
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=2)  # to submit a pickle of its own
    return np.frombuffer(s.recv(16), dtype=np.uint8)


@fednb.remote
def returns_a_pickle_bomb(data):
    class Bomb:
        def __reduce__(self):
            return (open, ("/tmp/fednb-dask-unpickled-marker", "w"))

    return fednb.Update(weights={"w": Bomb()}, metrics={})


@pytest.mark.parametrize(("fn", "outcome"), [
    (raises, ("failed", "exception")),
    (exits, ("failed", "worker_crashed")),
    (sleeps, ("timeout", "wall_clock")),
    (dials_the_scheduler, ("failed", "exception")),
    (returns_a_pickle_bomb, ("failed", "invalid_output")),
], ids=["raises", "exits", "sleeps", "dials-the-scheduler", "returns-a-pickle-bomb"])
def test_a_hostile_job_fails_with_its_reason_code(on_dask: Hospital, cluster: tuple[Any, ResultTypes],
                                                  good: fednb.client.RemoteRequest,
                                                  fn: fednb.RemoteFunction, outcome: tuple[str, str]) -> None:
    MARKER.unlink(missing_ok=True)
    port = int(cluster[0].scheduler_address.rsplit(":", 1)[1])
    with run_limit(on_dask, 2.0) if fn is sleeps else contextlib.nullcontext():
        info, _ = run_once(on_dask, fn, **({"port": port} if fn is dials_the_scheduler else {}))
    assert (info.status, info.reason) == outcome, on_dask.dom.runs.owner_view(info.id).owner_log
    assert info.owner_log is None and info.release_state is None
    assert not MARKER.exists()  # nothing the job made was unpickled, here or on a Dask worker
    assert good.run().wait(120).status == "succeeded"  # the domain and the cluster keep serving


def test_only_bytes_cross_the_cluster(on_dask: Hospital, cluster: tuple[Any, ResultTypes],
                                      good: fednb.client.RemoteRequest) -> None:
    """Every task the domain ran on the cluster returned a ``bytes`` object (a safetensors
    message its trusted launcher made), whatever the job returned or did."""
    assert good.run().wait(120).status == "succeeded"
    ours = {k: t for k, t in cluster[1].types.items() if k.startswith("fednb-run-")}
    assert len(ours) >= 3 and set(ours.values()) == {"bytes"}, ours
    assert os.environ.get("FEDNB_TEST_CANARY")  # the domain's environment stayed here


def test_a_plain_tcp_scheduler_beyond_loopback_is_refused(tmp_path: Path) -> None:
    from fednb.errors import InsecureSetting

    with pytest.raises(InsecureSetting, match="tls://"):
        Domain.create(tmp_path / "far", name="Far", dask_address="tcp://10.1.2.3:8786")
    assert not (tmp_path / "far").exists()
    Domain.create(tmp_path / "tls", name="TLS", dask_address="tls://10.1.2.3:8786").close()
    Domain.create(tmp_path / "near", name="Near", dask_address="tcp://127.0.0.1:8786").close()


@fednb.remote
def answer_a(data):
    return np.asarray(1.0)


@fednb.remote
def answer_b(data):
    return np.asarray(2.0)


def test_two_domains_on_one_cluster_never_share_a_warm_worker(
        tmp_path: Path, cluster: tuple[Any, ResultTypes], on_dask: Hospital) -> None:
    # request ids are the scientist's choice: the same id on another domain must run that
    # domain's own approved code, never the first domain's warm worker
    other = make_hospital(tmp_path / "st-john", dask_address=cluster[0].scheduler_address)
    try:
        results = []
        for h, fn in ((on_dask, answer_a), (other, answer_b)):
            req = fn.request(h.alice(), "breast-cancer", runs=1, request_id="shared-request-id")
            h.owner().requests.get(req.id).approve()
            run = req.run()
            assert run.wait(120).status == "succeeded"
            h.owner().runs.get(run.id).release()
            results.append(float(run.result(timeout=30).weights["result"]))
        assert results == [1.0, 2.0]
    finally:
        other.server.stop()


def test_a_worker_made_warm_for_a_dp_run_is_pinned_on_its_dask_worker_until_the_run(
        tmp_path: Path, cluster: tuple[Any, ResultTypes]) -> None:
    """``ensure_warm`` before a DP run's slot returns once the request's worker is up on its
    Dask worker and pinned there (others starting meanwhile cannot evict it), as with the
    local pool; the run, carrying its schedule, takes the pin. (It was a fire-and-forget
    prewarm: nothing pinned, and the slot could be spent on a worker's start.)"""
    from fednb.domain.runner import JobSpec
    from fednb.domain.runner._dask import DaskPool, pinned_requests
    from tests.conftest import breast_cancer_dataset

    data = tmp_path / "bc.zarr"
    breast_cancer_dataset().to_zarr(data)
    source = "def mean(data, col=0):\n    return np.asarray(data.x.values[:, col].mean())\n"
    job = JobSpec("req-pin", source, "mean", {"bc": data}, tmp_path / "work" / "req-pin")
    pool = DaskPool(cluster[0].scheduler_address, "bubblewrap", domain="pin-test")
    client = pool._client

    def pinned() -> list[str]:
        return sorted(r for rs in client.run(pinned_requests).values() for r in rs)

    try:
        assert pinned() == []
        pool.ensure_warm(job)
        assert pinned() == ["req-pin"]  # up and pinned when ensure_warm returned
        now = time.monotonic()
        out = pool.run(job, "bc", {"col": 0}, None, RUN_LIMIT_S, hold_until=now + 0.5, cut_at=now + 300)
        assert out.status == "succeeded", out.log
        assert pinned() == []  # the scheduled run took its pin
    finally:
        pool.shutdown()
