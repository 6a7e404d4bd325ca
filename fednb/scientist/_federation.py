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
from fednb.kernels import keep_freed_memory_if_asked, other_threads_in_blas, usable_cores
from fednb.protocol import ClientDP, Compression, DatasetCard
from fednb.scientist._driver import Driver, SerialExecutor
from fednb.scientist._history import History
from fednb.scientist._participants import LocalParticipant, Participant, RemoteParticipant
from fednb.scientist._remote import RemoteFunction
from fednb.scientist._spec import TrainingSpec, default_secure_bound
from fednb.secagg import Identity, Roster
from fednb.strategies import Strategy
from fednb.typing import Weights

__all__ = ["Federation", "card_differences", "default_secure_bound", "simulate"]

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
        A directory to checkpoint into after every round (created if missing; None, the
        default: no checkpoints). A Federation built again with the same arguments and
        directory resumes from it, and says so (a warning naming the round).
    slot_s
        With ``dp``: the release slot each domain's runs are filed with, seconds (each DP
        result appears this long after its run started; the owners approve it; default:
        each domain's ``dp_slot_s``). A round takes at least this long.

    Raises
    ------
    InvalidInput
        For settings that do not go together (see :class:`~fednb.scientist.TrainingSpec`),
        checked here, before any request is filed.
    """

    def __init__(self, domains: Mapping[str, DomainClient], fn: RemoteFunction, *, dataset: str,
                 initial: Weights, params: Mapping[str, Any] | None = None, strategy: Strategy | None = None,
                 rounds: int = 10, dp: ClientDP | None = None, secure_aggregation: bool = False,
                 asynchronous: bool | None = None, min_domains: int | None = None, timeout: float = 600.0,
                 checkpoint: str | Path | None = None, progress: bool = True,
                 compression: Compression = "none", secure_bound: float | None = None,
                 distributed_noise: bool = False, slot_s: float | None = None) -> None:
        self.domains, self.fn, self.dataset = dict(domains), fn, dataset
        self.slot_s = slot_s
        self.spec = TrainingSpec.build(
            fn, list(self.domains), initial=initial, params=params, strategy=strategy, rounds=rounds, dp=dp,
            asynchronous=asynchronous, min_domains=min_domains or max(1, len(self.domains) - 1),
            secure_aggregation=secure_aggregation, secure_bound=secure_bound,
            distributed_noise=distributed_noise, compression=compression, timeout=timeout,
            checkpoint=_checkpoint_dir(checkpoint), progress=progress)
        spec = self.spec
        key = json.dumps([sorted(self.domains), fn.code_hash, dataset, repr(spec.strategy), rounds,
                          None if dp is None else dp.model_dump(), sorted(spec.params.items()),
                          spec.secure_bound, *(["distributed-noise"] if distributed_noise else [])],
                         default=str)
        self.id = "fed-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        self.requests: dict[str, RemoteRequest] = {}
        self.history = History()  # filled by run(); watch it for a live view (fednb.ui.ResultsViewer)

    @property
    def strategy(self) -> Strategy:
        return self.spec.strategy

    @property
    def rounds(self) -> int:
        return self.spec.rounds

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint directory, or None."""
        return self.spec.checkpoint

    def check_cards(self) -> None:
        """Refuse before round 1 when the domains' dataset cards differ (and say how)."""
        cards = {n: c.datasets[self.dataset].card for n, c in self.domains.items()}
        diff = card_differences(cards)
        if diff:
            raise InvalidInput("the domains' datasets differ:\n  " + "\n  ".join(diff))

    def request(self) -> dict[str, RemoteRequest]:
        """File one request per domain (idempotent: a second call finds the same requests)."""
        self.check_cards()
        spec = self.spec
        runs = spec.rounds * (2 if spec.asynchronous else 1) + 1
        for name, client in self.domains.items():
            self.requests[name] = self.fn.request(
                client, self.dataset, runs=runs, weights=spec.initial, dp=spec.dp, slot_s=self.slot_s,
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
        spec = self.spec
        participants: dict[str, Participant] = {
            n: RemoteParticipant(n, r, self.dataset, spec.compression, secure=spec.secure)
            for n, r in self.requests.items()}
        driver = Driver(participants, spec, run_prefix=self.id, history=self.history,
                        settings={"federation": self.id, "strategy": repr(spec.strategy),
                                  "dataset": self.dataset, "secure_aggregation": spec.secure,
                                  "dp": None if spec.dp is None else spec.dp.model_dump()})
        return driver.run()


def _checkpoint_dir(checkpoint: object) -> Path | None:
    """The checkpoint directory the scientist named, or None (False and None: none)."""
    if checkpoint is None or checkpoint is False:
        return None
    if checkpoint is True or not isinstance(checkpoint, (str, Path)):
        raise InvalidInput(f"checkpoint takes a directory (str or Path) to checkpoint into, or None, "
                           f"not {checkpoint!r}: name where the rounds are kept, e.g. "
                           "checkpoint=Path('federations') / 'breast-cancer'")
    return Path(checkpoint)


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
    if backend not in ("local", "dask"):
        raise InvalidInput(f"backend must be 'local' or 'dask', not {backend!r}")
    if secure_aggregation and backend != "local":
        raise InvalidInput("secure aggregation runs with backend='local'")
    spec = TrainingSpec.build(
        fn, list(partitions), initial=initial, params=params, strategy=strategy, rounds=rounds, dp=dp,
        asynchronous=asynchronous, min_domains=min_domains, secure_aggregation=secure_aggregation,
        secure_bound=secure_bound, distributed_noise=distributed_noise, compression=compression,
        timeout=float("inf"), checkpoint=_checkpoint_dir(checkpoint), progress=progress)
    threads = _workers(workers, initial, len(partitions), backend=backend, asynchronous=spec.asynchronous)
    parts: dict[str, LocalParticipant] = {}
    for name, data in partitions.items():
        dim = example_dim or str(next(iter(data.data_vars.values())).dims[0])
        parts[name] = LocalParticipant(name, fn.source, fn.name, data, dim, dp=dp, metrics=fn.metrics,
                                       compression=compression)
    if spec.secure:
        ids = {n: Identity.generate() for n in parts}
        for n, p in parts.items():
            p.join_secure_aggregation(ids[n], Roster({o: i.public for o, i in ids.items() if o != n}),
                                      distributed_noise=distributed_noise)
    with contextlib.ExitStack() as stack:
        # FEDNB_KEEP_FREED_MEMORY=1: no page faults for the same arrays every round (glibc
        # mallopt: process-wide and permanent, so never made in a user's process unasked)
        stack.enter_context(keep_freed_memory_if_asked())
        # virtual hospitals run one after another in-process unless threads were asked for
        # (faster for small models: no GIL contention); asynchronous rounds need real
        # concurrency, so they keep the driver's pool
        executor: Executor | None = None if spec.asynchronous else SerialExecutor()
        if threads > 1:
            stack.enter_context(other_threads_in_blas())  # hospitals' policies check updates at once
            executor = ThreadPoolExecutor(threads, thread_name_prefix="fednb-hospital")
            # on an error or Ctrl-C, hospitals not yet started are not run
            stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        if backend == "dask":
            executor = stack.enter_context(_dask_executor(dask_client))
        driver = Driver(parts, spec, run_prefix="sim", executor=executor, history=history,
                        settings={"simulated": True, "strategy": repr(spec.strategy), "backend": backend,
                                  "secure_aggregation": spec.secure,
                                  "workers": threads if backend == "local" and not spec.asynchronous
                                  else None})
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
