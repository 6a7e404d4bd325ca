"""Aggregation kernels on this machine: the robust statistics beside the weighted mean.

    .venv/bin/python bench/kernels.py [--n 10 50 100] [--p 1e6 1e7] [--dtype float32] [--repeats 5]
                                      [--backend cupy]

For N stacked updates of P parameters (float32 by default: the robust strategies stack
float32 updates as float32 and the kernels select in it), the weighted mean (BLAS gemv in
that dtype, what FedAvg's sum costs) and the coordinate-wise median and trimmed mean
(beta=0.1) by ``fednb.kernels`` on the probed backend and, up to ``--numpy-max-p``
parameters, by NumPy (``np.median``, ``np.partition``), each as a multiple of the weighted
mean's time; also the weighted mean of the N rows in float64 by ``fednb.kernels.weighted_sum_checked``
(what FedAvg runs: one pass over the N separate vectors). Up
to the same P, Flower's ``aggregate``, ``aggregate_median`` and ``aggregate_trimmed_avg``
on the same updates (``bench/flower_kernels.py`` in its venv, ``bench/setup_flower.sh``;
``--no-flower`` skips them), their results checked against fednb's. Best of ``--repeats``
after a first call (which compiles).
``--backend`` picks the backend (``FEDNB_BACKEND``): ``cupy`` or ``numba-cuda`` on a GPU,
where the kernels' times include the copies to the device and back; with CuPy the
median and trimmed mean are also timed on arrays already on the device. Without a GPU a
GPU backend prints "no GPU" and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fednb import kernels
from fednb.errors import InvalidInput
from fednb.kernels import _cupy, _reference, _select

HERE = Path(__file__).resolve().parent
FLOWER_PY = HERE / ".venv-flower" / "bin" / "python"


def best(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def flower_side(n: int, p: int, dtype: str) -> dict[str, Any] | None:
    """Flower's ``aggregate``, ``aggregate_median`` and ``aggregate_trimmed_avg`` on the same
    updates (``bench/flower_kernels.py`` in Flower's venv), or None without that venv."""
    if not FLOWER_PY.exists():
        return None
    proc = subprocess.run([str(FLOWER_PY), str(HERE / "flower_kernels.py"), "--n", str(n), "--p", str(p),
                           "--dtype", dtype, "--beta", "0.1"], capture_output=True, text=True, timeout=900,
                          check=False)
    if proc.returncode:
        print(f"  (flower_kernels.py failed: {proc.stderr.strip().splitlines()[-1:]})")
        return None
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def robust(n: int, p: int, dtype: str, repeats: int, numpy_max_p: int, flower: bool) -> None:
    x = np.random.default_rng(0).normal(size=(n, p)).astype(dtype)
    w = (np.ones(n) / n).astype(dtype)
    k = int(np.floor(0.1 * n))
    mean_s = best(lambda: w @ x, repeats)
    path = "unrolled" if n <= _select.MAX_UNROLLED else "looped"
    print(f"N={n}, P={p:,}: weighted mean {mean_s * 1e3:.1f} ms ({x.nbytes / mean_s / 1e9:.1f} GB/s of "
          f"{x.nbytes / 1e6:,.0f} MB); {path} network, {len(_select.comparators(n, (n - 1) // 2, n // 2))} "
          "comparators for the median")
    rows_list = list(x)
    examples = [float(1 + i % 7) for i in range(n)]  # what flower_kernels.py weighs the rows by
    fl = flower_side(n, p, dtype) if flower and p <= numpy_max_p else None
    scaled = [e / sum(examples) for e in examples]  # what MeanStrategy.aggregate runs: the mean in one pass
    stats = [("weighted mean (FedAvg)",
              lambda a: kernels.weighted_sum_checked(rows_list, scaled, dtype=np.float64)[0], None, "mean"),
             ("coordinate median", kernels.coordinate_median, _reference.coordinate_median, "median"),
             (f"trimmed mean (k={k})", lambda a: kernels.trimmed_mean(a, k),
              lambda a: _reference.trimmed_mean(a, k), "trimmed")]
    for name, fast, ref, key in stats:
        f = best(lambda fast=fast: fast(x), repeats)
        line = f"  {name:22}{f * 1e3:>9.1f} ms{f / mean_s:>6.1f}x mean"
        if ref is not None and p <= numpy_max_p:
            tol = 1e-6 if x.dtype == np.float32 else 1e-12
            np.testing.assert_allclose(fast(x), ref(x.astype(np.float64)), rtol=tol, atol=tol)
            r = best(lambda ref=ref: ref(x), max(1, repeats // 2))
            line += f"  NumPy {r * 1e3:7.0f} ms{r / mean_s:>6.1f}x mean{r / f:>7.1f}x slower"
        elif ref is None:
            line += f"{'':>5}({x.nbytes / f / 1e9:.1f} GB/s read)"
        if fl is not None:
            same = abs(float(np.sum(fast(x), dtype=np.float64)) - fl[key]["checksum"]) <= 1e-3 * max(
                1.0, abs(fl[key]["checksum"]))
            line += (f"  | Flower {fl[key]['seconds'] * 1e3:7.0f} ms = {fl[key]['seconds'] / f:5.1f}x fednb"
                     f"{'' if same else ' (DIFFERENT RESULT)'}")
        print(line)
    if kernels.backend() == "cupy":
        on_device(x, k, mean_s, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--p", type=float, nargs="+", default=[1e6, 1e7])
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--numpy-max-p", type=float, default=1e6, help="time NumPy's sorts up to this P only")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", choices=kernels.BACKENDS, default=None)
    ap.add_argument("--no-flower", action="store_true",
                    help="skip Flower's aggregate, aggregate_median and aggregate_trimmed_avg (its venv)")
    args = ap.parse_args()
    if args.backend:
        os.environ["FEDNB_BACKEND"] = args.backend
    try:
        kernels.backend()
    except InvalidInput as exc:
        print(f"no GPU: {exc}" if args.backend in ("cupy", "numba-cuda") else str(exc), file=sys.stderr)
        sys.exit(2)
    src = np.ones(64 << 20 >> 3)
    dst = np.empty_like(src)
    bw = src.nbytes / best(lambda: np.copyto(dst, src), args.repeats)
    print(f"{args.dtype} updates; backend {kernels.backend()}; best of {args.repeats}; copy bandwidth (bytes "
          f"of a 64 MB array copied per second) {bw / 1e9:.1f} GB/s")
    for p in (int(v) for v in args.p):
        for n in args.n:
            robust(n, p, args.dtype, args.repeats, int(args.numpy_max_p), not args.no_flower)
    print("target (issue 6): median and trimmed mean within 3x of the weighted mean")
    # a query's statistics over one variable of 50M float64 values (one per patient)
    v = np.random.default_rng(0).normal(size=50_000_000)
    print(f"\nquery statistics over {v.size:,} values ({v.nbytes / 1e6:.0f} MB): effective GB/s read")
    print(f"{'':22}{'fednb.kernels':>14}{'GB/s':>7}{'NumPy':>10}{'GB/s':>7}{'speed-up':>10}")
    stats = [("clipped sum", lambda: kernels.clipped_sum(v, -1.0, 1.0),
              lambda: _reference.clipped_sum(v, -1.0, 1.0)),
             ("histogram (50 bins)", lambda: kernels.clipped_histogram(v, -1.0, 1.0, 50),
              lambda: _reference.clipped_histogram(v, -1.0, 1.0, 50))]
    for name, fast, ref in stats:
        np.testing.assert_allclose(fast(), ref(), rtol=1e-9)
        f, r = best(fast, args.repeats), best(ref, args.repeats)
        print(f"{name:22}{f * 1e3:>11.1f} ms{v.nbytes / f / 1e9:>7.1f}{r * 1e3:>7.0f} ms"
              f"{v.nbytes / r / 1e9:>7.1f}{r / f:>9.1f}x")
    print(f"(beside the copy bandwidth above, {bw / 1e9:.1f} GB/s: a copy reads and writes, these only read)")


def on_device(x: np.ndarray, k: int, mean_s: float, repeats: int) -> None:
    """The CuPy kernels on arrays already on the GPU (no copies), synchronised."""
    import cupy  # type: ignore[import-not-found]

    d = cupy.asarray(x)
    for name, fn in (("coordinate median", lambda: _cupy.coordinate_median(d)),
                     (f"trimmed mean (k={k})", lambda: _cupy.trimmed_mean(d, k))):
        f = best(lambda fn=fn: (fn(), cupy.cuda.Device().synchronize()), repeats)
        print(f"{name + ' (on device)':34}{f * 1e3:>8.1f} ms{f / mean_s:>7.1f}x the host's weighted mean")


if __name__ == "__main__":
    main()
