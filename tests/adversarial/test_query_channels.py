"""Query channels of issue #17: NaN patients (item 6), the unit of privacy (item 7) and the
neighbouring relation of queries (item 9), against live bubblewrap domains over HTTP.

The scientist ``eve`` (DP only) files ``fednb.Query`` requests on two domains whose
``vitals`` datasets differ in patient 0 only: in one its age is 50 and its heart rates
are ordinary, in the other its age is missing (NaN) and its heart rates are extreme.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import xarray as xr

import fednb
from fednb.domain import Domain
from fednb.errors import InvalidInput
from tests.adversarial.conftest import SCIENTIST_EPSILON, DPDomain, require_sandbox, scientist_view
from tests.conftest import BC_BOUNDS, breast_cancer_dataset, diabetes_dataset

N, HOURS = 200, 24
AGE_BOUNDS, HR_BOUNDS = (0.0, 120.0), (0.0, 250.0)
DELTA = 1e-6


def vitals(nan_patient: bool) -> xr.Dataset:
    """Integer ages 20..80 (a public-looking cohort) and hourly heart rates, with patient 0
    either ordinary or missing its age and at extreme heart rates."""
    rs = np.random.default_rng(17)
    age = rs.integers(20, 81, N).astype(np.float64)
    hr = rs.uniform(50, 110, (HOURS, N))
    age[0] = np.nan if nan_patient else 50.0
    hr[:, 0] = 1e9 if nan_patient else 70.0
    return xr.Dataset({"age": ("patient", age), "hr": (("hour", "patient"), hr),
                       "ward": ("hour", np.arange(HOURS, dtype=np.float64))})


def live_domain(home: Any, extra: dict[str, tuple[xr.Dataset, dict[str, Any]]],
                breast_cancer: xr.Dataset | None = None, **policy: Any) -> DPDomain:
    """conftest's make_dp_domain (breast cancer, diabetes, owner olivia, DP scientist eve)
    plus ``extra`` datasets, served; the sandbox is checked once the server chose it."""
    require_sandbox()
    dom = Domain.create(home, name="Adversarial General")
    owner, eve = dom.add_user("olivia", role="owner"), dom.add_user("eve", epsilon=SCIENTIST_EPSILON)
    dom.policy.update(**{"dataset_epsilon_cap": SCIENTIST_EPSILON, **policy})
    dom.add_dataset("breast-cancer", breast_cancer if breast_cancer is not None else breast_cancer_dataset(),
                    bounds=BC_BOUNDS)
    dom.add_dataset("diabetes", diabetes_dataset(), bounds={"x": (-0.5, 0.5), "progression": (0.0, 400.0)})
    for name, (data, options) in extra.items():
        dom.add_dataset(name, data, **options)
    d = DPDomain(dom, dom.serve(port=0), owner, eve)
    assert dom.sandbox_mode == "bubblewrap"
    return d


def _domain(home: Any, nan_patient: bool) -> DPDomain:
    return live_domain(home, {"vitals": (vitals(nan_patient), {
        "example_dim": "patient", "bounds": {"age": AGE_BOUNDS, "hr": HR_BOUNDS, "ward": (0.0, 24.0)}})},
        delta=DELTA)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DPDomain, DPDomain]]:
    a = _domain(tmp_path_factory.mktemp("q") / "a", nan_patient=False)
    b = _domain(tmp_path_factory.mktemp("q") / "b", nan_patient=True)
    yield a, b
    a.server.stop()
    b.server.stop()


def run_query(domain: DPDomain, query: fednb.Query, dataset: str = "vitals") -> tuple[dict[str, Any],
                                                                                       dict[str, np.ndarray],
                                                                                       float]:
    """File, approve and run ``query`` as eve; her view of the run, the values, her spend."""
    eve = domain.eve()
    req = query.request(eve, dataset)
    domain.owner().requests.get(req.id).approve(release="auto")
    run = req.run()
    info = run.wait(timeout=120)
    values = run.result(timeout=120).weights
    spent = next(b.epsilon_spent for b in eve.budget if b.dataset == dataset)
    view = {k: v for k, v in scientist_view(info).items() if k not in ("created", "finished", "release_at")}
    return view, values, spent


def structure(values: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (v.shape, str(v.dtype)) for k, v in values.items()}


def test_nan_patient_neither_poisons_sums_nor_moves_the_top_quantile(pair: tuple[DPDomain, DPDomain]) -> None:
    """Issue item 6: one NaN patient turned a sum or mean into NaN and took the 0.99-quantile's
    mass above the largest real value from ~0.9 to 0. Missing values now follow one rule
    (left out of sums and means, at the lower bound for quantiles)."""
    q = fednb.Query(fednb.Query.sum("age"), fednb.Query.mean("age"), fednb.Query.histogram("age", bins=6),
                    fednb.Query.quantile("age", [0.99] * 20), noise_multiplier=2.0, quantile_epsilon=0.5)
    seen = [run_query(d, q) for d in pair]
    (view_a, va, spent_a), (view_b, vb, spent_b) = seen
    assert view_a == view_b and spent_a == spent_b
    assert structure(va) == structure(vb)
    for values, nan_patient in ((va, False), (vb, True)):
        assert all(np.isfinite(v).all() for v in values.values())
        mean = float(np.nanmean(vitals(nan_patient).age.values))  # noise sd ~ 2 * 120 / 200
        assert abs(float(values["1:mean:age"]) - mean) < 8  # a mean of present ages, not NaN
    above = [float(np.mean(v["3:quantile:age"] > 80.0)) for v in (va, vb)]
    # the gap above the oldest real age (80) holds ~0.9 of the mass on both neighbours
    assert min(above) >= 0.5, above


def test_unit_of_privacy_is_the_patient_whatever_the_axis_order(pair: tuple[DPDomain, DPDomain]) -> None:
    """Issue item 7: a (hour, patient) variable released one sum per patient (axis 0 was
    taken as the patient). It now releases one sum per hour, noised for a patient who moves
    all 24 of its hours; a variable without the patient dimension is refused."""
    z = 1.0
    a, b = pair
    view_a, va, _ = run_query(a, fednb.Query(fednb.Query.sum("hr"), noise_multiplier=z))
    view_b, vb, _ = run_query(b, fednb.Query(fednb.Query.sum("hr"), noise_multiplier=z))
    assert view_a == view_b and structure(va) == structure(vb) == {"0:sum:hr": ((HOURS,), "float64")}
    truth = vitals(False).hr.values.sum(axis=1)
    sigma = z * (HR_BOUNDS[1] - HR_BOUNDS[0]) * np.sqrt(HOURS)  # replace-one, all hours of one patient
    assert np.abs(va["0:sum:hr"] - truth).max() < 6 * sigma
    with pytest.raises(InvalidInput, match=r"dims \['hour'\].*example dimension 'patient'"):
        fednb.Query(fednb.Query.sum("ward"), noise_multiplier=z).request(a.eve(), "vitals")


def test_neighbouring_relation_of_queries_is_replace_one(pair: tuple[DPDomain, DPDomain]) -> None:
    """Issue item 9 (queries): n is public, so a bounded sum must be noised for a patient
    *replaced* (each entry moves by hi - lo = 1 for diabetes' x in [-0.5, 0.5]), not added
    or removed (max |bound| = 0.5, half the noise at the same charge). The released noise
    has the replace-one scale, the charge equals dp-accounting's own figure for it, and the
    count of all patients is the public n, released exactly and free."""
    from dp_accounting.pld import privacy_loss_distribution as pld  # type: ignore[import-untyped]

    from fednb.privacy import GRID_SLACK
    from tests.conftest import diabetes_dataset

    a, _ = pair
    z, runs, m = 8.0, 8, 10
    eve = a.eve()
    assert next((b.epsilon_spent for b in eve.budget if b.dataset == "diabetes"), 0.0) == 0.0
    q = fednb.Query(fednb.Query.count(), fednb.Query.sum("x"), noise_multiplier=z)
    req = q.request(eve, "diabetes", runs=runs)
    a.owner().requests.get(req.id).approve(release="auto")
    outs = [req.run().result(timeout=120).weights for _ in range(runs)]
    assert {float(o["0:count:"]) for o in outs} == {442.0}
    truth = np.clip(diabetes_dataset().x.values, -0.5, 0.5).sum(axis=0)
    errors = np.concatenate([o["1:sum:x"] - truth for o in outs])
    sigma = z * 1.0 * np.sqrt(m)  # replace-one: (hi - lo) sqrt(m)
    assert float(np.sqrt(np.mean(errors**2))) > 0.7 * sigma  # add/remove noise would be 0.5 sigma
    spent = next(b.epsilon_spent for b in eve.budget if b.dataset == "diabetes")
    want = pld.from_gaussian_mechanism(z, sensitivity=GRID_SLACK, value_discretization_interval=1e-4
                                       ).self_compose(runs).get_epsilon_for_delta(DELTA)
    assert spent == pytest.approx(want, rel=2e-3)
