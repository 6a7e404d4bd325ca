"""The wire contract: codecs refuse malformed input; models check what they carry."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import xarray as xr

from fednb import errors
from fednb.protocol import (
    ParamSpec,
    RequestCreate,
    Update,
    as_update,
    code_hash,
    dataset_from_bytes,
    dataset_to_bytes,
    decode_message,
    encode_message,
)
from tests.conftest import breast_cancer_dataset


def test_message_round_trip_keeps_values_shapes_and_dtypes() -> None:
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "s": np.asarray(2.5),
               "i": np.arange(3, dtype=np.int64)}
    header, out = decode_message(encode_message({"a": [1, "x"]}, tensors))
    assert header == {"a": [1, "x"]}
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        np.testing.assert_array_equal(out[k], v)


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, struct.pack("<Q", 1 << 40) + b"{}",
                                  struct.pack("<Q", 2) + b"[]", b"\x80\x04\x95" + b"\x00" * 20])
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(errors.InvalidInput):
        decode_message(data)


def test_object_dtypes_and_missing_headers_are_refused() -> None:
    header = json.dumps({"__metadata__": {"fednb": "{}"},
                         "x": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 8]}}).encode()
    with pytest.raises(errors.InvalidInput, match="dtype"):
        decode_message(struct.pack("<Q", len(header)) + header + b"\x00" * 8)
    import safetensors.numpy as st

    with pytest.raises(errors.InvalidInput, match="no fednb header"):
        decode_message(st.save({"x": np.zeros(2)}))


def test_size_cap() -> None:
    with pytest.raises(errors.PayloadTooLarge):
        decode_message(encode_message({}, {"x": np.zeros(1000)}), max_bytes=100)


def test_dataset_codec_round_trip() -> None:
    ds = breast_cancer_dataset()
    ds.attrs["source"] = "sklearn"
    ds["when"] = ("patient", np.datetime64("2020-01-01", "ns") + np.arange(569).astype("timedelta64[D]"))
    back = dataset_from_bytes(dataset_to_bytes(ds))
    xr.testing.assert_identical(back, ds)


def test_param_specs() -> None:
    lr = ParamSpec(type="float", low=1e-4, high=1.0)
    assert lr.check("lr", 0.1) is None
    assert "outside" in (lr.check("lr", 2.0) or "")
    assert lr.check("lr", "0.1") is not None
    assert lr.check("lr", float("nan")) is not None
    epochs = ParamSpec(type="int", low=1, high=10)
    assert epochs.check("epochs", 2.5) is not None
    assert epochs.check("epochs", True) is not None
    opt = ParamSpec(type="str", choices=["sgd", "adam"])
    assert opt.check("opt", "adam") is None and opt.check("opt", "rm -rf") is not None
    with pytest.raises(ValueError):
        ParamSpec(type="float", low=1.0, high=0.0)
    with pytest.raises(ValueError):
        ParamSpec(type="float")


def test_request_hash_must_match_source() -> None:
    src = "def f(data):\n    return 1\n"
    ok = RequestCreate(id="abcdefgh1", function_name="f", source=src, code_hash=code_hash(src),
                       datasets=["bc"], runs=1)
    assert ok.code_hash == code_hash(src)
    with pytest.raises(ValueError, match="SHA-256"):
        RequestCreate(id="abcdefgh1", function_name="f", source=src + " ", code_hash=code_hash(src),
                      datasets=["bc"], runs=1)
    with pytest.raises(ValueError):
        RequestCreate(id="abcdefgh1", function_name="f", source=src, code_hash=code_hash(src),
                      datasets=["../etc"], runs=1)


def test_update_normalisation() -> None:
    assert as_update(3.0).weights["result"].shape == ()
    assert set(as_update({"a": [1, 2]}).weights) == {"a"}
    u = Update(weights={"w": [1.0]}, metrics={"loss": np.float32(0.5)})
    assert isinstance(u.metrics["loss"], float)
    with pytest.raises(errors.InvalidInput):
        as_update(None)


def test_errors_have_stable_codes_and_round_trip() -> None:
    for cls in (errors.AuthenticationError, errors.PermissionDenied, errors.NotFound,
                errors.ParamsOutOfSchema, errors.RunRefused, errors.PayloadTooLarge):
        exc = cls("boom")
        back = errors.from_wire(exc.to_wire(), errors.http_status(exc))
        assert type(back) is cls and back.message == "boom"
    assert errors.http_status(ValueError()) == 500
    assert isinstance(errors.from_wire(None, 401), errors.AuthenticationError)


def test_a_nul_in_reviewed_text_is_refused_not_rewritten() -> None:
    import pydantic

    from fednb.protocol import DenyDecision, RequestCreate, code_hash

    src = "def f(data):\n    return 1  # \x00\n"
    with pytest.raises(pydantic.ValidationError, match="NUL"):
        RequestCreate(id="abcdefgh12", function_name="f", source=src, code_hash=code_hash(src),
                      datasets=["d"], runs=1)
    with pytest.raises(pydantic.ValidationError):
        DenyDecision(reason="no\x00")
