"""Seconds per round of federated averaging on no-op work: fednb beside Flower, same run.

    .venv/bin/python bench/rounds.py [--rounds 15] [--flower | --no-flower]

fednb's figures come from ``fednb.simulate`` (virtual hospitals in this process, through
the same driver, output policy and execution path as a real federation; an update's NaN
and infinity scan is the driver's ``admit``, in the pass that sums the round): a
``@fednb.remote`` function returning ``weights + 1``, N one-row xarray partitions,
``{"w": zeros(P, float32)}``, ``fednb.strategies.FedAvg()``, ``workers="auto"`` (the
hospitals on one thread per core from 2**18 model values, one after another below; where
that took threads, the same configuration also runs with ``workers=1`` and is printed
under the table). A round's time is the wall
time between the ends of consecutive aggregations (round 1: from the strategy's
``configure_round``), taken by a FedAvg subclass that only records timestamps; round 1
(first use of the thread pool and of NumPy's paths) is reported apart and the figure is
the median of the later rounds. Setup (compiling the function for every hospital) is
excluded. Each configuration runs in a fresh process (its peak RSS is its own).

Flower's come from ``bench/flower_rounds.py`` in its own venv (``bench/setup_flower.sh``),
run after fednb's so that both are measured on the same machine at the same time, one
after the other.

The memory floor of a round is ``2 * N * P * 4`` bytes (every hospital's float32 weights
in and out once) at the copy bandwidth measured here (``np.copyto`` of 512 MB, best of 5).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import fednb

# measure simulate's faster path: freed memory kept for the run (process-wide; opt-in)
os.environ.setdefault("FEDNB_KEEP_FREED_MEMORY", "1")
from fednb.strategies import FedAvg, RoundConfig
from fednb.typing import FloatArray

HERE = Path(__file__).resolve().parent
FLOWER_PY = HERE / ".venv-flower" / "bin" / "python"
GRID = [(n, p) for n in (10, 100, 1000) for p in (100_000, 1_000_000)]
MEM_LIMIT = 10e9
# What one fednb round keeps alive until it aggregates, per parameter and hospital: the float32
# update held in its Outcome (the ClientUpdate views it), and room for the hospital's temporaries.
FEDNB_BYTES_PER_NP = 4 + 4
TARGET_FLOWER_RATIO, TARGET_FLOOR_RATIO = 30.0, 3.0
TARGET_CONFIGS = {(10, 1_000_000), (100, 100_000)}
EARLIER_FLOWER = {(10, 1_000_000): "1.3-1.5 s", (100, 100_000): "2.0-2.2 s"}
SCALE = {"n": 1000, "p": 100_000, "fraction": 0.1}


@fednb.remote
def plus_one(data, weights):
    return fednb.Update(weights={k: v + 1 for k, v in weights.items()})


class TimedFedAvg(FedAvg):
    """FedAvg that records when round 0 is configured and when every aggregation ends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
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


def copy_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """Bytes per second that ``np.copyto`` moves (bytes of the array, best of ``repeats``)."""
    src = np.ones(mb * (1 << 20) // 4, np.float32)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return src.nbytes / best


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def partitions(n: int) -> dict[str, xr.Dataset]:
    return {f"h{i:04d}": xr.Dataset({"x": ("row", np.zeros(1))}) for i in range(n)}


def measure_fednb(n: int, p: int, rounds: int, fraction: float = 1.0,
                  workers: int | str = "auto") -> dict[str, Any]:
    parts = partitions(n)
    strategy = TimedFedAvg(fraction=fraction)
    t0 = time.perf_counter()
    hist = fednb.simulate(plus_one, parts, initial={"w": np.zeros(p, np.float32)}, strategy=strategy,
                          rounds=rounds, progress=False, workers=workers)  # type: ignore[arg-type]
    total = time.perf_counter() - t0
    st = strategy.stamps
    per = [b - a for a, b in itertools.pairwise(st)]
    w = hist.weights["w"]
    ok = len(per) == rounds and w.dtype == np.float32 and bool(np.all(w == rounds))
    return {"n": n, "p": p, "rounds": rounds, "ok": ok, "workers": hist.settings["workers"],
            "setup_s": st[0] - t0, "first_round_s": per[0],
            "s_per_round": statistics.median(per[1:]), "rounds_s": per, "total_s": total}


def naive_round(n: int, p: int, rounds: int = 15) -> float:
    """Median seconds of the same round as a plain NumPy loop in this process: each hospital
    copies the float32 weights and adds 1, the sum is float64; no checks, no policy, no
    driver. A yardstick of what this machine's memory allows, printed beside fednb's."""
    g = np.zeros(p, np.float32)
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        total = np.zeros(p, np.float64)
        for _ in range(n):
            total += g.copy() + 1
        g = (total / n).astype(np.float32)
        per.append(time.perf_counter() - t0)
    return statistics.median(per[1:])


def measure_flower(configs: list[tuple[int, int]], rounds: int, rounds_large: int,
                   extra: tuple[str, ...] = ()) -> dict[tuple[int, int], dict[str, Any]]:
    if not FLOWER_PY.exists():
        print("(Flower venv missing: run `bash bench/setup_flower.sh`, or pass --flower)")
        return {}
    spec = ",".join(f"{n}x{p}" for n, p in configs)
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run([str(FLOWER_PY), str(HERE / "flower_rounds.py"), "--configs", spec,
                               "--rounds", str(rounds), "--rounds-large", str(rounds_large), *extra],
                              stdout=subprocess.PIPE, stderr=err, text=True, timeout=600, check=False)
        if proc.returncode:
            err.seek(0)
            print(f"(flower_rounds.py failed with exit status {proc.returncode}; its last log lines:)")
            print("".join(err.readlines()[-15:]))
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith('{"bench": "flower"'):
            rec = json.loads(line)
            out[(rec["n"], rec["p"])] = rec
    return out


def peak_rss() -> int:
    """Peak resident set size of this process, bytes.

    VmHWM (Linux) belongs to the current address space; ``ru_maxrss`` would also carry the
    parent's peak across fork and exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child(n: int, p: int, rounds: int, fraction: float, workers: int | str) -> None:
    """One configuration, in a fresh process: its peak RSS is its own, its allocator state too."""
    base = peak_rss()
    rec = measure_fednb(n, p, rounds, fraction=fraction, workers=workers)
    rec["peak_rss"], rec["rss_before"] = peak_rss(), base
    print(json.dumps(rec))


def measure_fednb_fresh(n: int, p: int, rounds: int, fraction: float = 1.0,
                        workers: int | str = "auto") -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", f"{n}x{p}", "--rounds", str(rounds),
                           "--fraction", str(fraction), "--workers", str(workers)],
                          stdout=subprocess.PIPE, text=True, check=True, timeout=300)
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def fmt_p(p: int) -> str:
    return f"1e{round(np.log10(p))}" if p == 10 ** round(np.log10(p)) else str(p)


def print_table(fed: dict[tuple[int, int], dict[str, Any]], flower: dict[tuple[int, int], dict[str, Any]],
                bw: float, version: str | None) -> None:
    peer = f"Flower {version}" if version else "Flower"
    print(f"{'N':>5s} {'P':>4s} {'fednb s/round':>14s} {'thr':>3s} {peer + ' s/round':>21s} "
          f"{'Flower/fednb':>13s} {'floor s':>8s} {'fednb/floor':>12s} {'fednb RSS':>10s}  targets")
    for n, p in GRID:
        f, fl = fed.get((n, p)), flower.get((n, p), {})
        floor = 2 * n * p * 4 / bw
        fs = f"{f['s_per_round']:13.4f}s {f['workers']:3d}" if f else f"{'skipped':>14s} {'':3s}"
        fls = f"{fl['s_per_round']:20.3f}s" if fl.get("s_per_round") else \
            f"{'skipped' if 'skipped' in fl else '-':>21s}"
        ratio = fl["s_per_round"] / f["s_per_round"] if f and fl.get("s_per_round") else None
        rs = f"{ratio:12.1f}x" if ratio else f"{'-':>13s}"
        fr = f["s_per_round"] / floor if f else None
        frs = f"{fr:11.1f}x" if fr else f"{'-':>12s}"
        rss = f"{f['peak_rss'] / 2**20:6.0f} MiB" if f else f"{'-':>10s}"
        target = ""
        if (n, p) in TARGET_CONFIGS and f:
            met = [(f">={TARGET_FLOWER_RATIO:.0f}x Flower", bool(ratio and ratio >= TARGET_FLOWER_RATIO)),
                   (f"<={TARGET_FLOOR_RATIO:.0f}x floor", bool(fr and fr <= TARGET_FLOOR_RATIO))]
            target = ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in met)
        print(f"{n:5d} {fmt_p(p):>4s} {fs} {fls} {rs} {floor:8.4f} {frs} {rss}  {target}")


def print_serial(fed: dict[tuple[int, int], dict[str, Any]], serial: dict[tuple[int, int], dict[str, Any]],
                 flower: dict[tuple[int, int], dict[str, Any]]) -> None:
    """The configurations where "auto" took threads, run again one hospital after another."""
    if not serial:
        return
    print("the same with workers=1 (hospitals one after another), where \"auto\" took threads:")
    for (n, p), rec in serial.items():
        fs, fl = rec["s_per_round"], flower.get((n, p), {}).get("s_per_round")
        vs = f"  Flower/fednb {fl / fs:6.1f}x" if fl else ""
        print(f"  N={n:<5d} P={fmt_p(p):<4s} {fs:.4f}s/round{vs}  ({fed[(n, p)]['workers']} threads take "
              f"{fed[(n, p)]['s_per_round'] / fs:.2f}x this time)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15, help="fednb rounds per configuration (default 15)")
    ap.add_argument("--flower-rounds", type=int, default=5,
                    help="Flower rounds per configuration with N < 1000 (default 5)")
    ap.add_argument("--flower-rounds-large", type=int, default=3,
                    help="Flower rounds per configuration with N >= 1000 (default 3)")
    ap.add_argument("--flower", action="store_true", help="run bench/setup_flower.sh first")
    ap.add_argument("--no-flower", action="store_true", help="measure fednb only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--workers", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, p = (int(float(x)) for x in args.child.split("x"))
        child(n, p, args.rounds, args.fraction, args.workers if args.workers == "auto" else int(args.workers))
        return
    if args.flower and not args.no_flower:
        subprocess.run(["bash", str(HERE / "setup_flower.sh")], check=True)

    print("per-round time of FedAvg on no-op work (each hospital returns its float32 weights + 1)")
    print(f"targets (issue): at N=10,P=1e6 and N=100,P=1e5, >= {TARGET_FLOWER_RATIO:.0f}x faster than "
          f"Flower (measured earlier here: {EARLIER_FLOWER[(10, 1_000_000)]} and "
          f"{EARLIER_FLOWER[(100, 100_000)]} a round) and within {TARGET_FLOOR_RATIO:.0f}x of the memory "
          "floor")
    bw = copy_bandwidth()
    print(f"copy bandwidth (np.copyto, 512 MB float32, best of 5): {bw / 1e9:.1f} GB/s; "
          "floor = 2*N*P*4 bytes at that bandwidth\n")

    fed: dict[tuple[int, int], dict[str, Any]] = {}
    serial: dict[tuple[int, int], dict[str, Any]] = {}  # workers=1 where "auto" took threads
    skipped: dict[tuple[int, int], list[str]] = {}
    for n, p in GRID:
        need = FEDNB_BYTES_PER_NP * n * p
        if need > MEM_LIMIT:
            skipped.setdefault((n, p), []).append(
                f"fednb: ~{FEDNB_BYTES_PER_NP}*N*P bytes = {need / 1e9:.0f} GB alive at the round's end "
                "> 10 GB")
            continue
        fed[(n, p)] = measure_fednb_fresh(n, p, args.rounds)
        if fed[(n, p)]["workers"] > 1:
            serial[(n, p)] = measure_fednb_fresh(n, p, args.rounds, workers=1)
    flower = {} if args.no_flower else measure_flower(GRID, args.flower_rounds, args.flower_rounds_large)
    version = next((r["flwr"] for r in flower.values()), None)
    for key, rec in flower.items():
        if rec.get("skipped"):
            skipped.setdefault(key, []).append("Flower: " + rec["skipped"])

    print_table(fed, flower, bw, version)
    print_serial(fed, serial, flower)
    wrong = [f"fednb N={k[0]} P={fmt_p(k[1])}" for k, r in [*fed.items(), *serial.items()] if not r["ok"]]
    wrong += [f"Flower N={k[0]} P={fmt_p(k[1])}" for k, r in flower.items() if r.get("ok") is False]
    if wrong:
        print(f"WARNING: wrong final weights (expected every weight == rounds): {', '.join(wrong)}")
    for (n, p), why in skipped.items():
        print(f"skipped N={n}, P={fmt_p(p)}: " + "; ".join(why))
    print("\nround 1 (not in the medians above), seconds; setup before it:")
    for n, p in GRID:
        f, fl = fed.get((n, p)), flower.get((n, p), {})
        fl1 = f"Flower round 1 {fl['first_round_s']:7.3f} (starts Ray and its actors)" \
            if fl.get("first_round_s") else ""
        fed1 = f"fednb round 1 {f['first_round_s']:7.4f}, setup {f['setup_s']:6.3f}" if f else "fednb -"
        print(f"  N={n:<5d} P={fmt_p(p):<4s} {fed1}   {fl1}")
    if version:
        print(f"Flower {version}: run_simulation, Ray backend, 1 CPU per ClientApp, message-API FedAvg, "
              f"federated evaluation off; median of rounds 2..{args.flower_rounds} "
              f"(2..{args.flower_rounds_large} at N=1000); replies polled every 0.1 s (Flower's default)")
    print(f"fednb {fednb.__version__}: simulate(), FedAvg(), progress=False, no checkpoint, one fresh "
          f"process per configuration; median of rounds 2..{args.rounds}; thr: the threads that ran a "
          "round's hospitals (workers=\"auto\")")
    targets = sorted(TARGET_CONFIGS)
    print("\nthe target configurations beside a plain NumPy loop (each hospital: copy the weights, add 1; "
          "float64 sum; no checks, no policy, no driver) and beside Flower run with its own defaults "
          "(2 CPUs per ClientApp: one Ray actor on two cores; federated evaluation every round), same run:")
    shipped = {} if args.no_flower else measure_flower(
        targets, args.flower_rounds, args.flower_rounds_large,
        ("--cpus-per-client", "2", "--fraction-evaluate", "1"))
    for n, p in targets:
        f = fed.get((n, p))
        if not f:
            continue
        naive, fs = naive_round(n, p), f["s_per_round"]
        line = (f"  N={n:<4d} P={fmt_p(p):<4s} fednb {fs:.4f}s  NumPy loop {naive:.4f}s "
                f"(fednb {fs / naive:.2f}x it)")
        fl = shipped.get((n, p), {})
        if fl.get("s_per_round"):
            line += f"  Flower defaults {fl['s_per_round']:.3f}s ({fl['s_per_round'] / fs:.1f}x fednb)"
        print(line)

    sc = measure_fednb_fresh(SCALE["n"], SCALE["p"], 10, fraction=SCALE["fraction"])
    print(f"\nscale: simulate() over {SCALE['n']} virtual hospitals, P=1e5, "
          f"FedAvg(fraction={SCALE['fraction']}) ({int(SCALE['n'] * SCALE['fraction'])} hospitals a round), "
          f"{sc['rounds']} rounds")
    print(f"  {sc['s_per_round']:.4f} s/round (median of rounds 2..{sc['rounds']}; round 1 "
          f"{sc['first_round_s']:.4f} s), setup {sc['setup_s']:.2f} s, "
          f"peak RSS {sc['peak_rss'] / 2**20:.0f} MiB ({sc['rss_before'] / 2**20:.0f} MiB after imports)"
          f"{'' if sc['ok'] else '  WRONG WEIGHTS'}")


if __name__ == "__main__":
    sys.exit(main())
