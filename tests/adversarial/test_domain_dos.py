"""Denial of service against the run route: the domain authorises before it reads.

``PUT /requests/{id}/runs/{rid}`` carries a safetensors body. A scientist (any holder of
a token) must not be able to make the domain buffer more than the approved weights of
an approved request of their own: route, request, ownership and approval are checked,
and the body's cap computed from the approved weights spec, before a byte of the body is
read (issue #18, item 5). Each test speaks raw HTTP over a socket, so that it sees how much
of a body the server took before it answered, and asserts that mechanism (the bytes the
server accepted, the peak memory of the process the server runs in), not a clock.
"""

from __future__ import annotations

import json
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import fednb
from fednb.domain import Domain
from fednb.protocol import encode_message
from tests.adversarial.conftest import SCIENTIST_EPSILON, DPDomain, require_sandbox
from tests.conftest import BC_BOUNDS, breast_cancer_dataset

RUN = "application/octet-stream"
W0 = {"w": np.zeros(3)}
DP = fednb.ClientDP(clip=1.0, noise_multiplier=1.0)
BODY = 400 << 20
"""What each attack offers to send: the size of the bodies of the issue's attack."""
ACCEPTED_MAX = 64 << 20
"""The most an attack may get into the connection before the server answers: loopback
socket buffers (tcp_rmem's maximum is 32 MiB, tcp_wmem's 4 MiB) and uvicorn's 64 KiB
high-water mark, far below ``BODY``."""
PEAK_GROWTH_MAX = 128 << 20
"""The most the peak resident memory of this process (client and server) may grow over
all the attacks of one test: a few MiB of buffers, against 400 MiB per body buffered."""


@dataclass
class Target:
    d: DPDomain
    approved: str  # eve's, approved, with weights w float64[3]
    pending: str  # eve's, not yet reviewed
    mallorys: str  # another scientist's approved request


@fednb.remote
def step(data, weights):
    return {"w": weights["w"] * 0.0}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One live bubblewrap domain (no neighbour needed: nothing here depends on the data)
    with eve's approved and pending requests and another scientist's approved one."""
    require_sandbox()
    dom = Domain.create(tmp_path_factory.mktemp("dos") / "h", name="Denial General")
    owner, eve = dom.add_user("olivia", role="owner"), dom.add_user("eve", epsilon=SCIENTIST_EPSILON)
    dom.policy.update(dataset_epsilon_cap=SCIENTIST_EPSILON)
    dom.add_dataset("breast-cancer", breast_cancer_dataset(), bounds=BC_BOUNDS)
    d = DPDomain(dom, dom.serve(port=0), owner, eve)
    assert dom.sandbox_mode == "bubblewrap"
    mallory = fednb.connect(d.url, token=d.dom.add_user("mallory", epsilon=100.0))
    approved = step.request(d.eve(), "breast-cancer", weights=W0, dp=DP, runs=5).id
    theirs = step.request(mallory, "breast-cancer", weights=W0, dp=DP).id
    for rid in (approved, theirs):
        d.owner().requests.get(rid).approve(release="auto")
    pending = step.request(d.eve(), "breast-cancer", weights=W0, dp=DP, runs=2).id
    yield Target(d, approved, pending, theirs)
    d.server.stop()


@dataclass
class Reply:
    status: int
    error: dict[str, str]
    sent: int  # body bytes the connection took before the server answered


def _frames(body: bytes | int, chunked: bool) -> Iterator[bytes]:
    """``body`` (or that many zeros) in pieces of 1 MiB, framed as chunks if ``chunked``."""
    total, zeros = (body, b"\0" * (1 << 20)) if isinstance(body, int) else (len(body), b"")
    for start in range(0, total, 1 << 20):
        end = min(start + (1 << 20), total)
        data = zeros[: end - start] if isinstance(body, int) else body[start:end]
        yield f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data
    if chunked:
        yield b"0\r\n\r\n"


def put_run(t: Target, request_id: str, body: bytes | int, *, chunked: bool = False,
            declared: int | None = None) -> Reply:
    """PUT a run body as eve; ``body`` is the bytes, or a size of zeros to stream.

    The body goes out without blocking while the socket takes it and stops as soon as the
    server answers; what it took until then is ``Reply.sent``.
    """
    total = body if isinstance(body, int) else len(body)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared or total}"
    head = (f"PUT /api/v1/requests/{request_id}/runs/dosrun{request_id[:8]} HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: Bearer {t.d.eve_token}\r\nContent-Type: {RUN}\r\n"
            f"{length}\r\nConnection: close\r\n\r\n").encode()
    frames = _frames(body, chunked)
    with socket.create_connection(("127.0.0.1", t.d.server.port), timeout=60) as s:
        s.sendall(head)
        s.setblocking(False)
        pending, sent = b"", 0
        while True:
            if not pending:
                pending = next(frames, b"")
            readable, writable, _ = select.select([s], [s] if pending else [], [], 60)
            if readable:
                break
            assert writable, "the server neither answered nor took the body"
            try:
                n = s.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent, pending = sent + n, pending[n:]
        s.setblocking(True)
        reply = b""
        try:
            while chunk := s.recv(1 << 16):
                reply += chunk
        except ConnectionResetError:  # the server closed with body bytes still unread
            pass
    head_part, _, payload = reply.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return Reply(status, json.loads(payload)["error"] if status >= 400 else {}, sent)


def peak_rss_reset() -> None:
    """Reset this process's peak resident set size (VmHWM) to its current size."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes (the servers run in its threads)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_memory_exhaustion_before_authorisation(target: Target, chunked: bool) -> None:
    """Three 400 MiB bodies to a request eve may not run: none is read before the refusal."""
    put_run(target, "no-such-request", 1 << 10)  # warm the route: its first call imports
    peak_rss_reset()
    before = peak_rss()
    cases = {"no-such-request-0001": 404, target.mallorys: 404, target.pending: 409}
    for request_id, status in cases.items():
        r = put_run(target, request_id, BODY, chunked=chunked)
        assert r.status == status, (request_id, r)
        assert len(r.error["message"]) >= 8, r
        assert r.sent <= ACCEPTED_MAX, f"the server took {r.sent} bytes before it refused"
    grown = peak_rss() - before
    assert grown <= PEAK_GROWTH_MAX, f"the peak RSS grew by {grown >> 20} MiB"


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_memory_exhaustion_over_the_approved_weights(target: Target, chunked: bool) -> None:
    """A body larger than the approved weights (24 bytes here) of an approved request of
    eve's own: 413, having read at most the cap; the approved body still runs."""
    peak_rss_reset()
    before = peak_rss()
    r = put_run(target, target.approved, BODY, chunked=chunked)
    assert (r.status, r.error["code"]) == (413, "payload_too_large"), r
    assert r.sent <= ACCEPTED_MAX, f"the server took {r.sent} bytes before it refused"
    assert peak_rss() - before <= PEAK_GROWTH_MAX
    # a well-formed message, its tensor larger than the approved one: refused by size
    big = encode_message({"weights": True}, {"w": np.zeros(1 << 17)})
    r = put_run(target, target.approved, big, chunked=chunked)
    assert (r.status, r.error["code"]) == (413, "payload_too_large"), r
    assert "approved" in r.error["message"], r
    # and a declared length past the cap is refused before any of the body is sent
    r = put_run(target, target.approved, b"", declared=BODY)
    assert (r.status, r.sent) == (413, 0), r


def test_memory_exhaustion_leaves_the_approved_run_working(target: Target) -> None:
    req = target.d.eve().requests.get(target.approved)
    info = req.run(weights=W0).wait(120)
    assert info.status == "succeeded", info


def test_nested_safetensors_header(target: Target) -> None:
    """A header nested deeper than the JSON parser's recursion: a clear 400, not a 500."""
    header = b'{"a":' + b"[" * 20_000 + b"]" * 20_000 + b"}"  # 40 kB: under the cap
    r = put_run(target, target.approved, struct.pack("<Q", len(header)) + header)
    assert (r.status, r.error["code"]) == (400, "invalid_input"), r
    assert "nest" in r.error["message"], r
    meta = json.dumps({"__metadata__": {"fednb": "[" * 20_000 + "]" * 20_000}}).encode()
    r = put_run(target, target.approved, struct.pack("<Q", len(meta)) + meta)
    assert (r.status, r.error["code"]) == (400, "invalid_input"), r
    assert "nest" in r.error["message"], r
