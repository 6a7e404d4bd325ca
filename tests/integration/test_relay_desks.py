"""The owner's desks for a domain behind a relay: the lab extension's handlers (in a real
JupyterLab server) and the Panel console log in through the relay, pinning the domain's
identity, list its pending requests and approve one; a wrong pin sends nothing."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import fednb
from fednb.cli import main
from fednb.domain import Domain, Server
from fednb.errors import InvalidInput
from fednb.lab import FednbLab, load_tokens_file
from fednb.relay import RelayServer
from fednb.ui import ConsoleModel, _panel
from tests.adversarial.conftest import require_sandbox
from tests.browser.conftest import tail
from tests.conftest import BC_BOUNDS, breast_cancer_dataset
from tests.lab.conftest import Lab, start_lab


@fednb.remote
def column_means(data):
    return fednb.Update(weights={"m": data.x.values.mean(0)}, num_examples=data.sizes["patient"])


def other_key() -> str:
    """An Ed25519 public key no domain here holds: what a relay's impostor would answer with."""
    raw = Ed25519PrivateKey.generate().public_key()
    return raw.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


@dataclass
class Desk:
    relay: RelayServer
    dom: Domain
    server: Server
    owner: str
    alice: str
    lab: Lab

    @property
    def identity(self) -> str:
        return self.dom.identity.public

    def client(self, token: str) -> fednb.DomainClient:
        return fednb.connect(relay=self.relay.url, domain="st-mary", identity=self.identity, token=token)


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    require_sandbox()
    root = tmp_path_factory.mktemp("relay-desks")
    relay = RelayServer.start("127.0.0.1", 0)
    dom = Domain.create(root / "st-mary", name="St Mary")
    owner, alice = dom.add_user("olivia", role="owner"), dom.add_user("alice")
    dom.policy.update(allow_no_dp=["alice"])
    dom.add_dataset("breast-cancer", breast_cancer_dataset(), bounds=BC_BOUNDS)
    server = dom.serve(relay=relay.url, relay_name="st-mary")
    assert server.outbound.wait_registered(30)  # type: ignore[attr-defined]
    tokens = root / "lab-tokens.json"
    tokens.write_text(json.dumps({"domains": [
        {"name": "st-mary", "relay": relay.url, "identity": dom.identity.public, "token": owner},
        {"name": "impostor", "relay": relay.url, "relay_name": "st-mary", "identity": other_key(),
         "token": owner},
    ]}))
    tokens.chmod(0o600)
    jupyter_token = secrets.token_hex(16)
    proc, url = start_lab(root, tokens, jupyter_token)
    # Lab's hospital is a direct domain's; these tests reach theirs through `desk` instead
    yield Desk(relay, dom, server, owner, alice, Lab(url, jupyter_token, tokens, None))  # type: ignore[arg-type]
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    server.stop()
    relay.stop()
    print(f"--- jupyter-lab.log ---\n{tail(root / 'jupyter-lab.log')}")


def test_the_tokens_file_names_a_relayed_domain(desk: Desk, tmp_path: Path) -> None:
    entry, impostor = load_tokens_file(desk.lab.tokens_file)
    assert (entry.url, entry.relay, entry.relay_name, entry.identity) == (
        "", desk.relay.url, "st-mary", desk.identity)  # relay_name defaults to the name
    assert impostor.relay_name == "st-mary" and desk.owner not in repr(entry)
    bad = [
        {"name": "a", "url": "http://127.0.0.1:1", "relay": desk.relay.url, "token": "t"},  # both
        {"name": "a", "token": "t"},  # neither
        {"name": "a", "relay": desk.relay.url, "relay_name": "St Mary", "token": "t"},  # no DNS label
        {"name": "a", "relay": desk.relay.url, "identity": "abc", "token": "t"},
        {"name": "a", "url": "http://127.0.0.1:1", "relay_name": "a", "token": "t"},
    ]
    for d in bad:
        with pytest.raises(InvalidInput):
            FednbLab(domains=[d]).entries()
    # the owner on the hospital's machine: the loopback address, with the same pin
    (local,) = FednbLab(domains=[{"name": "a", "url": "https://127.0.0.1:1", "identity": desk.identity,
                                  "token": "t"}]).entries()
    assert (local.url, local.relay, local.identity, local.address) == (
        "https://127.0.0.1:1", None, desk.identity, "https://127.0.0.1:1")


def test_the_lab_lists_and_approves_through_the_relay(desk: Desk) -> None:
    alice = desk.client(desk.alice)
    req = column_means.request(alice, "breast-cancer", runs=1)
    r = desk.lab.get("domains")
    assert r.status_code == 200 and desk.owner not in r.text and desk.alice not in r.text
    got = {d["name"]: d for d in r.json()}
    mary = got["st-mary"]
    assert (mary["error"], mary["role"], mary["user"], mary["title"]) == (None, "owner", "olivia", "St Mary")
    assert mary["pending"] >= 1 and mary["url"] == f"st-mary via {desk.relay.url}"
    pending = desk.lab.get("domains/st-mary/requests?status=pending").json()
    assert req.id in {p["id"] for p in pending}
    approved = desk.lab.post(f"domains/st-mary/requests/{req.id}/approve", {"release": "manual"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    info = req.refresh().info
    assert (info.status, info.release, info.reviewed_by) == ("approved", "manual", "olivia")


def test_a_wrong_pin_in_the_lab_sends_nothing(desk: Desk) -> None:
    req = column_means.request(desk.client(desk.alice), "breast-cancer", runs=1)
    got = {d["name"]: d for d in desk.lab.get("domains").json()}
    assert got["impostor"]["role"] is None and "identity" in got["impostor"]["error"]
    r = desk.lab.post(f"domains/impostor/requests/{req.id}/approve", {"release": "auto"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "identity_mismatch"
    assert desk.owner not in r.text
    assert req.refresh().info.status == "pending"  # the owner's token never reached anyone
    desk.client(desk.owner).requests.get(req.id).deny("test cleanup")


def test_the_console_model_lists_requests_through_the_relay(desk: Desk) -> None:
    req = column_means.request(desk.client(desk.alice), "breast-cancer", runs=1)
    console = ConsoleModel(desk.client(desk.owner))
    console.refresh()
    assert req.id in [rid for _label, rid in console.inbox.request_options()]
    assert "alice" in console.users_html() and "audit chain verifies" in console.audit_html()
    console.client.requests.get(req.id).deny("test cleanup")


def test_the_dashboard_logs_in_through_the_relay_and_approves(desk: Desk) -> None:
    req = column_means.request(desk.client(desk.alice), "breast-cancer", runs=1)
    page: Any = _panel.console_app(None, relay=desk.relay.url, relay_name="st-mary", identity=desk.identity)()
    form = page[0]
    assert "st-mary via" in form[0].object
    form[1].value_input = desk.owner
    form[2].clicks += 1
    assert page[0] is not form, form[3].object
    assert "signed in as <b>olivia</b>" in page[0][0][0].object
    requests_tab = page[0][2][0]
    select, (release, approve) = requests_tab[0], requests_tab[1]
    assert req.id in select.options.values()
    select.value = req.id
    release.value = "auto"
    approve.clicks += 1
    info = req.refresh().info
    assert (info.status, info.release, info.reviewed_by) == ("approved", "auto", "olivia")
    page[0][0][2].clicks += 1  # Log out
    assert page[0] is form


def test_the_dashboard_refuses_a_domain_that_is_not_the_pinned_one(desk: Desk) -> None:
    page: Any = _panel.console_app(None, relay=desk.relay.url, relay_name="st-mary", identity=other_key())()
    form = page[0]
    form[1].value_input = desk.owner
    form[2].clicks += 1
    assert page[0] is form and "identity" in form[3].object and desk.owner not in form[3].object


def test_the_dashboard_command_takes_a_relay(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--relay", "http://127.0.0.1:1"]) == 2
    assert "--relay-name" in capsys.readouterr().err
    assert main(["dashboard", "--relay", "http://127.0.0.1:1", "--relay-name", "st-mary",
                 "--domain", "http://127.0.0.1:2"]) == 2
    assert "no --domain" in capsys.readouterr().err
    assert main(["dashboard", "--identity", "ab" * 32, "--history", "x"]) == 2
    assert "--identity pins" in capsys.readouterr().err
