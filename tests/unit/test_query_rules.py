"""The query kind's rules: replace-one sensitivities, the missing-value rule, the example
dimension, totality on any data and the data-independent default release."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
import xarray as xr

from fednb.errors import InvalidInput
from fednb.privacy import GRID_SLACK, GaussianEvent, PureDPEvent, SecureNoise
from fednb.protocol import Aggregation, DatasetCard, MockInfo, QuerySpec, VariableCard
from fednb.runtime._query import (
    check_query,
    default_query_release,
    missing_rule,
    query_events,
    query_shapes,
    run_query,
)

N, HOURS = 200, 6


def card() -> DatasetCard:
    return DatasetCard(
        name="v", source="xarray", dims={"hour": HOURS, "patient": N}, example_dim="patient", num_examples=N,
        variables={"age": VariableCard(dims=["patient"], dtype="float64", bounds=(0.0, 120.0)),
                   "hr": VariableCard(dims=["hour", "patient"], dtype="float64", bounds=(0.0, 250.0)),
                   "x": VariableCard(dims=["patient"], dtype="float64", bounds=(-0.5, 0.5)),
                   "ward": VariableCard(dims=["hour"], dtype="float64", bounds=(0.0, 9.0)),
                   "raw": VariableCard(dims=["patient"], dtype="float64")},
        coords={}, mock=MockInfo(method="provided-by-owner", note=""), created=datetime.now(timezone.utc))


def data(age0: float = 50.0, hr0: float = 70.0) -> xr.Dataset:
    rs = np.random.default_rng(6)
    age = rs.integers(20, 81, N).astype(np.float64)
    age[0] = age0
    hr = rs.uniform(50, 110, (HOURS, N))
    hr[:, 0] = hr0
    return xr.Dataset({"age": ("patient", age), "hr": (("hour", "patient"), hr),
                       "x": ("patient", rs.uniform(-0.5, 0.5, N)),
                       "ward": ("hour", np.arange(HOURS, dtype=float)), "raw": ("patient", age)})


def query(*aggs: Aggregation, z: float = 1.0, eps: float = 0.5) -> QuerySpec:
    return QuerySpec(aggregations=list(aggs), noise_multiplier=z, quantile_epsilon=eps)


def test_missing_rule_replaces_nan_and_clamps_everything_else() -> None:
    values, present = missing_rule(np.array([np.nan, np.inf, -np.inf, 1e300, 5.0]), 0.0, 10.0, -1.0)
    assert values.tolist() == [-1.0, 10.0, 0.0, 10.0, 5.0]
    assert present.tolist() == [False, True, True, True, True]


def test_run_query_is_total_and_its_structure_comes_from_spec_and_card() -> None:
    spec = query(Aggregation(op="count"), Aggregation(op="sum", variable="hr"),
                 Aggregation(op="mean", variable="age"), Aggregation(op="histogram", variable="age", bins=5),
                 Aggregation(op="quantile", variable="age", quantiles=[0.5, 0.99]))
    wild = data().copy(deep=True)
    wild["age"][:5] = [np.nan, np.inf, -np.inf, 1e308, np.nan]
    wild["hr"][:, :3] = np.nan
    wild["hr"][0, 3] = np.inf
    shapes = query_shapes(spec, card())
    assert shapes == {"0:count:": (), "1:sum:hr": (HOURS,), "2:mean:age": (), "3:histogram:age": (5,),
                      "4:quantile:age": (2,)}
    noise = SecureNoise()
    for out in (run_query(spec, wild, card(), noise), default_query_release(spec, card(), noise)):
        assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (s, np.float64)
                                                                   for k, s in shapes.items()}
        assert all(np.isfinite(v).all() for v in out.values())
        assert float(out["0:count:"]) == N  # public under replace-one


def test_a_nan_patient_changes_nothing_beyond_replace_one() -> None:
    """One patient's age missing (NaN) against 50: sums and means stay finite and near the
    truth, and the 0.99-quantile's mass above the oldest real age (80) stays ~0.9 on both
    (it fell to 0 when NaN sorted last)."""
    spec = query(Aggregation(op="mean", variable="age"), Aggregation(op="sum", variable="age"),
                 Aggregation(op="quantile", variable="age", quantiles=[0.99] * 20), z=2.0)
    noise = SecureNoise()
    above = []
    for d in (data(), data(age0=np.nan)):
        outs = [run_query(spec, d, card(), noise) for _ in range(10)]
        mean = float(np.nanmean(d.age.values))  # over the present ages; noise sd ~ 2 * 120 / 200
        assert all(abs(float(o["0:mean:age"]) - mean) < 8 for o in outs)
        above.append(float(np.mean([o["2:quantile:age"] > 80 for o in outs])))
    assert min(above) > 0.75 and abs(above[0] - above[1]) < 0.15, above


def test_sum_noise_has_the_replace_one_scale() -> None:
    """x in [-0.5, 0.5]: a replaced patient moves the sum by 1 (add/remove would say 0.5)."""
    spec = query(Aggregation(op="sum", variable="x"), z=3.0)
    d = data()
    truth = float(d.x.sum())
    noise = SecureNoise()
    released = np.array([float(run_query(spec, d, card(), noise)["0:sum:x"]) for _ in range(400)])
    assert np.std(released - truth) == pytest.approx(3.0, rel=0.15)
    assert np.all(released / 2.0**-10 == np.round(released / 2.0**-10))  # on grid_gaussian's grid


def test_a_patient_axis_anywhere_releases_one_value_per_other_index() -> None:
    spec = query(Aggregation(op="sum", variable="hr"), Aggregation(op="mean", variable="hr"), z=0.01)
    out = run_query(spec, data(), card(), SecureNoise())
    truth = data().hr.values
    assert out["0:sum:hr"].shape == (HOURS,)
    assert np.abs(out["0:sum:hr"] - truth.sum(axis=1)).max() < 6 * 0.01 * 250 * np.sqrt(HOURS)
    assert np.abs(out["1:mean:hr"] - truth.mean(axis=1)).max() < 1.0


@pytest.mark.parametrize(("agg", "match"), [
    (Aggregation(op="sum", variable="ward"), r"dims \['hour'\], without the example dimension 'patient'"),
    (Aggregation(op="histogram", variable="hr", bins=3), "one value per patient"),
    (Aggregation(op="mean", variable="raw"), "no declared bounds"),
    (Aggregation(op="sum", variable="nope"), "no variable 'nope'"),
])
def test_check_query_refuses_at_submission(agg: Aggregation, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        check_query(query(agg), card())


def test_events_charge_the_grid_and_not_the_public_count() -> None:
    spec = query(Aggregation(op="count"), Aggregation(op="mean", variable="age"),
                 Aggregation(op="histogram", variable="age", bins=3),
                 Aggregation(op="quantile", variable="age", quantiles=[0.1, 0.9]), z=4.0, eps=0.3)
    g = GaussianEvent(4.0, sensitivity_factor=GRID_SLACK)
    assert query_events(spec) == [g, g, g, PureDPEvent(0.3), PureDPEvent(0.3)]
