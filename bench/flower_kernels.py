"""Flower's side of ``bench/kernels.py``: its ``aggregate``, ``aggregate_median`` and
``aggregate_trimmed_avg`` on the same updates.

    bench/.venv-flower/bin/python bench/flower_kernels.py --n 50 --p 1e6 --dtype float32 --beta 0.1

Runs in Flower's own venv (``bench/setup_flower.sh``). The updates are N vectors from
NumPy's ``default_rng(0).normal`` in ``--dtype`` (the generator, seed and order of
``bench/kernels.py``), weighted by ``1 + i % 7`` examples. Prints one JSON line: per
function, the best of ``--repeats`` calls in seconds and a checksum of its output (the
float64 sum) for the caller to compare with fednb's result.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr import __version__ as FLWR_VERSION
from flwr.server.strategy.aggregate import aggregate, aggregate_median, aggregate_trimmed_avg


def updates(n: int, p: int, dtype: str) -> list[np.ndarray]:
    """The bench's updates: ``default_rng(0).normal`` rows, cast to ``dtype``."""
    rng = np.random.default_rng(0)
    return [rng.normal(size=p).astype(dtype) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--p", type=float, default=1e6)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--beta", type=float, default=0.1, help="proportion cut from each end")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ups = updates(args.n, int(args.p), args.dtype)
    results = [([u], 1 + i % 7) for i, u in enumerate(ups)]
    fns: dict[str, Callable[[], Any]] = {
        "mean": lambda: aggregate(results),
        "median": lambda: aggregate_median(results),
        "trimmed": lambda: aggregate_trimmed_avg(results, args.beta),
    }
    out: dict[str, Any] = {"flwr": FLWR_VERSION}
    for name, fn in fns.items():
        best, value = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            value = fn()
            best = min(best, time.perf_counter() - t0)
        out[name] = {"seconds": best, "checksum": float(np.sum(value[0], dtype=np.float64))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
