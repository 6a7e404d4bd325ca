"""No state crosses from one run to the next, and a run sees only the dataset it is charged to.

Each test plays a scientist who plants something in run k of a request and looks for it
in run k+1 (files, threads, processes, module state), or who reads another dataset of the
request. The planting runs go through a scientist the policy lets run without DP
(``mallory``), so that the test sees what the worker really did: the released result of
run k+1 is what the code found. Every test also checks that run k+1 was served by the same
warm worker (its ``run N of this worker`` line in the owner's log and its host pid): what
run k left was cleared, not dropped with a cold start. ``eve``, the DP scientist, shows
the other-dataset channel through the DP path, where the owner's log holds the real outcome.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import fednb
from fednb.client import DomainClient
from fednb.domain import Domain
from fednb.domain.runner import WorkerPool
from tests.adversarial.conftest import SCIENTIST_EPSILON, DPDomain, approve_all, require_sandbox
from tests.conftest import BC_BOUNDS, breast_cancer_dataset, diabetes_dataset


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DPDomain, str]]:
    """A live bubblewrap domain, with ``mallory`` allowed to run without DP (results held)."""
    require_sandbox()
    dom = Domain.create(tmp_path_factory.mktemp("state") / "st-ann", name="Adversarial General")
    owner, eve = dom.add_user("olivia", role="owner"), dom.add_user("eve", epsilon=SCIENTIST_EPSILON)
    token = dom.add_user("mallory", epsilon=SCIENTIST_EPSILON)
    dom.policy.update(dataset_epsilon_cap=SCIENTIST_EPSILON, allow_no_dp=["mallory"], run_timeout_s=120.0)
    dom.add_dataset("breast-cancer", breast_cancer_dataset(), bounds=BC_BOUNDS)
    dom.add_dataset("diabetes", diabetes_dataset(), bounds={"x": (-0.5, 0.5), "progression": (0.0, 400.0)})
    d = DPDomain(dom, dom.serve(port=0), owner, eve)
    assert dom.sandbox_mode == "bubblewrap"
    yield d, token
    d.server.stop()


def mallory(d: tuple[DPDomain, str]) -> DomainClient:
    return fednb.connect(d[0].url, token=d[1])


def worker_run(d: DPDomain, run_id: str) -> int:
    """Which run of its worker this was, from the owner's log (1 after every cold start)."""
    log = d.dom.runs.owner_view(run_id).owner_log or ""
    found = re.findall(r"fednb: run (\d+) of this worker", log)
    assert found, log
    return int(found[-1])


def worker_pids(d: DPDomain, request_id: str) -> dict[str, int]:
    pool = d.dom.pool()
    assert isinstance(pool, WorkerPool)
    return {w.dataset: w.pid for w in pool.workers() if w.request_id == request_id}


def run_released(d: DPDomain, req: Any, dataset: str | None = None, **params: Any) -> tuple[str, Any]:
    """One run of ``req``: its id and the weights the owner released (the real result)."""
    run = req.run(dataset=dataset, **params)
    info = run.wait(180)
    log = d.dom.runs.owner_view(info.id).owner_log
    assert info.status == "succeeded", (info, log)
    d.owner().runs.get(info.id).release()
    return info.id, run.result(timeout=60).weights["result"]


def approved(d: tuple[DPDomain, str], fn: fednb.RemoteFunction, runs: int,
             datasets: str | list[str] = "breast-cancer") -> Any:
    req = fn.request(mallory(d), datasets, runs=runs)
    approve_all(d[0], release="manual")
    return req


@fednb.remote(params={"step": (int, 0, 1)})
def plant_files(data, step=0):
    import os

    paths = ["/tmp/planted", "/job/planted", "/dev/shm/planted", "/tmp/deep/a/b/planted", "/dev/planted"]
    if step == 0:
        for p in paths:
            try:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "w") as f:
                    f.write(str(data.x.values[0, 0]))
            except OSError:
                pass
        os.chmod("/tmp/deep/a", 0o500)  # a directory its cleaner cannot write into at first
        return np.zeros(len(paths))
    # (entries the run does not own are the sandbox's own: parents of a Python installation
    # bound under /tmp, as when the checkout itself lives there)
    left = [n for d in ("/tmp", "/job", "/dev/shm") for n in os.listdir(d)
            if n != "log.txt" and os.stat(os.path.join(d, n)).st_uid == os.getuid()]
    return np.asarray([os.path.exists(p) for p in paths] + [len(left)], dtype=np.float64)


def test_files_in_tmp_job_and_dev_shm_are_gone_in_the_next_run(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    req = approved(domain, plant_files, runs=2)
    first, _ = run_released(d, req, step=0)
    second, seen = run_released(d, req, step=1)
    assert seen.tolist() == [0.0] * 6
    assert (worker_run(d, first), worker_run(d, second)) == (1, 2)


@fednb.remote(params={"step": (int, 0, 1)})
def start_threads(data, step=0):
    import os
    import threading
    import time

    zygote_threads = len(os.listdir("/proc/1/task"))
    if step == 0:
        def spin():
            while True:  # burns CPU for as long as it lives
                pass

        def tick():
            while True:
                with open("/tmp/tick", "a") as f:
                    f.write(".")
                time.sleep(0.01)

        for target in (spin, tick):
            threading.Thread(target=target, daemon=True).start()
        time.sleep(0.05)
        return np.asarray([0.0, 0.0, zygote_threads])
    time.sleep(0.2)  # a surviving ticker would write meanwhile
    others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
    return np.asarray([len(others), os.path.exists("/tmp/tick"), zygote_threads], dtype=np.float64)


def test_threads_of_a_run_do_not_outlive_it(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    req = approved(domain, start_threads, runs=2)
    first, before = run_released(d, req, step=0)
    second, seen = run_released(d, req, step=1)
    # no process but the zygote (its own threads alone) and this run's: nothing left to burn CPU
    assert seen.tolist() == [0.0, 0.0, before[2]]
    assert (worker_run(d, first), worker_run(d, second)) == (1, 2)


@fednb.remote(params={"step": (int, 0, 1)})
def spawn_daemons(data, step=0):
    import os
    import subprocess
    import time

    if step == 0:
        subprocess.Popen(["/bin/sleep", "600"])  # a plain child
        if os.fork() == 0:  # a daemon: double fork, its own session
            os.setsid()
            if os.fork() == 0:
                while True:
                    with open("/tmp/daemon", "a") as f:
                        f.write(".")
                    time.sleep(0.01)
            os._exit(0)
        time.sleep(0.1)
        return np.zeros(2)
    time.sleep(0.2)
    others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())]
    return np.asarray([len(others), os.path.exists("/tmp/daemon")], dtype=np.float64)


def test_child_processes_and_daemons_of_a_run_are_gone(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    req = approved(domain, spawn_daemons, runs=2)
    first, _ = run_released(d, req, step=0)
    second, seen = run_released(d, req, step=1)
    assert seen.tolist() == [0.0, 0.0]
    assert (worker_run(d, first), worker_run(d, second)) == (1, 2)


STATEFUL_SOURCE = '''
import builtins
import statistics
import sys

SEEN = []  # module-level code: runs again in every run


def remember(data, step=0):
    SEEN.append(step)
    before = [len(SEEN), hasattr(builtins, "PLANTED"), "planted_module" in sys.modules,
              statistics.median([1]) == -1, np.mean([1.0, 3.0])]
    builtins.PLANTED = float(data.x.values[0, 0])
    sys.modules["planted_module"] = sys
    statistics.median = lambda *a, **k: -1
    np.mean = lambda *a, **k: -1.0
    return np.asarray(before, dtype=np.float64)
'''


def test_module_globals_and_monkeypatches_do_not_reach_the_next_run(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    def remember(data: Any, step: int = 0) -> None: ...

    fn = fednb.RemoteFunction(remember, source=STATEFUL_SOURCE, params={"step": (int, 0, 1)})
    req = approved(domain, fn, runs=2)
    first, a = run_released(d, req, step=0)
    second, b = run_released(d, req, step=1)
    assert a.tolist() == b.tolist() == [1.0, 0.0, 0.0, 0.0, 2.0]
    assert (worker_run(d, first), worker_run(d, second)) == (1, 2)


@fednb.remote(params={"step": (int, 0, 1)})
def look_across(data, step=0):
    import glob
    import os

    if step == 0:  # on breast-cancer: leave its mean where a diabetes run might look
        with open("/tmp/bc", "w") as f:
            f.write(str(float(data.x.values[:, 0].mean())))
        return np.zeros(3)
    mine = [p for p in glob.glob("/tmp/*") if os.stat(p).st_uid == os.getuid()]  # not the sandbox's own
    found = glob.glob("/data/*") + mine + glob.glob("/*/breast-cancer*")
    return np.asarray([len(os.listdir("/data")), os.path.isdir("/data/diabetes"), len(found)],
                      dtype=np.float64)


def test_a_run_charged_to_diabetes_sees_nothing_of_breast_cancer(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    req = approved(domain, look_across, runs=2, datasets=["breast-cancer", "diabetes"])
    run_released(d, req, dataset="breast-cancer", step=0)
    _, seen = run_released(d, req, dataset="diabetes", step=1)
    assert seen.tolist() == [1.0, 1.0, 1.0]  # /data holds diabetes alone; nothing else found
    assert set(worker_pids(d, req.id)) <= {"breast-cancer", "diabetes"}


@fednb.remote
def read_other(data):
    import os

    os.listdir("/data/breast-cancer")  # charged to diabetes: FileNotFoundError
    return np.zeros(2)


def test_a_dp_run_charged_to_diabetes_cannot_read_breast_cancer(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    req = read_other.request(d.eve(), ["breast-cancer", "diabetes"], runs=1, weights={"result": np.zeros(2)},
                             dp=fednb.ClientDP(clip=1.0, noise_multiplier=1.0))
    approve_all(d)
    info = req.run({"result": np.zeros(2)}, dataset="diabetes").wait(180)
    log = d.dom.runs.owner_view(info.id).owner_log or ""
    assert "FileNotFoundError" in log and "/data/breast-cancer" in log, log


@fednb.remote(params={"how": (int, 0, 2)})
def dies(data, how=0):
    import os
    import signal

    if how == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if how == 2:
        os._exit(3)
    return np.zeros(1)


def test_a_run_that_kills_itself_leaves_the_worker_warm(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    req = approved(domain, dies, runs=5)  # one to spare: the worker stays up
    run_released(d, req, how=0)
    pid = worker_pids(d, req.id)["breast-cancer"]
    runs = [req.run(how=1).wait(180), req.run(how=2).wait(180)]
    assert [r.status for r in runs] != ["succeeded", "succeeded"]  # the owner's record: they died
    last, _ = run_released(d, req, how=0)
    assert [worker_run(d, r.id) for r in runs] + [worker_run(d, last)] == [2, 3, 4]
    assert worker_pids(d, req.id)["breast-cancer"] == pid  # the same sandbox, never restarted


@fednb.remote(params={"spin": (int, 0, 1)})
def maybe_forever(data, spin=0):
    while spin:
        pass
    return np.zeros(1)


def test_a_run_past_its_time_limit_leaves_the_worker_warm(domain: tuple[DPDomain, str]) -> None:
    d = domain[0]
    req = approved(domain, maybe_forever, runs=4)  # one to spare: the worker stays up
    run_released(d, req, spin=0)
    pid = worker_pids(d, req.id)["breast-cancer"]
    d.dom.policy.update(run_timeout_s=1.0)  # an endless loop outlasts any limit
    try:
        cut = req.run(spin=1).wait(180)
    finally:
        d.dom.policy.update(run_timeout_s=120.0)
    assert (cut.status, cut.reason) == ("timeout", "wall_clock"), cut
    last, _ = run_released(d, req, spin=0)
    assert (worker_run(d, cut.id), worker_run(d, last)) == (2, 3)
    assert worker_pids(d, req.id)["breast-cancer"] == pid


@fednb.remote
def oom_adjustments(data):
    with open("/proc/self/oom_score_adj") as f:
        mine = float(f.read())
    with open("/proc/1/oom_score_adj") as f:  # the zygote's (pid 1 of the sandbox)
        zygote = float(f.read())
    return np.asarray([mine, zygote])


def test_the_oom_killer_takes_a_runs_processes_before_the_zygote(domain: tuple[DPDomain, str]) -> None:
    """A run that fills its worker's memory cgroup (as the data may decide) must not get the
    zygote killed: the next run's start would be cold, and the ensure-warm wait before a DP
    run's slot would show it. The run's processes carry oom_score_adj 1000, the zygote 0."""
    d = domain[0]
    req = approved(domain, oom_adjustments, runs=1)
    _, (mine, zygote) = run_released(d, req)
    assert (mine, zygote) == (1000.0, 0.0)
