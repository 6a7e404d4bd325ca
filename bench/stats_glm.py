"""Federated logistic regression over 3 loopback domains (10^4 rows each, 10 covariates),
timed beside statsmodels on the pooled data.

Each IRLS iteration files one ``glm_step`` request per domain (approved by the owner's
template on submission), runs it (a disclosure-controlled step is computed, checked and
released within the run's call) and reads X'WX, X'Wz and the deviance back: three
round trips per domain and iteration. The estimates equal statsmodels' to its
tolerance. Synthetic data (a known logistic model) so that the size is exactly what the
issue asks for. The three domains serve from this process, as in the tests.

    .venv/bin/python bench/stats_glm.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import statsmodels.api as sm
import xarray as xr

import fednb
import fednb.stats as fs
from fednb.domain import Domain

SITES, ROWS, COVARIATES = 3, 10_000, 10


def main() -> None:
    rng = np.random.default_rng(0)
    names = [f"x{j}" for j in range(COVARIATES)]
    beta = rng.normal(0, 0.5, COVARIATES + 1)
    parts = []
    for k in range(SITES):
        x = rng.normal(k * 0.2, 1.0, (ROWS, COVARIATES))
        y = (rng.uniform(size=ROWS) < 1 / (1 + np.exp(-(beta[0] + x @ beta[1:])))).astype(float)
        parts.append((x, y))
    with tempfile.TemporaryDirectory() as home:
        servers, clients = [], []
        for k, (x, y) in enumerate(parts):
            dom = Domain.create(Path(home) / f"h{k}", name=f"h{k}")
            dom.add_user("owner", role="owner")
            token = dom.add_user("alice")
            data = xr.Dataset({**{n: ("patient", x[:, j]) for j, n in enumerate(names)}, "y": ("patient", y)})
            dom.add_dataset("cohort", data, bounds={**dict.fromkeys(names, (-10.0, 10.0)), "y": (0.0, 1.0)})
            dom.policy.update(stats_protection={"cohort": "disclosure"})
            dom.policy.templates.add({"name": "bench", "functions": ["glm"], "release": "auto"},
                                     reviewer="owner")
            servers.append(dom.serve(port=0))
            clients.append(fednb.connect(servers[-1].url, token=token))
        formula = "y ~ " + " + ".join(names)
        t0 = time.perf_counter()
        fit = fs.glm(clients, formula, "binomial", dataset="cohort", tol=1e-8)
        federated = time.perf_counter() - t0
        for s in servers:
            s.stop()
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    t0 = time.perf_counter()
    ref = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit()
    pooled = time.perf_counter() - t0
    diff = float(np.max(np.abs(fit.params.to_numpy() - ref.params) / np.abs(ref.params)))
    print(f"federated GLM, {SITES} loopback domains x {ROWS} rows, {COVARIATES} covariates: "
          f"{federated:.3f} s ({fit.iterations} iterations)")
    print(f"statsmodels on the pooled data:                                   {pooled:.3f} s")
    print(f"largest relative difference of the coefficients: {diff:.2e}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (1, 5, 15 min)")


if __name__ == "__main__":
    main()
