"""Secure aggregation: fednb's SecAgg+ round beside Flower's, same work, same run.

    .venv/bin/python bench/secagg.py [--n 20] [--p 1e6] [--rounds 4] [--no-flower]

fednb: ``fednb.simulate`` over N virtual hospitals whose function returns ``weights + 1``
(``{"w": zeros(P, float32)}``), FedAvg, plain and with ``secure_aggregation=True``
(every hospital advertises signed keys, Shamir-shares its seeds encrypted to its
neighbours, quantises and masks its update; the driver unmasks the sum). A round's time
is the wall time between the ends of consecutive aggregations; round 1 is reported apart,
the figure is the median of the later rounds.

Flower: ``bench/flower_secagg.py`` in Flower's own venv (``bench/setup_flower.sh``), its
legacy ``SecAggPlusWorkflow`` under ``DefaultWorkflow`` with ``secaggplus_mod``, with the
same graph (everyone shares with everyone at N <= 32) and a majority threshold.

Also printed: the upload per hospital against the float32 size, and the mask stream's
throughput on one core (AES-256-CTR keystream read as uint32 and added mod 2^32).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import fednb
from fednb.secagg import MaskStream
from fednb.strategies import FedAvg, RoundConfig
from fednb.typing import FloatArray

HERE = Path(__file__).resolve().parent
FLOWER_PY = HERE / ".venv-flower" / "bin" / "python"


@fednb.remote
def plus_one(data, weights):
    return fednb.Update(weights={k: v + 1 for k, v in weights.items()})


class TimedFedAvg(FedAvg):
    """FedAvg that records when round 0 is configured and when every aggregation ends."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[float] = []

    def configure_round(self, server_round: int, params: Mapping[str, Any]) -> RoundConfig:
        if server_round == 0:
            self.stamps.append(time.perf_counter())
        return super().configure_round(server_round, params)

    def aggregate_mean(self, global_vec: FloatArray, mean: FloatArray, total_weight: float, *,
                       total_examples: float) -> FloatArray:
        out = super().aggregate_mean(global_vec, mean, total_weight, total_examples=total_examples)
        self.stamps.append(time.perf_counter())
        return out


def measure_fednb(n: int, p: int, rounds: int, secure: bool) -> dict[str, Any]:
    parts = {f"h{i:02d}": xr.Dataset({"x": ("row", np.zeros(1))}) for i in range(n)}
    strategy = TimedFedAvg()
    hist = fednb.simulate(plus_one, parts, initial={"w": np.zeros(p, np.float32)}, strategy=strategy,
                          rounds=rounds, progress=False, secure_aggregation=secure,
                          secure_bound=float(rounds + 1))
    per = [b - a for a, b in itertools.pairwise(strategy.stamps)]
    w = hist.weights["w"]
    ok = len(per) == rounds and bool(np.allclose(w, rounds, atol=1e-6))
    up = float(hist.metrics["bytes_up"].max())
    return {"bench": "fednb", "secure": secure, "n": n, "p": p, "ok": ok, "first_round_s": per[0],
            "s_per_round": statistics.median(per[1:]), "rounds_s": per, "upload_bytes": up,
            "result_dtype": str(w.dtype)}


def mask_throughput(p: int = 1 << 22, repeats: int = 20) -> float:
    """Bytes of mask per second one core expands and adds (AES-256-CTR, uint32, mod 2^32)."""
    stream, acc = MaskStream(p), np.zeros(p, np.uint32)
    keys = [os.urandom(32) for _ in range(repeats)]
    t0 = time.perf_counter()
    for k in keys:
        stream.add(acc, k)
    return repeats * 4 * p / (time.perf_counter() - t0)


def measure_flower(n: int, p: int, rounds: int) -> dict[bool, dict[str, Any]]:
    if not FLOWER_PY.exists():
        print(f"(no Flower: run bench/setup_flower.sh to create {FLOWER_PY.parent.parent})")
        return {}
    out = subprocess.run([str(FLOWER_PY), str(HERE / "flower_secagg.py"), "--n", str(n), "--p", str(p),
                          "--rounds", str(rounds)], capture_output=True, text=True, check=False)
    recs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or len(recs) != 2:
        print("Flower failed:\n" + out.stderr[-2000:])
        return {}
    return {r["secure"]: r for r in recs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--p", type=float, default=1e6)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--no-flower", action="store_true")
    args = ap.parse_args()
    n, p = args.n, int(args.p)
    fed = {s: measure_fednb(n, p, args.rounds, s) for s in (False, True)}
    flw = {} if args.no_flower else measure_flower(n, p, args.rounds)
    for rec in [*fed.values(), *flw.values()]:
        print(json.dumps(rec))
    print(f"\nN={n} hospitals, P={p:,} float32 parameters, {args.rounds} rounds (median of rounds 2..)")
    print(f"{'':18}{'plain s/round':>15}{'secure s/round':>16}{'secure/plain':>14}{'result':>10}")
    for name, recs in (("fednb", fed), (f"Flower {flw[True]['flwr']}" if flw else "Flower", flw)):
        if recs:
            a, b = recs[False]["s_per_round"], recs[True]["s_per_round"]
            print(f"{name:18}{a:>15.3f}{b:>16.3f}{b / a:>13.1f}x{recs[True]['result_dtype']:>10}")
    if flw:
        speed = flw[True]["s_per_round"] / fed[True]["s_per_round"]
        print(f"\nsecure round: fednb {speed:.1f}x faster than Flower's SecAgg+ (target >= 3x)")
    ratio = fed[True]["upload_bytes"] / (4 * p)
    print(f"upload per hospital: {fed[True]['upload_bytes'] / 1e6:.2f} MB = {ratio:.2f}x the float32 size "
          "(target <= 1.1x; Flower uploads int64: 2x)")
    print(f"mask stream: {mask_throughput() / 1e9:.2f} GB/s on one core (AES-256-CTR; target >= 1 GB/s)")
    if not all(r["ok"] for r in [*fed.values(), *flw.values()]):
        print("WARNING: a run did not end at the expected weights")


if __name__ == "__main__":
    main()
