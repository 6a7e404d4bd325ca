"""Where a federated statistic's parts come from: domains over HTTP, or local partitions.

Both give :meth:`Sites.run`: one :class:`~fednb.protocol._stats.StatsSpec` in, each
site's released arrays out. :class:`DomainSites` files a ``stats`` request per domain
(a deterministic id, so a repeated call finds the same request and its result again),
waits for the owner's approval or a template match, runs it once and reads the released
arrays; :class:`LocalSites` computes the same parts in this process (teaching, tests,
and the pooled-versus-federated comparisons of docs/stats.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
import xarray as xr

from fednb.client import DomainClient
from fednb.errors import RequestNotApproved
from fednb.protocol import DatasetCard, MockInfo, RequestCreate, StatsSpec, VariableCard, code_hash
from fednb.runtime import KINDS, compute
from fednb.typing import Weights

__all__ = ["DomainSites", "LocalSites", "Sites", "as_sites", "request_id"]


class Sites(Protocol):
    """Anything that runs a stats step at every site."""

    names: list[str]
    min_sites: int
    """The most sites any owner requires in a pooled model (what the releases said so far)."""

    def card(self, site: str) -> DatasetCard:
        """The site's dataset card."""
        ...

    def run(self, spec: StatsSpec) -> dict[str, Weights]:
        """Each site's released arrays for ``spec``."""
        ...

    def run_each(self, specs: Mapping[str, StatsSpec]) -> dict[str, Weights]:
        """The released arrays of a spec of each site's own (per-site model fits)."""
        ...


def request_id(scientist: str, dataset: str, source: str) -> str:
    """The deterministic id of a stats request: the same step filed twice is one request."""
    return hashlib.sha256(f"{scientist}\x00{dataset}\x00{source}".encode()).hexdigest()[:40]


class DomainSites:
    """Connected domains holding the same dataset.

    Parameters
    ----------
    domains
        ``{name: DomainClient}`` or a list of clients (named by their domain's name).
    dataset
        The dataset's name on every domain.
    timeout
        Seconds to wait for each step (review, run and release), default 600.
    """

    def __init__(self, domains: Mapping[str, DomainClient] | Sequence[DomainClient], dataset: str,
                 timeout: float = 600.0) -> None:
        self.clients = dict(domains) if isinstance(domains, Mapping) else {c.info.name: c for c in domains}
        self.names = list(self.clients)
        self.dataset, self.timeout = dataset, timeout
        self.min_sites = 1

    def card(self, site: str) -> DatasetCard:
        return self.clients[site].datasets[self.dataset].card

    def _one(self, site: str, spec: StatsSpec) -> Weights:
        client = self.clients[site]
        kind = KINDS["stats"]
        source = kind.source(spec)
        rid = request_id(client.me.name, self.dataset, source)
        body = RequestCreate(id=rid, function_name=kind.function_name(spec), kind=kind.name,
                             source=source, code_hash=code_hash(source), datasets=[self.dataset],
                             runs=1, description=f"fednb.stats {spec.op} on {self.dataset}")
        req = client.requests.submit(body)
        if req.info.status == "pending":
            req.wait_for_review(timeout=self.timeout, poll=0.2)
        if req.info.status != "approved":
            raise RequestNotApproved(f"{site}: the stats request {rid} was {req.info.status}"
                                     + (f" ({req.info.review_reason})" if req.info.review_reason else ""))
        run = req.run(run_id=f"{rid[:32]}-run0", dataset=self.dataset)
        released = run.result(timeout=self.timeout, poll=0.05)
        # the owner's minimum number of sites in a pooled model travels with every release
        self.min_sites = max(self.min_sites, int(released.metrics.get("min_sites", 1)))
        return {k: np.asarray(v, dtype=np.float64) for k, v in released.weights.items()}

    def run(self, spec: StatsSpec) -> dict[str, Weights]:
        return self.run_each(dict.fromkeys(self.names, spec))

    def run_each(self, specs: Mapping[str, StatsSpec]) -> dict[str, Weights]:
        with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            futures = {site: pool.submit(self._one, site, spec) for site, spec in specs.items()}
            return {site: f.result() for site, f in futures.items()}


def local_card(name: str, data: xr.Dataset, example_dim: str,
               bounds: Mapping[str, tuple[float, float]] | None = None) -> DatasetCard:
    """A card for a local dataset: schema and the given bounds (no values)."""
    bounds = bounds or {}
    variables = {str(k): VariableCard(dims=[str(d) for d in v.dims], dtype=str(v.dtype),
                                      bounds=bounds.get(str(k))) for k, v in data.data_vars.items()}
    return DatasetCard(name=name, source="local", dims={str(k): int(v) for k, v in data.sizes.items()},
                       example_dim=example_dim, num_examples=int(data.sizes[example_dim]),
                       variables=variables, coords={},
                       mock=MockInfo(method="provided-by-owner", note="local partition"),
                       created=datetime.now(timezone.utc))


class LocalSites:
    """Partitions held here, computed with the domain's own :func:`~fednb.runtime.compute`
    (no protection applied: what the exact mode releases before disclosure rules).

    Parameters
    ----------
    partitions
        ``{site: xarray.Dataset}``, one value per example in each variable.
    example_dim
        The example dimension (default: each dataset's first dimension).
    bounds
        Declared bounds of numeric variables (what DP steps need).
    """

    def __init__(self, partitions: Mapping[str, xr.Dataset], example_dim: str | None = None,
                 bounds: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.data = dict(partitions)
        self.names = list(self.data)
        self.min_sites = 1
        self._cards = {s: local_card(s, d, example_dim or str(next(iter(d.dims))), bounds)
                       for s, d in self.data.items()}

    def card(self, site: str) -> DatasetCard:
        return self._cards[site]

    def run(self, spec: StatsSpec) -> dict[str, Weights]:
        return self.run_each(dict.fromkeys(self.names, spec))

    def run_each(self, specs: Mapping[str, StatsSpec]) -> dict[str, Weights]:
        return {s: compute(spec, self.data[s], self._cards[s]).arrays for s, spec in specs.items()}


def as_sites(domains: Any, dataset: str | None) -> Sites:
    """``domains`` as :class:`Sites`: already Sites, or clients with ``dataset``."""
    if hasattr(domains, "run") and hasattr(domains, "card"):
        return domains  # type: ignore[no-any-return]
    if dataset is None:
        raise TypeError("name the dataset: dataset='...'")
    return DomainSites(domains, dataset)
