"""Krum on N=50 updates of P=1e6: fednb's strategy beside Flower's ``aggregate_krum``.

    .venv/bin/python bench/krum.py [--n 50] [--p 1e6] [--f 5] [--no-flower]

Both get the same N float32 vectors (NumPy ``default_rng(0).normal``). fednb:
``fednb.strategies.Krum(f).aggregate`` over ``ClientUpdate`` objects (distances from one
float32 Gram matrix with error bounds, ``fednb.kernels.sq_distances``; float64 only where
the bounds leave the choice open); Flower 1.41:
``flwr.server.strategy.aggregate.aggregate_krum`` (a distance per pair), in its own venv
(``bench/setup_flower.sh``). Best of ``--repeats``; both must choose the same update. Also
printed: the Gram kernel alone against the arithmetic it does (N(N+1)/2 x P multiply-adds,
GFLOP/s counting two per multiply-add), and the float64 fallback's time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
from kernels import best  # bench/kernels.py: bench/ is on sys.path, these run as scripts

from fednb import kernels
from fednb.strategies import ClientUpdate, Krum, admit
from fednb.strategies._ops import krum_select

HERE = Path(__file__).resolve().parent
FLOWER_PY = HERE / ".venv-flower" / "bin" / "python"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--p", type=float, default=1e6)
    ap.add_argument("--f", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-flower", action="store_true")
    args = ap.parse_args()
    n, p = args.n, int(args.p)
    rng = np.random.default_rng(0)
    ups = [ClientUpdate(rng.normal(size=p).astype(np.float32), 1, f"h{i}") for i in range(n)]
    krum, g = Krum(f=args.f), np.zeros(p)
    admitted = admit(ups)[0]  # what the driver hands a strategy: the one finiteness check done
    out = krum.aggregate(g, admitted)
    fed = best(lambda: krum.aggregate(g, admitted), args.repeats)
    chosen = next(i for i, u in enumerate(ups) if np.array_equal(u.vector, out))
    print(f"Krum(f={args.f}) over N={n} updates of P={p:,} float32; fednb backend {kernels.backend()}")
    print(f"fednb            {fed:8.3f} s  (chose update {chosen})")
    rows = [u.vector for u in ups]
    gram = best(lambda: kernels.sq_distances(rows), args.repeats)
    exact = best(lambda: kernels.sq_distances(rows, exact=True), 1)
    flop = n * (n + 1) / 2 * p * 2
    dist, err = kernels.sq_distances(rows)
    mb = n * p * 4 / 1e6
    print(f"  of which the float32 Gram kernel {gram * 1e3:.1f} ms: {flop / 1e9:.2f} GFLOP at "
          f"{flop / gram / 1e9:.0f} GFLOP/s, reading {mb:.0f} MB at {mb / gram / 1e3:.1f} GB/s; "
          f"distance bounds <= {(err / np.maximum(dist, 1e-300)).max():.1e} of the distances")
    assert krum_select(rows, args.f, 1) == [chosen]
    print(f"  (the float64 fallback, pair by pair, where bounds cannot decide: {exact:.3f} s)")
    if args.no_flower or not FLOWER_PY.exists():
        print("(Flower not run: bench/setup_flower.sh creates its venv)")
        return
    res = subprocess.run([str(FLOWER_PY), str(HERE / "flower_krum.py"), "--n", str(n), "--p", str(p),
                          "--f", str(args.f)], capture_output=True, text=True, check=True)
    fl = json.loads(res.stdout.strip().splitlines()[-1])
    same = "same update" if fl["chosen"] == chosen else f"ANOTHER update ({fl['chosen']})"
    print(f"Flower {fl['flwr']:8} {fl['seconds']:8.3f} s  ({same})")
    print(f"fednb {fl['seconds'] / fed:.0f}x faster (target >= 20x)")


if __name__ == "__main__":
    main()
