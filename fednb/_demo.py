"""``fednb demo``: hospitals on loopback with real medical data, both roles scripted.

Each hospital gets part of the Wisconsin breast cancer set (a label-skewed case mix, as
real hospitals see) and the diabetes set. The state lives under ``--home`` and is reused
by the next start; tokens go to ``tokens.json`` there (0600).

``--headless`` plays both roles end to end: the scientist computes federated feature
statistics, then trains a logistic model by federated averaging; each hospital's owner
approves the code and releases every held result. It prints the test accuracy next to
pooled training's and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import fednb
from fednb.client import DomainClient, RemoteRequest
from fednb.domain import Domain, Server
from fednb.domain.runner import bwrap_available
from fednb.typing import Weights

__all__ = ["main"]

_NAMES = ["st-mary", "st-john", "general", "royal", "city"]
_SEED = 20261123


@dataclass
class Site:
    name: str
    server: Server
    owner: DomainClient
    scientist: DomainClient


def _breast_cancer() -> tuple[xr.Dataset, xr.Dataset]:
    """Train (80%) and test (20%) splits, stratified, as xarray datasets."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bc = load_breast_cancer()
    idx = np.arange(len(bc.target))
    tr, te = train_test_split(idx, test_size=0.2, stratify=bc.target, random_state=_SEED % 1000)

    def ds(rows: np.ndarray) -> xr.Dataset:
        return xr.Dataset({"x": (("patient", "feature"), bc.data[rows]), "y": ("patient", bc.target[rows])},
                          coords={"feature": [str(f) for f in bc.feature_names]})

    return ds(tr), ds(te)


def _split(train: xr.Dataset, n: int) -> list[xr.Dataset]:
    """Label skew: each class spread over hospitals by Dirichlet(1.0) proportions."""
    rng = np.random.default_rng(_SEED)
    parts: list[list[int]] = [[] for _ in range(n)]
    y = train.y.values
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet(np.full(n, 1.0)))[:-1] * len(rows)).astype(int)
        for i, chunk in enumerate(np.split(rows, cuts)):
            parts[i].extend(chunk.tolist())
    return [train.isel(patient=sorted(p)) for p in parts]


def _create(home: Path, n: int) -> dict[str, dict[str, str]]:
    from sklearn.datasets import load_diabetes

    train, _ = _breast_cancer()
    dia = load_diabetes()
    diabetes = xr.Dataset({"x": (("patient", "feature"), dia.data), "progression": ("patient", dia.target)},
                          coords={"feature": [str(f) for f in dia.feature_names]})
    tokens: dict[str, dict[str, str]] = {}
    for name, part in zip(_NAMES[:n], _split(train, n), strict=True):
        dom = Domain.create(home / name, name=name.replace("-", " ").title())
        tokens[name] = {"owner": dom.add_user("owner", role="owner"),
                        "scientist": dom.add_user("scientist")}
        dom.policy.update(allow_no_dp=["scientist"])
        dom.add_dataset("breast-cancer", part, bounds={"x": (0.0, 5000.0), "y": (0, 1)},
                        description="Wisconsin diagnostic breast cancer (this hospital's patients)")
        dom.add_dataset("diabetes", diabetes.isel(patient=slice(_NAMES.index(name), None, n)),
                        bounds={"x": (-0.5, 0.5), "progression": (0.0, 400.0)},
                        description="Diabetes progression after one year")
        dom.close()
    return tokens


def _write_private(path: Path, data: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)


def start(home: Path, n: int, port_base: int = 0) -> list[Site]:
    """Create (or reuse) ``n`` hospitals under ``home`` and serve them on loopback."""
    home.mkdir(parents=True, exist_ok=True)
    tok_file = home / "tokens.json"
    state = json.loads(tok_file.read_text()) if tok_file.exists() else {}
    if len(state.get("hospitals", {})) != n:
        for name in _NAMES[:n]:
            if (home / name).exists():
                raise SystemExit(f"{home} holds a demo of another size; remove it or use --home")
        state = {"hospitals": _create(home, n)}
    insecure = not bwrap_available()
    sites = []
    for i, (name, toks) in enumerate(state["hospitals"].items()):
        port = port_base + i if port_base else 0
        server = Domain.open(home / name).serve(port=port, insecure_demo=insecure)
        toks["url"] = server.url
        sites.append(Site(name, server, fednb.connect(server.url, token=toks["owner"]),
                          fednb.connect(server.url, token=toks["scientist"])))
    _write_private(tok_file, state)
    return sites


@fednb.remote
def feature_moments(data: xr.Dataset) -> dict[str, np.ndarray]:
    x = data.x.values
    return {"n": np.asarray(float(x.shape[0])), "sum": x.sum(axis=0), "sumsq": (x**2).sum(axis=0)}


@fednb.remote(params={"lr": (float, 1e-3, 5.0), "epochs": (int, 1, 100)}, metrics={"loss": (0.0, 10.0)})
def train(data: xr.Dataset, weights: dict[str, np.ndarray], lr: float = 0.5,
          epochs: int = 10) -> fednb.Update:
    x = (data.x.values - weights["mu"]) / weights["sd"]
    y = data.y.values.astype(float)
    w, b = weights["w"].copy(), weights["b"].copy()
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b[0])))
        w -= lr * (x.T @ (p - y) / len(y) + 1e-3 * w)
        b -= lr * np.array([np.mean(p - y)])
    p = np.clip(1.0 / (1.0 + np.exp(-(x @ w + b[0]))), 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return fednb.Update(weights={"w": w, "b": b, "mu": weights["mu"], "sd": weights["sd"]},
                        metrics={"loss": loss})


def _review_and_release(site: Site, run_ids: set[str]) -> None:
    """The owner's part: release the held results of these runs (after reading them)."""
    for held in site.owner.results.held():
        if held.id in run_ids:
            held.release()


def _approve(site: Site, req: RemoteRequest) -> None:
    for pending in site.owner.requests.pending():
        if pending.id == req.id:
            print(f"  {site.name:8s} owner reviews {pending.info.function_name} "
                  f"(sha256 {pending.info.code_hash[:12]}) and approves")
            pending.approve(release="manual")


class _ReleaseDesk(threading.Thread):
    """The owners at their consoles during the federation: each held result is looked at
    and released (a no-DP result is never released automatically)."""

    def __init__(self, sites: list[Site]) -> None:
        super().__init__(daemon=True)
        self.sites, self.halt = sites, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for s in self.sites:
                for held in s.owner.results.held():
                    held.release()
            self.halt.wait(0.02)


def _run_everywhere(sites: list[Site], reqs: dict[str, RemoteRequest],
                    weights: Weights | None, **params: Any) -> dict[str, fednb.Update]:
    runs = {s.name: reqs[s.name].run(weights=weights, **params) for s in sites}
    for s in sites:
        info = runs[s.name].wait(300)
        if info.status != "succeeded":
            raise SystemExit(f"{s.name}: run {info.status} ({info.reason})")
        _review_and_release(s, {runs[s.name].id})
    return {name: run.result(timeout=60) for name, run in runs.items()}


def _accuracy(w: Weights, test: xr.Dataset) -> float:
    x = (test.x.values - w["mu"]) / w["sd"]
    return float(np.mean(((x @ w["w"] + w["b"][0]) > 0) == test.y.values))


def _pooled(sites: list[Site], test: xr.Dataset, w0: Weights, rounds: int, epochs: int) -> float:
    pooled_data, _ = _breast_cancer()
    w = w0
    for _ in range(rounds):  # the same local training on all the data at once
        w = dict(train.fn(pooled_data, w, lr=0.5, epochs=epochs).weights)
    return _accuracy(w, test)


def scenario(sites: list[Site], rounds: int = 15, epochs: int = 10) -> dict[str, float]:
    """Both roles, end to end; returns the federated and pooled test accuracies."""
    _, test = _breast_cancer()
    print("scientist: federated feature statistics")
    stats = {s.name: feature_moments.request(s.scientist, "breast-cancer") for s in sites}
    for s in sites:
        _approve(s, stats[s.name])
    moments = _run_everywhere(sites, stats, None)
    n = sum(float(m.weights["n"]) for m in moments.values())
    mu = sum(m.weights["sum"] for m in moments.values()) / n
    sd = np.sqrt(np.maximum(sum(m.weights["sumsq"] for m in moments.values()) / n - mu**2, 1e-12))
    w0: Weights = {"w": np.zeros(30), "b": np.zeros(1), "mu": np.asarray(mu), "sd": np.asarray(sd)}
    print(f"scientist: federated averaging (fednb.Federation), {rounds} rounds over {len(sites)} hospitals")
    federation = fednb.Federation({s.name: s.scientist for s in sites}, train, dataset="breast-cancer",
                                  initial=w0, params={"lr": 0.5, "epochs": epochs}, rounds=rounds,
                                  min_domains=len(sites), checkpoint=None, progress=False, timeout=300)
    reqs = federation.request()  # the same ids on every start: a rerun finds its runs again
    for s in sites:
        _approve(s, reqs[s.name])
    desk = _ReleaseDesk(sites)
    desk.start()
    try:
        history = federation.run()
    finally:
        desk.halt.set()
        desk.join()
    for r, loss in enumerate(history.rounds["loss"].values):
        print(f"  round {r + 1:2d}: loss {loss:.4f}")
    fed, pooled = _accuracy(history.weights, test), _pooled(sites, test, w0, rounds, epochs)
    print(f"federated test accuracy {fed:.3f}   pooled training {pooled:.3f}")
    print("privacy: no differential privacy in this demo yet; every result was held and released by hand")
    for s in sites:
        print(f"  {s.name:8s} audit: {s.server.domain.verify_audit()}")
    return {"federated": fed, "pooled": pooled}


def main(args: argparse.Namespace) -> int:
    """Entry point of ``fednb demo``."""
    n = int(args.hospitals)
    if not 1 <= n <= len(_NAMES):
        raise SystemExit(f"--hospitals must be between 1 and {len(_NAMES)}")
    home = Path(args.home).resolve()
    sites = start(home, n, int(getattr(args, "port_base", 0) or 0))
    try:
        mode = sites[0].server.domain.sandbox_mode
        for s in sites:
            print(f"{s.name:8s} {s.server.url}")
        print(f"sandbox: {mode}" + ("  (INSECURE DEMO: jobs run without bubblewrap)"
                                    if mode == "insecure-demo" else ""))
        print(f"tokens: {home / 'tokens.json'} (readable only by you)")
        if args.headless:
            scenario(sites)
            return 0
        print("domains are up; press Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        for s in sites:
            s.server.stop()
