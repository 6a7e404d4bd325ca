"""Flower's side of ``bench/secagg.py``: seconds per round with and without SecAgg+.

    bench/.venv-flower/bin/python bench/flower_secagg.py [--n 20] [--p 1e6] [--rounds 4]

Runs in Flower's own venv (``bench/setup_flower.sh``). The same no-op work in both modes
(``NumPyClient.fit`` returns the received float32 array + 1, one example), over
``num_supernodes=N`` with Flower's Simulation Runtime (Ray, 1 CPU per ClientApp), through
the legacy ``DefaultWorkflow``:

* plain: ``DefaultWorkflow()`` with ``flwr.server.strategy.FedAvg``;
* secure: ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=N-1 ...))`` with
  the client mod ``secaggplus_mod`` (everyone shares with everyone, as fednb does at
  N <= 32; threshold a majority).

A round's time is the wall time between consecutive calls of the strategy's
``evaluate_fn`` (called before round 1 and after every round); round 1 is reported apart
and ``s_per_round`` is the median of the later rounds. One JSON line per mode.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np
from flwr import __version__ as FLWR_VERSION
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation


class PlusOne(NumPyClient):
    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        return [a + np.float32(1) for a in parameters], 1, {}


def client_fn(context: Context):  # type: ignore[no-untyped-def]
    return PlusOne().to_client()


def measure(n: int, p: int, rounds: int, secure: bool) -> dict[str, object]:
    stamps: list[float] = []
    final: list[np.ndarray] = []

    def evaluate_fn(rnd, params, config):  # type: ignore[no-untyped-def]
        stamps.append(time.perf_counter())
        if rnd == rounds:
            final.extend(params)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                          initial_parameters=ndarrays_to_parameters([np.zeros(p, np.float32)]),
                          evaluate_fn=evaluate_fn)
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        fit = SecAggPlusWorkflow(num_shares=n - 1, reconstruction_threshold=(n - 1) // 2 + 1,
                                 clipping_range=8.0) if secure else None
        DefaultWorkflow(fit_workflow=fit)(grid, ctx)

    client = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])
    t0 = time.perf_counter()
    run_simulation(server, client, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    total = time.perf_counter() - t0
    per = [b - a for a, b in itertools.pairwise(stamps)]
    ok = len(per) == rounds and bool(final) and np.allclose(final[0], rounds, atol=1e-2)
    return {"bench": "flower", "flwr": FLWR_VERSION, "secure": secure, "n": n, "p": p, "rounds": rounds,
            "ok": ok, "first_round_s": per[0] if per else None,
            "s_per_round": statistics.median(per[1:]) if len(per) > 1 else None, "rounds_s": per,
            "total_s": total, "result_dtype": str(final[0].dtype) if final else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--p", type=float, default=1e6)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    for secure in (False, True):
        print(json.dumps(measure(args.n, int(args.p), args.rounds, secure)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
