"""One measurement for ``bench/old_vs_new.py``, in a fresh process, on whichever fednb is first
on ``sys.path`` (the old tree's, exported, or the working tree's). Prints one JSON line.

    python bench/old_vs_new_child.py rounds N P ROUNDS [FRACTION] [WORKERS]
    python bench/old_vs_new_child.py krum N P F

``rounds``: the tree's own ``bench/rounds.py`` configuration (``measure_fednb``: simulate,
FedAvg, a no-op function, ``workers="auto"`` unless WORKERS is given), its rounds timed by
the wall clock as that script does and also by this process's CPU time (every thread's),
which a busy machine disturbs less; and the process's peak RSS. ``krum``: what a Krum
round costs the driver on N float32 updates: the old tree's finiteness check (each
``ClientUpdate`` scanned as it is made) and aggregate, or the new tree's (``admit``, then
aggregate), best of 3.

Only names that both trees have are used here, so the same file measures both.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("FEDNB_KEEP_FREED_MEMORY", "1")  # as bench/rounds.py (the old tree: always)


def _tree_bench() -> Path:
    import fednb

    return Path(fednb.__file__).resolve().parent.parent / "bench"


def rounds(n: int, p: int, nrounds: int, fraction: float, workers: str) -> dict[str, Any]:
    sys.path.insert(0, str(_tree_bench()))
    import rounds as bench  # the tree's own bench/rounds.py

    made: list[Any] = []

    class CpuTimed(bench.TimedFedAvg):  # type: ignore[name-defined,misc]
        """Its stamps, and this process's CPU time at each of them."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.cpu: list[float] = []
            made.append(self)

        def configure_round(self, server_round: int, params: Any) -> Any:
            if server_round == 0:
                self.cpu.append(time.process_time())
            return super().configure_round(server_round, params)

        def aggregate_mean(self, *args: Any, **kwargs: Any) -> Any:
            out = super().aggregate_mean(*args, **kwargs)
            self.cpu.append(time.process_time())
            return out

    bench.TimedFedAvg = CpuTimed
    rec = bench.measure_fednb(n, p, nrounds, fraction=fraction,
                              workers=workers if workers == "auto" else int(workers))
    cpu = made[-1].cpu
    per_cpu = [b - a for a, b in itertools.pairwise(cpu)]
    return {"wall": rec["s_per_round"], "cpu": statistics.median(per_cpu[1:]), "ok": rec["ok"],
            "workers": rec["workers"], "peak_rss": bench.peak_rss()}


def krum(n: int, p: int, f: int) -> dict[str, Any]:
    import numpy as np

    from fednb import strategies
    from fednb.strategies import ClientUpdate, Krum

    rng = np.random.default_rng(0)
    vecs = [rng.normal(size=p).astype(np.float32) for _ in range(n)]
    strategy, g = Krum(f=f), np.zeros(p)
    admit = getattr(strategies, "admit", None)

    def round_() -> Any:
        ups = [ClientUpdate(v, 1, f"h{i}") for i, v in enumerate(vecs)]  # old tree: scanned here
        return strategy.aggregate(g, admit(ups)[0] if admit is not None else ups)

    round_()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        round_()
        times.append(time.perf_counter() - t0)
    return {"wall": min(times), "check": "admit" if admit is not None else "ClientUpdate"}


def main() -> None:
    what, *args = sys.argv[1:]
    if what == "rounds":
        n, p, nr = int(args[0]), int(float(args[1])), int(args[2])
        fraction = float(args[3]) if len(args) > 3 else 1.0
        rec = rounds(n, p, nr, fraction, args[4] if len(args) > 4 else "auto")
    elif what == "krum":
        rec = krum(int(args[0]), int(float(args[1])), int(args[2]))
    else:
        raise SystemExit(f"unknown measurement {what!r}: rounds or krum")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
