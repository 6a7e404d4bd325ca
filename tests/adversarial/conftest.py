"""Distinguishing experiments against live bubblewrap domains over real HTTP.

Each test plays an adversarial scientist holding an approved function and a budget. It
runs the same attack against two domains whose private data differ in one patient (the
neighbouring relation of docs/privacy.md) and asserts that everything the scientist can
observe is the same (or that a statistical distinguisher's advantage stays below a bound),
or that the request is refused with a clear message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import xarray as xr

import fednb
from fednb.client import DomainClient
from fednb.domain import Domain, Server
from fednb.domain.runner import bwrap_available
from fednb.protocol import RunInfo
from tests.conftest import BC_BOUNDS, breast_cancer_dataset, diabetes_dataset

SCIENTIST_EPSILON = 1000.0
"""The attacker's budget: large, so that a test shows the channel, not the budget's end."""


def require_sandbox() -> None:
    """Fail (under FEDNB_REQUIRE_SANDBOX=1, as `make test` sets) or skip without bubblewrap."""
    if bwrap_available():
        return
    if os.environ.get("FEDNB_REQUIRE_SANDBOX") == "1":
        pytest.fail("bubblewrap is missing or cannot make namespaces: apt-get install bubblewrap")
    pytest.skip("needs bubblewrap (apt-get install bubblewrap)")


@dataclass
class DPDomain:
    """A live domain with a DP-only scientist ``eve`` (no ``allow_no_dp``)."""

    dom: Domain
    server: Server
    owner_token: str
    eve_token: str

    @property
    def url(self) -> str:
        return self.server.url

    def eve(self) -> DomainClient:
        return fednb.connect(self.url, token=self.eve_token)

    def owner(self) -> DomainClient:
        return fednb.connect(self.url, token=self.owner_token)


def make_dp_domain(home: Path, breast_cancer: xr.Dataset | None = None, **policy: Any) -> DPDomain:
    """A bubblewrap domain with the breast cancer and diabetes sets (``breast_cancer``
    replaces the first, e.g. by a neighbouring copy), owner ``olivia``, DP scientist ``eve``."""
    require_sandbox()
    dom = Domain.create(home, name="Adversarial General")
    owner = dom.add_user("olivia", role="owner")
    eve = dom.add_user("eve", epsilon=SCIENTIST_EPSILON)
    dom.policy.update(**{"dataset_epsilon_cap": SCIENTIST_EPSILON, **policy})
    dom.add_dataset("breast-cancer", breast_cancer if breast_cancer is not None else breast_cancer_dataset(),
                    bounds=BC_BOUNDS, description="Wisconsin diagnostic breast cancer")
    dom.add_dataset("diabetes", diabetes_dataset(),
                    bounds={"x": (-0.5, 0.5), "progression": (0.0, 400.0)})
    server = dom.serve(port=0)
    assert dom.sandbox_mode == "bubblewrap"
    return DPDomain(dom, server, owner, eve)


def neighbour(data: xr.Dataset, patient: int = 0, **values: Any) -> xr.Dataset:
    """``data`` with one patient's values replaced (replace-one: the count stays public)."""
    out = data.copy(deep=True)
    for var, value in values.items():
        out[var][patient] = value
    return out


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DPDomain, DPDomain]]:
    """Two live domains whose breast cancer sets differ in patient 0 only (its first feature
    20.57 in one, 5000.0 in the other; its label flipped)."""
    base = breast_cancer_dataset()
    other = base.copy(deep=True)
    other["x"][0, 0] = 5000.0
    other["y"][0] = 1 - int(base["y"][0])
    a = make_dp_domain(tmp_path_factory.mktemp("adv") / "a", base)
    b = make_dp_domain(tmp_path_factory.mktemp("adv") / "b", other)
    yield a, b
    a.server.stop()
    b.server.stop()


def scientist_view(info: RunInfo) -> dict[str, Any]:
    """Every field of a scientist's RunInfo but the ids (which the scientist chose)."""
    return {k: v for k, v in info.model_dump().items() if k not in ("id", "request_id")}


def wait_warm(domain: DPDomain, request_id: str, timeout: float = 120.0) -> None:
    """Wait until the request's sandboxed worker is up (the owner's approval starts it), so
    that a run's slot is spent on the run, not on the worker's start."""
    import time

    end = time.monotonic() + timeout
    while request_id not in domain.dom.pool().warm():
        if time.monotonic() > end:
            raise TimeoutError(f"the worker of {request_id} did not start in {timeout} s")
        time.sleep(0.05)


def approve_all(domain: DPDomain, release: str = "auto", **decision: Any) -> None:
    """Approve every pending request on ``domain`` as its owner."""
    for req in domain.owner().requests.pending():
        req.approve(release=release, **decision)  # type: ignore[arg-type]


Attack = Callable[[DPDomain], Any]
