"""Shared fixtures: real domains on loopback with real medical sample data."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from sklearn.datasets import load_breast_cancer, load_diabetes

import fednb
from fednb.client import DomainClient
from fednb.domain import Domain, Server
from tests._stores import PostgresCluster, find_postgres

# The environment of the domain process: a sandboxed job must never see it.
os.environ.setdefault("FEDNB_TEST_CANARY", "canary-secret-4711")

# tests/cudasim needs Numba's CUDA simulator from the start of its process: `make test`
# runs it as a second pytest process with NUMBA_ENABLE_CUDASIM=1 FEDNB_BACKEND=numba-cuda-sim
collect_ignore = [] if os.environ.get("FEDNB_BACKEND") == "numba-cuda-sim" else ["cudasim"]


def breast_cancer_dataset() -> xr.Dataset:
    """The Wisconsin breast cancer set (569 patients x 30 features, label 1 = benign)."""
    bc = load_breast_cancer()
    return xr.Dataset(
        {"x": (("patient", "feature"), bc.data.astype(np.float64)),
         "y": ("patient", bc.target.astype(np.int64))},
        coords={"patient": [f"p{i:04d}" for i in range(len(bc.target))],
                "feature": [str(f) for f in bc.feature_names]},
    )


def diabetes_dataset() -> xr.Dataset:
    """The diabetes set (442 patients x 10 standardised features, disease progression)."""
    d = load_diabetes()
    return xr.Dataset(
        {"x": (("patient", "feature"), d.data), "progression": ("patient", d.target)},
        coords={"feature": [str(f) for f in d.feature_names]},
    )


BC_BOUNDS = {"x": (0.0, 5000.0), "y": (0, 1)}


def worker_cgroups(pid: int) -> set[Path]:
    """The worker cgroups (``fednb-<pid>-*``) that the domain process ``pid`` made and that are
    still there, wherever this machine makes them (v1 pids and memory, v2 root or delegated)."""
    from fednb.domain.runner import _sandbox

    parents = _sandbox._worker_parents(_sandbox._CGROUP_ROOT)
    return {d for parent in parents if parent.is_dir() for d in parent.glob(f"fednb-{pid}-*")}
NewStore = Callable[[], "str | None"]  # makes a fresh store for one domain: its URL (None: SQLite)


@dataclass
class Hospital:
    dom: Domain
    server: Server
    owner_token: str
    alice_token: str
    bob_token: str

    @property
    def url(self) -> str:
        return self.server.url

    def owner(self) -> DomainClient:
        return fednb.connect(self.url, token=self.owner_token)

    def alice(self) -> DomainClient:
        return fednb.connect(self.url, token=self.alice_token)

    def bob(self) -> DomainClient:
        return fednb.connect(self.url, token=self.bob_token)


def make_hospital(home: Path, store_url: str | None = None, dask_address: str | None = None,
                  **policy: object) -> Hospital:
    dom = Domain.create(home, name="St Mary", store_url=store_url, dask_address=dask_address)
    owner = dom.add_user("olivia", role="owner")
    alice = dom.add_user("alice")
    bob = dom.add_user("bob")
    dom.policy.update(allow_no_dp=["alice", "bob"], **policy)
    dom.add_dataset("breast-cancer", breast_cancer_dataset(), bounds=BC_BOUNDS,
                    units={"x": "mixed"}, description="Wisconsin diagnostic breast cancer")
    dom.add_dataset("diabetes", diabetes_dataset(),
                    bounds={"x": (-0.5, 0.5), "progression": (0.0, 400.0)})
    server = dom.serve(port=0)
    return Hospital(dom, server, owner, alice, bob)


RUN_LIMIT_S = 300.0
"""The run limit of the sandbox tests' domains: no honest or hostile job there comes near
it, however busy the machine; a test that wants a run cut lowers it with run_limit()."""


@contextlib.contextmanager
def run_limit(h: Hospital, seconds: float) -> Iterator[None]:
    """The domain's run limit lowered to ``seconds`` for the runs started inside."""
    h.dom.policy.update(run_timeout_s=seconds)
    try:
        yield
    finally:
        h.dom.policy.update(run_timeout_s=RUN_LIMIT_S)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory, new_store: NewStore) -> Iterator[Hospital]:
    h = make_hospital(tmp_path_factory.mktemp("hospital") / "st-mary", store_url=new_store())
    yield h
    h.server.stop()


# -- stores: SQLite, and PostgreSQL for modules or tests marked `stores` ------------------
STORE_BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stores(*backends): run on these store backends (default: "
                                       "SQLite and PostgreSQL); a test's mark overrides its module's")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    mark = metafunc.definition.get_closest_marker("stores")
    if "store_backend" in metafunc.fixturenames and mark is not None:
        metafunc.parametrize("store_backend", mark.args or STORE_BACKENDS, indirect=True, scope="module")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL server for the whole run, started on first use.

    `make test` sets FEDNB_REQUIRE_POSTGRES=1 (scripts/test-deps.sh installs the server):
    there a missing server fails the run instead of skipping the PostgreSQL cases.
    """
    bindir = find_postgres()
    if bindir is None:
        if os.environ.get("FEDNB_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is not installed: bash scripts/test-deps.sh (apt postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresCluster(bindir) as pg:
        yield pg


@pytest.fixture(scope="module")
def store_backend(request: pytest.FixtureRequest) -> str:
    """The store under test: "sqlite" unless the test is marked `stores`."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="module")
def new_store(store_backend: str, request: pytest.FixtureRequest) -> NewStore:
    """Makes a fresh, empty store for each domain a test creates: its URL (None: SQLite)."""
    if store_backend == "sqlite":
        return lambda: None
    pg: PostgresCluster = request.getfixturevalue("postgres")
    return pg.new_database
