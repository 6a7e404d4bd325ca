"""The registry of request kinds (fednb.runtime.KINDS): one entry per kind a request may
name, the parse errors a scientist sees, and the one DP event behind both the scientist's
preview and the domain's charge (a real Domain over SQLite, requests filed through it)."""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import xarray as xr

import fednb
import fednb.runtime
from fednb.domain import Domain
from fednb.errors import InvalidInput
from fednb.privacy import RepeatedEvent, accountant_for
from fednb.protocol import DPSGDSpec, QuerySpec, RequestCreate, RequestKind, StatsSpec, code_hash
from fednb.runtime import KINDS, Kind, compile_function, kind_of

N = 200


def test_every_kind_a_request_may_name_has_one_entry() -> None:
    assert set(KINDS) == set(get_args(RequestKind))
    assert set(get_args(RequestCreate.model_fields["kind"].annotation)) == set(KINDS)
    for name, kind in KINDS.items():
        assert kind.name == name and kind_of(name) is kind
    # what the domain used to spell as strings, pinned
    assert {k.name for k in KINDS.values() if k.trusted} == {"query", "stats"}
    assert {k.name for k in KINDS.values() if k.code} == {"update"}
    assert {k.name for k in KINDS.values() if k.disclosure_controlled} == {"stats"}
    assert {k.name for k in KINDS.values() if k.templated} == {"stats"}
    assert all((k.spec_type is None) == k.code for k in KINDS.values())


def test_an_unknown_kind_and_a_bad_spec_are_refused_with_how_to_fix() -> None:
    with pytest.raises(InvalidInput, match=r"unknown request kind 'sql'; the kinds are \['dp-sgd', 'query'"):
        kind_of("sql")
    with pytest.raises(InvalidInput, match=r"^invalid query spec: Field required \(aggregations\)$"):
        KINDS["query"].parse('{"noise_multiplier": 2.0}')
    with pytest.raises(InvalidInput, match=r"^invalid dp-sgd spec: .*\(layers\)"):
        KINDS["dp-sgd"].parse('{"layers": 3}')
    with pytest.raises(InvalidInput, match=r"^invalid stats spec: Invalid JSON"):
        KINDS["stats"].parse("not json")
    with pytest.raises(InvalidInput, match="is code, not a spec"):
        KINDS["update"].parse("def f(data):\n    return data\n")


def test_a_spec_files_as_the_json_the_owner_reviews() -> None:
    q = fednb.Query(fednb.Query.mean("x"), noise_multiplier=2.0)
    kind = KINDS["query"]
    assert q.source == kind.source(q.spec) and kind.parse(q.source) == q.spec
    assert kind.function_name(q.spec) == "query"
    stats = StatsSpec(op="moments", variables=["x"])
    assert KINDS["stats"].function_name(stats) == "stats_moments"
    with pytest.raises(TypeError, match="spec is a"):
        kind.source(stats)  # a stats spec is not a query's


def test_import_fednb_runtime_stays_light() -> None:
    code = ("import sys, fednb.runtime as r; r.KINDS['query'].parse; "
            "print(sorted(m for m in ('torch', 'scipy', 'formulaic', 'fednb.runtime._dpsgd', "
            "'fednb.runtime._stats', 'fednb.runtime._query') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_dpsgd_source_the_sandbox_runs_imports_public_names_only() -> None:
    spec = KINDS["dp-sgd"].parse(_dpsgd().source)
    source, name = KINDS["dp-sgd"].run_source(spec, "{}", "dpsgd")
    compile_function(source, name)  # it compiles as the worker compiles it
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert node.module is not None and not any(p.startswith("_") for p in node.module.split("."))
            for alias in node.names:
                module = __import__(node.module, fromlist=[alias.name])
                assert getattr(module, alias.name) is not None
                found.append(alias.name)
    assert found == ["DPSGDSpec", "train_dpsgd"]
    update = KINDS["update"]
    assert update.run_source(None, "def f(data):\n    pass\n", "f") == ("def f(data):\n    pass\n", "f")


# -- the scientist's preview is the domain's charge -----------------------------------
def _dpsgd() -> fednb.DPSGD:
    return fednb.DPSGD(layers=[{"type": "linear", "in_features": 3, "out_features": 1}],
                       loss="bce_with_logits", features="x", target="y", epochs=2, batch_size=16,
                       lr=0.5, optimizer="sgd", max_grad_norm=1.0, noise_multiplier=1.3)


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Domain:
    rng = np.random.default_rng(0)
    data = xr.Dataset({"x": (("patient", "feature"), rng.normal(size=(N, 3))),
                       "y": ("patient", (rng.random(N) > 0.5).astype(np.float64))})
    dom = Domain.create(Path(tmp_path_factory.mktemp("kinds")) / "h", name="Kinds")
    dom.add_dataset("d", data, bounds={"x": (-5.0, 5.0), "y": (0.0, 1.0)})
    dom.policy.update(stats_protection={"d": "dp"})
    return dom


def _file(dom: Domain, kind: str, name: str, source: str, runs: int, **extra: object) -> str:
    sci = dom.authenticate(dom.add_user(f"s{uuid.uuid4().hex[:8]}", epsilon=100.0))
    body = RequestCreate(id=uuid.uuid4().hex, function_name=name, kind=kind,  # type: ignore[arg-type]
                         source=source, code_hash=code_hash(source), datasets=["d"], runs=runs, **extra)
    return dom.requests.submit(sci, body).id


def _charged(dom: Domain, request_id: str, runs: int) -> tuple[float, float, float]:
    """(delta, epsilon of ``runs`` of the domain's charge, the owner's projected epsilon)."""
    row, card = dom.requests.row(request_id), dom.card("d")
    event = dom.ledger.run_event(row, "d")  # what a run of it reserves
    assert event is not None
    delta = dom.ledger.delta(card)
    info = dom.requests.get(request_id)
    assert info.projected_epsilon is not None
    return delta, float(accountant_for("pld").epsilon([RepeatedEvent(event, runs)], delta)), \
        info.projected_epsilon


def test_a_query_preview_is_the_domains_charge(domain: Domain) -> None:
    q = fednb.Query(fednb.Query.count(), fednb.Query.mean("y"), fednb.Query.histogram("y", bins=2),
                    fednb.Query.quantile("y", [0.5]), noise_multiplier=2.0)
    rid = _file(domain, "query", "query", q.source, runs=3)
    delta, charged, projected = _charged(domain, rid, 3)
    assert q.preview_epsilon(runs=3, delta=delta) == pytest.approx(charged, rel=1e-12)
    assert projected == pytest.approx(charged, rel=1e-12)


def test_a_dpsgd_preview_is_the_domains_charge(domain: Domain) -> None:
    model = _dpsgd()
    rid = _file(domain, "dp-sgd", "dpsgd", model.source, runs=2)
    delta, charged, projected = _charged(domain, rid, 2)
    assert model.preview_epsilon(N, runs=2, delta=delta) == pytest.approx(charged, rel=1e-12)
    assert projected == pytest.approx(charged, rel=1e-12)
    # the event follows the dataset's size: another n is another charge
    assert model.preview_epsilon(N // 2, runs=2, delta=delta) != pytest.approx(charged, rel=1e-6)


def test_an_update_preview_is_the_domains_charge(domain: Domain) -> None:
    @fednb.remote(metrics={"loss": (0.0, 1.0)})
    def step(data, weights):  # type: ignore[no-untyped-def]
        return fednb.Update(weights=weights, metrics={"loss": 0.5})

    dp = fednb.ClientDP(clip=1.0, noise_multiplier=1.5)
    rid = _file(domain, "update", "step", step.source, runs=4, dp=dp, metrics=step.metrics,
                weights={"w": {"shape": [3], "dtype": "float64"}})
    delta, charged, projected = _charged(domain, rid, 4)
    assert step.preview_epsilon(dp, runs=4, delta=delta) == pytest.approx(charged, rel=1e-12)
    assert projected == pytest.approx(charged, rel=1e-12)


def test_an_update_preview_without_a_client_dp_says_what_it_takes() -> None:
    @fednb.remote
    def step(data, weights):  # type: ignore[no-untyped-def]
        return fednb.Update(weights=weights)

    with pytest.raises(InvalidInput, match="ClientDP"):
        step.preview_epsilon({"clip": 1.0, "noise_multiplier": 1.0})  # type: ignore[arg-type]


@pytest.mark.parametrize("flags, match", [
    ({"code": True, "spec_type": StatsSpec}, "code kinds"),
    ({"trusted": True, "spec_type": DPSGDSpec}, "trusted runtime"),
    ({"disclosure_controlled": True, "spec_type": QuerySpec}, "disclosure control"),
])
def test_a_kind_whose_flags_its_spec_cannot_back_is_refused_when_declared(flags: dict[str, object],
                                                                           match: str) -> None:
    """What the domain does with ``trusted`` or ``disclosure_controlled`` reads a query's or
    a stats spec: a kind declared otherwise would fail in a run's crash path, where a DP run
    must still be committed, so it is refused when the registry is built."""
    base: dict[str, object] = {"name": "new", "code": False, "trusted": False, "disclosure_controlled": False,
                               "templated": False, "event_uses_card": False, "spec_type": QuerySpec,
                               "filed_with": "x"}
    with pytest.raises(TypeError, match=match):
        Kind(**{**base, **flags})  # type: ignore[arg-type]


def test_requests_without_dp_are_charged_nothing(domain: Domain) -> None:
    domain.policy.update(allow_no_dp=[])
    rid = _file(domain, "update", "f", "def f(data):\n    return {}\n", runs=1)
    assert domain.ledger.run_event(domain.requests.row(rid), "d") is None
    assert domain.requests.get(rid).projected_epsilon is None


def test_a_dp_stats_charge_is_one_gaussian_per_noised_array(domain: Domain) -> None:
    spec = StatsSpec(op="moments", variables=["y"], protection="dp", noise_multiplier=2.0)
    rid = _file(domain, "stats", "stats_moments", KINDS["stats"].source(spec), runs=1)
    event = domain.ledger.run_event(domain.requests.row(rid), "d")
    assert event is not None
    parts = event.to_json()["events"]
    default = fednb.runtime.default(spec, domain.card("d"))
    assert len(parts) == sum(s > 0 for s in default.sensitivity.values()) > 0
    assert {p["kind"] for p in parts} == {"gaussian"}
