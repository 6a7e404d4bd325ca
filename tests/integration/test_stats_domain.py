"""The ``stats`` request kind on a live domain over loopback HTTP (issue #19, the domain's
side): exact releases under the owner's disclosure rules, DP releases charged in the
ledger, and templates that approve a request without the owner.

One domain serves lifelines' Rossi recidivism data (432 released prisoners) twice:
``rossi`` under disclosure control, ``rossi-dp`` under DP.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from lifelines.datasets import load_rossi

import fednb
from fednb.client import DomainClient, RemoteRequest
from fednb.domain import Domain, Server
from fednb.errors import Conflict, InvalidInput, PermissionDenied
from fednb.privacy import GRID_SLACK, ComposedEvent, GaussianEvent, accountant_for
from fednb.protocol import RequestCreate, code_hash
from fednb.protocol._stats import StatsSpec
from tests.adversarial.conftest import require_sandbox

BOUNDS = {"week": (0.0, 52.0), "arrest": (0.0, 1.0), "fin": (0.0, 1.0), "age": (15.0, 50.0),
          "race": (0.0, 1.0), "wexp": (0.0, 1.0), "mar": (0.0, 1.0), "paro": (0.0, 1.0), "prio": (0.0, 20.0)}
AGES = list(range(17, 45))


def rossi_frame() -> pd.DataFrame:
    return load_rossi().astype(np.float64)


def rossi() -> xr.Dataset:
    d = rossi_frame()
    return xr.Dataset({c: ("patient", d[c].to_numpy()) for c in d.columns})


@dataclass
class StatsDomain:
    dom: Domain
    server: Server
    owner_token: str
    second_owner_token: str
    alice_token: str

    def alice(self) -> DomainClient:
        return fednb.connect(self.server.url, token=self.alice_token)

    def owner(self) -> DomainClient:
        return fednb.connect(self.server.url, token=self.owner_token)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StatsDomain]:
    require_sandbox()
    dom = Domain.create(tmp_path_factory.mktemp("stats") / "general", name="General")
    olivia, oscar = dom.add_user("olivia", role="owner"), dom.add_user("oscar", role="owner")
    alice = dom.add_user("alice", epsilon=50.0)  # not in allow_no_dp: exact stats need no such leave
    dom.policy.update(dp_slot_s=1.0, dataset_epsilon_cap=100.0,
                      stats_protection={"rossi": "disclosure", "rossi-dp": "dp"},
                      disclosure={"rossi": {"denied_variables": ["race"]}})
    dom.add_dataset("rossi", rossi(), bounds=BOUNDS)
    dom.add_dataset("rossi-dp", rossi(), bounds=BOUNDS)
    s = StatsDomain(dom, dom.serve(port=0), olivia, oscar, alice)
    yield s
    s.server.stop()


def file(client: DomainClient, dataset: str, runs: int = 1, **spec: Any) -> RemoteRequest:
    """File one stats step as its scientist (what fednb.stats does for each step)."""
    source = StatsSpec.model_validate(spec).model_dump_json(indent=1)
    return client.requests.submit(RequestCreate(
        id=uuid.uuid4().hex, function_name=f"stats_{spec['op']}", kind="stats", source=source,
        code_hash=code_hash(source), datasets=[dataset], runs=runs))


def approve_and_run(site: StatsDomain, req: RemoteRequest) -> RemoteRequest:
    site.owner().requests.get(req.id).approve(release="auto")
    return req


def audit(site: StatsDomain, action: str) -> list[dict[str, Any]]:
    entries = site.owner().audit(limit=10_000)["entries"]
    return [json.loads(e["details"]) | {"actor": e["actor"]} for e in entries if e["action"] == action]


def test_exact_table_and_glm_step_equal_the_data(site: StatsDomain) -> None:
    """Disclosure control releases exact values: a 2-D table with its missing cells, and a
    logistic GLM's X'WX, X'Wz and deviance at beta = 0; each release says the policy's
    minimum number of sites."""
    df = rossi_frame()
    alice = site.alice()
    table = approve_and_run(site, file(alice, "rossi", op="table", variables=["fin", "mar"],
                                       levels={"fin": [0, 1], "mar": [0, 1]})).run().result(timeout=60)
    want = pd.crosstab(df.fin, df.mar).to_numpy()
    np.testing.assert_array_equal(table.weights["table"][0, :2, :2], want)
    assert table.weights["table"][0, 2].sum() == table.weights["table"][0, :, 2].sum() == 0
    assert table.metrics == {"min_sites": 3.0}

    glm = approve_and_run(site, _glm(alice, [0.0] * 4)).run().result(timeout=60)
    x = np.column_stack([np.ones(len(df)), df.fin, df.age, df.prio])
    np.testing.assert_allclose(glm.weights["xtwx"], 0.25 * x.T @ x, rtol=1e-12)
    np.testing.assert_allclose(glm.weights["xtwz"], x.T @ (df.arrest - 0.5), rtol=1e-12)
    np.testing.assert_allclose(glm.weights["deviance"], 2 * len(df) * np.log(2), rtol=1e-12)


def test_a_cell_below_the_minimum_is_never_released(site: StatsDomain) -> None:
    """prio = 15 holds one prisoner: the table is refused whole, naming the rule, and the
    refusal is in the audit log; no run exists, so nothing can be read."""
    alice = site.alice()
    req = approve_and_run(site, file(alice, "rossi", op="table", variables=["prio"],
                                     levels={"prio": list(range(19))}))
    with pytest.raises(InvalidInput, match=r"min_cell_count\).*'table' counts between 1 and 4 rows.*merge"):
        req.run(run_id="small-cell-run")
    assert not alice.runs.list(request_id=req.id)
    assert req.refresh().info.runs_used == 1  # a refusal spends the approved run
    refusal = [e for e in audit(site, "stats.refused") if e["request"] == req.id]
    assert len(refusal) == 1 and "min_cell_count" in refusal[0]["refusal"]


def test_a_differencing_pair_of_subsets_is_refused(site: StatsDomain) -> None:
    """prio <= 11 (423 rows) is released; prio <= 12 (425 rows) differs from it by two
    prisoners and is refused; prio <= 14 (429 rows) differs from the whole set by three."""
    alice = site.alice()

    def moments(limit: int) -> RemoteRequest:
        return approve_and_run(site, file(alice, "rossi", op="moments", variables=["age", "prio"],
                                          where=[{"variable": "prio", "op": "<=", "value": limit}]))

    first = moments(11).run().result(timeout=60)
    assert first.weights["n"][0, 0] == 423
    for limit in (12, 14):
        with pytest.raises(InvalidInput, match=r"rule min_subset\).*differ by fewer than 5.*differencing"):
            moments(limit).run()
    # the same subset again is no new information
    assert moments(11).run().result(timeout=60).weights["n"][0, 0] == 423


def test_a_glm_with_too_many_parameters_is_refused(site: StatsDomain) -> None:
    """C(age) codes 28 columns: fine against the whole dataset's 432 rows at submission, but
    refused on a subset of under 85 rows (DataSHIELD's nfilter.glm = 0.33)."""
    alice = site.alice()
    early = [{"variable": "week", "op": "<=", "value": 8}]  # 12 prisoners arrested in 8 weeks
    req = approve_and_run(site, file(alice, "rossi", op="glm_step", variables=["arrest", "age", "week"],
                                     formula="arrest ~ C(age)", family="binomial", beta=[0.0] * 28,
                                     levels={"age": AGES}, where=early))
    with pytest.raises(InvalidInput, match=r"rule max_params_ratio\).*28 parameters, more than 0.33 per row"):
        req.run()
    with pytest.raises(InvalidInput, match=r"max_params_ratio.*252 parameters.*dataset's 432 rows"):
        file(alice, "rossi", op="glm_step", variables=["arrest", "age", "prio"], family="binomial",
             formula="arrest ~ C(age) * C(prio)", levels={"age": AGES, "prio": list(range(9))},
             beta=[0.0] * (28 * 9))


def test_submission_checks_protection_and_variables(site: StatsDomain) -> None:
    alice = site.alice()
    with pytest.raises(InvalidInput, match=r"'rossi' takes stats requests with protection 'disclosure'"):
        file(alice, "rossi", op="moments", variables=["age"], protection="dp", noise_multiplier=2.0)
    with pytest.raises(InvalidInput, match=r"'rossi-dp' takes stats requests with protection 'dp'"):
        file(alice, "rossi-dp", op="moments", variables=["age"])
    with pytest.raises(InvalidInput, match=r"denied_variables\).*\['race'\]"):
        file(alice, "rossi", op="table", variables=["race"], levels={"race": [0, 1]})


def test_dp_stats_are_noised_and_charged_in_the_ledger(site: StatsDomain) -> None:
    """A DP step is charged before it runs (one Gaussian event per noised array), released
    at its slot with the default's structure, within its noise."""
    alice = site.alice()
    z = 4.0
    req = file(alice, "rossi-dp", op="moments", variables=["age", "prio"], protection="dp",
               noise_multiplier=z)
    event = ComposedEvent(tuple(GaussianEvent(z, sensitivity_factor=GRID_SLACK) for _ in range(4)))
    delta = min(1e-6, 1 / 4320)
    want = accountant_for("pld").epsilon([event], delta)
    assert req.info.epsilon_per_run == pytest.approx(want, rel=1e-9)
    approve_and_run(site, req)
    run = req.run()
    assert run.info.release_at is not None
    out = run.result(timeout=60)
    spent = next(b for b in alice.budget if b.dataset == "rossi-dp").epsilon_spent
    assert spent == pytest.approx(want, rel=1e-9)
    charged = [e for e in audit(site, "run.queued") if e["run"] == run.id]
    assert charged[0]["charge"] is not None and charged[0]["stats"]["protection"] == "dp"
    df = rossi_frame()
    assert {k: v.shape for k, v in out.weights.items()} == {"n": (1, 2), "missing": (1, 2), "sum": (1, 2),
                                                            "sumsq": (1, 2)}
    sigma_sum = z * float(np.sqrt(2 * 50.0**2 + 2 * 20.0**2))  # sqrt(sum of max(width^2, 2 max|b|^2))
    assert np.abs(out.weights["sum"][0] - df[["age", "prio"]].sum().to_numpy()).max() < 6 * sigma_sum


def _glm(alice: DomainClient, beta: list[float], formula: str = "arrest ~ fin + age + prio") -> RemoteRequest:
    terms = [t.strip() for t in formula.split("~")[1].split("+")]
    return file(alice, "rossi", op="glm_step", variables=["arrest", *terms], formula=formula,
                family="binomial", beta=beta)


def test_a_template_approves_within_its_limits_and_the_audit_names_it(site: StatsDomain) -> None:
    """`stats.glm` on rossi for alice, at most 4 parameters and 2 iterations of one model:
    two IRLS steps are approved with no owner action, the audit log naming the template;
    a third step of the same model and a 5-parameter model wait for review."""
    site.dom.policy.templates.add({"name": "glm-rossi", "functions": ["glm"], "datasets": ["rossi"],
                                   "scientists": ["alice"], "max_params": 4, "max_iterations": 2,
                                   "protection": "disclosure"}, reviewer="olivia")
    alice = site.alice()
    steps = [_glm(alice, [0.0, 0.1 * i, 0.0, 0.0]) for i in range(3)]
    assert [s.info.status for s in steps] == ["approved", "approved", "pending"]
    assert steps[0].info.reviewed_by == "template:glm-rossi"
    assert steps[0].run().result(timeout=60).weights["xtwx"].shape == (4, 4)
    approved = {e["request"]: e for e in audit(site, "request.approved")}
    assert approved[steps[0].id]["template"] == "glm-rossi"
    assert approved[steps[0].id]["actor"] == "template:glm-rossi"
    assert steps[2].id not in approved
    wide = _glm(alice, [0.0] * 5, "arrest ~ fin + age + prio + wexp")
    assert wide.info.status == "pending"
    assert not site.owner().requests.get(wide.id).info.reviewed_by


def test_a_two_reviewer_template_is_active_only_once_a_second_owner_approves(site: StatsDomain) -> None:
    templates = site.dom.policy.templates
    info = templates.add({"name": "table-2p", "functions": ["crosstab"], "datasets": ["rossi"],
                          "reviewers": 2}, reviewer="olivia")
    assert not info.active
    alice = site.alice()
    spec = {"op": "table", "variables": ["wexp", "paro"], "levels": {"wexp": [0, 1], "paro": [0, 1]}}
    assert file(alice, "rossi", **spec).info.status == "pending"
    with pytest.raises(Conflict, match="two-person rule"):
        templates.approve("table-2p", reviewer="olivia")
    with pytest.raises(PermissionDenied, match="not an owner account"):
        templates.approve("table-2p", reviewer="alice")
    assert templates.approve("table-2p", reviewer="oscar").active
    assert file(alice, "rossi", **spec).info.status == "approved"
    templates.remove("table-2p", reviewer="oscar")
    assert file(alice, "rossi", **spec).info.status == "pending"
    assert [e["template"] for e in audit(site, "template.removed")] == ["table-2p"]
