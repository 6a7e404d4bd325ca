"""Warm sandboxed workers, one per (approved request, dataset), behind a domain-wide job cap."""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from fednb.domain.runner import _warm
from fednb.domain.runner._sandbox import Limits, SandboxMode, sweep_once
from fednb.domain.runner._zygote import (
    START_TIMEOUT,
    JobSpec,
    Key,
    RawOutcome,
    Worker,
    WorkerOutcome,
    one_dataset,
    parse_outcome,
)
from fednb.typing import Weights

__all__ = ["JobRunner", "JobSpec", "RawOutcome", "WorkerInfo", "WorkerOutcome", "WorkerPool",
           "parse_outcome", "release_at"]

_Worker = Worker  # its name before it moved to ._zygote (tests/unit/test_gpu_binds.py)

@dataclass(frozen=True)
class WorkerInfo:
    """A warm worker as the owner's tools see it: ``pid``, the sandbox's process on this
    host (the same until the worker is stopped), and ``runs``, the runs it served."""

    request_id: str
    dataset: str
    pid: int
    runs: int


class JobRunner(Protocol):
    """What a domain runs its jobs on: a :class:`WorkerPool` of local processes, or a
    ``DaskPool`` (``fednb.domain.runner._dask``) on a Dask cluster."""

    def run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float, hold_until: float | None = None,
            cut_at: float | None = None) -> WorkerOutcome: ...

    def prewarm(self, job: JobSpec) -> None: ...

    def ensure_warm(self, job: JobSpec) -> None: ...

    def discard(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


def release_at(slots: threading.BoundedSemaphore, hold_until: float | None) -> None:
    """Release one of ``slots`` at ``hold_until`` (``time.monotonic()``), or now if that
    moment has passed or is None: when the next job starts never depends on how long a
    run held its slot for less."""
    delay = 0.0 if hold_until is None else hold_until - time.monotonic()
    if delay <= 0:
        slots.release()
        return
    timer = threading.Timer(delay, slots.release)
    timer.daemon = True
    timer.start()


def _acquire(lock: threading.Lock | threading.BoundedSemaphore, cut_at: float | None) -> bool:
    """Take ``lock``, waiting at most until ``cut_at`` (``time.monotonic()``; None: for ever)."""
    if cut_at is None:
        return lock.acquire()
    return lock.acquire(timeout=max(0.0, cut_at - time.monotonic()))


def _cut(where: str) -> RawOutcome:
    return RawOutcome("timeout", "wall_clock", log=f"fednb: the run's schedule passed while {where}\n")



class WorkerPool:
    """Keeps warm workers within their caps and runs at most ``max_concurrent`` jobs.

    A worker is one sandboxed zygote per (request, dataset): it holds that one dataset,
    and forks a fresh process for every run, after which nothing of the run is left (see
    ``fednb.domain.runner._worker``). A run that failed, timed out or was killed leaves its
    worker warm. A worker is stopped when its zygote fails, when it was idle for ``idle_s``,
    or when it is the least recently used beyond ``max_warm`` or beyond the process's cap
    over every pool (:func:`fednb.domain.runner.set_process_max_warm`); never while a run
    uses it or a DP run that made it warm (:meth:`ensure_warm`) has yet to take it (see
    ``fednb.domain.runner._warm``). A stopped worker starts again at its next run.

    Parameters
    ----------
    mode
        ``"bubblewrap"`` or ``"insecure-demo"``.
    limits
        Caps applied to every worker.
    max_concurrent
        Jobs running at once across the domain (default 2).
    max_warm
        Warm workers this pool keeps, each one (request, dataset) (default 4).
    max_output
        Cap on one result, bytes (default 64 MiB).
    idle_s
        Seconds a worker stays warm unused (default 300; None: until a cap or ``discard``
        stops it). A DP run's worker counts as used until the end of the run's slot.
    """

    def __init__(self, mode: SandboxMode, limits: Limits | None = None, max_concurrent: int = 2,
                 max_warm: int = _warm.MAX_WARM, max_output: int = 64 << 20,
                 idle_s: float | None = _warm.IDLE_S) -> None:
        if max_warm < 1:
            raise ValueError(f"max_warm is at least 1, not {max_warm}")
        if idle_s is not None and not idle_s > 0:
            raise ValueError(f"idle_s is seconds > 0 (or None), not {idle_s}")
        self.mode, self.limits = mode, limits or Limits()
        self.max_warm, self.max_output, self.idle_s = max_warm, max_output, idle_s
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._workers: OrderedDict[Key, Worker] = OrderedDict()
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()
        self._closed = False  # shut down: a worker a late prewarm or run starts is stopped at once
        self._starting = 0  # workers being started now: shutdown() waits for them
        self._started = threading.Condition(self._guard)
        self._stopping: set[Future[None]] = set()  # evicted workers the stopper still stops
        # cgroups of workers a domain killed with kill -9 left behind, once per process
        sweep_once()
        # a pool dropped without shutdown() (or still open at exit) stops its workers and
        # removes their cgroups all the same
        weakref.finalize(self, _stop_all, self._workers, self._guard)
        _warm.register(self)

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _worker(self, job: JobSpec, scheduled: bool = False) -> tuple[Worker, RawOutcome | None]:
        """The warm worker of a one-dataset ``job`` (see :func:`one_dataset`), started if need
        be; ``scheduled``: a DP run takes it, and the pin its ``ensure_warm`` left goes."""
        key = (job.request_id, next(iter(job.datasets)))
        with self._guard:
            w = self._workers.pop(key, None)
        if w is not None and w.job != job:  # same id, other code, data or home: never reuse
            w.stop()
            w = None
        started = False
        if w is not None and w.alive():
            failure = None
        else:
            pins = w.use.pins if w is not None else []  # runs that await a zygote that died
            with self._guard:
                self._starting += 1
            try:
                w = Worker(job, self.mode, self.limits, self.max_output)
                w.use.pins, started = pins, True
                failure = w.start()
                with self._guard:
                    closed = self._closed
                if closed:  # shut down meanwhile (a prewarm still starting, a run cut at once)
                    w.stop()
                    return w, failure or RawOutcome("failed", "worker_crashed",
                                                    log="fednb: the domain is stopping\n")
            finally:
                with self._guard:
                    self._starting -= 1
                    self._started.notify_all()
        with self._guard:
            if self._closed:
                w.stop()
                return w, RawOutcome("failed", "worker_crashed", log="fednb: the domain is stopping\n")
            w.use.taken = w.use.idle_from = time.monotonic()
            if scheduled:
                w.use.unpin()
            self._workers[key] = w
        if started:  # one more warm worker: the caps may now take another
            _warm.trim()
        return w, failure

    def entries(self) -> list[tuple[Key, Worker]]:
        """The warm set, least recently used first (for ``_warm``)."""
        with self._guard:
            return list(self._workers.items())

    def evict(self, key: Key, worker: Worker, now: float) -> bool:
        """Take ``worker`` out of the warm set and stop it on the stopper thread, unless a run
        or a start holds it or a DP run pinned it (at ``now``, ``time.monotonic()``); True
        when it was taken out."""
        lock = self._lock(key)
        if not lock.acquire(blocking=False):
            return False
        try:
            with self._guard:
                if self._workers.get(key) is not worker or worker.use.pinned(now):
                    return False
                del self._workers[key]
        finally:
            lock.release()
        fut = _warm.stop_later(worker)
        with self._guard:
            self._stopping.add(fut)
        fut.add_done_callback(self._stopped)
        return True

    def _stopped(self, fut: Future[None]) -> None:
        with self._guard:
            self._stopping.discard(fut)
            self._started.notify_all()

    def _pin(self, key: Key, job: JobSpec) -> bool:
        """Pin ``key``'s warm worker for a DP run to come; False when none is warm."""
        with self._guard:
            w = self._workers.get(key)
            if w is None or w.job != job or not w.alive():
                return False
            w.use.pins.append(time.monotonic() + _warm.PIN_S)
            return True

    def _unpin(self, key: Key) -> None:
        with self._guard:
            w = self._workers.get(key)
            if w is not None:
                w.use.unpin()

    def ensure_warm(self, job: JobSpec) -> None:
        """Start the job's worker for each of its datasets now, unless it is warm, and keep
        it from eviction until a run with a schedule (``cut_at``) takes it, for at most
        ``_warm.PIN_S``; returns when they are up (or failed to start, which the next run
        reports), at most after the start timeout. A DP run's schedule starts after this, so
        it is not spent on a worker's start."""
        for dataset in job.datasets:
            one, key = one_dataset(job, dataset), (job.request_id, dataset)
            if self._pin(key, one):
                continue
            until = time.monotonic() + START_TIMEOUT
            lock = self._lock(key)
            if not _acquire(lock, until):
                continue
            try:
                if not self._pin(key, one) and _acquire(self._slots, until):
                    try:
                        w, _ = self._worker(one)
                        with self._guard:
                            w.use.pins.append(time.monotonic() + _warm.PIN_S)
                    finally:
                        self._slots.release()
            finally:
                lock.release()

    def prewarm(self, job: JobSpec) -> None:
        """Start a worker for each dataset of the job in the background, so that its first
        run is warm."""

        def go() -> None:
            for dataset in job.datasets:
                one = one_dataset(job, dataset)
                with self._lock((job.request_id, dataset)), self._slots:
                    self._worker(one)

        threading.Thread(target=go, name=f"prewarm-{job.request_id}", daemon=True).start()

    def run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float, hold_until: float | None = None,
            cut_at: float | None = None) -> WorkerOutcome:
        """Run the job once on ``dataset``, in a fresh process of its warm worker.

        Parameters
        ----------
        timeout
            The run's own wall-clock limit, seconds (the worker's start is not in it).
        hold_until
            A ``time.monotonic()`` moment: the job slot stays taken until then even when
            the run ended earlier (default None: freed when the run ends). The outcome is
            returned when the run ends.
        cut_at
            A ``time.monotonic()`` moment by which the run must have ended, waiting for
            the job slot and the worker's start included (a DP run's schedule): past it the
            run is cut, or never started, with ``timeout``/``wall_clock``. A worker stopped
            since :meth:`ensure_warm` starts again inside this schedule.
        """
        return self._run(job, dataset, params, weights, timeout, hold_until, cut_at)[1]

    def run_raw(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
                timeout: float, hold_until: float | None = None, cut_at: float | None = None) -> RawOutcome:
        """:meth:`run`, returning the worker's reply undecoded (for a Dask worker to send on)."""
        return self._run(job, dataset, params, weights, timeout, hold_until, cut_at)[0]

    def _run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
             timeout: float, hold_until: float | None,
             cut_at: float | None = None) -> tuple[RawOutcome, WorkerOutcome]:
        if dataset not in job.datasets:
            raw = RawOutcome("failed", "exception", log=f"fednb: {dataset!r} is not a dataset of this job\n")
            return raw, parse_outcome(raw)
        one, key = one_dataset(job, dataset), (job.request_id, dataset)
        lock = self._lock(key)
        if not _acquire(lock, cut_at):
            self._unpin(key)
            return _cut("waiting for its worker"), parse_outcome(_cut("waiting for its worker"))
        try:
            if not _acquire(self._slots, cut_at):
                self._unpin(key)
                return _cut("waiting for a job slot"), parse_outcome(_cut("waiting for a job slot"))
            worker: Worker | None = None
            try:
                worker, failure = self._worker(one, scheduled=cut_at is not None)
                if failure is None and cut_at is not None:
                    timeout = min(timeout, cut_at - time.monotonic())
                raw = failure or (worker.run(params, weights, timeout) if timeout > 0
                                  else _cut("waiting for its worker to start"))
            finally:
                release_at(self._slots, hold_until)
                if worker is not None:  # a DP run's worker is idle from the end of its slot only
                    worker.use.idle_from = time.monotonic() if hold_until is None else hold_until
        finally:
            lock.release()
        return raw, parse_outcome(raw)

    def warm(self) -> list[str]:
        """The requests with a warm worker."""
        with self._guard:
            return sorted({rid for (rid, _), w in self._workers.items() if w.alive()})

    def pinned(self) -> list[str]:
        """The requests with a warm worker that a scheduled (DP) run is still to take."""
        now = time.monotonic()
        with self._guard:
            return sorted({rid for (rid, _), w in self._workers.items() if w.alive() and w.use.pinned(now)})

    def workers(self) -> list[WorkerInfo]:
        """The warm workers, least recently used first."""
        with self._guard:
            return [WorkerInfo(rid, ds, w.proc.pid, w.runs) for (rid, ds), w in self._workers.items()
                    if w.proc is not None and w.alive()]

    def discard(self, request_id: str) -> None:
        """Stop the request's workers, one per dataset (denied, revoked or exhausted)."""
        with self._guard:
            keys = [k for k in self._workers if k[0] == request_id]
            stopping = [self._workers.pop(k) for k in keys]
        for w in stopping:
            w.stop()

    def shutdown(self) -> None:
        """Stop every worker, and any a prewarm or a run still starts; returns when the
        workers the caps took out are stopped too."""
        with self._guard:
            self._closed = True
            # a worker still starting (a prewarm) is stopped by its starter once it is up:
            # wait for that, or its cgroup would outlive a domain that exits right after
            self._started.wait_for(lambda: self._starting == 0, timeout=START_TIMEOUT)
        _stop_all(self._workers, self._guard)
        with self._guard:
            self._started.wait_for(lambda: not self._stopping, timeout=START_TIMEOUT)


def _stop_all(workers: OrderedDict[Key, Worker], guard: threading.Lock) -> None:
    with guard:
        stopping = list(workers.values())
        workers.clear()
    for w in stopping:
        w.stop()
