"""Cold and warm run latency of a fednb domain over HTTP on loopback, beside PySyft 0.9.5.

    .venv/bin/python bench/latency.py [--runs 50] [--pysyft | --no-pysyft]

fednb's figures come from a real domain (SQLite file, bubblewrap sandbox) served on
127.0.0.1 and driven through ``fednb.connect``. PySyft's come from
``bench/pysyft_latency.py`` in its own venv (made by ``bench/setup_pysyft.sh``), run in
the same invocation so both are measured on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr
from sklearn.datasets import load_breast_cancer

import fednb
from fednb.domain import Domain
from fednb.domain.runner import bwrap_available

HERE = Path(__file__).resolve().parent


@fednb.remote(params={"col": (int, 0, 29)})
def column_mean(data, col=0):
    return np.asarray(data.x.values[:, col].mean())


@fednb.remote(params={"col": (int, 0, 29)})
def dp_column_mean(data, weights, col=0):
    return {"m": np.asarray([data.x.values[:, col].mean() / 5000.0])}


DP_SLOT_S = 0.25
"""The release slot approved for the DP runs timed here: a DP result appears this long after
its run started, whatever the run did; the real run must fit in it."""


def measure_dp(url: str, owner: fednb.DomainClient, token: str, runs: int) -> dict[str, float]:
    """A warm DP ``update`` run: the scientist's latency (the slot, by design) and the run's
    real duration on the owner's side (what the slot must cover)."""
    sci = fednb.connect(url, token=token)
    w = {"m": np.zeros(1)}
    req = dp_column_mean.request(sci, "bc", runs=runs + 1, weights=w,
                                 dp=fednb.ClientDP(clip=1.0, noise_multiplier=8.0))
    owner.requests.get(req.id).approve(release="auto", slot_s=DP_SLOT_S)
    req.run(w, col=0).result(timeout=60)  # its worker is up: warm from here on
    seen, real = [], []
    for i in range(runs):
        t0 = time.perf_counter()
        run = req.run(w, col=i % 30)
        run.result(timeout=60)
        seen.append(time.perf_counter() - t0)
        info = owner.runs.get(run.id).info
        assert info.finished is not None and info.status == "succeeded", info
        real.append((info.finished - info.created).total_seconds())
    return {"dp_warm_run_median_s": statistics.median(seen), "dp_warm_run_p90_s": pct(seen, 90),
            "dp_real_run_median_s": statistics.median(real), "dp_real_run_p90_s": pct(real, 90)}


def dataset() -> xr.Dataset:
    bc = load_breast_cancer()
    return xr.Dataset({"x": (("patient", "feature"), bc.data), "y": ("patient", bc.target)})


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure_fednb(runs: int) -> dict[str, float]:
    home = Path(tempfile.mkdtemp()) / "bench-domain"
    data = dataset()
    t0 = time.perf_counter()
    dom = Domain.create(home, name="Bench Hospital")
    owner_tok, sci_tok = dom.add_user("owner", role="owner"), dom.add_user("alice")
    dp_tok = dom.add_user("bob", epsilon=1e6)
    dom.policy.update(dataset_epsilon_cap=None)
    dom.policy.update(allow_no_dp=["alice"])
    dom.add_dataset("bc", data, bounds={"x": (0, 5000), "y": (0, 1)})
    server = dom.serve(port=0, insecure_demo=not bwrap_available())
    up = time.perf_counter() - t0
    try:
        sci, owner = fednb.connect(server.url, token=sci_tok), fednb.connect(server.url, token=owner_tok)
        t0 = time.perf_counter()
        req = column_mean.request(sci, "bc", runs=runs + 1)
        owner.requests.get(req.id).approve()
        t1 = time.perf_counter()
        first = req.run(col=0)
        first.wait(120)
        cold = time.perf_counter() - t1
        owner.runs.get(first.id).release()
        first.result(timeout=60)
        submit_to_result = time.perf_counter() - t0
        warm, with_release = [], []
        for i in range(runs):
            t0 = time.perf_counter()
            run = req.run(col=i % 30)
            info = run.wait(60)
            warm.append(time.perf_counter() - t0)
            assert info.status == "succeeded", info
            owner.runs.get(run.id).release()
            run.result(timeout=60)
            with_release.append(time.perf_counter() - t0)
        dp = measure_dp(server.url, owner, dp_tok, min(runs, 30))
        server.stop()
        t0 = time.perf_counter()
        restarted = Domain.open(home).serve(port=0, insecure_demo=not bwrap_available())
        reopen = time.perf_counter() - t0
        restarted.stop()
    finally:
        server.stop()
    return {"launch_s": up, "reopen_s": reopen, "submit_to_result_s": submit_to_result, "cold_run_s": cold,
            "warm_run_median_s": statistics.median(warm), "warm_run_p90_s": pct(warm, 90),
            "warm_run_release_fetch_median_s": statistics.median(with_release),
            "sandbox": 1.0 if bwrap_available() else 0.0, **dp}


def measure_pysyft(runs: int) -> dict[str, float] | None:
    py = HERE / ".venv-pysyft" / "bin" / "python"
    if not py.exists():
        print("(PySyft venv missing: run `bash bench/setup_pysyft.sh`, or pass --pysyft)")
        return None
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([str(py), str(HERE / "pysyft_latency.py"), "--runs", str(runs), "--json", out.name],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=400)
        return dict(json.loads(Path(out.name).read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--pysyft", action="store_true", help="create PySyft's venv first if missing")
    ap.add_argument("--no-pysyft", action="store_true", help="measure fednb only")
    args = ap.parse_args()
    if args.pysyft and not (HERE / ".venv-pysyft").exists():
        subprocess.run(["bash", str(HERE / "setup_pysyft.sh")], check=True)
    fed = measure_fednb(args.runs)
    syft = None if args.no_pysyft else measure_pysyft(min(args.runs, 20))
    rows = [("domain up (create, add data, serve)", "launch_s"),
            ("submission to result (review included)", "submit_to_result_s"),
            ("cold run (first after approval)", "cold_run_s"),
            ("warm run, median", "warm_run_median_s"), ("warm run, p90", "warm_run_p90_s")]
    print(f"\nrun latency over HTTP on loopback ({'bubblewrap sandbox' if fed['sandbox'] else 'NO sandbox'})")
    print(f"{'':42s} {'fednb':>9s} {'PySyft 0.9.5':>13s} {'ratio':>7s}")
    for label, key in rows:
        s = syft.get(key) if syft else None
        ratio = f"{s / fed[key]:6.1f}x" if s else "    -"
        print(f"{label:42s} {fed[key]:8.3f}s {(f'{s:12.3f}s' if s else '            -')} {ratio}")
    if syft and "import_s" in syft:
        print(f"{'(PySyft: import syft, not in launch above)':42s} {'':9s} {syft['import_s']:12.3f}s")
    print(f"{'domain re-open and serve':42s} {fed['reopen_s']:8.3f}s")
    print(f"{'warm run + owner release + fetch, median':42s} {fed['warm_run_release_fetch_median_s']:8.3f}s")
    label = f"warm DP run to its result (slot {DP_SLOT_S:g} s), median"
    print(f"{label:42s} {fed['dp_warm_run_median_s']:8.3f}s")
    print(f"{'  the same, p90':42s} {fed['dp_warm_run_p90_s']:8.3f}s")
    print(f"{'  its real run (owner view), median / p90':42s} {fed['dp_real_run_median_s']:8.3f}s "
          f"{fed['dp_real_run_p90_s']:8.3f}s")
    print("aims: warm run <= 0.050 s, domain up < 1 s")


if __name__ == "__main__":
    sys.exit(main())
