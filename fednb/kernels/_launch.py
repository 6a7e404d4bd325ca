"""Numba's parallel kernels launched from several threads at once.

Numba runs ``prange`` loops on a threading layer: TBB or OpenMP, which take launches from
several threads at once, or its own workqueue, which does not: a second thread launching a
parallel kernel while one runs aborts the process ("Concurrent access has been
detected"). Numba falls back on the workqueue where neither TBB nor libgomp is found (a
slim container, say), and fednb launches kernels from several threads where rounds run
hospitals on threads (``simulate(workers=...)``, asynchronous rounds): DP noise, secure
aggregation's stochastic rounding. So launches take turns until the first one has shown
which layer Numba took, and go on taking turns only where it is the workqueue.

Numba's CUDA simulator (the ``numba-cuda-sim`` backend of the tests) is not thread-safe
either: a launch swaps fake ``cuda`` modules into the kernel's globals for its duration.
Its launches always take turns (:func:`serialised_on_simulator`).

Only fednb's own kernels are covered: a function of the scientist's that runs its own
``@njit(parallel=True)`` code in two hospitals at once still needs a threadsafe layer
(TBB or OpenMP), or ``workers=1``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["parallel_launch", "serialised_on_simulator", "serialised_on_workqueue"]

F = TypeVar("F", bound=Callable[..., Any])
_lock = threading.Lock()
_threadsafe: bool | None = None  # None: no parallel kernel has run yet, the layer is not known
_simulator_lock = threading.Lock()


def _new_locks() -> None:  # a forked child has none of the parent's threads: no holder either
    global _lock, _simulator_lock
    _lock, _simulator_lock = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks)


def _layer_is_threadsafe() -> bool | None:
    import numba

    try:
        return str(numba.threading_layer()) != "workqueue"  # type: ignore[attr-defined]
    except ValueError:  # Numba has not picked a layer: no parallel kernel ran
        return None


@contextlib.contextmanager
def parallel_launch() -> Iterator[None]:
    """A context for one launch of a parallel kernel: it holds a lock unless Numba's threading
    layer is known to take concurrent launches."""
    global _threadsafe
    if _threadsafe:
        yield
        return
    with _lock:
        yield
        if _threadsafe is None:
            _threadsafe = _layer_is_threadsafe()


def serialised_on_workqueue(fn: F) -> F:
    """``fn`` (which launches parallel kernels) run inside :func:`parallel_launch`."""

    @functools.wraps(fn)
    def launch(*args: Any, **kwargs: Any) -> Any:
        with parallel_launch():
            return fn(*args, **kwargs)

    return launch  # type: ignore[return-value]


def serialised_on_simulator(fn: F) -> F:
    """``fn`` (which launches CUDA kernels) taking turns with other launches when Numba's CUDA
    simulator runs them; on a real device, as it is."""
    from numba import config

    if not getattr(config, "ENABLE_CUDASIM", 0):
        return fn

    @functools.wraps(fn)
    def launch(*args: Any, **kwargs: Any) -> Any:
        with _simulator_lock:
            return fn(*args, **kwargs)

    return launch  # type: ignore[return-value]
