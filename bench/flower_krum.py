"""Flower's side of ``bench/krum.py``: seconds of ``aggregate_krum`` on the same updates.

    bench/.venv-flower/bin/python bench/flower_krum.py --n 50 --p 1e6 --f 5

Runs in Flower's own venv. The updates are N float32 vectors from NumPy's
``default_rng(0).normal`` (the same generator and seed as fednb's side); prints one JSON
line: the best time of ``--repeats`` calls and the index of the chosen update.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from flwr import __version__ as FLWR_VERSION
from flwr.server.strategy.aggregate import aggregate_krum


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--p", type=float, default=1e6)
    ap.add_argument("--f", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    ups = [rng.normal(size=int(args.p)).astype(np.float32) for _ in range(args.n)]
    results = [([u], 1) for u in ups]
    times, chosen = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = aggregate_krum(results, args.f, 0)
        times.append(time.perf_counter() - t0)
        chosen = next(i for i, u in enumerate(ups) if np.array_equal(u, out[0]))
    print(json.dumps({"flwr": FLWR_VERSION, "seconds": min(times), "chosen": chosen}))


if __name__ == "__main__":
    main()
