"""``stats`` channels under DP (issue #19): the release path's guarantees hold for the
domain's federated statistics as for queries.

Two live bubblewrap domains hold lifelines' Rossi data differing in one prisoner (the
only one with 15 prior convictions, in the other with 2, another age and the arrest
flipped). The scientist ``eve`` (DP only) files the same ``stats`` steps on both. Under
disclosure control the first domain would refuse a table of ``prio`` (a cell of one
prisoner) and the second would release it: under DP nothing is refused on the data,
and everything eve sees (status, reason, times against the schedule, names, shapes,
dtypes, the charge) is the same on both; a step the domain fails to compute releases the
data-independent default, noised and charged alike.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from lifelines.datasets import load_rossi

from fednb.client import DomainClient, RemoteRequest
from fednb.domain import Domain
from fednb.errors import InvalidInput
from fednb.protocol import RequestCreate, code_hash
from fednb.protocol._stats import StatsSpec
from tests.adversarial.conftest import SCIENTIST_EPSILON, DPDomain, require_sandbox, scientist_view

BOUNDS = {"week": (0.0, 52.0), "arrest": (0.0, 1.0), "fin": (0.0, 1.0), "age": (15.0, 50.0),
          "prio": (0.0, 20.0)}
SLOT_S = 1.0
PRIO = list(range(19))


def rossi(neighbour: bool) -> xr.Dataset:
    d = load_rossi()[["week", "arrest", "fin", "age", "prio"]].astype(np.float64)
    if neighbour:
        k = int(np.flatnonzero(d.prio.to_numpy() == 15)[0])
        d.loc[k, ["prio", "age", "arrest"]] = [2.0, 44.0, 1.0 - d.arrest[k]]
    return xr.Dataset({c: ("patient", d[c].to_numpy()) for c in d.columns})


def _domain(home: Path, neighbour: bool) -> DPDomain:
    require_sandbox()
    dom = Domain.create(home, name="Adversarial General")
    owner, eve = dom.add_user("olivia", role="owner"), dom.add_user("eve", epsilon=SCIENTIST_EPSILON)
    dom.policy.update(dataset_epsilon_cap=SCIENTIST_EPSILON, dp_slot_s=SLOT_S,
                      stats_protection={"*": "dp", "rossi-both": "both"})
    for name in ("rossi", "rossi-both", "frail"):
        dom.add_dataset(name, rossi(neighbour), bounds=BOUNDS)
    d = DPDomain(dom, dom.serve(port=0), owner, eve)
    assert dom.sandbox_mode == "bubblewrap"
    return d


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DPDomain, DPDomain]]:
    a = _domain(tmp_path_factory.mktemp("st") / "a", neighbour=False)
    b = _domain(tmp_path_factory.mktemp("st") / "b", neighbour=True)
    yield a, b
    a.server.stop()
    b.server.stop()


def file(client: DomainClient, dataset: str, **spec: Any) -> RemoteRequest:
    source = StatsSpec.model_validate(spec).model_dump_json(indent=1)
    return client.requests.submit(RequestCreate(
        id=uuid.uuid4().hex, function_name=f"stats_{spec['op']}", kind="stats", source=source,
        code_hash=code_hash(source), datasets=[dataset], runs=1))


View = tuple[dict[str, Any], dict[str, np.ndarray], float]


def observe(domain: DPDomain, dataset: str, **spec: Any) -> View:
    """File, approve and run one step as eve: her view of the run (times checked against
    the schedule, then dropped), the released arrays and her spend on the dataset."""
    eve = domain.eve()
    req = file(eve, dataset, **spec)
    domain.owner().requests.get(req.id).approve(release="auto")
    run = req.run()
    info = run.wait(timeout=120)
    values = run.result(timeout=120).weights
    assert info.release_at is not None and info.finished == info.release_at
    assert (info.release_at - info.created).total_seconds() == pytest.approx(SLOT_S, abs=1e-6)
    view = {k: v for k, v in scientist_view(info).items() if k not in ("created", "finished", "release_at")}
    spent = next(b.epsilon_spent for b in eve.budget if b.dataset == dataset)
    return view, values, spent


def structure(values: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (v.shape, str(v.dtype)) for k, v in values.items()}


TABLE = {"op": "table", "variables": ["prio"], "levels": {"prio": PRIO}}


def test_refusal_channel_no_cell_rule_on_exact_counts_under_dp(pair: tuple[DPDomain, DPDomain]) -> None:
    """A cell of one prisoner (domain a) or none (domain b): disclosure control would refuse
    one and release the other. Under DP both release, alike in all eve sees."""
    (va, xa, sa), (vb, xb, sb) = (observe(d, "rossi", **TABLE, protection="dp", noise_multiplier=2.0)
                                  for d in pair)
    assert va == vb and sa == sb > 0
    assert va["status"] == "succeeded" and va["reason"] == "ok"
    assert structure(xa) == structure(xb) == {"table": ((1, 20), "float64")}


def test_both_mode_suppresses_on_the_noised_counts_only(pair: tuple[DPDomain, DPDomain]) -> None:
    """"both": the cell rule is post-processing of the noised table (NaN where a noised
    count is below 5), so the run's view and structure do not depend on the exact counts."""
    (va, xa, sa), (vb, xb, sb) = (observe(d, "rossi-both", **TABLE, protection="both", noise_multiplier=0.5)
                                  for d in pair)
    assert va == vb and sa == sb > 0 and structure(xa) == structure(xb)
    for x in (xa, xb):
        t = x["table"][0]
        assert np.isnan(t[15]) or not 0.5 <= t[15] < 5  # one prisoner (a) or none (b): no small count
        assert not np.isnan(t[1]) and abs(t[1] - 113) < 10  # 113 prisoners with one conviction


def test_failure_channel_a_step_the_domain_cannot_compute_releases_the_default(
        pair: tuple[DPDomain, DPDomain]) -> None:
    """Domain b cannot read ``frail`` (its store is gone): eve's view, the structure and the
    charge are those of domain a's working step; b's owner sees the failure, and what b
    released is the default's (every value missing: sums near 0) plus noise."""
    a, b = pair
    shutil.rmtree(b.dom.private_path("frail"))
    spec = {"op": "glm_step", "variables": ["arrest", "fin", "age"], "formula": "arrest ~ fin + age",
            "family": "binomial", "beta": [0.0, 0.0, 0.0], "protection": "dp", "noise_multiplier": 1.0}
    (va, xa, sa), (vb, xb, sb) = observe(a, "frail", **spec), observe(b, "frail", **spec)
    assert va == vb and sa == sb > 0 and structure(xa) == structure(xb)
    owner_view = b.owner().runs.list()[-1].info
    assert owner_view.status == "failed" and owner_view.reason == "worker_crashed"
    assert "domain error" in (b.dom.runs.owner_view(owner_view.id).owner_log or "")
    # a's n is 432 plus noise of sd 1; b's default has no complete case
    assert abs(float(xa["n"]) - 432) < 10 and abs(float(xb["n"])) < 10


def test_stats_submission_refuses_what_the_card_rules_out(pair: tuple[DPDomain, DPDomain]) -> None:
    """Refusals under DP come from the card, the spec and the policy only: the same on
    both neighbours, before anything runs."""
    for d in pair:
        with pytest.raises(InvalidInput, match=r"takes stats requests with protection 'dp'"):
            file(d.eve(), "rossi", **TABLE)
        with pytest.raises(InvalidInput, match=r"a DP glm_step takes terms that are a variable"):
            file(d.eve(), "rossi", op="glm_step", variables=["arrest", "fin", "age"], family="binomial",
                 formula="arrest ~ fin:age", beta=[0.0, 0.0], protection="dp", noise_multiplier=1.0)
