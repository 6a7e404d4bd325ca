"""SecAgg+ rounds that weight members by examples times a staleness factor (async FedBuff)."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest

from fednb.protocol import MIN_STALENESS_FACTOR, ClientDP
from fednb.runtime import distributed_event
from fednb.secagg import SecAggRefused, propose, scale_for, secure_sum
from tests.unit.test_secagg import Drop, world


def factors_for(names: list[str]) -> dict[str, float]:
    return {n: 1.0 / math.sqrt(1 + i) for i, n in enumerate(names)}  # FedBuff's s(tau) for tau = i


def test_the_sum_is_weighted_by_examples_times_the_signed_staleness_factors() -> None:
    w = world(5)
    f = factors_for(w.names)
    cfg = propose("stale", w.examples, 257, bound=4.0, staleness=f)
    assert cfg.staleness == f
    peers: dict = w.peers()
    peers["h03"] = Drop(peers["h03"], "masked")  # a dropout: the survivors' weights alone
    out = secure_sum(cfg, peers)
    alive = [n for n in w.names if n != "h03"]
    assert np.array_equal(out.total, w.expected_total(cfg, alive))
    weight = {n: w.examples[n] * f[n] for n in alive}
    plain = sum(weight[n] * np.clip(w.updates[n], -4, 4) for n in alive) / sum(weight.values())
    assert np.abs(out.mean - plain).max() < 5 * 4.0 / 2**30  # within the quantisation steps
    assert out.total_weight == pytest.approx(sum(weight.values()), rel=1e-15)
    assert out.num_examples == sum(w.examples[n] for n in alive)


def test_without_staleness_the_weights_are_the_example_shares() -> None:
    w = world(4)
    cfg = propose("fresh", w.examples, 257, bound=4.0)
    total = sum(w.examples.values())
    assert cfg.staleness is None
    assert all(cfg.weight_share(n) == w.examples[n] / total for n in w.names)


def test_members_shown_different_staleness_factors_detect_it() -> None:
    w = world(4)
    cfg = propose("stale-views", w.examples, 257, bound=4.0, staleness=factors_for(w.names))
    assert cfg.staleness is not None
    # a lying orchestrator tells h01 that the others count little (its update would dominate)
    other = cfg.model_copy(update={"staleness": {**cfg.staleness, "h00": 0.01, "h02": 0.01, "h03": 0.01}})
    adverts = [w.members[n].advertise(cfg if n != "h01" else other, w.examples[n]) for n in w.names]
    with pytest.raises(SecAggRefused, match="another view of the round"):
        w.members["h00"].share(cfg.round_id, adverts)


def test_factors_near_zero_or_above_one_are_refused() -> None:
    w = world(3)
    tiny = {n: 1.0 for n in w.names} | {"h01": MIN_STALENESS_FACTOR / 2}
    with pytest.raises(pydantic.ValidationError, match="staleness factors must lie"):
        propose("tiny", w.examples, 257, bound=4.0, staleness=tiny)
    with pytest.raises(pydantic.ValidationError, match="staleness factors must lie"):
        propose("big", w.examples, 257, bound=4.0, staleness={n: 2.0 for n in w.names})
    with pytest.raises(pydantic.ValidationError, match="every member"):
        propose("partial", w.examples, 257, bound=4.0, staleness={"h00": 1.0})
    cfg = propose("floor", w.examples, 257, bound=4.0, staleness={n: 1.0 for n in w.names})
    sneaky = cfg.model_copy(update={"staleness": tiny})  # past the model's own checks
    with pytest.raises(SecAggRefused, match="weighted near zero"):
        w.members["h00"].advertise(sneaky, w.examples["h00"])


def test_distributed_noise_is_sized_and_charged_with_the_staleness_weights() -> None:
    w = world(5)
    f = factors_for(w.names)
    z_c = 0.5
    cfg = propose("stale-noise", w.examples, 257, bound=4.0, noise_std=z_c, staleness=f)
    assert cfg.noise_sigma is not None
    weights = np.array([w.examples[n] * f[n] for n in w.names])
    shares = weights / weights.sum()
    target = z_c * scale_for(4.0, 5) * math.sqrt(float(np.sum(shares**2)))
    assert math.sqrt(cfg.threshold) * cfg.noise_sigma == pytest.approx(target, rel=1e-12)
    # a stale member's update enters with a smaller weight: its sensitivity, and so its
    # charge, follow the weight it applies
    dp = ClientDP(clip=1.0, noise_multiplier=2.0)
    for i, n in enumerate(w.names):
        ev = distributed_event(cfg, n, dp.clip)
        assert ev is not None
        c = dp.clip * float(shares[i]) * scale_for(4.0, 5) + math.sqrt(257)
        assert ev.noise_multiplier == pytest.approx(cfg.noise_sigma * math.sqrt(cfg.threshold) / c)
