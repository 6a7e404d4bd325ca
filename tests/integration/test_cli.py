"""The ``fednb`` command line on a real domain home (SQLite file, Zarr datasets, bubblewrap).

Most commands run in-process through ``fednb.cli.main``; the console entry point and
the foreground server also run as real subprocesses. The data is scikit-learn's bundled
Wisconsin breast cancer set, written to CSV with an id column and a text diagnosis.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

import fednb
from fednb.cli import build_parser, main
from fednb.domain import Domain
from fednb.errors import AuthenticationError, RunFailed
from fednb.protocol import ParamSpec, RequestCreate, TensorSpec, code_hash

DATASET = "bc"
N_PATIENTS = 569


def write_breast_cancer_csv(path: Path) -> list[str]:
    """Write the CSV; return the ``dataset add`` options declaring every variable's bounds."""
    bc = load_breast_cancer(as_frame=True)
    frame = bc.frame.copy()
    frame.insert(0, "patient_id", [f"p{i:04d}" for i in range(len(frame))])
    frame["diagnosis"] = np.where(frame["target"] == 1, "benign", "malignant")
    frame.to_csv(path, index=False)
    opts = []
    for col in bc.feature_names:
        opts += ["--bounds", f"{col}=0:{math.ceil(frame[col].max() * 2)}"]
    return [*opts, "--bounds", "target=0:1", "--categories", "diagnosis=benign,malignant"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def token_of(out: str) -> str:
    token = out.strip().splitlines()[-1]
    assert token.startswith("fednb_")
    return token


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A domain home holding the breast cancer set, made through the CLI once per module."""
    base = tmp_path_factory.mktemp("cli")
    home, csv = base / "st-mary", base / "bc.csv"
    bounds = write_breast_cancer_csv(csv)
    assert main(["domain", "init", "--home", str(home), "--name", "St Mary"]) == 0
    opts = ["--home", str(home), "--index", "patient_id", "--units", "mean radius=mm"]
    add = ["domain", "dataset", "add", DATASET, str(csv), *opts, "--description", "Wisconsin"]
    assert main([*add, *bounds]) == 0
    return home


@pytest.fixture
def home(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the template home, named by FEDNB_HOME."""
    path = tmp_path / "home"
    shutil.copytree(template, path)
    monkeypatch.setenv("FEDNB_HOME", str(path))
    return path


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("fednb ")
    for argv in ([], ["domain"], ["domain", "deny", "r1"], ["domain", "serve", "--port", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_init_twice_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "h"
    rc, out, _ = run_cli(capsys, "domain", "init", "--home", str(home), "--name", "St Mary")
    assert rc == 0 and str(home) in out and "next steps" in out
    rc, out, err = run_cli(capsys, "domain", "init", "--home", str(home), "--name", "St John")
    assert rc == 2 and err.startswith("error: ") and "already holds a domain" in err
    assert "Traceback" not in err and Domain.open(home).name == "St Mary"
    rc, _, err = run_cli(capsys, "domain", "init", "--home", str(tmp_path / "x"), "--name", " ")
    assert rc == 2 and "non-empty name" in err


def test_init_keeps_a_dask_scheduler_for_the_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "h"
    rc, _, _ = run_cli(capsys, "domain", "init", "--home", str(home), "--name", "St Mary",
                       "--dask-address", "tcp://127.0.0.1:8786")
    assert rc == 0
    assert Domain.open(home).dask_address == "tcp://127.0.0.1:8786"


def test_missing_home_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(capsys, "domain", "--home", str(tmp_path / "nowhere"), "user", "list")
    assert rc == 2 and "fednb domain init" in err


def test_users_add_list_revoke_rotate(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, "domain", "user", "add", "alice")
    token = token_of(out)
    assert rc == 0 and "only this once" in err
    assert run_cli(capsys, "domain", "user", "add", "olivia", "--role", "owner")[0] == 0
    dom = Domain.open(home)
    try:
        assert dom.authenticate(token).name == "alice"
        rc, out, _ = run_cli(capsys, "domain", "user", "list")
        assert "alice   scientist" in out and "olivia  owner" in out and "revoked" not in out
        stored = b"".join(p.read_bytes() for p in home.glob("store.sqlite*"))
        assert token.encode() not in stored
        assert hashlib.sha256(token.encode()).hexdigest().encode() in stored
        assert run_cli(capsys, "domain", "user", "revoke", "alice")[0] == 0
        with pytest.raises(AuthenticationError):
            dom.authenticate(token)
        assert "revoked" in run_cli(capsys, "domain", "user", "list")[1]
        rc, out, _ = run_cli(capsys, "domain", "user", "rotate", "alice")
        new = token_of(out)
        assert rc == 0 and new != token and dom.authenticate(new).name == "alice"
        with pytest.raises(AuthenticationError):
            dom.authenticate(token)
    finally:
        dom.close()
    rc, _, err = run_cli(capsys, "domain", "user", "add", "alice")
    assert rc == 2 and "exists" in err
    assert run_cli(capsys, "domain", "user", "revoke", "mallory")[0] == 2


def test_dataset_list_and_show(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "domain", "dataset", "list")
    assert rc == 0 and out.splitlines()[1].split() == [DATASET, "569", "32", "synthesised-within-bounds"]
    rc, out, _ = run_cli(capsys, "domain", "dataset", "show", DATASET)
    card = json.loads(out)
    assert card["num_examples"] == N_PATIENTS and card["source"] == "csv"
    assert card["description"] == "Wisconsin" and card["example_dim"] == "patient"
    radius = card["variables"]["mean radius"]
    assert radius["units"] == "mm" and radius["bounds"] == [0.0, 57.0]
    dom = Domain.open(home)
    try:
        mock = dom.mock(DATASET)
        assert set(np.unique(mock["diagnosis"].values)) <= {"benign", "malignant"}
        assert float(mock["mean radius"].max()) <= 57.0 and list(mock["patient"].values[:2]) == [0, 1]
        assert str(dom.private(DATASET)["patient"].values[0]) == "p0000"
    finally:
        dom.close()
    assert run_cli(capsys, "domain", "dataset", "show", "nope")[0] == 2


def test_dataset_add_with_mock_and_bad_options(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "bc.csv"
    bounds = write_breast_cancer_csv(csv)
    mock = tmp_path / "mock.csv"
    rows = csv.read_text().splitlines()
    mock.write_text("\n".join(rows[:21]) + "\n")
    rc, out, _ = run_cli(
        capsys, "domain", "dataset", "add", "bc-mock", str(csv), "--index", "patient_id", "--mock", str(mock)
    )
    assert rc == 0 and "provided-by-owner" in out
    rc, _, err = run_cli(capsys, "domain", "dataset", "add", "bc2", str(csv), "--bounds", "target=a:b")
    assert rc == 2 and "VAR=LO:HI" in err
    rc, _, err = run_cli(capsys, "domain", "dataset", "add", "bc2", str(csv), *bounds[:-4])
    assert rc == 2 and "declare bounds for every variable" in err and "diagnosis" in err
    rc, _, err = run_cli(capsys, "domain", "dataset", "add", "bc2", str(csv), "--fields", "Modality")
    assert rc == 2 and "fields" in err
    assert "bc2" not in run_cli(capsys, "domain", "dataset", "list")[1]


def test_policy_set_show_and_budget(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(
        capsys,
        "domain",
        "policy",
        "set",
        "allow_no_dp=alice,bob",
        "run_timeout_s=30",
        "max_concurrent_jobs=3",
    )
    assert rc == 0 and 'allow_no_dp = ["alice", "bob"]' in out
    policy = json.loads(run_cli(capsys, "domain", "policy", "show")[1])
    assert policy["allow_no_dp"] == ["alice", "bob"] and policy["run_timeout_s"] == 30
    assert policy["max_concurrent_jobs"] == 3
    rc, out, _ = run_cli(capsys, "domain", "budget")
    assert rc == 0 and "alice, bob" in out
    assert run_cli(capsys, "domain", "user", "add", "dana", "--epsilon", "1.5")[0] == 0
    rc, out, _ = run_cli(capsys, "domain", "budget", "--set", "dana", "2.5", "--dataset", "bc")
    assert rc == 0 and re.search(r"dana\s+bc\s+2\.500\s+0\.000", out), out
    assert run_cli(capsys, "domain", "budget", "--set", "dana", "lots")[0] == 2
    assert run_cli(capsys, "domain", "budget", "--set", "nobody", "1")[0] == 2
    assert run_cli(capsys, "domain", "policy", "set", 'allow_no_dp=["carol"]')[0] == 0
    assert json.loads(run_cli(capsys, "domain", "policy", "show")[1])["allow_no_dp"] == ["carol"]
    assert run_cli(capsys, "domain", "policy", "set", "allow_no_dp=")[0] == 0
    assert "nobody" in run_cli(capsys, "domain", "budget")[1]
    for bad in ("nope=1", "run_timeout_s=-1", "run_timeout_s"):
        rc, _, err = run_cli(capsys, "domain", "policy", "set", bad)
        assert rc == 2 and err.startswith("error: ")


def test_peers_identity_trust_and_forget(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fednb.secagg import Identity

    peer = Identity.generate().public
    rc, out, _ = run_cli(capsys, "domain", "peers")
    mine = re.search(r"identity: ([0-9a-f]{64})", out)
    assert rc == 0 and mine is not None and "no peers on the roster" in out
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600
    rc, out, _ = run_cli(capsys, "domain", "peers", "--trust", "st-john", peer)
    assert rc == 0 and re.search(rf"st-john\s+{peer}", out) and mine.group(1) in out  # the same identity
    assert Domain.open(home).peers.list() == {"st-john": peer}
    rc, _, err = run_cli(capsys, "domain", "peers", "--trust", "evil", "not-a-key")
    assert rc == 2 and "Ed25519" in err
    rc, _, err = run_cli(capsys, "domain", "peers", "--trust", "me", mine.group(1))
    assert rc == 2 and "own identity" in err
    rc, out, _ = run_cli(capsys, "domain", "peers", "--forget", "st-john")
    assert rc == 0 and "no peers on the roster" in out
    assert run_cli(capsys, "domain", "peers", "--forget", "st-john")[0] == 2
    actions = [e.action for e in Domain.open(home).audit.entries()]
    assert "peer.trusted" in actions and "peer.forgotten" in actions


SOURCE_V1 = "def train(data, weights, lr=0.1):\n    return {'w': weights['w'] - lr}\n"
SOURCE_V2 = "def train(data, weights, lr=0.1):\n    return {'w': weights['w'] - 2 * lr}\n"


def submit(dom: Domain, token: str, source: str, name: str = "train") -> str:
    body = RequestCreate(
        id=uuid.uuid4().hex,
        function_name=name,
        source=source,
        code_hash=code_hash(source),
        datasets=[DATASET],
        params={"lr": ParamSpec(type="float", low=1e-4, high=1.0)},
        weights={"w": TensorSpec(shape=[3], dtype="float32")},
        metrics={"loss": (0.0, 10.0)},
        runs=5,
        description="a test",
    )
    return dom.requests.submit(dom.authenticate(token), body).id


def test_requests_show_approve_deny(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dom = Domain.open(home)
    try:
        alice = dom.add_user("alice")
        r1 = submit(dom, alice, SOURCE_V1)
        r2 = submit(dom, alice, SOURCE_V2)
        r3 = submit(dom, alice, SOURCE_V1.replace("train", "other"), name="other")
    finally:
        dom.close()
    rc, out, _ = run_cli(capsys, "domain", "requests")
    assert rc == 0 and all(r in out for r in (r1, r2, r3)) and code_hash(SOURCE_V1)[:12] in out
    assert "0/5" in out and "pending" in out
    rc, out, _ = run_cli(capsys, "domain", "approve", r1, "--release", "auto")
    assert rc == 0 and "released automatically" in out
    rc, out, _ = run_cli(capsys, "domain", "show", r2)
    assert rc == 0 and code_hash(SOURCE_V2) in out and "lr: float in [0.0001, 1.0]" in out
    assert "w: float32[3]" in out and "loss: in [0.0, 10.0]" in out
    assert "privacy    NONE: no differential privacy" in out
    assert f"diff against approved {code_hash(SOURCE_V1)[:12]}" in out
    assert "-    return {'w': weights['w'] - lr}" in out and "+    return {'w': weights['w'] - 2 * lr}" in out
    rc, out, _ = run_cli(capsys, "domain", "deny", r2, "--reason", "why twice the step?")
    assert rc == 0 and "why twice the step?" in out
    assert "diff       none" in run_cli(capsys, "domain", "show", r3)[1]
    pending = run_cli(capsys, "domain", "requests")[1]
    assert r3 in pending and r1 not in pending and r2 not in pending
    assert all(r in run_cli(capsys, "domain", "requests", "--all")[1] for r in (r1, r2, r3))
    denied = run_cli(capsys, "domain", "requests", "--status", "denied")[1]
    assert r2 in denied and r1 not in denied
    rc, _, err = run_cli(capsys, "domain", "approve", r2)
    assert rc == 2 and "already denied" in err
    dom = Domain.open(home)
    try:
        one, two = dom.requests.get(r1), dom.requests.get(r2)
        assert (one.status, one.release, one.reviewed_by) == ("approved", "auto", "owner-cli")
        assert (two.status, two.review_reason, two.reviewed_by) == (
            "denied",
            "why twice the step?",
            "owner-cli",
        )
        actions = {(e.actor, e.action) for e in dom.audit.entries()}
        assert {("owner-cli", "request.approved"), ("owner-cli", "request.denied")} <= actions
    finally:
        dom.close()


@fednb.remote(params={"lr": (float, 0.0, 1.0)}, metrics={"n": (0.0, 1000.0)})
def shift(data, weights, lr=0.1):
    return fednb.Update(weights={"w": weights["w"] + lr}, metrics={"n": float(data.sizes["patient"])})


def test_results_released_and_withheld_from_cli(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dom = Domain.open(home)
    alice = dom.add_user("alice")
    dom.policy.update(allow_no_dp=["alice"])
    server = dom.serve(port=0)
    client = fednb.connect(server.url, token=alice)
    try:
        w0 = {"w": np.zeros(3, dtype=np.float32)}
        req = shift.request(client, DATASET, runs=2, weights=w0)
        assert run_cli(capsys, "domain", "approve", req.id)[0] == 0
        first, second = req.run(weights=w0, lr=0.5), req.run(weights=w0, lr=0.25)
        assert first.wait(60).status == "succeeded" and second.wait(60).status == "succeeded"
        rc, out, _ = run_cli(capsys, "domain", "results")
        assert rc == 0 and first.id in out and second.id in out and str(N_PATIENTS) in out
        rc, out, _ = run_cli(capsys, "domain", "runs", "--request", req.id)
        assert rc == 0 and out.count("succeeded") == 2 and out.count("held") == 2
        assert run_cli(capsys, "domain", "runs", "--log", first.id)[0] == 0
        assert run_cli(capsys, "domain", "release", first.id)[0] == 0
        assert run_cli(capsys, "domain", "withhold", second.id)[0] == 0
        update = first.result(timeout=10)
        np.testing.assert_allclose(update.weights["w"], [0.5, 0.5, 0.5])
        assert update.metrics["n"] == N_PATIENTS
        with pytest.raises(RunFailed):
            second.result(timeout=10)
        assert "no results held" in run_cli(capsys, "domain", "results")[1]
        rc, _, err = run_cli(capsys, "domain", "release", second.id)
        assert rc == 2 and "no held result" in err
    finally:
        client.close()
        server.stop()


def test_results_show_reviews_a_held_result_against_the_previous_release(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dom = Domain.open(home)
    alice = dom.add_user("alice")
    dom.policy.update(allow_no_dp=["alice"])
    server = dom.serve(port=0)
    client = fednb.connect(server.url, token=alice)
    try:
        w0 = {"w": np.zeros(3, dtype=np.float32)}
        req = shift.request(client, DATASET, runs=3, weights=w0)
        assert run_cli(capsys, "domain", "approve", req.id)[0] == 0
        first = req.run(weights=w0, lr=0.5)
        assert first.wait(60).status == "succeeded"
        rc, out, _ = run_cli(capsys, "domain", "results", "show", first.id)
        assert rc == 0 and "values [0.5, 0.5, 0.5]" in out and "lr=0.5" in out
        assert "to alice" in out and "epsilon    none: no differential privacy" in out
        assert "diff       none: no earlier released run" in out
        assert run_cli(capsys, "domain", "release", first.id)[0] == 0
        second = req.run(weights=w0, lr=0.25)
        assert second.wait(60).status == "succeeded"
        rc, out, _ = run_cli(capsys, "domain", "results", "show", second.id)
        assert rc == 0, out
        lines = out.splitlines()
        assert "  w: float32(3,)" in lines and "    values [0.25, 0.25, 0.25]" in lines
        assert f"  n: {N_PATIENTS}" in lines and "params     lr=0.25" in lines
        assert f"diff from the previous release: run {first.id} (lr=0.5)" in lines
        assert "  w: changed, max |difference| 0.25" in lines
        assert "    [0] 0.5 -> 0.25" in lines and "    [2] 0.5 -> 0.25" in lines
        assert f"sha256     {req.info.code_hash}" in lines
        # what the CLI shows is what the scientist gets once released
        assert run_cli(capsys, "domain", "release", second.id)[0] == 0
        np.testing.assert_allclose(second.result(timeout=10).weights["w"], [0.25, 0.25, 0.25])
        rc, _, err = run_cli(capsys, "domain", "results", "show", "nosuchrun1")
        assert rc == 2 and "nosuchrun1" in err
    finally:
        client.close()
        server.stop()


def test_audit_list_verify_and_tamper(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "domain", "audit", "--limit", "1")
    assert rc == 0 and len(out.splitlines()) == 2 and "dataset.added" in out
    rc, out, _ = run_cli(capsys, "domain", "audit", "--verify")
    assert rc == 0 and "audit chain OK: 2 entries" in out
    with sqlite3.connect(home / "store.sqlite") as db:
        db.execute("UPDATE audit SET details='x' WHERE seq=2")
    db.close()
    rc, out, _ = run_cli(capsys, "domain", "audit", "--verify")
    assert rc == 1 and "BROKEN" in out and "entry 2" in out


def test_serve_refuses_plain_http_off_loopback_before_binding(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        # The port is taken and the home holds no domain: the refusal comes before either.
        argv = ["--home", str(tmp_path / "nowhere"), "--host", "0.0.0.0", "--port", port]
        rc, _, err = run_cli(capsys, "domain", "serve", *argv)
        assert rc == 2 and "refusing to serve plain HTTP on 0.0.0.0" in err
        # On loopback it gets as far as binding, and reports the taken port as a user error.
        rc, _, err = run_cli(capsys, "domain", "serve", "--host", "127.0.0.1", "--port", port)
        assert rc == 2 and f"cannot listen on 127.0.0.1:{port}" in err
    rc, _, err = run_cli(capsys, "domain", "serve", "--certfile", str(tmp_path / "c.pem"))
    assert rc == 2 and "both --certfile and --keyfile" in err


def test_console_script_in_a_subprocess(home: Path) -> None:
    cmd = [sys.executable, "-m", "fednb.cli", "domain", "--home", str(home)]
    done = subprocess.run([*cmd, "dataset", "list"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and DATASET in done.stdout
    done = subprocess.run([*cmd, "show", "no-such-request"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_serve_in_the_foreground_stops_on_ctrl_c(home: Path) -> None:
    dom = Domain.open(home)
    owner = dom.add_user("olivia", role="owner")
    dom.close()
    cmd = [sys.executable, "-m", "fednb.cli", "domain", "serve", "--home", str(home), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "serving at http://127.0.0.1:" in first, first + proc.stderr.read()
        assert proc.stdout.readline().strip() == "sandbox: bubblewrap"
        url = first.split("serving at ")[1].split()[0]
        with fednb.connect(url, token=owner) as client:
            assert client.info.name == "St Mary"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_and_dashboard_parsers(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.hospitals, args.headless, args.home, args.port_base) == (3, False, ".fednb-demo", 0)
    args = build_parser().parse_args(["demo", "--hospitals", "3", "--headless", "--port-base", "9000"])
    assert (args.hospitals, args.headless, args.port_base) == (3, True, 9000)
    rc, _, err = run_cli(capsys, "dashboard")
    assert rc == 2 and "give --domain URL (the owner console), --history DIR" in err
    rc, _, err = run_cli(capsys, "dashboard", "--history", "somewhere", "--address", "0.0.0.0")
    assert rc == 2 and "serve it on loopback only" in err and "warning: serving on 0.0.0.0" in err
