"""fednb.strategies on real data: federated logistic regression on the Wisconsin breast cancer set.

No mocks: scikit-learn's 569 patients, standardised on the training rows, an 80/20
stratified split, the training rows split over hospitals with Dirichlet label skew
(alpha = 0.5). A logistic-regression client written in NumPy takes full-batch gradient
steps from the global weights; a tiny loop here plays the round driver and calls the
strategy hooks. Every figure is a mean over 5 seeds (split, partition).

Poisoning: one of five hospitals sends its update scaled by -100, ``global - 100 *
(local - global)`` (a scaled sign-flip of its update). The literal ``-100 * local``
flips the sign of FedAvg's model every round, so FedAvg's accuracy alternates with the
parity of the last round; the robust rules are checked against both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
from scipy.special import expit
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from fednb.strategies import ClientUpdate, FedAvg, FedProx, FedYogi, Krum, Median, Strategy, TrimmedMean

SEEDS = range(5)
ROUNDS = 40
LOCAL_STEPS = 5
LR = 0.5
Poison = Callable[[np.ndarray, np.ndarray], np.ndarray]


def scaled_update(local: np.ndarray, global_vec: np.ndarray) -> np.ndarray:
    poisoned: np.ndarray = global_vec - 100.0 * (local - global_vec)
    return poisoned


def scaled_weights(local: np.ndarray, global_vec: np.ndarray) -> np.ndarray:
    poisoned: np.ndarray = -100.0 * local
    return poisoned


def dirichlet_split(y: np.ndarray, parts: int, alpha: float, rng: np.random.Generator,
                    min_size: int = 10) -> list[np.ndarray]:
    """Row indices per hospital: each class spread over the hospitals by Dirichlet(alpha) shares."""
    while True:
        split: list[list[int]] = [[] for _ in range(parts)]
        for label in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(parts, alpha)))[:-1] * len(rows)).astype(int)
            for hospital, chunk in zip(split, np.split(rows, cuts), strict=True):
                hospital.extend(chunk.tolist())
        if min(map(len, split)) >= min_size:  # redraw until every hospital can train
            return [np.sort(np.array(h)) for h in split]


def gradient(vec: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of the mean logistic loss; ``vec`` is (weights..., bias)."""
    residual = expit(x @ vec[:-1] + vec[-1]) - y
    grad: np.ndarray = np.append(x.T @ residual, residual.sum()) / len(y)
    return grad


def local_train(global_vec: np.ndarray, x: np.ndarray, y: np.ndarray, mu: float) -> np.ndarray:
    """The client function: full-batch steps; FedProx's proximal term adds mu * (w - w_global)."""
    w: np.ndarray = global_vec.copy()
    for _ in range(LOCAL_STEPS):
        w -= LR * (gradient(w, x, y) + mu * (w - global_vec))
    return w


def accuracy(vec: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ vec[:-1] + vec[-1] > 0) == y))


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    four: list[np.ndarray]
    five: list[np.ndarray]


@cache
def split(seed: int) -> Split:
    x, y = load_breast_cancer(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_tr)
    rng = np.random.default_rng(seed)
    four, five = dirichlet_split(y_tr, 4, 0.5, rng), dirichlet_split(y_tr, 5, 0.5, rng)
    return Split(scaler.transform(x_tr), y_tr.astype(float), scaler.transform(x_te), y_te, four, five)


def federate(make: Callable[[], Strategy], seed: int, hospitals: int, poison: Poison | None = None) -> float:
    """Test accuracy after ROUNDS rounds; with ``poison``, hospital 0 is Byzantine."""
    data, strategy = split(seed), make()
    parts = data.four if hospitals == 4 else data.five
    g = np.zeros(data.x_train.shape[1] + 1)
    for r in range(ROUNDS):
        mu = float(strategy.configure_round(r, {"lr": LR}).params.get("mu", 0.0))
        updates = []
        for i, rows in enumerate(parts):
            local = local_train(g, data.x_train[rows], data.y_train[rows], mu)
            if poison is not None and i == 0:
                local = poison(local, g)
            updates.append(ClientUpdate(local, len(rows), f"hospital-{i}"))
        g = strategy.aggregate(g, updates)
    return accuracy(g, data.x_test, data.y_test)


def pooled(seed: int) -> float:
    """The same model and optimiser on all training rows, for as many steps as a client takes."""
    data = split(seed)
    w = np.zeros(data.x_train.shape[1] + 1)
    for _ in range(ROUNDS * LOCAL_STEPS):
        w -= LR * gradient(w, data.x_train, data.y_train)
    return accuracy(w, data.x_test, data.y_test)


def mean_accuracy(make: Callable[[], Strategy], hospitals: int = 4, poison: Poison | None = None) -> float:
    return 100.0 * float(np.mean([federate(make, s, hospitals, poison) for s in SEEDS]))


@pytest.fixture(scope="module")
def fedavg_accuracy() -> float:
    return mean_accuracy(FedAvg)


def test_fedavg_matches_pooled_training(fedavg_accuracy: float) -> None:
    pooled_accuracy = 100.0 * float(np.mean([pooled(s) for s in SEEDS]))
    assert pooled_accuracy > 95.0
    assert abs(fedavg_accuracy - pooled_accuracy) <= 1.0, (fedavg_accuracy, pooled_accuracy)


@pytest.mark.parametrize("make", [lambda: FedProx(mu=0.1), lambda: FedYogi(eta=0.1)],
                         ids=["FedProx", "FedYogi"])
def test_fedprox_and_fedyogi_keep_up_with_fedavg(make: Callable[[], Strategy],
                                                 fedavg_accuracy: float) -> None:
    assert mean_accuracy(make) >= fedavg_accuracy - 0.5


@pytest.fixture(scope="module")
def clean_five() -> float:
    return mean_accuracy(FedAvg, hospitals=5)


def test_one_poisoned_hospital_breaks_fedavg(clean_five: float) -> None:
    assert clean_five > 95.0
    assert mean_accuracy(FedAvg, hospitals=5, poison=scaled_update) < 50.0


@pytest.mark.parametrize("poison", [scaled_update, scaled_weights], ids=["update-x-100", "weights-x-100"])
@pytest.mark.parametrize(
    "make", [Median, lambda: TrimmedMean(beta=0.2), lambda: Krum(f=1)], ids=["Median", "TrimmedMean", "Krum"]
)
def test_robust_rules_survive_a_poisoned_hospital(make: Callable[[], Strategy], poison: Poison,
                                                  clean_five: float) -> None:
    assert mean_accuracy(make, hospitals=5, poison=poison) >= clean_five - 3.0
