"""``fednb demo --headless``: both roles, end to end, over the demo's hospitals.

1. Federated feature statistics (no DP; each owner reads and releases the result).
2. A logistic model trained by federated averaging (``fednb.Federation``, no DP; the
   owners release every held update), beside the same training on the pooled data.
3. A logistic model by DP-SGD inside each hospital (``fednb.DPSGD``: a model sent as data,
   Opacus in the sandbox), averaged over the hospitals round by round; the noise is
   calibrated so that all rounds together cost each hospital at most epsilon 1.

Every request, run and federation uses ids derived from what it is, so a second start
finds them again: no run is repeated and no epsilon is charged twice.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

import fednb
from fednb.client import DomainClient, RemoteRequest
from fednb.demo import ReleaseDesk, approve, breast_cancer
from fednb.privacy import noise_multiplier_for
from fednb.typing import Weights

__all__ = ["DPSGD_EPSILON", "scenario"]

DPSGD_EPSILON = 1.0  # per hospital, all rounds together
DPSGD_DELTA = 1e-6  # the domains' default delta at this size: min(1e-6, 1/(10 n))
DPSGD_ROUNDS, DPSGD_EPOCHS, DPSGD_BATCH, DPSGD_LR, DPSGD_CLIP = 6, 4, 32, 0.5, 0.5
# each DP-SGD result appears this long after its run started (a fixed schedule: how long a
# training took must not show); a training takes a second or two here, the rest is room
DPSGD_SLOT_S = 12.0
# DP noise grows with the number of weights: the DP model reads the three features Street,
# Wolberg & Mangasarian (1993) found enough for this diagnosis. The others are scaled by
# 1e6, which switches them off (public constants: no privacy spent). With all 30 features
# the same training reaches 0.94-0.98 (mean 0.966); with these three, 0.965-0.974.
DPSGD_FEATURES = ("mean texture", "worst area", "worst smoothness")


@dataclass
class Parties:
    """Each hospital as its scientist sees it and as its owner does."""

    scientist: dict[str, DomainClient]
    owner: dict[str, DomainClient]


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


def _say_approved(parties: Parties, reqs: dict[str, RemoteRequest]) -> None:
    for name, req in reqs.items():
        info = parties.owner[name].requests.get(req.id).info
        print(f"  {name:8s} owner reviews {info.function_name} (sha256 {info.code_hash[:12]}) and approves")
    approve(parties.owner, reqs)


def _moments(parties: Parties) -> tuple[np.ndarray, np.ndarray]:
    """Pooled feature means and standard deviations from per-hospital sums."""
    print("scientist: federated feature statistics")
    reqs = {name: feature_moments.request(c, "breast-cancer", request_id=_id("moments", name))
            for name, c in parties.scientist.items()}
    _say_approved(parties, reqs)
    runs = {name: r.run(run_id=_id("moments-run", name)) for name, r in reqs.items()}
    with ReleaseDesk(parties.owner, {r.id for r in runs.values()}):
        out = {name: r.result(timeout=300).weights for name, r in runs.items()}
    n = sum(float(m["n"]) for m in out.values())
    mu = sum(m["sum"] for m in out.values()) / n
    sd = np.sqrt(np.maximum(sum(m["sumsq"] for m in out.values()) / n - mu**2, 1e-12))
    return np.asarray(mu), np.asarray(sd)


def _id(*parts: str) -> str:
    return hashlib.sha256("/".join(("fednb-demo", *parts)).encode()).hexdigest()[:32]


def _accuracy(logits: np.ndarray, test: xr.Dataset) -> float:
    return float(np.mean((logits > 0) == test.y.values))


def _fedavg(parties: Parties, w0: Weights, test: xr.Dataset, rounds: int, epochs: int) -> float:
    names = list(parties.scientist)
    print(f"scientist: federated averaging (fednb.Federation), {rounds} rounds over {len(names)} hospitals")
    federation = fednb.Federation(parties.scientist, train, dataset="breast-cancer", initial=w0,
                                  params={"lr": 0.5, "epochs": epochs}, rounds=rounds,
                                  min_domains=len(names), checkpoint=None, progress=False, timeout=300)
    reqs = federation.request()  # the same ids on every start: a rerun finds its runs again
    _say_approved(parties, reqs)
    with ReleaseDesk(parties.owner):
        history = federation.run()
    for r, loss in enumerate(history.rounds["loss"].values):
        print(f"  round {r + 1:2d}: loss {loss:.4f}")
    w = history.weights
    return _accuracy((test.x.values - w["mu"]) / w["sd"] @ w["w"] + w["b"][0], test)


def _pooled(w0: Weights, test: xr.Dataset, rounds: int, epochs: int) -> float:
    pooled_data, _ = breast_cancer()
    w = w0
    for _ in range(rounds):  # the same local training on all the data at once
        w = dict(train.fn(pooled_data, w, lr=0.5, epochs=epochs).weights)
    return _accuracy((test.x.values - w["mu"]) / w["sd"] @ w["w"] + w["b"][0], test)


def _dpsgd_scale(sd: np.ndarray, features: np.ndarray) -> np.ndarray:
    return np.asarray(sd * np.where(np.isin(features, DPSGD_FEATURES), 1.0, 1e6))


def _dpsgd_model(n: int, mu: np.ndarray, sd: np.ndarray) -> fednb.DPSGD:
    """A logistic model whose ``DPSGD_ROUNDS`` trainings on ``n`` examples cost epsilon 1."""
    steps = DPSGD_EPOCHS * math.ceil(n / DPSGD_BATCH)
    z = noise_multiplier_for(DPSGD_EPSILON, DPSGD_DELTA, sampling_rate=min(1.0, DPSGD_BATCH / n),
                             steps=steps * DPSGD_ROUNDS)
    return fednb.DPSGD(layers=[{"type": "linear", "in_features": 30, "out_features": 1}],
                       loss="bce_with_logits", features="x", target="y", epochs=DPSGD_EPOCHS,
                       batch_size=DPSGD_BATCH, lr=DPSGD_LR, optimizer="sgd", max_grad_norm=DPSGD_CLIP,
                       noise_multiplier=z, feature_shift=mu.tolist(), feature_scale=sd.tolist())


def _dpsgd(parties: Parties, mu: np.ndarray, sd: np.ndarray,
           test: xr.Dataset) -> tuple[float, dict[str, float]]:
    """Federated DP-SGD: each round every hospital trains the global model with DP-SGD
    from where it stands; the scientist averages the models, weighted by examples."""
    print(f"scientist: federated DP-SGD (fednb.DPSGD) of a logistic model on {', '.join(DPSGD_FEATURES)}; "
          f"{DPSGD_ROUNDS} rounds, epsilon <= {DPSGD_EPSILON} per hospital")
    w: Weights = {"0.weight": np.zeros((1, 30), np.float32), "0.bias": np.zeros(1, np.float32)}
    sizes = {name: c.datasets["breast-cancer"].card.num_examples for name, c in parties.scientist.items()}
    sd = _dpsgd_scale(sd, test.feature.values)
    reqs = {name: _dpsgd_model(sizes[name], mu, sd).request(
                c, "breast-cancer", runs=DPSGD_ROUNDS, weights=w, request_id=_id("dpsgd", name),
                slot_s=DPSGD_SLOT_S)
            for name, c in parties.scientist.items()}
    _say_approved_auto(parties, reqs)
    for r in range(DPSGD_ROUNDS):
        runs = {name: req.run(weights=w, run_id=_id("dpsgd-run", name, str(r))) for name, req in reqs.items()}
        out = {name: run.result(timeout=300).weights for name, run in runs.items()}
        total = sum(sizes.values())
        w = {k: np.sum([sizes[name] * out[name][k] for name in out], axis=0) / total for k in w}
        acc = _accuracy(((test.x.values - mu) / sd) @ w["0.weight"][0] + w["0.bias"][0], test)
        print(f"  round {r + 1:2d}: test accuracy {acc:.3f}")
    return acc, {name: _ledger(c) for name, c in parties.scientist.items()}


def _ledger(client: DomainClient) -> float:
    """Epsilon the hospital's ledger has charged this scientist on breast-cancer."""
    return sum(b.epsilon_spent for b in client.budget if b.dataset == "breast-cancer")


def _say_approved_auto(parties: Parties, reqs: dict[str, RemoteRequest]) -> None:
    for name, req in reqs.items():
        info = parties.owner[name].requests.get(req.id).info
        print(f"  {name:8s} owner reviews the model (sha256 {info.code_hash[:12]}): epsilon "
              f"{info.projected_epsilon:.3f} for {info.runs} runs at delta {info.delta:g}, results "
              f"{info.slot_s:g} s after each run starts; approves")
    approve(parties.owner, reqs, release="auto")  # DP results need no hand release


def scenario(parties: Parties, rounds: int = 15, epochs: int = 10) -> dict[str, Any]:
    """Both roles, end to end; returns the test accuracies and the epsilon spent."""
    _, test = breast_cancer()
    mu, sd = _moments(parties)
    w0: Weights = {"w": np.zeros(30), "b": np.zeros(1), "mu": mu, "sd": sd}
    fed, pooled = _fedavg(parties, w0, test, rounds, epochs), _pooled(w0, test, rounds, epochs)
    print(f"no DP:  federated test accuracy {fed:.3f}   pooled training {pooled:.3f}")
    dp, spent = _dpsgd(parties, mu, sd, test)
    eps = ", ".join(f"{name} {e:.3f}" for name, e in spent.items())
    print(f"DP-SGD: federated test accuracy {dp:.3f}   epsilon spent per hospital (their ledgers): "
          f"{eps} (delta {DPSGD_DELTA:g})")
    return {"federated": fed, "pooled": pooled, "dpsgd": dp, "epsilon": spent}
