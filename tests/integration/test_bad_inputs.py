"""Bad inputs: malformed and oversized bodies, corrupt safetensors, non-finite or misshapen
weights, hostile names and ids, decompression bombs among the owner's files. Each gets a
clear 4xx (or, on the owner's side, a clear InvalidInput), never a 500 or a crash, and
the domain keeps serving."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import xarray as xr

import fednb
from fednb.domain import Domain
from fednb.errors import InvalidInput
from fednb.loaders import load
from fednb.protocol import encode_message
from tests.adversarial.conftest import require_sandbox
from tests.conftest import Hospital

RUN = "application/octet-stream"
W0 = {"w": np.zeros(3)}


def api(h: Hospital, method: str, path: str, token: str | None = None, **kw: object) -> httpx.Response:
    headers = dict(kw.pop("headers", None) or {})  # type: ignore[call-overload]
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, h.url + "/api/v1" + path, headers=headers, timeout=60, **kw)  # type: ignore[arg-type]


def assert_clear_4xx(r: httpx.Response, *statuses: int) -> str:
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err["code"], str) and len(err["message"]) >= 8, err
    return str(err["message"])


def still_serving(h: Hospital) -> None:
    assert h.alice().info.name == "St Mary"


@pytest.fixture(scope="module")
def approved(hospital: Hospital) -> Iterator[str]:
    """An approved request of alice's that takes weights ``w`` (float64, shape [3])."""

    @fednb.remote
    def step(data, weights):
        return {"w": weights["w"] * 0.5}

    req = step.request(hospital.alice(), "breast-cancer", weights=W0, runs=50)
    hospital.owner().requests.get(req.id).approve()
    yield req.id


# -- JSON bodies ------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "ctype", "status"), [
    (b"{bad", "application/json", 422),
    (b"\xff\xfe\x00garbage", "application/json", 400),
    (b"[" * 200_000 + b"]" * 200_000, "application/json", 400),  # too deep for the parser
    (b"[1, 2, 3]", "application/json", 422),
    (b'{"id": NaN, "runs": Infinity}', "application/json", 422),
    (b"", "application/json", 422),
    (b'{"id": "x"}', "text/plain", 422),
], ids=["truncated", "not-utf8", "deep-nesting", "array", "nan", "empty", "wrong-ctype"])
def test_malformed_json_gets_a_clear_4xx(hospital: Hospital, body: bytes, ctype: str, status: int) -> None:
    r = api(hospital, "POST", "/requests", hospital.alice_token, content=body,
            headers={"Content-Type": ctype})
    assert_clear_4xx(r, status, 400, 415, 422)
    r = api(hospital, "POST", "/secagg/join", hospital.alice_token, content=body,
            headers={"Content-Type": ctype})
    assert_clear_4xx(r, status, 400, 415, 422)
    still_serving(hospital)


@pytest.mark.parametrize("ctype", ["application/json", "application/octet-stream"], ids=["json", "binary"])
@pytest.mark.parametrize("token", ["alice", None], ids=["scientist", "anonymous"])
@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_an_oversized_json_body_is_refused_unread(hospital: Hospital, token: str | None,
                                                  chunked: bool, ctype: str) -> None:
    # a binary content type buys no way past the cap: only a run's own route reads one
    big = b'{"id": "' + b"x" * (8 << 20) + b'"}'

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap must count what arrives
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    r = api(hospital, "POST", "/requests", hospital.alice_token if token else None,
            content=chunks() if chunked else big, headers={"Content-Type": ctype})
    assert "payload_too_large" in r.text
    assert_clear_4xx(r, 413)
    still_serving(hospital)


def test_an_oversized_run_body_is_refused(hospital: Hospital, approved: str) -> None:
    # a declared terabyte, of which only the first bytes are ever sent: refused unread
    with socket.create_connection(("127.0.0.1", hospital.server.port), timeout=30) as s:
        s.sendall(f"PUT /api/v1/requests/{approved}/runs/oversized01 HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {hospital.alice_token}\r\nContent-Type: {RUN}\r\n"
                  f"Content-Length: {1 << 40}\r\n\r\n".encode() + b"\0" * 64)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    still_serving(hospital)


# -- run bodies: safetensors -------------------------------------------------------------

def _frame(header: dict[str, object], data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _meta(run: dict[str, object]) -> dict[str, object]:
    return {"__metadata__": {"fednb": json.dumps(run)}}


CORRUPT = {
    "empty": b"",
    "short": b"\x01\x02",
    "random": bytes(range(256)) * 4,
    "huge-header-length": struct.pack("<Q", 1 << 62) + b"{}",
    "header-past-the-end": struct.pack("<Q", 1000) + b"{}",
    "header-not-json": struct.pack("<Q", 4) + b"\xff\xfe{}",
    "header-a-list": _frame([]),  # type: ignore[arg-type]
    "no-fednb-metadata": _frame({"__metadata__": {"other": "x"}}),
    "fednb-metadata-not-json": _frame({"__metadata__": {"fednb": "{bad"}}),
    "run-header-a-string": _frame({"__metadata__": {"fednb": json.dumps("run")}}),
    "pickle-dtype": _frame({**_meta({"weights": True}),
                            "w": {"dtype": "O", "shape": [3], "data_offsets": [0, 24]}}, b"\0" * 24),
    "offsets-past-the-end": _frame({**_meta({"weights": True}),
                                    "w": {"dtype": "F64", "shape": [3], "data_offsets": [0, 1 << 30]}},
                                   b"\0" * 24),
    "shape-disagrees-with-offsets": _frame({**_meta({"weights": True}),
                                            "w": {"dtype": "F64", "shape": [1000], "data_offsets": [0, 24]}},
                                           b"\0" * 24),
    "unknown-run-field": encode_message({"weights": True, "evil": 1}, W0),
    "bad-compression": encode_message({"weights": True, "compression": "zip"}, W0),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_a_corrupt_run_body_gets_a_clear_4xx(hospital: Hospital, approved: str, name: str) -> None:
    r = api(hospital, "PUT", f"/requests/{approved}/runs/corrupt-{name}"[:80], hospital.alice_token,
            content=CORRUPT[name], headers={"Content-Type": RUN})
    assert_clear_4xx(r, 400)
    still_serving(hospital)


@pytest.mark.parametrize(("weights", "why"), [
    ({"w": np.array([1.0, np.nan, 0.0])}, "NaN or Inf"),
    ({"w": np.array([np.inf, 0.0, 0.0])}, "NaN or Inf"),
    ({"w": np.zeros(4)}, "approved"),
    ({"w": np.zeros((3, 1))}, "approved"),
    ({"w": np.zeros(3, dtype=np.float32)}, "approved"),
    ({"w": np.zeros(3, dtype=np.int64)}, "approved"),
    ({"w": np.zeros(3), "extra": np.zeros(1)}, "approved"),
    ({"v": np.zeros(3)}, "approved"),
    ({}, "approved"),
], ids=["nan", "inf", "longer", "2d", "float32", "int64", "extra-tensor", "other-name", "none"])
def test_weights_outside_the_approval_are_refused(hospital: Hospital, approved: str,
                                                  weights: dict[str, np.ndarray], why: str) -> None:
    body = encode_message({"weights": True}, weights)
    r = api(hospital, "PUT", f"/requests/{approved}/runs/weights-{uuid.uuid4().hex[:12]}",
            hospital.alice_token, content=body, headers={"Content-Type": RUN})
    assert why in assert_clear_4xx(r, 400)
    still_serving(hospital)


def test_finite_weights_of_the_approved_shape_still_run(hospital: Hospital, approved: str) -> None:
    require_sandbox()
    run = fednb.client.RemoteRequest(hospital.alice(), hospital.alice().requests.get(approved).info).run(
        weights={"w": np.ones(3)})
    assert run.wait(120).status == "succeeded"


# -- names and ids ------------------------------------------------------------------------

HOSTILE_NAMES = ["../diabetes", "..", "/etc/passwd", "breast-cancer/../diabetes", "..\\diabetes",
                 "breast\u202ecancer", "\uff42\uff52\uff45\uff41\uff53\uff54", "breast\x00cancer",
                 "breast-cancer\n", "\u0430lice", ".hidden", "x" * 65, ""]
HOSTILE_IDS = ["../../../../etc/passwd", "..%2F..%2Fstore.sqlite", "abc\u202edef12345",
               "\uff41\uff42\uff43\uff44\uff45\uff46\uff47\uff48", "abcdefgh\x00ijk", "abcdefgh\n",
               "%00%00%00%00%00%00%00%00", "a" * 65]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_dataset_names_in_urls_get_a_clear_4xx(hospital: Hospital, name: str) -> None:
    quoted = quote(name, safe="").replace(".", "%2E")  # sent as is: no client normalises it
    for suffix in ("", "/mock"):
        r = api(hospital, "GET", f"/datasets/{quoted}{suffix}", hospital.alice_token)
        if name == "" and suffix == "":
            assert r.status_code == 307  # /datasets/ -> /datasets, the list of cards
        else:
            assert_clear_4xx(r, 404)
    still_serving(hospital)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_in_a_request_get_a_clear_4xx(hospital: Hospital, name: str) -> None:
    source = "def f(data):\n    return np.zeros(1)\n"
    good = {"id": "hostile-names-0001", "function_name": "f", "source": source,
            "code_hash": hashlib.sha256(source.encode()).hexdigest(), "datasets": ["breast-cancer"],
            "runs": 1}
    for bad in ({"datasets": [name]}, {"function_name": name}, {"id": name},
                {"params": {name: {"type": "bool"}}}, {"metrics": {name: [0.0, 1.0]}}):
        r = api(hospital, "POST", "/requests", hospital.alice_token, json={**good, **bad})
        assert_clear_4xx(r, 400, 404, 422)
    still_serving(hospital)


@pytest.mark.parametrize("rid", HOSTILE_IDS)
def test_hostile_ids_in_urls_get_a_clear_4xx(hospital: Hospital, approved: str, rid: str) -> None:
    quoted = quote(rid, safe="")
    for method, path in [("GET", f"/requests/{quoted}"), ("GET", f"/runs/{quoted}"),
                         ("GET", f"/runs/{quoted}/result"),
                         ("PUT", f"/requests/{approved}/runs/{quoted}"),
                         ("PUT", f"/requests/{quoted}/runs/goodrunid01")]:
        r = api(hospital, method, path, hospital.alice_token,
                content=encode_message({"weights": True}, W0), headers={"Content-Type": RUN})
        assert_clear_4xx(r, 400, 404, 405, 409)
    still_serving(hospital)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_on_the_owner_side_raise_invalid_input(tmp_path: Path, name: str) -> None:
    dom = Domain.create(tmp_path / "home", name="Hostile")
    ds = xr.Dataset({"x": ("patient", np.zeros(3))})
    with pytest.raises(InvalidInput):
        dom.add_user(name)
    with pytest.raises(InvalidInput):
        dom.add_dataset(name, ds, bounds={"x": (0, 1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # nothing written beside it
    datasets = tmp_path / "home" / "datasets"
    assert not datasets.exists() or not any(datasets.iterdir())
    dom.close()


# -- decompression bombs among the owner's files ----------------------------------------

def _zarr_bomb(path: Path) -> Path:
    """A Zarr store of a few KiB whose one zstd chunk decompresses to 128 MiB of zeros and
    which declares 64 GiB in all (the chunks not written read as the fill value)."""
    import zarr
    from numcodecs import Zstd

    chunk = 1 << 24  # float64: 128 MiB per chunk
    xr.Dataset({"x": ("patient", np.zeros(8, dtype=np.float64))}).to_zarr(path, zarr_format=2, mode="w")
    meta = json.loads((path / "x" / ".zarray").read_text())
    meta.update(shape=[512 * chunk], chunks=[chunk], compressor={"id": "zstd", "level": 1})
    (path / "x" / ".zarray").write_text(json.dumps(meta))
    for leftover in (path / "x").glob("[0-9]*"):
        leftover.unlink()
    comp = Zstd(level=1)
    (path / "x" / "0").write_bytes(comp.encode(np.zeros(chunk, dtype=np.float64)))
    zarr.consolidate_metadata(str(path))
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 1 << 20
    return path


def _netcdf_bomb(path: Path) -> Path:
    """A NetCDF4 file of a few KiB declaring a compressed variable of 64 GiB."""
    import h5netcdf

    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"patient": 1 << 33}
        f.create_variable("x", ("patient",), dtype="f8", chunks=(1 << 20,), compression="gzip")
    assert path.stat().st_size < 1 << 20
    return path


@pytest.mark.parametrize("make", [_zarr_bomb, _netcdf_bomb], ids=["zarr", "netcdf"])
def test_a_decompression_bomb_is_refused_before_it_is_read(tmp_path: Path, make: object) -> None:
    path = make(tmp_path / ("bomb.zarr" if make is _zarr_bomb else "bomb.nc"))  # type: ignore[operator]
    with pytest.raises(InvalidInput, match="decompression bomb"):
        load(path)
    dom = Domain.create(tmp_path / "home", name="Bombed")
    with pytest.raises(InvalidInput, match="decompressed"):
        dom.add_dataset("bomb", path, bounds={"x": (0, 1)})
    assert dom.datasets() == []
    with pytest.raises(InvalidInput, match="over the cap"):  # and an explicit cap binds too
        load(path, max_bytes=1 << 20)
    dom.close()


def test_a_small_file_under_the_cap_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "small.zarr"
    xr.Dataset({"x": ("patient", np.arange(5.0))}).to_zarr(path, zarr_format=2, mode="w")
    assert load(path, max_bytes=1 << 10)["x"].values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(InvalidInput):
        load(path, max_bytes=8)
