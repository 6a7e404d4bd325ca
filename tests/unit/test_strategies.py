"""fednb.strategies: one contract every strategy passes, and each rule against a reference.

References are computed here, never by calling fednb: NumPy's median, SciPy's
``trim_mean`` and ``cdist``, explicit loops for weighted means, Krum scores and the
server-optimiser recurrences of Reddi et al. (2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import trim_mean

import fednb.strategies as S
from fednb import kernels
from fednb.errors import InvalidInput
from fednb.strategies import (
    ClientUpdate,
    FedAdagrad,
    FedAdam,
    FedAdamW,
    FedAvg,
    FedBuff,
    FedProx,
    FedYogi,
    Krum,
    Median,
    RoundConfig,
    Strategy,
    TrimmedMean,
)

P = 7
N = 5

# (factory, exact): exact strategies return the common update of identical updates;
# server optimisers only move toward it.
STRATEGIES: dict[str, tuple[Callable[[], Strategy], bool]] = {
    "FedAvg": (FedAvg, True),
    "FedProx": (lambda: FedProx(mu=0.1), True),
    "FedAdam": (FedAdam, False),
    "FedYogi": (lambda: FedYogi(eta=0.05, tau=1e-2), False),
    "FedAdagrad": (FedAdagrad, False),
    "FedAdamW": (lambda: FedAdamW(weight_decay=0.05), False),
    "FedBuff": (lambda: FedBuff(buffer_size=N), True),
    "FedBuff-hinge": (lambda: FedBuff(buffer_size=N, staleness="hinge", a=2.0, b=1, server_lr=0.7), False),
    "Median": (Median, True),
    "TrimmedMean": (lambda: TrimmedMean(beta=0.2), True),
    "Krum": (lambda: Krum(f=1), True),
    "MultiKrum": (lambda: Krum(f=1, m=3, fraction=0.5), True),
}


def random_updates(rng: np.random.Generator, n: int = N, p: int = P) -> list[ClientUpdate]:
    return [
        ClientUpdate(rng.normal(size=p), int(rng.integers(5, 200)), f"h{i}",
                     staleness=int(rng.integers(0, 4)))
        for i in range(n)
    ]


@pytest.fixture(params=sorted(STRATEGIES), name="case")
def _case(request: pytest.FixtureRequest) -> tuple[Callable[[], Strategy], bool]:
    return STRATEGIES[request.param]


class TestStrategyContract:
    """What every strategy promises the round driver."""

    def test_identical_updates(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        make, exact = case
        rng = np.random.default_rng(0)
        g = rng.normal(size=P)
        u = g + rng.choice([-1.0, 1.0], size=P) * rng.uniform(0.5, 2.0, size=P)
        ups = [ClientUpdate(u.copy(), n, f"h{n}") for n in (3, 50, 7, 11, 90)]
        new = make().aggregate(g, ups)
        if exact:
            np.testing.assert_allclose(new, u, rtol=1e-12, atol=1e-12)
        else:  # a server optimiser steps toward the common update
            assert np.dot(new - g, u - g) > 0
            assert np.linalg.norm(new - u) < np.linalg.norm(g - u)

    def test_output_shape_dtype_finite_and_inputs_untouched(
        self, case: tuple[Callable[[], Strategy], bool]
    ) -> None:
        rng = np.random.default_rng(1)
        g, ups = rng.normal(size=P), random_updates(rng)
        g_before, vecs_before = g.copy(), [u.vector.copy() for u in ups]
        new = case[0]().aggregate(g, ups)
        assert new.shape == (P,) and new.dtype == np.float64 and np.isfinite(new).all()
        np.testing.assert_array_equal(g, g_before)
        for u, before in zip(ups, vecs_before, strict=True):
            np.testing.assert_array_equal(u.vector, before)

    def test_permutation_invariance(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        make = case[0]
        rng = np.random.default_rng(2)
        g, ups = rng.normal(size=P), random_updates(rng)
        first = make().aggregate(g, ups)
        for perm in (rng.permutation(N) for _ in range(3)):
            permuted = make().aggregate(g, [ups[i] for i in perm])
            np.testing.assert_allclose(permuted, first, rtol=1e-12, atol=1e-14)

    def test_state_dict_round_trip(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        make = case[0]
        rng = np.random.default_rng(3)
        g, ups1, ups2 = rng.normal(size=P), random_updates(rng), random_updates(rng)
        a = make()
        g1 = a.aggregate(g, ups1)
        b = make()
        b.load_state_dict(a.state_dict())
        assert b.state_dict().keys() == a.state_dict().keys()
        for value in a.state_dict().values():  # copies: the caller cannot change the optimiser
            if isinstance(value, np.ndarray):
                value[:] = np.nan
        np.testing.assert_array_equal(b.aggregate(g1, ups2), a.aggregate(g1, ups2))
        fresh = make()
        fresh.load_state_dict(make().state_dict())

    def test_repr_rebuilds_the_strategy(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        s = case[0]()
        text = repr(s)
        assert text.startswith(type(s).__name__ + "(")
        rebuilt = eval(text, vars(S))
        assert type(rebuilt) is type(s) and rebuilt.hyperparameters == s.hyperparameters

    def test_aggregate_sum_matches_aggregate(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        make = case[0]
        rng = np.random.default_rng(4)
        g, ups = rng.normal(size=P), random_updates(rng)
        s = make()
        w = np.array([s.weight(u) for u in ups])
        weighted_sum = sum(wi * u.vector for wi, u in zip(w, ups, strict=True))
        examples = float(sum(u.num_examples for u in ups))
        if not s.secure_aggregation:
            with pytest.raises(InvalidInput, match="single updates"):
                s.aggregate_sum(g, weighted_sum, float(w.sum()), total_examples=examples)
            return
        from_sum = s.aggregate_sum(g, weighted_sum, float(w.sum()), total_examples=examples)
        np.testing.assert_allclose(from_sum, make().aggregate(g, ups), rtol=1e-12, atol=1e-12)

    def test_flags_and_configure_round(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        s = case[0]()
        assert isinstance(s.secure_aggregation, bool) and s.secure_aggregation is not s.robust
        assert isinstance(s.asynchronous, bool)
        params: dict[str, S.ParamValue] = {"lr": 0.1, "epochs": 2, "optim": "sgd", "clip": True}
        config = s.configure_round(0, params)
        assert isinstance(config, RoundConfig) and config.fraction == s.fraction
        assert params.items() <= config.params.items()
        assert params == {"lr": 0.1, "epochs": 2, "optim": "sgd", "clip": True}  # not mutated
        with pytest.raises(InvalidInput, match="server_round"):
            s.configure_round(-1, params)

    def test_min_updates(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        s = case[0]()
        k = s.min_updates
        assert isinstance(k, int) and 1 <= k <= N
        rng = np.random.default_rng(6)
        g = rng.normal(size=P)
        assert case[0]().aggregate(g, random_updates(rng, n=k)).shape == (P,)
        if k > 1:
            with pytest.raises(InvalidInput, match=str(k - 1)):
                s.aggregate(g, random_updates(rng, n=k - 1))

    def test_refuses_mismatched_and_empty_updates(self, case: tuple[Callable[[], Strategy], bool]) -> None:
        s = case[0]()
        rng = np.random.default_rng(5)
        ups = random_updates(rng)
        with pytest.raises(InvalidInput, match="same architecture"):
            s.aggregate(np.zeros(P + 1), ups)
        with pytest.raises(InvalidInput, match="no client updates"):
            s.aggregate(np.zeros(P), [])
        with pytest.raises(InvalidInput, match="NaN"):
            s.aggregate(np.full(P, np.nan), ups)


# --- FedAvg and FedProx -----------------------------------------------------------------


def test_fedavg_is_the_example_weighted_mean() -> None:
    rng = np.random.default_rng(10)
    ups = random_updates(rng, n=6, p=40)
    expected = np.zeros(40)
    for u in ups:
        expected += u.num_examples * u.vector
    expected /= sum(u.num_examples for u in ups)
    np.testing.assert_allclose(FedAvg().aggregate(rng.normal(size=40), ups), expected, rtol=1e-12)
    two = [ClientUpdate(np.array([1.0, 0.0]), 30, "a"), ClientUpdate(np.array([0.0, 1.0]), 10, "b")]
    assert FedAvg().aggregate(np.zeros(2), two).tolist() == [0.75, 0.25]
    np.testing.assert_allclose(S.weighted_mean(np.stack([u.vector for u in ups]),
                                               np.array([u.num_examples for u in ups], float)), expected)


def test_fedprox_aggregates_as_fedavg_and_sends_mu() -> None:
    rng = np.random.default_rng(11)
    g, ups = rng.normal(size=P), random_updates(rng)
    np.testing.assert_array_equal(FedProx(mu=0.5).aggregate(g, ups), FedAvg().aggregate(g, ups))
    config = FedProx(mu=0.5).configure_round(3, {"lr": 0.1})
    assert config.params == {"lr": 0.1, "mu": 0.5}
    assert FedProx(mu=0.5).configure_round(0, {"mu": 0.5}).params == {"mu": 0.5}
    with pytest.raises(InvalidInput, match=r"mu=0\.2"):
        FedProx(mu=0.5).configure_round(0, {"mu": 0.2})


# --- robust rules -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 6, 11])
def test_median_equals_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    ups = random_updates(rng, n=n, p=33)
    expected = np.median(np.stack([u.vector for u in ups]), axis=0)
    np.testing.assert_array_equal(Median().aggregate(np.zeros(33), ups), expected)


@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (6, 0.2), (10, 0.1), (10, 0.25), (11, 0.3), (20, 0.49)])
def test_trimmed_mean_equals_scipy(n: int, beta: float) -> None:
    rng = np.random.default_rng(n)
    ups = random_updates(rng, n=n, p=50)
    stacked = np.stack([u.vector for u in ups])
    expected = trim_mean(stacked, beta, axis=0)
    np.testing.assert_allclose(TrimmedMean(beta=beta).aggregate(np.zeros(50), ups), expected, rtol=1e-12)
    np.testing.assert_allclose(S.trimmed_mean(stacked, beta), expected, rtol=1e-12)
    np.testing.assert_allclose(S.trimmed_mean(stacked, 0.0), stacked.mean(axis=0), rtol=1e-12)


def test_pairwise_distances_equal_scipy_even_far_from_the_origin() -> None:
    rng = np.random.default_rng(12)
    stacked = rng.normal(size=(9, 300))
    np.testing.assert_allclose(S.pairwise_sq_distances(stacked), cdist(stacked, stacked, "sqeuclidean"),
                               rtol=1e-10, atol=1e-10)
    far = 1e6 + 1e-3 * stacked  # centring keeps the Gram formula from cancelling to noise
    np.testing.assert_allclose(S.pairwise_sq_distances(far), cdist(far, far, "sqeuclidean"),
                               rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.2, 0.25, 0.3, 1 / 3, 0.45, 0.49])
def test_trimmed_mean_min_updates_is_the_first_n_that_trims(beta: float) -> None:
    n = next(n for n in range(1, 1000) if math.floor(beta * n) >= 1)
    assert TrimmedMean(beta=beta).min_updates == n
    assert Krum(f=2).min_updates == 7 and Median().min_updates == FedAvg().min_updates == 1


def test_krum_scores_equal_a_loop() -> None:
    rng = np.random.default_rng(13)
    stacked, f = rng.normal(size=(8, 20)), 2
    expected = []
    for i in range(8):
        d = sorted(float(np.sum((stacked[i] - stacked[j]) ** 2)) for j in range(8) if j != i)
        expected.append(sum(d[: 8 - f - 2]))
    np.testing.assert_allclose(S.krum_scores(stacked, f), expected, rtol=1e-10)


def test_krum_selects_the_honest_cluster() -> None:
    rng = np.random.default_rng(14)
    centre = rng.normal(size=100)
    honest = [ClientUpdate(centre + 0.1 * rng.normal(size=100), 50, f"h{i}") for i in range(7)]
    byzantine = [
        ClientUpdate(-100.0 * centre, 5000, "evil-scaled"),
        ClientUpdate(centre + 3.0 * rng.normal(size=100), 5000, "evil-noise"),
    ]
    ups = [*honest[:3], byzantine[0], *honest[3:], byzantine[1]]
    chosen = Krum(f=2).select(np.zeros(100), ups)
    assert len(chosen) == 1 and ups[chosen[0]].domain.startswith("h")
    multi = Krum(f=2, m=5)
    assert all(ups[i].domain.startswith("h") for i in multi.select(np.zeros(100), ups))
    assert np.linalg.norm(multi.aggregate(np.zeros(100), ups) - centre) < 0.1 * math.sqrt(100)
    fedavg = FedAvg().aggregate(np.zeros(100), ups)
    assert np.linalg.norm(fedavg - centre) > 10 * math.sqrt(100)  # what Krum protects against


def loop_krum(vectors: list[np.ndarray], f: int, m: int) -> list[int]:
    """Krum's choice from float64 distances summed coordinate by coordinate (no Gram)."""
    wide = [v.astype(np.float64) for v in vectors]
    n = len(wide)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((wide[i] - wide[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def test_krum_on_float32_chooses_what_float64_distances_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    from fednb import kernels

    exact_calls = []
    fast = kernels.sq_distances

    def spy(rows: list[np.ndarray], *, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        exact_calls.append(exact)
        return fast(rows, exact=exact)

    monkeypatch.setattr(kernels, "sq_distances", spy)
    rng = np.random.default_rng(15)
    p = 5000
    base = (rng.normal(size=p) * 100).astype(np.float32)  # shared by all: |x|^2 ~ 5e7
    spread = [base + (rng.normal(size=p) * s).astype(np.float32) for s in rng.uniform(0.5, 2.0, 12)]
    ups = [ClientUpdate(v, 1, f"h{i}") for i, v in enumerate(spread)]
    assert Krum(f=2).select(np.zeros(p), ups) == loop_krum(spread, 2, 1)
    assert exact_calls == [False]  # well separated scores: the float32 bounds decide
    # near-duplicates (distances ~1e-6 of the norms) behind a far attacker that drags the mean
    near = [base + (rng.normal(size=p) * 1e-3).astype(np.float32) for _ in range(9)]
    near += [near[3].copy(), near[3].copy()]  # exact ties: the first index wins
    near.insert(0, base * np.float32(1e4))
    ups = [ClientUpdate(v, 1, f"h{i}") for i, v in enumerate(near)]
    for f, m in ((1, 1), (2, 1), (2, 3), (4, 5)):
        assert Krum(f=f, m=m).select(np.zeros(p), ups) == loop_krum(near, f, m), (f, m)
    assert True in exact_calls  # the ties cannot be decided from bounds: float64 decided


# --- server optimisers (Reddi et al. 2021, Algorithm 2) -----------------------------------


def reddi_reference(kind: str, g: np.ndarray, deltas: list[np.ndarray], eta: float, b1: float, b2: float,
                    tau: float) -> np.ndarray:
    m, v = np.zeros_like(g), np.zeros_like(g)
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if kind == "adagrad":
            v = v + d**2
        elif kind == "adam":
            v = b2 * v + (1 - b2) * d**2
        else:
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        g = g + eta * m / (np.sqrt(v) + tau)
    return g


@pytest.mark.parametrize(("kind", "cls"), [("adam", FedAdam), ("yogi", FedYogi), ("adagrad", FedAdagrad)])
def test_server_optimisers_follow_reddi_et_al(kind: str, cls: type[Strategy]) -> None:
    rng = np.random.default_rng(15)
    kwargs = {"eta": 0.3, "beta1": 0.8, "tau": 1e-2} | ({} if kind == "adagrad" else {"beta2": 0.95})
    s = cls(**kwargs)
    g0 = rng.normal(size=P)
    g, deltas = g0.copy(), []
    for _ in range(4):
        ups = random_updates(rng)
        mean = sum(u.num_examples * u.vector for u in ups) / sum(u.num_examples for u in ups)
        deltas.append(mean - g)
        g = s.aggregate(g, ups)
    expected = reddi_reference(kind, g0, deltas, 0.3, 0.8, 0.95, 1e-2)
    np.testing.assert_allclose(g, expected, rtol=1e-10)
    assert s.state_dict()["steps"] == 4


def test_fedadamw_is_fedadam_with_decoupled_weight_decay() -> None:
    # Loshchilov and Hutter (2019): theta = theta - eta * (m / (sqrt(v) + tau) + lambda * theta)
    rng = np.random.default_rng(18)
    eta, b1, b2, tau, wd = 0.3, 0.8, 0.95, 1e-2, 0.4
    s = FedAdamW(eta=eta, beta1=b1, beta2=b2, tau=tau, weight_decay=wd)
    g = rng.normal(size=P)
    m, v, expected = np.zeros(P), np.zeros(P), g.copy()
    for _ in range(4):
        ups = random_updates(rng)
        d = sum(u.num_examples * u.vector for u in ups) / sum(u.num_examples for u in ups) - expected
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d**2
        expected = expected - eta * (-m / (np.sqrt(v) + tau) + wd * expected)
        g = s.aggregate(g, ups)
    np.testing.assert_allclose(g, expected, rtol=1e-10)
    plain, decayed = FedAdam(), FedAdamW(weight_decay=0.0)
    ups = random_updates(rng)
    np.testing.assert_array_equal(decayed.aggregate(g, ups), plain.aggregate(g, ups))
    with pytest.raises(InvalidInput, match="eta \\* weight_decay"):
        FedAdamW(eta=2.0, weight_decay=1.0)
    with pytest.raises(InvalidInput, match="weight_decay"):
        FedAdamW(weight_decay=-1.0)


def test_fedadam_with_large_tau_and_no_momentum_is_fedavg_with_server_lr() -> None:
    # beta1 = 0 makes m the mean update; tau >> sqrt(v) makes the step eta / tau * delta.
    rng = np.random.default_rng(16)
    g, ups = rng.normal(size=P), random_updates(rng)
    tau = 1e8
    adam = FedAdam(eta=0.5 * tau, beta1=0.0, tau=tau)
    np.testing.assert_allclose(adam.aggregate(g, ups), g + 0.5 * (FedAvg().aggregate(g, ups) - g), rtol=1e-7)
    delta = FedAvg().aggregate(g, ups) - g
    exact = g + 0.1 * delta / (np.sqrt(0.01 * delta**2) + 1e-3)  # first step, beta2 = 0.99
    np.testing.assert_allclose(FedAdam(beta1=0.0).aggregate(g, ups), exact, rtol=1e-12)


# --- FedBuff ------------------------------------------------------------------------------


def test_fedbuff_staleness_weights() -> None:
    taus = range(12)
    poly = FedBuff()
    assert [poly.staleness_weight(t) for t in taus] == pytest.approx([1 / math.sqrt(1 + t) for t in taus])
    cubic = FedBuff(a=3.0)
    assert [cubic.staleness_weight(t) for t in taus] == pytest.approx([(1 + t) ** -3.0 for t in taus])
    assert all(FedBuff(staleness="constant").staleness_weight(t) == 1.0 for t in taus)
    hinge = FedBuff(staleness="hinge", a=10.0, b=4)
    assert [hinge.staleness_weight(t) for t in taus] == pytest.approx(
        [1.0 if t <= 4 else 1 / (10 * (t - 4) + 1) for t in taus]
    )
    with pytest.raises(InvalidInput, match="-1"):
        poly.staleness_weight(-1)


def test_fedbuff_discounts_stale_updates() -> None:
    rng = np.random.default_rng(17)
    g, ups = rng.normal(size=P), random_updates(rng)
    s = FedBuff(buffer_size=N, server_lr=0.8)
    expected = g + 0.8 * sum(
        u.num_examples / math.sqrt(1 + u.staleness) * (u.vector - g) for u in ups
    ) / sum(u.num_examples for u in ups)
    np.testing.assert_allclose(s.aggregate(g, ups), expected, rtol=1e-12)
    fresh = [ClientUpdate(u.vector, u.num_examples, u.domain) for u in ups]
    np.testing.assert_allclose(FedBuff(buffer_size=N).aggregate(g, fresh), FedAvg().aggregate(g, fresh))
    partial = FedBuff(buffer_size=N).aggregate(g, fresh[:2])  # a flushed, partly filled buffer
    np.testing.assert_allclose(partial, FedAvg().aggregate(g, fresh[:2]))
    with pytest.raises(InvalidInput, match="buffer of 5"):
        FedBuff(buffer_size=4).aggregate(g, ups)


@pytest.mark.parametrize("cls", [FedAvg, FedAdam, Median, Krum])
def test_a_non_finite_update_is_refused_before_the_server_state_moves(cls: type[Strategy]) -> None:
    # a strategy called with a plain list admits it itself (the one check, fednb.strategies.admit):
    # an update holding NaN or infinity is refused by name, and a server optimiser's state stays
    strategy = cls()
    ok = [ClientUpdate(np.full(4, float(i), np.float32), 1 + i, f"h{i}") for i in range(5)]
    strategy.aggregate(np.zeros(4), ok)  # state to keep
    before = {k: np.array(v, copy=True) for k, v in strategy.state_dict().items()}
    for vec in (np.array([1.0, np.nan, 2.0, 3.0], np.float32), np.array([np.inf, 0, 0, 0])):
        with pytest.raises(InvalidInput, match=r"\['bad'\] hold NaN or infinity"):
            strategy.aggregate(np.zeros(4), [*ok, ClientUpdate(vec, 1, "bad")])
    after = strategy.state_dict()
    assert sorted(after) == sorted(before)
    assert all(np.array_equal(v, after[k]) for k, v in before.items())


def test_admit_splits_finite_from_non_finite_updates_in_one_pass() -> None:
    ups = [ClientUpdate(np.array([1.0, 2.0]), 1, "a"), ClientUpdate(np.array([np.nan, 0.0]), 2, "b"),
           ClientUpdate(np.array([3.0, 4.0], np.float32), 3, "c"),
           ClientUpdate(np.array([0.0, -np.inf]), 4, "d")]
    admitted, refused = S.admit(ups)
    assert [u.domain for u in admitted] == ["a", "c"] and [u.domain for u in refused] == ["b", "d"]
    np.testing.assert_allclose(admitted.take_mean(), [2.5, 3.5])  # the example-weighted mean of a, c
    assert admitted.take_mean() is None  # handed over once: the taker may change it in place
    every, none = S.admit(ups[:1] + ups[2:3])
    assert len(every) == 2 and none == []
    empty, no = S.admit([])
    assert len(empty) == 0 and no == []
    with pytest.raises(TypeError, match="admit"):  # only the check makes the proof that it ran
        S.RoundUpdates(tuple(ups), None, object())
    # a RoundUpdates passes the strategies' checks as it is; the mean it holds is the round's
    np.testing.assert_allclose(FedAvg().aggregate(np.zeros(2), S.admit(ups[::2])[0]), [2.5, 3.5])


def test_updates_are_not_scanned_where_they_are_made() -> None:
    # a ClientUpdate checks shape and dtype; its values wait for admit(), the one check
    with pytest.raises(InvalidInput, match="flat"):
        ClientUpdate(np.zeros((2, 2)), 1, "a")
    vec = np.ones(3, np.float32)
    assert ClientUpdate(vec, 1, "a").vector is vec
    assert ClientUpdate(np.arange(3), 1, "a").vector.dtype == np.float64
    assert not np.isfinite(ClientUpdate(np.array([np.nan]), 1, "a").vector).any()


def test_finite_float32_updates_near_the_largest_float32_average_exactly() -> None:
    # the mean is accumulated in float64 and never stored as a sum: no overflow to refuse
    big = np.full(4, 3e38, np.float32)
    out = FedAvg().aggregate(np.zeros(4), [ClientUpdate(big, 1, "a"), ClientUpdate(big, 3, "b")])
    np.testing.assert_allclose(out, np.float64(np.float32(3e38)), rtol=1e-15)


def test_sums_run_blas_on_one_thread_and_restore_it() -> None:
    # Level-1 BLAS is memory-bound; OpenBLAS's extra threads only wait for busy cores.
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with kernels.one_blas_thread():
        assert set(blas_threads()) == {1}
    assert blas_threads() == before
    vecs = [np.arange(5, dtype=np.float32), np.ones(5, np.float32), np.arange(5.0)]
    np.testing.assert_allclose(S._base.weighted_sum(vecs[:2], [2.0, 3.0]), 2 * np.arange(5) + 3)
    np.testing.assert_allclose(S._base.weighted_sum(vecs, [1.0, 1.0, 1.0]), 2 * np.arange(5) + 1)
    assert S._base.weighted_sum(vecs[:2], [1.0, 1.0]).dtype == np.float32
    assert blas_threads() == before


def test_every_round_goes_through_aggregate_mean_and_returns_a_plain_array() -> None:
    # a subclass that extends aggregate_mean (server-side logging, clipping ...) sees every
    # round, from single updates or from a secure sum, with the same mean and totals
    seen: list[tuple[float, float, np.ndarray]] = []

    class Logged(FedAdam):
        def aggregate_mean(self, global_vec: np.ndarray, mean: np.ndarray, total_weight: float, *,
                           total_examples: float) -> np.ndarray:
            seen.append((total_weight, total_examples, mean.copy()))
            return super().aggregate_mean(global_vec, mean, total_weight, total_examples=total_examples)

    ups = [ClientUpdate(np.ones(3, np.float32), 2, "a"), ClientUpdate(np.zeros(3, np.float32), 3, "b")]
    for strategy in (Logged(), FedAvg()):
        out = strategy.aggregate(np.zeros(3), ups)
        assert type(out) is np.ndarray and out.dtype == np.float64
    from_sum = Logged().aggregate_sum(np.zeros(3), np.full(3, 2.0, np.float32), 5.0)
    assert type(from_sum) is np.ndarray
    assert [(t, n) for t, n, _ in seen] == [(5.0, 5.0), (5.0, 5.0)]
    for _, _, mean in seen:
        assert mean.dtype == np.float64
        np.testing.assert_allclose(mean, 0.4)
    np.testing.assert_allclose(FedAvg().aggregate(np.zeros(3), ups), 0.4)
    # aggregate_sum is the secure sums' entry: extending it sees those, and single updates go
    # straight to aggregate_mean (no detection of which hooks a subclass overrides)
    sums: list[tuple[float, np.ndarray]] = []

    class Summed(FedAdam):
        def aggregate_sum(self, global_vec: np.ndarray, weighted_sum: np.ndarray, total_weight: float, *,
                          total_examples: float | None = None) -> np.ndarray:
            sums.append((total_weight, np.array(weighted_sum)))
            return super().aggregate_sum(global_vec, weighted_sum, total_weight,
                                         total_examples=total_examples)

    np.testing.assert_allclose(Summed().aggregate(np.zeros(3), ups), Logged().aggregate(np.zeros(3), ups))
    assert sums == []
    np.testing.assert_allclose(Summed().aggregate_sum(np.zeros(3), np.full(3, 2.0), 5.0),
                               Logged().aggregate(np.zeros(3), ups))
    assert len(sums) == 1 and sums[0][0] == 5.0


def test_a_mean_strategy_refuses_weights_that_are_not_positive() -> None:
    # BLAS skips a vector weighted 0, NaN and all: a weight must be positive and finite
    class Zero(FedAvg):
        def weight(self, update: ClientUpdate) -> float:
            return 0.0 if update.domain == "b" else float(update.num_examples)

    ups = [ClientUpdate(np.ones(3, np.float32), 2, "a"), ClientUpdate(np.zeros(3, np.float32), 3, "b")]
    with pytest.raises(InvalidInput, match="weight of 'b'"):
        Zero().aggregate(np.zeros(3), ups)
