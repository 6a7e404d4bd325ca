"""``fednb.Federation`` (domains over HTTP) and ``fednb.simulate`` (virtual hospitals)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from fednb.client import DomainClient, RemoteRequest
from fednb.errors import InvalidInput
from fednb.kernels import keep_freed_memory, other_threads_in_blas, usable_cores
from fednb.protocol import ClientDP, Compression, DatasetCard
from fednb.scientist._driver import Driver, SerialExecutor
from fednb.scientist._history import History
from fednb.scientist._participants import LocalParticipant, Participant, RemoteParticipant
from fednb.scientist._remote import RemoteFunction
from fednb.secagg import Identity, Roster
from fednb.strategies import FedAvg, FedBuff, FedProx, MeanStrategy, Strategy, compose_check
from fednb.typing import Weights

__all__ = ["Federation", "card_differences", "simulate"]

AUTO_MIN_VALUES = 1 << 18
"""``workers="auto"`` runs hospitals on threads from this many model values: below it a
hospital's time goes to Python (which holds the GIL), above it to array work that releases
it. Two threads against one after another, no-op rounds (``bench/rounds.py``'s work) on two
cores, 2026-12-06: at N=10, 1.26-1.42x the serial time at 1e5 values, 1.05-1.09x at 2e5,
0.79-0.96x at 2^18, 0.71-0.73x at 3.5e5, 0.58-0.72x at 1e6; at N=100, 1.30-1.37x at 1e5,
0.69-0.75x at 2^18, and 0.95-1.03x at 1e6 (the updates no longer fit in the cache)."""
AUTO_MAX_WORKERS = 8


def card_differences(cards: Mapping[str, DatasetCard]) -> list[str]:
    """What differs between the domains' cards: variables, dims, dtypes, units, bounds' presence."""
    def schema(c: DatasetCard) -> dict[str, Any]:
        return {k: (v.dims, v.dtype, v.units) for k, v in c.variables.items()} | {
            f"dim {d}": n for d, n in c.dims.items() if d != c.example_dim}

    names = sorted(cards)
    ref = schema(cards[names[0]])
    out = []
    for n in names[1:]:
        other = schema(cards[n])
        for key in sorted(set(ref) | set(other)):
            if ref.get(key) != other.get(key):
                out.append(f"{key}: {names[0]} has {ref.get(key)}, {n} has {other.get(key)}")
    return out


def _check_params(fn: RemoteFunction, strategy: Strategy, params: Mapping[str, Any]) -> None:
    needed = set(params) | ({"mu"} if isinstance(strategy, FedProx) else set())
    missing = sorted(needed - set(fn.params))
    if missing:
        raise InvalidInput(f"{fn.name} must declare the parameters {missing} in @fednb.remote(params=...)"
                           " so the hospitals can approve their bounds")


class Federation:
    """Federated training of one remote function over several domains.

    Parameters
    ----------
    domains
        Connected clients by name (one per hospital).
    fn
        The remote function: ``fn(data, weights, **params)`` returning new weights.
    dataset
        The dataset name, the same on every domain (its cards must match).
    initial
        The initial global weights.
    params
        The function's parameters (FedProx adds ``mu`` each round).
    strategy
        Default :class:`~fednb.strategies.FedAvg`.
    rounds
        Rounds (asynchronous: aggregations).
    dp
        Client-level DP for every domain's updates (the domains clip, noise and charge).
    secure_aggregation
        Sum the domains' updates by SecAgg+ (:mod:`fednb.secagg`): this notebook learns
        only the weighted mean of each round's survivors. Every domain's owner must have
        put the others' identities on its roster (``dom.peers.trust``). Asynchronously
        (FedBuff), each full buffer is one secure round over its ``buffer_size`` domains
        (each domain's policy ``secagg_min_members`` must allow that many).
    secure_bound
        With secure aggregation, coordinates are clipped into ``[-bound, bound]`` before
        quantisation (default: past the DP noise, or 1000).
    distributed_noise
        With secure aggregation and ``dp``: ask every round for distributed discrete noise
        (docs/secagg.md). Domains whose policy allows it (``secagg_distributed_noise``) keep
        their updates unnoised and are charged what the round's shares guarantee, less than
        their full noise; the others add their full noise as before (and their share).
    min_domains
        Fewest domains a round needs (default: all but one, at least one).
    timeout
        Seconds a domain may take per run before it is dropped from the round.
    compression
        ``"fp16"`` or ``"int8"`` (stochastic rounding) shrinks updates on the wire; bytes
        per round are in ``history.rounds.bytes``.
    checkpoint
        Directory for checkpoints (default ``.fednb/federations/<id>``; None: off). A
        Federation built again with the same arguments resumes from it.
    slot_s
        With ``dp``: the release slot each domain's runs are filed with, seconds (each DP
        result appears this long after its run started; the owners approve it; default:
        each domain's ``dp_slot_s``). A round takes at least this long.
    """

    def __init__(self, domains: Mapping[str, DomainClient], fn: RemoteFunction, *, dataset: str,
                 initial: Weights, params: Mapping[str, Any] | None = None, strategy: Strategy | None = None,
                 rounds: int = 10, dp: ClientDP | None = None, secure_aggregation: bool = False,
                 asynchronous: bool | None = None, min_domains: int | None = None, timeout: float = 600.0,
                 checkpoint: str | Path | bool | None = True, progress: bool = True,
                 compression: Compression = "none", secure_bound: float | None = None,
                 distributed_noise: bool = False, slot_s: float | None = None) -> None:
        self.domains, self.fn, self.dataset = dict(domains), fn, dataset
        self.slot_s = slot_s
        self.secure_noise = _secure_noise(distributed_noise, secure_aggregation, dp)
        self.compression = compression
        self.strategy = strategy or FedAvg()
        self.asynchronous = isinstance(self.strategy, FedBuff) if asynchronous is None else asynchronous
        compose_check(self.strategy, secure_aggregation=secure_aggregation, asynchronous=self.asynchronous,
                      dp=dp is not None)
        if secure_aggregation and compression != "none":
            raise InvalidInput("secure aggregation runs without compression (it quantises the updates "
                               "itself)")
        self.secure_bound = (None if not secure_aggregation else
                             secure_bound if secure_bound is not None else default_secure_bound(dp))
        self.params, self.initial, self.rounds, self.dp = dict(params or {}), initial, rounds, dp
        _check_params(fn, self.strategy, self.params)
        self.min_domains = min_domains or max(1, len(self.domains) - 1)
        self.timeout, self.progress = timeout, progress
        key = json.dumps([sorted(self.domains), fn.code_hash, dataset, repr(self.strategy), rounds,
                          None if dp is None else dp.model_dump(), sorted(self.params.items()),
                          self.secure_bound, *(["distributed-noise"] if distributed_noise else [])],
                         default=str)
        self.id = "fed-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        self.checkpoint = (Path(".fednb") / "federations" / self.id if checkpoint is True
                           else None if checkpoint in (False, None) else Path(str(checkpoint)))
        self.requests: dict[str, RemoteRequest] = {}
        self.history = History()  # filled by run(); watch it for a live view (fednb.ui.ResultsViewer)

    def check_cards(self) -> None:
        """Refuse before round 1 when the domains' dataset cards differ (and say how)."""
        cards = {n: c.datasets[self.dataset].card for n, c in self.domains.items()}
        diff = card_differences(cards)
        if diff:
            raise InvalidInput("the domains' datasets differ:\n  " + "\n  ".join(diff))

    def request(self) -> dict[str, RemoteRequest]:
        """File one request per domain (idempotent: a second call finds the same requests)."""
        self.check_cards()
        runs = self.rounds * (2 if self.asynchronous else 1) + 1
        for name, client in self.domains.items():
            self.requests[name] = self.fn.request(
                client, self.dataset, runs=runs, weights=self.initial, dp=self.dp, slot_s=self.slot_s,
                request_id=f"{self.id}-{hashlib.sha256(name.encode()).hexdigest()[:8]}",
                description=f"federated training {self.id}, {self.rounds} rounds, {self.strategy!r}")
        return self.requests

    def pending(self) -> list[str]:
        """Domains whose owners have not approved yet."""
        return [n for n, r in self.requests.items() if r.status != "approved"]

    def wait_for_approval(self, timeout: float = 3600.0, poll: float = 2.0) -> None:
        """Block until every domain approved; raise if one denies."""
        deadline = time.monotonic() + timeout
        while True:
            states = {n: r.status for n, r in self.requests.items()}
            denied = [n for n, s in states.items() if s == "denied"]
            if denied:
                raise InvalidInput(f"denied by {denied}: " + "; ".join(
                    f"{n}: {self.requests[n].info.review_reason}" for n in denied))
            if all(s == "approved" for s in states.values()) or time.monotonic() > deadline:
                return
            time.sleep(poll)

    def run(self) -> History:
        """Run the rounds (resuming from the checkpoint); domains must have approved."""
        if not self.requests:
            self.request()
        waiting = self.pending()
        if waiting:
            raise InvalidInput(f"waiting for approval by {waiting}; call wait_for_approval() first")
        participants: dict[str, Participant] = {
            n: RemoteParticipant(n, r, self.dataset, self.compression, secure=self.secure_bound is not None)
            for n, r in self.requests.items()}
        driver = Driver(participants, self.strategy, self.initial, self.params, self.rounds,
                        run_prefix=self.id, min_domains=self.min_domains, timeout=self.timeout,
                        checkpoint=self.checkpoint, asynchronous=self.asynchronous, progress=self.progress,
                        secure_bound=self.secure_bound, history=self.history, secure_noise=self.secure_noise,
                        settings={"federation": self.id, "strategy": repr(self.strategy),
                                  "dataset": self.dataset,
                                  "secure_aggregation": self.secure_bound is not None,
                                  "dp": None if self.dp is None else self.dp.model_dump()})
        return driver.run()


def simulate(fn: RemoteFunction, partitions: Mapping[str, xr.Dataset], *, initial: Weights,
             params: Mapping[str, Any] | None = None, strategy: Strategy | None = None, rounds: int = 10,
             dp: ClientDP | None = None, asynchronous: bool | None = None, min_domains: int = 1,
             example_dim: str | None = None, checkpoint: str | Path | None = None,
             progress: bool = True, compression: Compression = "none", backend: str = "local",
             dask_client: Any = None, secure_aggregation: bool = False,
             secure_bound: float | None = None, history: History | None = None,
             distributed_noise: bool = False, workers: int | Literal["auto"] = 1) -> History:
    """Federated training over virtual hospitals through the same driver, strategies, output
    policy (DP included) and execution path as a real federation.

    ``backend="local"`` runs the hospitals in this process: one after another by default
    (``workers=1``), or on ``workers`` threads. Threads pay off for large models, where a
    hospital's time goes to array work that releases the GIL and the round's updates fit in
    the cache (1.4-1.7x faster rounds at N=10, P=1e6 on two cores; about the same at N=100),
    and cost time for small ones; ``workers="auto"`` takes one thread per core (at most 8,
    and at most one per hospital) from 2**18 model values and runs serially below. With threads,
    hospitals share the process's global state: NumPy's and PyTorch's global random
    generators (draw from a generator the function makes, e.g. ``np.random.default_rng``,
    for runs that repeat), PyTorch's own thread count, and the round's parameters (each
    hospital gets a shallow copy of ``params``: do not change a list or array in it in
    place). Synchronous rounds only:
    asynchronous rounds always run each hospital on its own thread. ``backend="dask"``
    runs each hospital's work as tasks on a Dask cluster (``dask_client``, or a local
    cluster of two worker processes made for the call).

    ``secure_aggregation=True`` runs every round through SecAgg+ (:mod:`fednb.secagg`):
    each virtual hospital has its own identity, keys and masks, the driver sees only the
    weighted mean of the survivors' updates, clipped into ``[-secure_bound, secure_bound]``
    (default: ``dp.clip * (1 + 6 * dp.noise_multiplier)`` with DP, else 1000) and
    quantised into 32-bit integers; asynchronously (FedBuff), each full buffer is one such
    round over its members, weighted by examples times staleness. ``distributed_noise=True``
    (with ``dp``) gives every virtual hospital the policy ``secagg_distributed_noise``:
    updates are noised in the round by distributed discrete Gaussian shares instead of each
    hospital's full noise (see docs/secagg.md).

    ``history``: an (empty) :class:`History` to fill, e.g. one a live
    ``fednb.ui.ResultsViewer`` already shows; by default a new one.
    """
    strategy = strategy or FedAvg()
    is_async = isinstance(strategy, FedBuff) if asynchronous is None else asynchronous
    compose_check(strategy, secure_aggregation=secure_aggregation, asynchronous=is_async, dp=dp is not None)
    _check_params(fn, strategy, dict(params or {}))
    secure_noise = _secure_noise(distributed_noise, secure_aggregation, dp)
    if backend not in ("local", "dask"):
        raise InvalidInput(f"backend must be 'local' or 'dask', not {backend!r}")
    threads = _workers(workers, initial, len(partitions), backend=backend, asynchronous=is_async)
    parts: dict[str, Participant] = {}
    for name, data in partitions.items():
        dim = example_dim or str(next(iter(data.data_vars.values())).dims[0])
        parts[name] = LocalParticipant(name, fn.source, fn.name, data, dim, dp=dp, metrics=fn.metrics,
                                       compression=compression)
    if not is_async and getattr(strategy.aggregate, "__func__", None) is MeanStrategy.aggregate:
        for part in parts.values():  # the FedAvg family's aggregate checks the mean for NaN/Inf
            assert isinstance(part, LocalParticipant)
            part.defer_finite_check = True
    bound = None
    if secure_aggregation:
        if backend != "local":
            raise InvalidInput("secure aggregation runs with backend='local'")
        bound = secure_bound if secure_bound is not None else default_secure_bound(dp)
        ids = {n: Identity.generate() for n in parts}
        for n, p in parts.items():
            assert isinstance(p, LocalParticipant)
            p.join_secure_aggregation(ids[n], Roster({o: i.public for o, i in ids.items() if o != n}),
                                      distributed_noise=distributed_noise)
    with contextlib.ExitStack() as stack:
        stack.enter_context(keep_freed_memory())  # no page faults for the same arrays every round
        # virtual hospitals run one after another in-process unless threads were asked for
        # (faster for small models: no GIL contention); asynchronous rounds need real
        # concurrency, so they keep the driver's pool
        executor: Executor | None = None if is_async else SerialExecutor()
        if threads > 1:
            stack.enter_context(other_threads_in_blas())  # the driver checks updates as they come
            executor = ThreadPoolExecutor(threads, thread_name_prefix="fednb-hospital")
            # on an error or Ctrl-C, hospitals not yet started are not run
            stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        if backend == "dask":
            executor = stack.enter_context(_dask_executor(dask_client))
        driver = Driver(parts, strategy, initial, dict(params or {}), rounds, run_prefix="sim",
                        min_domains=min_domains, timeout=float("inf"), checkpoint=checkpoint,
                        asynchronous=is_async, progress=progress, executor=executor, secure_bound=bound,
                        history=history, secure_noise=secure_noise,
                        settings={"simulated": True, "strategy": repr(strategy), "backend": backend,
                                  "secure_aggregation": secure_aggregation,
                                  "workers": threads if backend == "local" and not is_async else None})
        return driver.run()


def _workers(workers: object, initial: Weights, hospitals: int, *, backend: str,
             asynchronous: bool) -> int:
    """The threads that run a synchronous round's hospitals (1: one after another)."""
    if isinstance(workers, str) and workers == "auto":
        if backend != "local" or asynchronous:
            return 1
        values = sum(int(np.asarray(v).size) for v in initial.values())
        if values < AUTO_MIN_VALUES:
            return 1
        return max(1, min(usable_cores(), hospitals, AUTO_MAX_WORKERS))
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InvalidInput(f"workers must be a whole number >= 1 or 'auto', not {workers!r}")
    if workers > 1 and backend != "local":
        raise InvalidInput("workers applies to backend='local'; with backend='dask' the cluster's "
                           "workers run the hospitals")
    if workers > 1 and asynchronous:
        raise InvalidInput("workers applies to synchronous rounds; asynchronous rounds already run "
                           "each hospital on its own thread")
    return int(workers)


def _secure_noise(distributed_noise: bool, secure_aggregation: bool, dp: ClientDP | None) -> float | None:
    """The client-level noise z C that distributed noise is sized to, or None without it."""
    if not distributed_noise:
        return None
    if not secure_aggregation or dp is None:
        raise InvalidInput("distributed_noise needs secure_aggregation=True and dp=ClientDP(...): it "
                           "is the secure sum that carries the noise")
    return dp.noise_multiplier * dp.clip


def default_secure_bound(dp: ClientDP | None) -> float:
    """Where secure aggregation clips coordinates unless told: past the DP noise, or 1000."""
    return 1000.0 if dp is None else dp.clip * (1 + 6 * dp.noise_multiplier)


@contextlib.contextmanager
def _dask_executor(client: Any) -> Iterator[Executor]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InvalidInput("backend='dask' needs dask.distributed: pip install 'fednb[dask]'") from None
    if client is not None:
        yield client.get_executor()
        return
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                           dashboard_address=None)
    with cluster, Client(cluster) as own:  # type: ignore[no-untyped-call]
        yield own.get_executor()
