"""The floating-point channel: low bits of ``x + noise`` that tell neighbouring inputs apart.

Mironov (2012) and Jin et al. ("Are We There Yet?", 2022) showed that textbook float64
noise leaks its input through the set of floats it can reach. The attack here is theirs on
Box-Muller: a release of two values noised by one pair (r cos t, r sin t), as the old code
released a two-value tensor or two metrics, gives away r^2 and t, hence the two 53-bit
uniforms behind them; for a candidate input the attacker recovers those uniforms and checks
that some uniforms on the 2^-53 grid next to them reproduce the released floats exactly.
The true input always passes; a neighbour almost never does. Against the released grid
values of ``fednb.privacy.grid_gaussian`` the same test tells nothing.

The statistical part runs at the runtime level (``apply_output_policy``, the function the
domain's parent calls on what a worker returned), 20,000 releases of each of two
neighbouring results, and against the old mechanism written out below as plain float64
``x + Box-Muller`` noise, to show the distinguisher has teeth. The HTTP part checks that a
live bubblewrap domain's DP releases lie on their grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

import fednb
from fednb.privacy import SecureNoise
from fednb.protocol import ClientDP, TensorSpec, Update
from fednb.runtime import OutputPolicy, apply_output_policy
from tests.adversarial.conftest import approve_all, make_dp_domain

TRIALS = 20_000
"""Releases of each neighbour: the advantage's standard error is below 0.005."""
TWO_PI = 2.0 * np.pi
DP = ClientDP(clip=1.0, noise_multiplier=50.0)
"""Noise so large that the two neighbours' locations are all but indistinguishable (a total
variation distance near 0.01): what remains to tell them apart is the low bits."""
SPEC = {"w": TensorSpec(shape=[2], dtype="float64"), "v": TensorSpec(shape=[2], dtype="float32")}
BOUNDS = {"acc": (0.0, 1.0), "loss": (0.0, 1.0)}
METRIC_SIGMA = DP.noise_multiplier * math.sqrt(2.0)  # z times the norm of the metrics' ranges
A = Update({"w": np.array([0.0, 0.0]), "v": np.array([0.0, 0.0], np.float32)}, {"acc": 0.0, "loss": 0.0})
B = Update({"w": np.array([0.3, -0.4]), "v": np.array([0.25, 0.5], np.float32)}, {"acc": 1.0, "loss": 0.7})
"""Two neighbouring results of one run (norm 0.75 < C: no clipping blurs them)."""

Release = dict[str, np.ndarray]  # part name -> (TRIALS, 2) released pairs


def reachable(y: np.ndarray, x: np.ndarray, sigma: float, window: int = 4) -> np.ndarray:
    """Jin et al.'s test on Box-Muller pairs: for each row of ``y`` (released pairs), is there
    a pair of 53-bit uniforms next to the ones ``y - x`` implies whose Box-Muller pair n
    (noise ``sigma``) gives exactly ``x + n == y`` in the released dtype?"""
    cast = y.dtype.type
    n1, n2 = y[:, 0].astype(np.float64) - x[0], y[:, 1].astype(np.float64) - x[1]
    u1 = np.exp(-(n1 * n1 + n2 * n2) / (2 * sigma * sigma))
    t = np.arctan2(n2, n1)
    u2 = np.where(t < 0, t + TWO_PI, t) / TWO_PI
    steps = np.arange(-window, window + 1, dtype=np.float64)
    c1 = np.clip(np.rint(u1 * 2.0**53)[:, None] + steps, 1, 2.0**53 - 1) * 2.0**-53
    c2 = np.clip(np.rint(u2 * 2.0**53)[:, None] + steps, 1, 2.0**53 - 1) * 2.0**-53
    r = (sigma * np.sqrt(-2.0 * np.log(c1)))[:, :, None]
    angle = (c2 * TWO_PI)[:, None, :]
    first = cast(x[0] + r * np.cos(angle)) == y[:, :1, None]
    second = cast(x[1] + r * np.sin(angle)) == y[:, 1:, None]
    return np.asarray((first & second).any(axis=(1, 2)))


def advantages(release: Callable[[Update], Release]) -> dict[str, float]:
    """P(the test accepts B | B released) - P(it accepts B | A released), per released pair."""
    ra, rb = release(A), release(B)
    sigma = DP.clip * DP.noise_multiplier
    tests = {"w": (B.weights["w"], sigma), "v": (B.weights["v"].astype(np.float64), sigma),
             "metrics": (np.array([B.metrics["acc"], B.metrics["loss"]]), METRIC_SIGMA)}
    return {part: float(reachable(rb[part], x, s).mean() - reachable(ra[part], x, s).mean())
            for part, (x, s) in tests.items()}


def runtime_releases(update: Update) -> Release:
    """TRIALS releases of ``update`` by the output policy a domain's parent applies."""
    policy, noise = OutputPolicy(weights=SPEC, metrics=BOUNDS, dp=DP), SecureNoise()
    outs = [apply_output_policy(update, policy, noise) for _ in range(TRIALS)]
    return {"w": np.stack([o.weights["w"] for o in outs]), "v": np.stack([o.weights["v"] for o in outs]),
            "metrics": np.array([[o.metrics["acc"], o.metrics["loss"]] for o in outs])}


def box_muller_pairs(noise: SecureNoise, sigma: float) -> np.ndarray:
    """The old sampler: TRIALS Box-Muller pairs (r cos t, r sin t), both halves released."""
    u = noise.uniform(2 * TRIALS).reshape(2, TRIALS)
    r, t = sigma * np.sqrt(-2.0 * np.log(u[0])), u[1] * TWO_PI
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def naive_releases(update: Update) -> Release:
    """The mechanism before the grid: plain float64 ``x + noise``, one pair per two values."""
    noise, sigma = SecureNoise(), DP.clip * DP.noise_multiplier
    metrics = np.array([update.metrics["acc"], update.metrics["loss"]])
    return {"w": update.weights["w"] + box_muller_pairs(noise, sigma),
            "v": update.weights["v"].astype(np.float64) + box_muller_pairs(noise, sigma),
            "metrics": metrics + box_muller_pairs(noise, METRIC_SIGMA)}


def test_floating_point_low_bits_tell_nothing_about_the_input() -> None:
    naive = advantages(naive_releases)
    assert min(naive.values()) > 0.5, naive  # the distinguisher works: 0.96 here, as the issue measured
    ra, rb = runtime_releases(A), runtime_releases(B)
    grid = advantages(lambda update: ra if update is A else rb)
    # and the lowest bit of the released integer (B's first value rounds to an odd one, A's
    # to 0): a bias of the discrete sampler's low bits would show here
    step = grid_step(2 * DP.clip, 4)
    odd = {k: (np.rint(r["w"][:, 0] / step) % 2 == 1).mean() for k, r in (("a", ra), ("b", rb))}
    grid["w parity"] = float(odd["b"] - odd["a"])
    assert max(abs(a) for a in grid.values()) < 0.05, grid


# -- over HTTP: a live domain's DP releases lie on their grid ------------------------------
@fednb.remote(metrics={"acc": (0.0, 1.0), "loss": (0.0, 1.0)})
def first_patient(data, weights):
    x = np.asarray(data.x.values[0, :2], dtype=np.float64)
    return fednb.Update(weights={"w": x / 100.0, "v": (x / 1000.0).astype(np.float32)},
                        metrics={"acc": 0.5, "loss": float(x[0]) / 100.0})


def grid_step(sensitivity: float, d: int) -> float:
    return 2.0 ** math.floor(math.log2(sensitivity * 2.0**-10 / math.sqrt(d)))


def on_grid(values: np.ndarray, step: float) -> bool:
    k = np.asarray(values, dtype=np.float64) / step
    return bool(np.array_equal(k, np.rint(k)))


def test_floating_point_releases_of_a_live_domain_lie_on_their_grid(tmp_path: Path) -> None:
    domain = make_dp_domain(tmp_path / "dom")
    try:
        w0 = {"w": np.zeros(2), "v": np.zeros(2, np.float32)}
        req = first_patient.request(domain.eve(), dataset="breast-cancer", runs=3, weights=w0,
                                    dp=fednb.ClientDP(clip=1.0, noise_multiplier=2.0))
        approve_all(domain, release="auto")
        for _ in range(3):
            update = req.run(w0).result(timeout=120)
            assert update.weights["w"].dtype == np.float64 and update.weights["v"].dtype == np.float32
            step = grid_step(2.0, 4)  # the update: sensitivity 2C over 4 values
            assert on_grid(update.weights["w"], step) and on_grid(update.weights["v"], step), update.weights
            metrics = np.array([update.metrics["acc"], update.metrics["loss"]])
            assert on_grid(metrics, grid_step(math.sqrt(2.0), 2)), update.metrics
    finally:
        domain.server.stop()


if __name__ == "__main__":  # pragma: no cover - the figures for docs/privacy.md
    print("old mechanism:", advantages(naive_releases))
    print("grid release: ", advantages(runtime_releases))
