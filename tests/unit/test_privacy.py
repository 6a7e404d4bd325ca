"""fednb.privacy: events, accountants and calibration, checked against independent references.

References computed here, never by calling fednb: the analytic Gaussian mechanism
(Balle & Wang 2018, Theorem 8) solved with scipy's brentq, and dp-accounting's own PLD
and RDP accountants fed with dp-accounting events built by hand.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_accounting import dp_event as dpe  # type: ignore[import-untyped]
from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]
from scipy.optimize import brentq
from scipy.special import comb, logsumexp
from scipy.stats import norm

import fednb.privacy as P
from fednb.errors import InvalidInput
from fednb.privacy import (
    Accountant,
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    LaplaceEvent,
    PLDAccountant,
    PureDPEvent,
    RDPAccountant,
    RepeatedEvent,
    SubsampledGaussianEvent,
    _accountant,
    _analytic,
    _calibrate,
    _events,
    _noise,
    accountant_for,
    epsilon_for,
    event_from_json,
    noise_multiplier_for,
    to_dp_accounting,
)
from fednb.privacy._events import ReplaceOneSubsampledGaussianEvent


def reference_analytic_epsilon(sigma_over_sensitivity: float, delta: float) -> float:
    """Balle & Wang (2018), Theorem 8, solved for epsilon: the test's own implementation."""
    s = sigma_over_sensitivity

    def excess(eps: float) -> float:
        return float(norm.cdf(0.5 / s - eps * s) - math.exp(eps) * norm.cdf(-0.5 / s - eps * s) - delta)

    return float(brentq(excess, 0.0, 60.0, xtol=1e-14, rtol=1e-15))


def reference_pure_dp_epsilon(epsilon: float, count: int, delta: float) -> float:
    """Exact epsilon of ``count`` epsilon-DP releases in the worst case (binary randomized response).

    The privacy loss of the k-fold composition is (k - 2j) epsilon with probability
    C(k, j) p^(k-j) (1-p)^j, p = e^eps / (1 + e^eps); delta(e) = E[(1 - e^(e - L))_+].
    """
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    losses = [((count - 2 * j) * epsilon, comb(count, j) * p ** (count - j) * (1 - p) ** j)
              for j in range(count + 1)]

    def excess(e: float) -> float:
        return float(sum(w * max(0.0, 1 - math.exp(e - loss)) for loss, w in losses) - delta)

    return float(brentq(excess, 0.0, count * epsilon, xtol=1e-13))


def reference_pld_epsilon(event: object, delta: float) -> float:
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(event)
    return float(acc.get_epsilon(delta))


DPSGD_10K = RepeatedEvent(SubsampledGaussianEvent(sampling_rate=0.01, noise_multiplier=1.0), 10_000)


# --------------------------------------------------------------------------- contract


class AccountantContract:
    """What every accountant must satisfy (CONVENTIONS 16); subclasses say which one."""

    def make(self) -> Accountant:
        raise NotImplementedError

    @pytest.mark.parametrize("kind", ["gaussian", "laplace", "subsampled", "pure_dp"])
    def test_monotone_in_noise(self, kind: str) -> None:
        def event(noise: float) -> P.Event:
            if kind == "gaussian":
                return GaussianEvent(noise)
            if kind == "laplace":
                return LaplaceEvent(noise)
            if kind == "pure_dp":
                return RepeatedEvent(PureDPEvent(1.0 / noise), 10)
            return RepeatedEvent(SubsampledGaussianEvent(0.05, noise), 100)

        acc = self.make()
        eps = [acc.epsilon(event(z), 1e-5) for z in (0.8, 1.0, 2.0, 4.0)]
        assert all(a > b for a, b in itertools.pairwise(eps)), eps

    def test_monotone_in_number_of_events(self) -> None:
        acc = self.make()
        mix = [GaussianEvent(3.0), LaplaceEvent(20.0), SubsampledGaussianEvent(0.02, 1.2), PureDPEvent(0.01)]
        eps = [acc.epsilon(mix * n, 1e-6) for n in (1, 2, 5, 20)]
        assert all(a < b for a, b in itertools.pairwise(eps)), eps

    def test_epsilon_decreases_with_delta_and_delta_inverts_it(self) -> None:
        acc = self.make()
        ledger = [RepeatedEvent(GaussianEvent(6.0, 2.0), 5),
                  RepeatedEvent(SubsampledGaussianEvent(0.01, 1.0), 500), PureDPEvent(0.1)]
        deltas = (1e-9, 1e-7, 1e-5, 1e-3)
        eps = [acc.epsilon(ledger, d) for d in deltas]
        assert all(a > b for a, b in itertools.pairwise(eps)), eps
        for d, e in zip(deltas, eps, strict=True):
            assert acc.delta(ledger, e) == pytest.approx(d, rel=0.01)
        assert acc.delta(ledger, eps[0]) < acc.delta(ledger, eps[-1])

    @pytest.mark.parametrize(
        "event",
        [GaussianEvent(8.0, 2.0), LaplaceEvent(30.0), SubsampledGaussianEvent(0.01, 1.1), PureDPEvent(0.05)],
        ids=lambda e: e.kind,
    )
    def test_list_composition_equals_repeated_event(self, event: P.Event) -> None:
        acc = self.make()
        repeated = acc.epsilon(RepeatedEvent(event, 40), 1e-6)
        assert acc.epsilon([event] * 40, 1e-6) == repeated
        assert acc.epsilon(ComposedEvent((RepeatedEvent(event, 30), *[event] * 10)), 1e-6) == repeated
        assert acc.epsilon(RepeatedEvent(RepeatedEvent(event, 8), 5), 1e-6) == repeated

    def test_order_of_a_ledger_does_not_matter(self) -> None:
        acc = self.make()
        ledger = [GaussianEvent(4.0), LaplaceEvent(10.0), SubsampledGaussianEvent(0.1, 2.0), PureDPEvent(0.3),
                  GaussianEvent(9.0, 2.0)]
        assert acc.epsilon(ledger, 1e-6) == acc.epsilon(list(reversed(ledger)), 1e-6)

    def test_empty_ledger_spends_nothing_and_bad_arguments_raise(self) -> None:
        acc = self.make()
        assert acc.epsilon([], 1e-6) == 0.0
        assert acc.delta([], 1.0) == 0.0
        for bad in (0.0, 1.0, -1e-6, float("nan"), True):
            with pytest.raises(InvalidInput, match="delta"):
                acc.epsilon(GaussianEvent(1.0), bad)
        with pytest.raises(InvalidInput, match="epsilon"):
            acc.delta(GaussianEvent(1.0), -1.0)
        with pytest.raises(InvalidInput, match="DP events"):
            acc.epsilon([GaussianEvent(1.0), NOT_AN_EVENT], 1e-6)

    def test_a_thousand_releases_answer_well_under_a_second(self) -> None:
        acc = self.make()
        ledger: list[P.Event] = [GaussianEvent(8.0 + 0.01 * (i % 50), 2.0) for i in range(1000)]
        ledger += [LaplaceEvent(50.0)] * 100
        acc.epsilon([LaplaceEvent(1.0)], 1e-6)  # pays dp-accounting's one-off import
        start = time.perf_counter()
        eps = acc.epsilon(ledger, 1e-6)
        assert time.perf_counter() - start < 1.0
        assert 0 < eps < math.inf


class TestPLDContract(AccountantContract):
    def make(self) -> Accountant:
        return PLDAccountant()


class TestRDPContract(AccountantContract):
    def make(self) -> Accountant:
        return RDPAccountant()


# --------------------------------------------------------------------------- PLD accuracy


@pytest.mark.parametrize(
    ("sigma", "delta"), [(4.0, 1e-6), (1.0, 1e-5), (0.5, 1e-3), (12.0, 1e-8), (2.0, 0.1)]
)
def test_one_gaussian_release_matches_the_analytic_gaussian_within_1e_6(sigma: float, delta: float) -> None:
    # Absolute 1e-6 in epsilon (relative is tighter still for these cases, all of epsilon > 0.05).
    ours = accountant_for("pld").epsilon(GaussianEvent(sigma), delta)
    assert abs(ours - reference_analytic_epsilon(sigma, delta)) < 1e-6
    assert abs(P.analytic_gaussian_epsilon(sigma, delta) - reference_analytic_epsilon(sigma, delta)) < 1e-6


def test_update_release_is_accounted_at_sensitivity_two_clips() -> None:
    # z = 8 on an update of sensitivity 2C is a Gaussian mechanism with sigma / sensitivity = 4.
    ours = accountant_for("pld").epsilon(GaussianEvent(8.0, sensitivity_factor=2.0), 1e-6)
    assert abs(ours - reference_analytic_epsilon(4.0, 1e-6)) < 1e-6


def test_gaussian_compositions_match_dp_accounting_pld_and_the_closed_form() -> None:
    ours = accountant_for("pld").epsilon(RepeatedEvent(GaussianEvent(2.0), 20), 1e-6)
    theirs = reference_pld_epsilon(dpe.SelfComposedDpEvent(dpe.GaussianDpEvent(2.0), 20), 1e-6)
    assert ours == pytest.approx(theirs, rel=0.01)
    # 20 Gaussian releases at ratio 2 are one Gaussian release at ratio 2 / sqrt(20).
    assert abs(ours - reference_analytic_epsilon(2.0 / math.sqrt(20), 1e-6)) < 1e-6
    # Never the sum of epsilons, which would overstate the loss.
    assert ours < 20 * accountant_for("pld").epsilon(GaussianEvent(2.0), 1e-6) / 3


def test_mixed_ledger_matches_dp_accounting_pld_within_1_percent() -> None:
    ledger = [RepeatedEvent(GaussianEvent(6.0, 2.0), 7), RepeatedEvent(LaplaceEvent(10.0), 12),
              GaussianEvent(2.0), RepeatedEvent(SubsampledGaussianEvent(0.02, 1.5), 300)]
    theirs_event = dpe.ComposedDpEvent([
        dpe.SelfComposedDpEvent(dpe.GaussianDpEvent(3.0), 7),
        dpe.SelfComposedDpEvent(dpe.LaplaceDpEvent(10.0), 12),
        dpe.GaussianDpEvent(2.0),
        dpe.SelfComposedDpEvent(dpe.PoissonSampledDpEvent(0.02, dpe.GaussianDpEvent(1.5)), 300),
    ])
    for delta in (1e-6, 1e-4):
        ours = accountant_for("pld").epsilon(ledger, delta)
        assert ours == pytest.approx(reference_pld_epsilon(theirs_event, delta), rel=0.01)


@pytest.mark.parametrize(("epsilon", "count", "delta"), [(1.0, 1, 1e-6), (0.5, 10, 1e-6), (0.1, 100, 1e-5)])
def test_pure_dp_releases_compose_as_their_exact_worst_case(epsilon: float, count: int, delta: float) -> None:
    exact = reference_pure_dp_epsilon(epsilon, count, delta)
    ledger = RepeatedEvent(PureDPEvent(epsilon), count)
    assert accountant_for("pld").epsilon(ledger, delta) == pytest.approx(exact, rel=0.01)
    rdp = accountant_for("rdp").epsilon(ledger, delta)
    assert exact - 1e-9 <= rdp <= 1.1 * exact  # RDP is an upper bound, a little looser
    assert accountant_for("pld").epsilon(ledger, delta) < count * epsilon + 1e-9


def test_dpsgd_ten_thousand_steps_pld_is_tighter_than_rdp() -> None:
    pld = accountant_for("pld").epsilon(DPSGD_10K, 1e-5)
    rdp = accountant_for("rdp").epsilon(DPSGD_10K, 1e-5)
    print(f"q=0.01 sigma=1 10k steps delta=1e-5: PLD epsilon {pld:.4f}, RDP epsilon {rdp:.4f}")
    assert 5.5 < pld <= 6.25
    assert 6.5 <= rdp <= 7.5
    direct = rdp_privacy_accountant.RdpAccountant()
    direct.compose(dpe.SelfComposedDpEvent(dpe.PoissonSampledDpEvent(0.01, dpe.GaussianDpEvent(1.0)), 10_000))
    assert rdp == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)


def test_accountant_factory() -> None:
    assert isinstance(accountant_for(), PLDAccountant)
    assert accountant_for("pld") is accountant_for("pld")
    assert isinstance(accountant_for("rdp"), RDPAccountant)
    with pytest.raises(InvalidInput, match="unknown accountant 'moments'"):
        accountant_for("moments")
    with pytest.raises(InvalidInput):
        PLDAccountant(value_discretization_interval=0.0)


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize(("epsilon", "runs"), [(0.5, 1), (1.0, 1), (4.0, 10), (2.0, 100)])
def test_calibration_round_trip_for_updates(epsilon: float, runs: int) -> None:
    z = noise_multiplier_for(epsilon, 1e-6, runs=runs)
    reached = epsilon_for(z, 1e-6, runs=runs)
    assert reached <= epsilon
    assert reached >= 0.98 * epsilon
    assert epsilon_for(z * (1 - 3e-4), 1e-6, runs=runs) > epsilon  # the smallest such z, up to 1e-4


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibration_round_trip_for_dpsgd(accountant: str) -> None:
    kw: dict[str, object] = {"sampling_rate": 0.01, "steps": 1000, "accountant": accountant}
    z = noise_multiplier_for(2.0, 1e-5, **kw)  # type: ignore[arg-type]
    reached = epsilon_for(z, 1e-5, **kw)  # type: ignore[arg-type]
    assert 0.98 * 2.0 <= reached <= 2.0


def test_z_eight_is_about_epsilon_one_per_run_at_delta_1e_6() -> None:
    eps = epsilon_for(8.0, 1e-6)  # sensitivity 2C, one release (DESIGN.md, "Request lifecycle")
    print(f"z=8, sensitivity 2C, one release, delta 1e-6: epsilon {eps:.4f}")
    assert 0.5 < eps < 1.5


def test_calibration_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidInput, match="epsilon"):
        noise_multiplier_for(0.0, 1e-6)
    with pytest.raises(InvalidInput, match="steps"):
        epsilon_for(1.0, 1e-6, steps=10)
    with pytest.raises(InvalidInput, match="steps"):
        epsilon_for(1.0, 1e-6, sampling_rate=0.1)
    with pytest.raises(InvalidInput, match="runs"):
        epsilon_for(1.0, 1e-6, runs=0)


# --------------------------------------------------------------------------- events


# Wrongly typed arguments, as a careless caller or a corrupted ledger might pass them.
NOT_A_NUMBER: Any = "1.0"
NOT_AN_INT: Any = 2.0
NOT_AN_EVENT: Any = "gaussian"
NOT_A_TUPLE: Any = GaussianEvent(1.0)

ALL_EVENTS: list[P.Event] = [
    GaussianEvent(8.0, 2.0),
    GaussianEvent(1.5),
    LaplaceEvent(3.0),
    PureDPEvent(0.25),
    SubsampledGaussianEvent(0.01, 1.1),
    RepeatedEvent(GaussianEvent(8.0, 2.0), 7),
    ComposedEvent((LaplaceEvent(1.0), RepeatedEvent(SubsampledGaussianEvent(1.0, 2.0), 3))),
    ComposedEvent(()),
    DistributedDiscreteGaussianEvent(6.0, 3, 2.5, 100),
    RepeatedEvent(DistributedDiscreteGaussianEvent(4.0, 2, 1e6, 31, 1.0), 5),
    ReplaceOneSubsampledGaussianEvent(0.01, 1.1),
    RepeatedEvent(ReplaceOneSubsampledGaussianEvent(0.1, 1.5, 1 + 2**-10), 4),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.kind)
def test_json_round_trip_of_every_event_kind(event: P.Event) -> None:
    wire = json.loads(json.dumps(event.to_json()))
    assert wire["kind"] == event.kind
    back = event_from_json(wire)
    assert back == event and hash(back) == hash(event) and type(back) is type(event)


def test_numpy_scalars_are_accepted_and_stored_as_plain_json() -> None:
    e = RepeatedEvent(SubsampledGaussianEvent(np.float32(0.5), np.float64(1.5)), np.int64(3))
    assert json.loads(json.dumps(e.to_json())) == e.to_json()
    assert type(e.count) is int and type(e.event.sampling_rate) is float  # type: ignore[attr-defined]


def test_largest_pure_dp_epsilon_is_accounted_and_larger_ones_refused() -> None:
    for acc in (PLDAccountant(), RDPAccountant()):
        assert 99.0 <= acc.epsilon(PureDPEvent(100.0), 1e-6) <= 100.01
    assert 0 < to_dp_accounting(PureDPEvent(100.0)).noise_parameter < 1e-40
    with pytest.raises(InvalidInput, match="epsilon must be > 0 and <= 100"):
        PureDPEvent(800.0)


def test_docstring_examples_run() -> None:
    for module in (_accountant, _analytic, _calibrate, _events, _noise):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_events_are_immutable_and_hashable() -> None:
    e = GaussianEvent(8.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.noise_multiplier = 1.0  # type: ignore[misc]
    assert {GaussianEvent(8, 2), GaussianEvent(8.0, 2.0)} == {e}
    assert ComposedEvent([e]) == ComposedEvent((e,))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianEvent(0.0),
        lambda: GaussianEvent(-1.0),
        lambda: GaussianEvent(float("inf")),
        lambda: GaussianEvent(float("nan")),
        lambda: GaussianEvent(1.0, sensitivity_factor=0.0),
        lambda: GaussianEvent(True),
        lambda: GaussianEvent(NOT_A_NUMBER),
        lambda: LaplaceEvent(0.0),
        lambda: PureDPEvent(0.0),
        lambda: PureDPEvent(float("inf")),
        lambda: SubsampledGaussianEvent(0.0, 1.0),
        lambda: SubsampledGaussianEvent(1.5, 1.0),
        lambda: SubsampledGaussianEvent(0.1, 0.0),
        lambda: ReplaceOneSubsampledGaussianEvent(0.0, 1.0),
        lambda: ReplaceOneSubsampledGaussianEvent(0.5, 1.0, 0.0),
        lambda: RepeatedEvent(GaussianEvent(1.0), 0),
        lambda: RepeatedEvent(GaussianEvent(1.0), NOT_AN_INT),
        lambda: RepeatedEvent(GaussianEvent(1.0), True),
        lambda: RepeatedEvent(NOT_AN_EVENT, 2),
        lambda: ComposedEvent((GaussianEvent(1.0), NOT_AN_EVENT)),
        lambda: ComposedEvent(NOT_A_TUPLE),
    ],
)
def test_invalid_parameters_raise_invalid_input(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidInput):
        make()


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"kind": "gaussian"}, "missing"),
        ({"kind": "gaussian", "noise_multiplier": 1.0, "clip": 3}, "unknown"),
        ({"kind": "exponential", "epsilon": 1.0}, "unknown DP event kind"),
        ({"noise_multiplier": 1.0}, "kind"),
        ([1, 2], "kind"),
        ({"kind": "composed", "events": {"kind": "laplace"}}, "list"),
        ({"kind": "repeated", "event": {"kind": "pure_dp", "epsilon": 1.0}, "count": 0}, "count"),
        ({"kind": "laplace", "scale_over_sensitivity": -2.0}, "scale_over_sensitivity"),
    ],
)
def test_bad_json_raises_invalid_input(obj: object, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        event_from_json(obj)


def test_conversion_to_dp_accounting_events() -> None:
    assert to_dp_accounting(GaussianEvent(8.0, 2.0)) == dpe.GaussianDpEvent(4.0)
    assert to_dp_accounting(LaplaceEvent(3.0)) == dpe.LaplaceDpEvent(3.0)
    assert to_dp_accounting(SubsampledGaussianEvent(0.01, 1.1)) == dpe.PoissonSampledDpEvent(
        0.01, dpe.GaussianDpEvent(1.1)
    )
    assert to_dp_accounting(RepeatedEvent(LaplaceEvent(3.0), 4)) == dpe.SelfComposedDpEvent(
        dpe.LaplaceDpEvent(3.0), 4
    )
    composed = dpe.ComposedDpEvent([dpe.LaplaceDpEvent(3.0)])
    assert to_dp_accounting(ComposedEvent((LaplaceEvent(3.0),))) == composed
    rr = to_dp_accounting(PureDPEvent(0.7))
    assert rr.num_buckets == 2
    assert math.log((2 - rr.noise_parameter) / rr.noise_parameter) == pytest.approx(0.7, rel=1e-12)


# ------------------------------------------------------------- replace-one DP-SGD steps


def reference_replace_one_epsilon(q: float, z: float, factor: float, steps: int, delta: float) -> float:
    """dp-accounting's own PLD of the replace-one Poisson-subsampled Gaussian (independent of
    fednb's grouping and caching), at a finer grid than the accountant's default."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    one = pld.from_gaussian_mechanism(z, sensitivity=factor, sampling_prob=q,
                                      neighboring_relation=pld.NeighborRel.REPLACE_ONE,
                                      value_discretization_interval=1e-4)
    return float(one.self_compose(steps).get_epsilon_for_delta(delta))


@pytest.mark.parametrize(("q", "z", "steps"), [(0.01, 1.0, 1000), (0.14, 4.96, 80), (0.5, 2.0, 10)])
def test_replace_one_dpsgd_matches_dp_accountings_replace_one_pld(q: float, z: float, steps: int) -> None:
    event = RepeatedEvent(ReplaceOneSubsampledGaussianEvent(q, z, 1 + 2**-10), steps)
    want = reference_replace_one_epsilon(q, z, 1 + 2**-10, steps, 1e-6)
    assert PLDAccountant().epsilon(event, 1e-6) == pytest.approx(want, rel=5e-3)
    add_remove = PLDAccountant().epsilon(RepeatedEvent(SubsampledGaussianEvent(q, z), steps), 1e-6)
    assert PLDAccountant().epsilon(event, 1e-6) > add_remove  # replace-one costs more


def test_replace_one_dpsgd_without_sampling_is_a_gaussian_of_twice_the_sensitivity() -> None:
    event = RepeatedEvent(ReplaceOneSubsampledGaussianEvent(1.0, 4.0), 3)
    want = PLDAccountant().epsilon(RepeatedEvent(GaussianEvent(4.0, sensitivity_factor=2.0), 3), 1e-6)
    assert PLDAccountant().epsilon(event, 1e-6) == pytest.approx(want, rel=1e-9)
    assert RDPAccountant().epsilon(event, 1e-6) == pytest.approx(
        RDPAccountant().epsilon(RepeatedEvent(GaussianEvent(4.0, 2.0), 3), 1e-6), rel=1e-6)


def test_rdp_bound_of_replace_one_dpsgd_is_valid_and_loose() -> None:
    """The RDP accountant's bound ignores sampling: never below the exact PLD figure."""
    event = RepeatedEvent(ReplaceOneSubsampledGaussianEvent(0.05, 2.0), 200)
    exact = PLDAccountant().epsilon(event, 1e-6)
    assert RDPAccountant().epsilon(event, 1e-6) >= exact
    with pytest.raises(InvalidInput, match="replace-one PLD"):
        to_dp_accounting(event.event)


# ------------------------------------------------------- distributed discrete Gaussian (secagg)


def reference_ddg_rdp(alpha: float, l2: float, shares: int, sigma: float, dim: int) -> float:
    """Kairouz, Liu & Steinke (2021), Proposition 14, written out here: the sum of ``shares``
    N_Z(0, sigma^2) against its shift by an integer vector of L2 norm l2 (L1 <= sqrt(d) l2)."""
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, shares))
    r2 = l2 / (math.sqrt(shares) * sigma)
    r1 = math.sqrt(dim) * r2
    return min(alpha / 2 * r2**2 + tau * dim, alpha / 2 * (r2**2 + 2 * r1 * tau + tau**2 * dim),
               alpha / 2 * (r2 + math.sqrt(dim) * tau) ** 2)


@pytest.mark.parametrize(("shares", "sigma", "dim", "l2"), [(3, 1e6, 1000, 2e6), (2, 0.9, 4, 3.0),
                                                            (10, 3.0, 10_000, 20.0)])
def test_distributed_discrete_gaussian_epsilon_agrees_with_an_independent_rdp_conversion(
        shares: int, sigma: float, dim: int, l2: float) -> None:
    # the event is relative to C = l2 / 2: noise multiplier sqrt(t) s / C, sensitivity 2C
    c = l2 / 2
    event = DistributedDiscreteGaussianEvent(math.sqrt(shares) * sigma / c, shares, sigma, dim)
    orders = rdp_privacy_accountant.RdpAccountant().orders
    rdp = [reference_ddg_rdp(a, l2, shares, sigma, dim) for a in orders]
    for delta in (1e-5, 1e-7):
        want = rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0]
        for name in ("rdp", "pld"):  # PLD composes a ledger with such an event by RDP
            assert accountant_for(name).epsilon([RepeatedEvent(event, 3)], delta) == pytest.approx(
                rdp_privacy_accountant.compute_epsilon(orders, [3 * r for r in rdp], delta)[0], rel=1e-9)
            assert accountant_for(name).epsilon(event, delta) == pytest.approx(want, rel=1e-9)


def discrete_gaussian_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    p = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2))
    return p / p.sum()


@pytest.mark.parametrize(("shares", "sigma", "shift"), [(2, 0.6, 1), (3, 0.8, 2), (2, 1.5, 3)])
def test_distributed_discrete_gaussian_bound_is_above_the_exact_renyi_divergence(
        shares: int, sigma: float, shift: int) -> None:
    # small shares, where the sum is visibly not one discrete Gaussian (tau matters): the
    # exact distribution of the sum by convolution, its exact Rényi divergence from its shift
    grid = np.arange(-100, 101)
    one = discrete_gaussian_pmf(sigma, grid)
    total = one
    for _ in range(shares - 1):
        total = np.convolve(total, one)
    p, q = total[shift:], total[:-shift]  # P(x) and P(x - shift) on the same points
    keep = (p > 0) & (q > 0)  # terms lost to underflow lie far past the divergence's mass
    lp, lq = np.log(p[keep]), np.log(q[keep])
    event = DistributedDiscreteGaussianEvent(math.sqrt(shares) * sigma, shares, sigma, 1,
                                             sensitivity_factor=float(shift))
    for alpha in (1.5, 2.0, 4.0, 8.0):
        exact = float(logsumexp(alpha * lp + (1 - alpha) * lq)) / (alpha - 1)
        assert exact > 0 and event.rdp([alpha])[0] >= exact - 1e-9


def test_distributed_discrete_gaussian_of_large_shares_is_a_gaussian_up_to_rdp_conversion() -> None:
    # shares of millions of quantisation steps: tau underflows to 0 and the Rényi curve is
    # the Gaussian's; the epsilon is its RDP conversion, above the exact Gaussian one
    event = DistributedDiscreteGaussianEvent(8.0 * math.sqrt(3), 3, 4e7, 100_000)
    assert event.tau == 0.0
    eps = accountant_for("pld").epsilon(event, 1e-6)
    exact = reference_analytic_epsilon(4.0 * math.sqrt(3), 1e-6)
    assert exact < eps < 1.15 * exact
    assert eps < accountant_for("pld").epsilon(GaussianEvent(8.0, 2.0), 1e-6)  # t = 3 shares help
    with pytest.raises(InvalidInput, match="dp-accounting kind"):
        to_dp_accounting(event)


# --------------------------------------------------------------------------- package shape


def test_public_surface_is_sorted_and_complete() -> None:
    assert P.__all__ == sorted(P.__all__)
    assert all(hasattr(P, name) for name in P.__all__)


def test_privacy_is_a_leaf_package() -> None:
    allowed = {"fednb.errors", "fednb.typing", "fednb.protocol", "fednb.kernels"}
    for path in Path(P.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("fednb") and not name.startswith("fednb.privacy"):
                    assert name in allowed or name.split(".")[:2] == ["fednb", "protocol"], (path.name, name)
    # Importing the package stays cheap: dp-accounting (about 1 s to import) loads on first use.
    code = "import sys, fednb.privacy; print('dp_accounting' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
