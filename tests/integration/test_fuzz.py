"""API fuzzing with Schemathesis against a real domain on loopback.

Every operation of the domain's own OpenAPI document is fuzzed with valid (positive) and
invalid (negative) inputs as each role: the owner, the scientist alice, the scientist
bob, nobody (no token) and a bad token. Whatever is sent, the domain answers no 5xx,
every 4xx carries fednb's error body with a message, and nothing of alice's (her
request's source, her ids, her name, her budget) reaches anyone but her and the owner.
Generation is derandomized and bounded, so the cases are the same on every run.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import response_schema_conformance

import fednb
from tests.adversarial.conftest import require_sandbox
from tests.conftest import Hospital

EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
"""Hypothesis examples per operation and generation mode (an upper bound: small input
spaces give fewer)."""
CANARY = "ALICE-CANARY-9f3b2c"
ALICE_EPSILON = 7.3125
ROLES = ["owner", "alice", "bob", "nobody", "bad-token"]
OUTSIDERS = ["bob", "nobody", "bad-token"]
"""Roles that must never see anything of alice's."""


@dataclass
class Target:
    h: Hospital
    schema: Any
    request_id: str
    run_id: str
    session: requests.Session = field(default_factory=requests.Session)
    counts: dict[str, int] = field(default_factory=dict)

    def headers(self, role: str) -> dict[str, str]:
        token = {"owner": self.h.owner_token, "alice": self.h.alice_token, "bob": self.h.bob_token,
                 "bad-token": "fednb_" + "0" * 43}.get(role)
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    def needles(self) -> list[str]:
        """What of alice's must never reach an outsider."""
        return [CANARY, "alice", str(ALICE_EPSILON), self.request_id, self.run_id]


@pytest.fixture(scope="module")
def target(hospital: Hospital) -> Target:
    """Alice's request (her source holds a canary) approved, run and released; her budget."""
    require_sandbox()  # without one the domain refuses private runs: no run of alice's to hide

    @fednb.remote
    def alice_secret(data):
        return np.asarray(data.sizes["patient"])

    source = alice_secret.source.replace("def alice_secret(data):",
                                         f"def alice_secret(data):\n    # {CANARY}")
    fn = fednb.RemoteFunction(alice_secret.fn, source=source)
    hospital.dom.set_budget("alice", ALICE_EPSILON)
    req = fn.request(hospital.alice(), "breast-cancer", runs=3)
    hospital.owner().requests.get(req.id).approve()
    info = req.run().wait(120)
    assert info.status == "succeeded", info
    hospital.owner().runs.get(info.id).release()
    schema = schemathesis.openapi.from_url(hospital.url + "/api/v1/openapi.json")
    return Target(hospital, schema, req.id, info.id)


def operations(schema: Any) -> list[APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


def path_names(op: APIOperation) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", op.path))


def repair(case: Case) -> Case:
    """Let positive POST /requests bodies through the code-hash check, so the fuzzer reaches
    the domain's own checks of a submission instead of stopping at pydantic's."""
    body = case.body
    if case.operation.label == "POST /api/v1/requests" and isinstance(body, dict) \
            and isinstance(body.get("source"), str):
        body["code_hash"] = hashlib.sha256(body["source"].encode("utf-8", "surrogatepass")).hexdigest()
        body["datasets"] = ["breast-cancer"]
    return case


def sent_text(case: Case) -> str:
    parts = [case.path_parameters, case.query, case.headers]
    body = case.body
    text = " ".join(unquote(str(p)) for p in parts if p)
    if isinstance(body, bytes):
        return text + body.decode("utf-8", "replace")
    return text + json.dumps(body, default=str) if body is not None else text


def check(t: Target, role: str, case: Case, response: schemathesis.Response) -> None:
    where = f"{role}: {case.as_curl_command(base_url=t.h.url)} -> {response.status_code}"
    status = response.status_code
    assert status < 500, f"{where} {response.text[:300]}"
    if 400 <= status < 500:
        ctype = response.headers.get("content-type", [""])[0]
        assert ctype.startswith("application/json"), where
        err = response.json().get("error")
        assert isinstance(err, dict), f"{where} {response.text[:300]}"
        assert isinstance(err.get("code"), str) and err["code"], where
        assert isinstance(err.get("message"), str) and len(err["message"]) >= 8, where
    public = case.operation.label == "GET /api/v1/info"
    if role in ("nobody", "bad-token") and not public:
        assert status >= 400, where
    if 200 <= status < 300:
        case.validate_response(response, checks=[response_schema_conformance])
    if role in OUTSIDERS:
        sent = sent_text(case)
        for needle in t.needles():
            assert needle not in response.text or needle in sent, f"{where} leaks {needle!r}"


def fuzz(t: Target, role: str, op: APIOperation, mode: GenerationMode,
         strategy_args: dict[str, Any], after: Callable[[Case, schemathesis.Response], None]) -> None:
    headers = t.headers(role)

    @settings(max_examples=EXAMPLES[mode], derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(op.as_strategy(generation_mode=mode, **strategy_args).map(repair))
    def one(case: Case) -> None:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers.update(headers)
        response = case.call(session=t.session, timeout=60)
        t.counts[role] = t.counts.get(role, 0) + 1
        check(t, role, case, response)
        after(case, response)

    try:
        one()
    except Unsatisfiable:  # nothing to negate (e.g. GET /info takes no input)
        assert mode is GenerationMode.NEGATIVE


def still_serving(t: Target) -> None:
    assert requests.get(t.h.url + "/api/v1/info", timeout=10).status_code == 200
    report = t.h.dom.verify_audit()
    assert report.ok, report.problems


@pytest.mark.parametrize("role", ROLES)
def test_fuzz_every_operation(target: Target, role: str) -> None:
    ops = operations(target.schema)
    assert len(ops) >= 20
    start = time.monotonic()
    for mode in EXAMPLES:
        for op in ops:
            fuzz(target, role, op, mode, {}, lambda case, response: None)
    print(f"\n{role}: {target.counts[role]} cases over {len(ops)} operations "
          f"in {time.monotonic() - start:.1f} s")
    assert target.counts[role] >= 5 * len(ops)
    still_serving(target)


@pytest.mark.parametrize("role", OUTSIDERS)
def test_fuzz_alices_objects_as_an_outsider(target: Target, role: str) -> None:
    """Every operation on alice's request and run ids: nothing succeeds, nothing leaks."""
    ids = {"request_id": target.request_id, "run_id": target.run_id}
    ops = [op for op in operations(target.schema) if path_names(op) & set(ids)]
    assert len(ops) >= 8

    def refused(case: Case, response: schemathesis.Response) -> None:
        assert 400 <= response.status_code < 500, (case.operation.label, response.status_code)

    start, before = time.monotonic(), target.counts.get(role, 0)
    for op in ops:
        given_ids = {k: v for k, v in ids.items() if k in path_names(op)}
        fuzz(target, role, op, GenerationMode.POSITIVE, {"path_parameters": given_ids}, refused)
    print(f"\n{role} on alice's objects: {target.counts[role] - before} cases over {len(ops)} "
          f"operations in {time.monotonic() - start:.1f} s")
    alice = target.h.alice().requests.get(target.request_id).info  # untouched by the outsider
    assert alice.status == "approved" and CANARY in alice.source
    still_serving(target)
