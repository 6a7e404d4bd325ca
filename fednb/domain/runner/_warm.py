"""Which warm workers stay: a cap per pool, a cap per process, an idle timeout.

A warm worker holds its zygote's memory (about 92 MiB of PSS with NumPy, xarray and a small
dataset loaded, 240 MiB with PyTorch; :mod:`._worker`), and a process may serve several
domains, each with a pool (``fednb demo`` serves three). So every pool registers here, and after a worker
starts, and every so often from a reaper thread, :func:`trim` stops

1. the workers of each pool idle for longer than the pool's ``idle_s``;
2. the least recently used beyond each pool's ``max_warm``;
3. the least recently used beyond the process's cap, :data:`PROCESS_MAX_WARM`
   (:func:`set_process_max_warm`), across every pool.

A worker in use (its run, or its start, holds its lock) or pinned (a DP run made it warm
before its release slot began, with ``ensure_warm``, and has not taken it yet) is never
stopped, so a cap may be passed for as long as they last. A pinned worker that is stopped
all the same (its zygote died, or the pin outlived :data:`PIN_S`) is started again by its
run, inside the run's schedule. Stops run on a thread of their own, off a run's path.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from fednb.domain.runner._zygote import Key, Worker

__all__ = ["IDLE_S", "MAX_WARM", "PIN_S", "PROCESS_MAX_WARM", "register", "set_process_max_warm",
           "stop_later", "trim", "wake"]

MAX_WARM = 4
"""Warm workers a pool (a domain) keeps by default."""
PROCESS_MAX_WARM = 4
"""Warm workers kept across every pool of this process (see :func:`set_process_max_warm`)."""
IDLE_S = 300.0
"""Seconds a worker stays warm unused, by default."""
PIN_S = 600.0
"""Seconds a DP run's ``ensure_warm`` keeps its worker from eviction, at most, until the run
takes it (a run refused after its worker was made warm never comes)."""
_TICK_MAX = 30.0  # the reaper looks at least this often, seconds
_TICK_MIN = 0.05

_POOLS: weakref.WeakSet[_Pool] = weakref.WeakSet()
_TRIM = threading.Lock()  # one trim at a time: caps are counted over every pool
_WAKE = threading.Event()
_REAPER: threading.Thread | None = None
_REAPER_LOCK = threading.Lock()
_STOPPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fednb-worker-stop")


class _Pool(Protocol):
    max_warm: int
    idle_s: float | None

    def entries(self) -> list[tuple[Key, Worker]]: ...

    def evict(self, key: Key, worker: Worker, now: float) -> bool: ...


def set_process_max_warm(n: int) -> None:
    """Keep at most ``n`` warm workers across every pool of this process (default
    :data:`PROCESS_MAX_WARM`, 4); takes effect at the next trim, which this starts."""
    global PROCESS_MAX_WARM
    if n < 1:
        raise ValueError(f"a process keeps at least one warm worker, not {n}")
    PROCESS_MAX_WARM = n
    wake()


def register(pool: _Pool) -> None:
    """Count ``pool``'s workers in the process's cap and start the reaper if need be."""
    global _REAPER
    _POOLS.add(pool)
    with _REAPER_LOCK:
        if _REAPER is None:
            _REAPER = threading.Thread(target=_reap, name="fednb-worker-reaper", daemon=True)
            _REAPER.start()
    wake()


def wake() -> None:
    """Have the reaper look again now (a pool's idle timeout or the cap changed)."""
    _WAKE.set()


def _tick() -> float:
    idle = [p.idle_s for p in list(_POOLS) if p.idle_s is not None]
    return min(_TICK_MAX, max(_TICK_MIN, min(idle, default=_TICK_MAX) / 4))


def _reap() -> None:
    while True:
        _WAKE.wait(_tick())
        _WAKE.clear()
        trim()


def _oldest_first(entries: list[tuple[Key, Worker]]) -> list[tuple[Key, Worker]]:
    """Dead zygotes first, then the least recently taken."""
    return sorted(entries, key=lambda e: (e[1].alive(), e[1].use.taken))


def trim(now: float | None = None) -> int:
    """Stop what the caps and idle timeouts say (see the module's docstring); returns how
    many workers it took out. The stops themselves run on the stopper thread."""
    with _TRIM:
        now = time.monotonic() if now is None else now
        pools = list(_POOLS)
        taken = 0
        for pool in pools:
            entries = pool.entries()
            if pool.idle_s is not None:
                idle = pool.idle_s
                taken += sum(pool.evict(k, w, now) for k, w in entries if now - w.use.idle_from > idle)
            taken += _evict_beyond(pool.max_warm, [(pool, k, w) for k, w in pool.entries()], now)
        every = [(p, k, w) for p in pools for k, w in p.entries()]
        return taken + _evict_beyond(PROCESS_MAX_WARM, every, now)


def _evict_beyond(cap: int, entries: list[tuple[_Pool, Key, Worker]], now: float) -> int:
    excess, taken = len(entries) - cap, 0
    order = {id(w): i for i, (_, w) in enumerate(_oldest_first([(k, w) for _, k, w in entries]))}
    for pool, key, worker in sorted(entries, key=lambda e: order[id(e[2])]):
        if taken >= excess:
            break
        taken += pool.evict(key, worker, now)
    return taken


def stop_later(worker: Worker, done: Callable[[Future[None]], None] | None = None) -> Future[None]:
    """Stop ``worker`` on the stopper thread (its kill, the wait and its cgroup's removal);
    ``done`` is called with the future when it is stopped."""

    def stop() -> None:
        worker.stop()

    fut = _STOPPER.submit(stop)
    if done is not None:
        fut.add_done_callback(done)
    return fut
