"""Every route but /info needs a token; roles are enforced; tokens are hashed at rest."""

from __future__ import annotations

import pickle
import re

import httpx
import numpy as np
import pytest

import fednb
from fednb.errors import AuthenticationError, InsecureSetting, NotFound
from fednb.kernels import BACKENDS
from tests.conftest import Hospital

pytestmark = pytest.mark.stores  # on SQLite and on PostgreSQL

OWNER_ONLY = [("GET", "/users"), ("GET", "/audit"), ("POST", "/requests/x/approve"),
              ("POST", "/requests/x/deny"), ("POST", "/runs/x/release"), ("POST", "/runs/x/withhold")]


def routes(h: Hospital) -> list[tuple[str, str]]:
    spec = httpx.get(h.url + "/api/v1/openapi.json").json()
    out = []
    for path, ops in spec["paths"].items():
        for method in ops:
            out.append((method.upper(), re.sub(r"\{[^}]+\}", "someid1234", path)))
    return out


def test_every_route_but_info_needs_a_token(hospital: Hospital) -> None:
    found = routes(hospital)
    assert len(found) >= 15
    for method, path in found:
        r = httpx.request(method, hospital.url + path)
        if path == "/api/v1/info":
            assert r.status_code == 200
            info = r.json()  # public: who the domain is, and what it computes with
            assert len(info["identity"]) == 64 and info["kernels"] in BACKENDS
        else:
            assert r.status_code == 401, (method, path, r.status_code)
            assert r.json()["error"]["code"] == "unauthenticated"


def test_a_scientist_on_an_owner_route_gets_403(hospital: Hospital) -> None:
    headers = {"Authorization": f"Bearer {hospital.alice_token}"}
    for method, path in OWNER_ONLY:
        r = httpx.request(method, hospital.url + "/api/v1" + path, headers=headers,
                          json={"release": "manual", "reason": "x"})
        assert r.status_code == 403, (method, path)
        assert r.json()["error"]["code"] == "forbidden"


def test_another_scientists_request_and_run_are_invisible(hospital: Hospital) -> None:
    @fednb.remote
    def count(data):
        return np.asarray(data.sizes["patient"])

    alice, bob = hospital.alice(), hospital.bob()
    req = count.request(alice, "breast-cancer")
    assert [r.id for r in bob.requests.list()] == [] or req.id not in [r.id for r in bob.requests.list()]
    with pytest.raises(NotFound):
        bob.requests.get(req.id)
    hospital.owner().requests.get(req.id).approve()
    run = req.run()
    run.wait(120)
    with pytest.raises(NotFound):
        bob.runs.get(run.id)
    # bob cannot start runs of alice's request either
    with pytest.raises(NotFound):
        fednb.client.RemoteRequest(bob, req.info).run()
    assert run.id not in [r.id for r in bob.runs.list()]


def test_revoked_and_rotated_tokens(hospital: Hospital) -> None:
    dom = hospital.dom
    token = dom.add_user("carol")
    fednb.connect(hospital.url, token=token)
    dom.revoke_user("carol")
    with pytest.raises(AuthenticationError):
        fednb.connect(hospital.url, token=token)
    new = dom.rotate_token("carol")
    assert fednb.connect(hospital.url, token=new).me.name == "carol"
    with pytest.raises(AuthenticationError):
        fednb.connect(hospital.url, token=token)
    with pytest.raises(AuthenticationError):
        fednb.connect(hospital.url, token="fednb_guessed")


def test_tokens_are_not_stored_in_clear(hospital: Hospital) -> None:
    raw = b"".join(p.read_bytes() for p in hospital.dom.home.rglob("*") if p.is_file())
    for token in (hospital.owner_token, hospital.alice_token, hospital.bob_token):
        assert token.encode() not in raw
        assert token.split("_", 1)[1].encode() not in raw


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(InsecureSetting, match="plain HTTP"):
        fednb.connect("http://hospital.example.org:8000", token="t")
    with pytest.raises(InsecureSetting):
        fednb.connect("http://10.1.2.3:8000", token="t")


class Evil:
    def __reduce__(self):  # pragma: no cover - must never be called
        return (print, ("unpickled!",))


def test_no_pickle_crosses_the_wire(hospital: Hospital) -> None:
    @fednb.remote
    def count(data):
        return np.asarray(data.sizes["patient"])

    req = count.request(hospital.alice(), "breast-cancer")
    hospital.owner().requests.get(req.id).approve()  # so the run route reads the body
    body = pickle.dumps({"weights": Evil()})
    auth = {"Authorization": f"Bearer {hospital.alice_token}"}
    base = hospital.url + "/api/v1"
    r = httpx.post(base + "/requests", content=body,
                   headers={**auth, "Content-Type": "application/python-pickle"})
    assert 400 <= r.status_code < 500
    for ctype, status in (("application/octet-stream", 400), ("application/python-pickle", 415)):
        r = httpx.put(base + f"/requests/{req.id}/runs/runid12345", content=body,
                      headers={**auth, "Content-Type": ctype})
        assert r.status_code == status, (ctype, r.status_code, r.text)
    r = httpx.get(base + "/datasets/breast-cancer/mock", headers=auth)
    assert r.headers["content-type"] == "application/octet-stream"
    assert not r.content.startswith(b"\x80")  # safetensors, not a pickle protocol header


def test_errors_map_back_to_the_same_exception_class(hospital: Hospital) -> None:
    alice = hospital.alice()
    with pytest.raises(NotFound, match="no request"):
        alice.requests.get("doesnotexist")
