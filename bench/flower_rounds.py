"""Flower's side of ``bench/rounds.py``: seconds per round of FedAvg on no-op client work.

    bench/.venv-flower/bin/python bench/flower_rounds.py [--configs 10x1e6,100x1e5] [--rounds 5]

Runs in Flower's own venv (``bench/setup_flower.sh``), never in fednb's. For each (N, P)
it calls Flower's Simulation Runtime (``flwr.simulation.run_simulation``, Ray backend,
``num_supernodes=N``, 1 CPU per ClientApp: 2 Ray actors on a 2-core machine) with:

* a ``ClientApp`` whose ``train`` returns the received arrays + 1 (one float32 array of P
  parameters) and ``num-examples`` = 1 — no-op work;
* a ``ServerApp`` running the message-API ``flwr.serverapp.strategy.FedAvg`` over all N
  nodes each round, federated evaluation off (``fraction_evaluate=0``).

A round's time is the wall time between consecutive calls of the strategy's
``evaluate_fn`` hook, which ``Strategy.start`` calls before round 1 and at the end of every
round: configure_train (sample, build N messages) -> send_and_receive (messages through the
in-memory SuperLink state to Ray actors, deserialise, train, serialise, replies back) ->
aggregate_train (weighted mean) -> an empty evaluate step. Round 1 also starts the Ray
actors and is reported apart (``first_round_s``); ``s_per_round`` is the median of the
later rounds. Prints one JSON line per configuration to stdout (Flower's logs go to stderr).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here; and no telemetry in timings
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import numpy as np
from flwr import __version__ as FLWR_VERSION
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

GRID = [(n, p) for n in (10, 100, 1000) for p in (100_000, 1_000_000)]
MEM_LIMIT = 10e9
# Per-round seconds measured here (2 cores): N=10,P=1e6 ~0.4; N=100,P=1e5 ~1.2; N=1000,P=1e5 ~30.
# The replies alone hold N*P*4 bytes and travel through Ray's object store and the SuperLink
# state, so at least three copies are alive at once.
MEM_COPIES = 3


def skip_reason(n: int, p: int) -> str | None:
    mem = MEM_COPIES * n * p * 4
    if mem > MEM_LIMIT:
        return (f"needs >= {MEM_COPIES} x N*P*4 = {mem / 1e9:.0f} GB (> {MEM_LIMIT / 1e9:.0f} GB), and at "
                "~30 s a round at N=1000,P=1e5 here, more than 2 minutes a round")
    return None


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    reply = RecordDict({"arrays": ArrayRecord([a + np.float32(1) for a in arrays]),
                        "metrics": MetricRecord({"num-examples": 1})})
    return Message(reply, reply_to=msg)


def measure(n: int, p: int, rounds: int, cpus: float = 1.0, evaluate: float = 0.0) -> dict[str, object]:
    stamps: list[float] = []
    final: list[np.ndarray] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=evaluate, min_train_nodes=n,
                          min_available_nodes=n)
        result = strategy.start(grid, ArrayRecord([np.zeros(p, np.float32)]), num_rounds=rounds,
                                evaluate_fn=lambda rnd, arrays: stamps.append(time.perf_counter()) or None)
        final.extend(result.arrays.to_numpy_ndarrays())

    t0 = time.perf_counter()
    run_simulation(server, client, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0}})
    total = time.perf_counter() - t0
    per = [b - a for a, b in itertools.pairwise(stamps)]
    # Flower averages in float32 with factors 1/N: at N=1000 the result is off by ~1e-4 relative.
    ok = len(per) == rounds and bool(final) and np.allclose(final[0], rounds, rtol=1e-3)
    return {"bench": "flower", "flwr": FLWR_VERSION, "n": n, "p": p, "rounds": rounds, "ok": ok,
            "setup_s": stamps[0] - t0 if stamps else None, "first_round_s": per[0] if per else None,
            "s_per_round": statistics.median(per[1:]) if len(per) > 1 else None,
            "rounds_s": per, "total_s": total,
            "final_mean": float(final[0].mean()) if final else None}


def parse_configs(text: str | None) -> list[tuple[int, int]]:
    if not text:
        return GRID
    return [(int(float(a)), int(float(b))) for a, b in (c.split("x") for c in text.split(","))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", help="comma-separated NxP, e.g. 10x1e6,100x1e5 (default: the full grid)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per configuration (default 5)")
    ap.add_argument("--rounds-large", type=int, default=3, help="rounds when N >= 1000 (default 3)")
    ap.add_argument("--cpus-per-client", type=float, default=1.0,
                    help="Ray CPUs per ClientApp (default 1: two actors on two cores; Flower's default: 2)")
    ap.add_argument("--fraction-evaluate", type=float, default=0.0,
                    help="federated evaluation each round (default 0: off; Flower's own default is 1)")
    args = ap.parse_args()
    for n, p in parse_configs(args.configs):
        why = skip_reason(n, p)
        if why:
            print(json.dumps({"bench": "flower", "flwr": FLWR_VERSION, "n": n, "p": p, "skipped": why}),
                  flush=True)
            continue
        rec = measure(n, p, args.rounds_large if n >= 1000 else args.rounds, args.cpus_per_client,
                      args.fraction_evaluate)
        rec |= {"cpus_per_client": args.cpus_per_client, "fraction_evaluate": args.fraction_evaluate}
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    sys.exit(main())
