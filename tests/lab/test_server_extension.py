"""fednb's jupyter_server extension against a real domain, with Jupyter's auth on."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import xarray as xr
from lifelines.datasets import load_rossi

import fednb
from fednb.errors import InvalidInput
from fednb.protocol import RequestCreate, StatsSpec, code_hash
from tests.lab.conftest import Lab

DP = fednb.ClientDP(clip=1.0, noise_multiplier=2.0)
W = {"w": np.zeros(4)}  # a DP update's approved structure


@fednb.remote(params={"scale": (float, 0.0, 2.0)})
def fixed_update(data, scale=1.0):
    return fednb.Update(weights={"w": np.full(4, scale)}, num_examples=data.sizes["patient"])


def no_domain_token_in(lab: Lab, text: str) -> None:
    h = lab.hospital
    for secret in (h.owner_token, h.alice_token, h.bob_token):
        assert secret not in text


def test_no_jupyter_token_is_403_everywhere(lab: Lab) -> None:
    for path in (
        "domains",
        "domains/st-mary/requests",
        "domains/st-mary/requests/abcdefgh12",
        "domains/st-mary/budget",
        "domains/st-mary/runs?release_state=held",
        "domains/st-mary/runs/abcdefgh12/review",
    ):
        assert lab.get(path, token=None).status_code == 403, path
        assert lab.get(path, token="wrong").status_code == 403, path
    assert (
        lab.post("domains/st-mary/requests/abcdefgh12/approve", {"release": "auto"}, token=None).status_code
        == 403
    )


def test_domains_say_who_we_are_and_never_the_token(lab: Lab) -> None:
    req = fixed_update.request(lab.hospital.alice(), "breast-cancer", runs=1, dp=DP, weights=W)
    r = lab.get("domains")
    assert r.status_code == 200
    no_domain_token_in(lab, r.text)
    got = {d["name"]: d for d in r.json()}
    assert set(got) == {"st-mary", "st-mary-as-alice"}
    assert (got["st-mary"]["role"], got["st-mary"]["user"], got["st-mary"]["title"]) == (
        "owner",
        "olivia",
        "St Mary",
    )
    assert got["st-mary"]["pending"] >= 1 and got["st-mary"]["error"] is None
    assert got["st-mary-as-alice"]["role"] == "scientist"
    assert "token" not in json.dumps(r.json()).lower()
    lab.hospital.owner().requests.get(req.id).deny("test cleanup")


def test_the_owner_reviews_approves_and_denies_through_the_proxy(lab: Lab) -> None:
    alice = lab.hospital.alice()
    a = fixed_update.request(alice, "breast-cancer", runs=2, dp=DP, weights=W)
    b = fixed_update.request(alice, "breast-cancer", runs=1, dp=DP, weights=W)
    pending = lab.get("domains/st-mary/requests?status=pending")
    assert {a.id, b.id} <= {r["id"] for r in pending.json()}
    detail = lab.get(f"domains/st-mary/requests/{a.id}").json()
    assert detail["code_hash"] == a.info.code_hash and detail["projected_epsilon"] > 0
    r = lab.post(f"domains/st-mary/requests/{a.id}/approve", {"release": "manual"})
    assert r.status_code == 200 and r.json()["status"] == "approved"
    assert a.refresh().info.status == "approved" and a.info.reviewed_by == "olivia"
    r = lab.post(f"domains/st-mary/requests/{b.id}/deny", {"reason": "one run tells us nothing"})
    assert r.status_code == 200
    assert b.refresh().info.review_reason == "one run tells us nothing"
    # the domain's refusal comes back with its message
    again = lab.post(f"domains/st-mary/requests/{b.id}/approve", {"release": "auto"})
    assert again.status_code == 409 and "already denied" in again.json()["error"]["message"]
    blank = lab.post(f"domains/st-mary/requests/{b.id}/deny", {"reason": ""})
    assert blank.status_code == 400


def test_held_results_are_released_and_withheld(lab: Lab) -> None:
    req = fixed_update.request(lab.hospital.alice(), "breast-cancer", runs=2)  # no DP: alice may (policy)
    lab.post(f"domains/st-mary/requests/{req.id}/approve", {"release": "manual"})
    keep, drop = req.run(scale=1.0), req.run(scale=0.5)
    keep.wait(120)
    drop.wait(120)
    held = {r["id"] for r in lab.get("domains/st-mary/runs?release_state=held").json()}
    assert {keep.id, drop.id} <= held
    assert lab.post(f"domains/st-mary/runs/{keep.id}/release").json()["release_state"] == "released"
    assert lab.post(f"domains/st-mary/runs/{drop.id}/withhold").json()["release_state"] == "withheld"
    assert keep.result(timeout=10).weights["w"].shape == (4,)


def test_a_held_result_is_reviewed_with_its_values_and_the_diff(lab: Lab) -> None:
    req = fixed_update.request(lab.hospital.alice(), "breast-cancer", runs=2)  # no DP: held
    lab.post(f"domains/st-mary/requests/{req.id}/approve", {"release": "manual"})
    first = req.run(scale=1.0)
    first.wait(120)
    r = lab.get(f"domains/st-mary/runs/{first.id}/review")
    assert r.status_code == 200, r.text
    no_domain_token_in(lab, r.text)
    review = r.json()
    assert review["tensors"][0]["values"] == [1.0, 1.0, 1.0, 1.0] and review["diff"] is None
    assert review["run"]["params"] == {"scale": 1.0} and review["request"]["code_hash"] == req.info.code_hash
    lab.post(f"domains/st-mary/runs/{first.id}/release")
    second = req.run(scale=0.5)
    second.wait(120)
    review = lab.get(f"domains/st-mary/runs/{second.id}/review").json()
    assert review["run"]["release_state"] == "held" and review["previous"]["id"] == first.id
    (d,) = review["diff"]["tensors"]
    assert d["status"] == "changed" and d["max_abs_diff"] == 0.5 and len(d["changed"]) == 4
    # a scientist cannot read a held result through the proxy; no login is a 403
    refused = lab.get(f"domains/st-mary-as-alice/runs/{second.id}/review")
    assert refused.status_code == 409 and "no released result" in refused.json()["error"]["message"]
    assert lab.get(f"domains/st-mary/runs/{second.id}/review", token=None).status_code == 403
    lab.post(f"domains/st-mary/runs/{second.id}/withhold")


def test_a_scientist_sees_only_their_own(lab: Lab) -> None:
    bob = lab.hospital.bob()
    theirs = fixed_update.request(bob, "breast-cancer", runs=1, dp=DP, weights=W)
    mine = fixed_update.request(lab.hospital.alice(), "breast-cancer", runs=1, dp=DP, weights=W)
    seen = {r["id"] for r in lab.get("domains/st-mary-as-alice/requests").json()}
    assert mine.id in seen and theirs.id not in seen
    refused = lab.post(f"domains/st-mary-as-alice/requests/{mine.id}/approve", {"release": "auto"})
    assert refused.status_code == 403
    budget = lab.get("domains/st-mary-as-alice/budget").json()
    assert {b["scientist"] for b in budget} <= {"alice"}
    for rid in (theirs.id, mine.id):
        lab.hospital.owner().requests.get(rid).deny("test cleanup")


def test_unknown_domains_and_malformed_ids_are_refused(lab: Lab) -> None:
    assert lab.get("domains/nowhere/requests").status_code == 404
    assert lab.get("domains/st-mary/requests/..%2F..%2Fetc").status_code == 404
    assert lab.get("domains/st-mary/requests?status=everything").status_code == 400
    r = lab.post("domains/st-mary/requests/abcdefgh12/approve", "not an object")
    assert r.status_code == 400


def test_a_tokens_file_others_can_read_is_refused(lab: Lab) -> None:
    lab.tokens_file.chmod(0o644)
    try:
        r = lab.get("domains")
        assert r.status_code == 500 and "chmod 600" in r.json()["error"]["message"]
        no_domain_token_in(lab, r.text)
    finally:
        lab.tokens_file.chmod(0o600)
    assert lab.get("domains").status_code == 200


def test_an_unreachable_or_misconfigured_domain_shows_its_error_and_the_others_go_on(lab: Lab) -> None:
    good = lab.tokens_file.read_text()
    entries = json.loads(good)
    entries["domains"] += [
        {"name": "down", "url": "http://127.0.0.1:9", "token": "fednb_x"},  # nothing listens
        {"name": "far", "url": "http://192.0.2.1:8000", "token": "fednb_y"},  # plain HTTP, not loopback
    ]
    lab.tokens_file.write_text(json.dumps(entries))
    try:
        r = lab.get("domains")
        assert r.status_code == 200
        got = {d["name"]: d for d in r.json()}
        assert got["st-mary"]["error"] is None and got["st-mary"]["role"] == "owner"
        assert "could not reach" in got["down"]["error"]
        assert "plain HTTP" in got["far"]["error"]
        assert "fednb_x" not in r.text and "fednb_y" not in r.text
        assert lab.get("domains/far/requests").status_code == 400
        assert lab.get("domains/down/requests").status_code == 503
    finally:
        lab.tokens_file.write_text(good)


def add_rossi(lab: Lab) -> None:
    """lifelines' Rossi data under disclosure control, for stats requests (once per module)."""
    dom = lab.hospital.dom
    if "rossi" in {d.name for d in dom.datasets()}:
        return
    bounds = {"wexp": (0.0, 1.0), "paro": (0.0, 1.0), "prio": (0.0, 20.0)}
    d = load_rossi().astype(np.float64)
    dom.add_dataset("rossi", xr.Dataset({c: ("patient", d[c].to_numpy()) for c in bounds}), bounds=bounds)
    dom.policy.update(stats_protection={"rossi": "disclosure"})


def file_stats(client: fednb.DomainClient, **spec: object) -> fednb.RemoteRequest:
    source = StatsSpec.model_validate(spec).model_dump_json()
    return client.requests.submit(RequestCreate(
        id=uuid.uuid4().hex, function_name=f"stats_{spec['op']}", kind="stats", source=source,
        code_hash=code_hash(source), datasets=["rossi"], runs=1))


def test_the_owner_reads_templates_approvals_and_refusals_and_a_second_owner_approves(lab: Lab) -> None:
    h = lab.hospital
    add_rossi(lab)
    owner, alice = h.owner(), h.alice()
    oscar = h.dom.add_user(f"oscar-{uuid.uuid4().hex[:6]}", role="owner")
    good = lab.tokens_file.read_text()
    entries = json.loads(good)
    entries["domains"].append({"name": "st-mary-as-oscar", "url": h.url, "token": oscar})
    lab.tokens_file.write_text(json.dumps(entries))
    owner.templates.add({"name": "tables", "functions": ["crosstab"], "datasets": ["rossi"],
                         "scientists": ["alice"], "protection": "disclosure"})
    owner.templates.add({"name": "two.person", "functions": ["describe"], "reviewers": 2})
    try:
        ok = file_stats(alice, op="table", variables=["wexp"], levels={"wexp": [0, 1]})
        assert ok.info.reviewed_by == "template:tables"
        small = file_stats(alice, op="table", variables=["prio"], levels={"prio": list(range(19))})
        with pytest.raises(InvalidInput, match="min_cell_count"):
            small.run()

        r = lab.get("domains/st-mary/templates")
        assert r.status_code == 200, r.text
        no_domain_token_in(lab, r.text)
        assert oscar not in r.text
        got = r.json()
        rows = {t["name"]: t for t in got["templates"]}
        assert rows["tables"]["functions"] == "crosstab" and rows["tables"]["state"] == "active"
        assert "1 run(s)/request" in rows["tables"]["limits"] and rows["tables"]["protection"] == "disclosure"
        assert (rows["two.person"]["active"], rows["two.person"]["needed"]) == (False, 2)
        assert rows["two.person"]["state"] == "waiting for a second owner"
        assert rows["two.person"]["reviewers"] == "olivia (1/2)"
        assert [a["request"] for a in got["approved"]][:2] == [small.id, ok.id]  # newest first
        assert got["approved"][1]["template"] == "tables" and got["approved"][1]["runs"] == "0/1"
        refused = [x for x in got["refusals"] if x["request"] == small.id]
        assert len(refused) == 1 and "min_cell_count" in refused[0]["refusal"]
        assert refused[0]["scientist"] == "alice" and refused[0]["dataset"] == "rossi"
        assert ok.id not in {x["request"] for x in got["refusals"]}

        # the owner's desk only; a login is needed; the limit and the name are checked
        assert lab.get("domains/st-mary-as-alice/templates").status_code == 403
        assert lab.get("domains/st-mary/templates", token=None).status_code == 403
        no_login = lab.post("domains/st-mary-as-oscar/templates/two.person/approve", token=None)
        assert no_login.status_code == 403
        assert lab.get("domains/st-mary/templates?limit=0").status_code == 400
        assert lab.post("domains/st-mary/templates/..%2Fusers/approve").status_code == 404
        # the two-person rule: the owner who added it cannot approve it again; another owner can
        again = lab.post("domains/st-mary/templates/two.person/approve")
        assert again.status_code == 409 and "already approved" in again.json()["error"]["message"]
        second = lab.post("domains/st-mary-as-oscar/templates/two.person/approve")
        assert second.status_code == 200, second.text
        assert second.json()["state"] == "active" and second.json()["reviewers"].endswith("(2/2)")
        assert owner.templates.get("two.person").active
        assert lab.post("domains/st-mary/templates/nothing/approve").status_code == 404
    finally:
        lab.tokens_file.write_text(good)
        owner.templates.remove("tables")
        owner.templates.remove("two.person")
