"""The bench figures of two fednb trees side by side, measured alternately in the same run.

    git archive REV | tar -x -C /tmp/old      # the old tree, exported (no git worktree needed)
    .venv/bin/python bench/old_vs_new.py --old /tmp/old [--new .] [--reps 5] [--only rounds,krum]

About 8 minutes on 2 cores with the Numba caches warm (the first run of a freshly exported
tree compiles its kernels first: about 5 minutes more).

Every measurement runs in a fresh process of this venv's Python with the tree on
``PYTHONPATH`` (its working directory the tree), old and new one after the other, the
order swapped every repetition, so that a machine busy with other jobs weighs on both
alike; each figure is printed as its median and its best over ``--reps`` repetitions
(inside a process, the best of several calls where the script itself takes a best). Each tree first runs every
script once, small and untimed, so that Numba compiles (or loads its cache) before any
timing. The figures are those of bench/README.md that the round loop, the strategies
and the kernels make:

- ``rounds``: ``bench/rounds.py``'s configurations N in {10, 100} x P in {1e5, 1e6}
  (``workers="auto"``; N=10, P=1e6 also with ``workers=1``) and its "scale" line (1000
  hospitals, 100 a round), seconds per round by the wall clock (the median of rounds
  2..15) and by the process's CPU time, and the process's peak RSS
  (``bench/old_vs_new_child.py``);
- ``krum``: ``bench/krum.py``'s fednb figure and Gram kernel (each tree's own script),
  and a Krum round as the driver runs it, finiteness check included;
- ``secagg``: ``bench/secagg.py``'s plain and secure seconds per round (N=20, P=1e6) and
  its mask stream;
- ``kernels``: ``bench/kernels.py`` at P=1e6 (the weighted mean, median and trimmed mean
  at N=10, 50, 100) and its query statistics; P=1e7 is left out (4 GB a matrix at N=100).

The ratios are new/old: above 1 the new tree is slower (for a throughput, GB/s, the ratio
is of the times it stands for, so above 1 is slower there too); a figure both of whose
ratios exceed 1.10 is marked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = HERE / "old_vs_new_child.py"
Figures = dict[str, float]
ROUNDS = [(10, 100_000, "auto"), (10, 1_000_000, "auto"), (10, 1_000_000, "1"), (100, 100_000, "auto"),
          (100, 1_000_000, "auto")]


def run(tree: Path, args: list[str], timeout: float = 600) -> str:
    """stdout of ``python ARGS`` in ``tree`` with ``tree`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "FEDNB_KEEP_FREED_MEMORY": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} in {tree} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def child(tree: Path, *args: object) -> dict[str, float]:
    return dict(json.loads(run(tree, [str(CHILD), *map(str, args)]).strip().splitlines()[-1]))


def fmt_p(p: int) -> str:
    return f"1e{len(str(p)) - 1}"


def bench_rounds(tree: Path) -> Figures:
    out: Figures = {}
    for n, p, workers in ROUNDS:
        rec = child(tree, "rounds", n, p, 15, 1.0, workers)
        if not rec["ok"]:
            raise RuntimeError(f"rounds N={n} P={p} in {tree}: wrong final weights")
        tag = f"rounds N={n} P={fmt_p(p)}" + (" workers=1" if workers == "1" else "")
        out[f"{tag}, s/round"] = rec["wall"]
        out[f"{tag}, CPU s/round"] = rec["cpu"]
        out[f"{tag}, peak RSS MiB"] = rec["peak_rss"] / 2**20
    rec = child(tree, "rounds", 1000, 100_000, 10, 0.1)
    out["rounds scale N=1000 (100 a round) P=1e5, s/round"] = rec["wall"]
    out["rounds scale N=1000 (100 a round) P=1e5, CPU s/round"] = rec["cpu"]
    return out


def bench_krum(tree: Path) -> Figures:
    text = run(tree, ["bench/krum.py", "--no-flower", "--repeats", "3"])
    fed = re.search(r"^fednb\s+([\d.]+) s", text, re.M)
    gram = re.search(r"Gram kernel ([\d.]+) ms", text)
    assert fed and gram, text
    rnd = child(tree, "krum", 50, 1_000_000, 5)
    return {"krum N=50 P=1e6 aggregate (krum.py), s": float(fed[1]),
            "krum Gram kernel, s": float(gram[1]) / 1e3,
            "krum round: finiteness check + aggregate, s": rnd["wall"]}


def bench_secagg(tree: Path) -> Figures:
    text = run(tree, ["bench/secagg.py", "--no-flower", "--rounds", "4"])
    recs = {r["secure"]: r for r in map(json.loads, (s for s in text.splitlines() if s.startswith("{")))}
    mask = re.search(r"mask stream: ([\d.]+) GB/s", text)
    assert mask and len(recs) == 2, text
    return {"secagg N=20 P=1e6 plain, s/round": recs[False]["s_per_round"],
            "secagg N=20 P=1e6 secure, s/round": recs[True]["s_per_round"],
            "secagg mask stream, s per GB (1/GB/s)": 1 / float(mask[1])}


def bench_kernels(tree: Path) -> Figures:
    text = run(tree, ["bench/kernels.py", "--n", "10", "50", "100", "--p", "1e6", "--numpy-max-p", "0",
                      "--no-flower", "--repeats", "5"])
    out: Figures = {}
    n = 0
    for line in text.splitlines():
        head = re.match(r"N=(\d+), P=", line)
        if head:
            n = int(head[1])
            continue
        row = re.match(r"\s+(weighted mean \(FedAvg\)|coordinate median|trimmed mean \(k=\d+\))"
                       r"\s+([\d.]+) ms", line)
        if row:
            out[f"kernels N={n} P=1e6 {row[1]}, s"] = float(row[2]) / 1e3
        query = re.match(r"(clipped sum|histogram \(50 bins\))\s+([\d.]+) ms", line)
        if query:
            out[f"kernels query 5e7 values: {query[1]}, s"] = float(query[2]) / 1e3
    assert len(out) == 11, text
    return out


BENCHES: dict[str, Callable[[Path], Figures]] = {
    "rounds": bench_rounds, "krum": bench_krum, "secagg": bench_secagg, "kernels": bench_kernels}


def warm_up(tree: Path, only: list[str]) -> None:
    """Each script once, small: Numba compiles, or loads its cache, before any timing."""
    small = {"rounds": [[str(CHILD), "rounds", "3", "1000", "3"]],
             "krum": [["bench/krum.py", "--no-flower", "--n", "50", "--p", "1e4", "--repeats", "1"]],
             "secagg": [["bench/secagg.py", "--no-flower", "--n", "3", "--p", "1e4", "--rounds", "2"]],
             "kernels": [["bench/kernels.py", "--n", "10", "50", "100", "--p", "1e4", "--numpy-max-p", "0",
                          "--no-flower", "--repeats", "1"]]}
    for name in only:
        for args in small[name]:
            run(tree, args, timeout=900)


def print_table(runs: dict[str, dict[str, list[float]]]) -> None:
    """Each figure's median and best (least) over the repetitions, old and new, and the
    ratios new/old of both. A figure is marked where both ratios exceed 1.10: a slower
    median alone is the machine's other jobs as often as the code (the kernels' and Krum's
    own figures are bests of several calls; their best over the repetitions is the one
    least disturbed)."""
    width = max(map(len, runs["old"]))
    print(f"{'figure':{width}}  {'old median':>10}  {'new median':>10}  {'ratio':>6}  {'old best':>10}  "
          f"{'new best':>10}  {'ratio':>6}")
    for key, olds in runs["old"].items():
        news = runs["new"][key]
        med = statistics.median(olds), statistics.median(news)
        low = min(olds), min(news)
        flag = "  > 1.10" if med[1] / med[0] > 1.10 and low[1] / low[0] > 1.10 else ""
        d = 1 if "MiB" in key else 4
        print(f"{key:{width}}  {med[0]:10.{d}f}  {med[1]:10.{d}f}  {med[1] / med[0]:5.2f}x  "
              f"{low[0]:10.{d}f}  {low[1]:10.{d}f}  {low[1] / low[0]:5.2f}x{flag}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="the old tree (git archive REV | tar -x -C DIR)")
    ap.add_argument("--new", type=Path, default=HERE.parent, help="the new tree (default: this checkout)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions, old and new alternately (default 5)")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated, of {','.join(BENCHES)}")
    args = ap.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for label, tree in trees.items():
        where = run(tree, ["-c", "import fednb; print(fednb.__file__)"]).strip()
        if not where.startswith(str(tree)):
            raise SystemExit(f"the {label} tree's fednb is not the one imported ({where}); pass a tree "
                             "holding fednb/ and bench/")
    only = [b for b in args.only.split(",") if b]
    t0 = time.monotonic()
    for tree in trees.values():
        warm_up(tree, only)
    print(f"warm-up {time.monotonic() - t0:.0f} s; load average before timing: {os.getloadavg()[0]:.1f}",
          flush=True)
    runs: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for rep in range(args.reps):
        for name in only:
            for label in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                for key, value in BENCHES[name](trees[label]).items():
                    runs[label].setdefault(key, []).append(value)
        print(f"repetition {rep + 1} of {args.reps} done ({time.monotonic() - t0:.0f} s, load "
              f"{os.getloadavg()[0]:.1f})", flush=True)
    print(f"\nold: {trees['old']}  new: {trees['new']}  ({os.cpu_count()} CPUs; {args.reps} repetitions, "
          "old and new alternately)")
    print_table(runs)
    print(f"\ntotal {time.monotonic() - t0:.0f} s; load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
