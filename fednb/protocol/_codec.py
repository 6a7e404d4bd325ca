"""Pickle-free codecs: a message is a safetensors file whose metadata carries JSON.

Everything binary that crosses a trust boundary (run inputs, results, worker frames,
mock datasets) is one of these. Decoding parses the safetensors header by hand first,
so a hostile body is rejected before any tensor is allocated.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import safetensors.numpy as st

from fednb.errors import InvalidInput, PayloadTooLarge
from fednb.typing import JSON, Array

__all__ = ["ALLOWED_DTYPES", "decode_message", "encode_message", "peek_header"]

_META_KEY = "fednb"
_HEADER_MAX = 16 * 1024 * 1024
_TOO_DEEP = "body is not a safetensors message: its {what} nests arrays or objects too deeply " \
            "for the JSON parser; send a flat header as fednb.protocol.encode_message writes"
ALLOWED_DTYPES = frozenset({"F16", "F32", "F64", "I8", "I16", "I32", "I64", "U8", "U32", "BOOL"})
"""Safetensors dtypes fednb accepts; anything else is refused."""


def encode_message(header: JSON, tensors: dict[str, Array] | None = None) -> bytes:
    """Encode a JSON header and named arrays as one safetensors byte string."""
    arrays = {k: np.asarray(v, order="C") for k, v in (tensors or {}).items()}
    return bytes(st.save(arrays, metadata={_META_KEY: json.dumps(header, allow_nan=False)}))


def peek_header(data: bytes) -> tuple[dict[str, Any], int]:
    """Parse and check the safetensors header; return it and the header's length.

    Raises
    ------
    InvalidInput
        If ``data`` is not a well-formed safetensors file with allowed dtypes.
    """
    if len(data) < 8:
        raise InvalidInput("body is not a safetensors message: fewer than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _HEADER_MAX or 8 + n > len(data):
        raise InvalidInput("body is not a safetensors message: bad header length")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("body is not a safetensors message: header is not JSON") from None
    except RecursionError:  # a hostile header, not the domain's fault: a 400 like any bad one
        raise InvalidInput(_TOO_DEEP.format(what="safetensors header")) from None
    if not isinstance(header, dict):
        raise InvalidInput("body is not a safetensors message: header is not an object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in ALLOWED_DTYPES:
            raise InvalidInput(f"tensor {name[:64]!r} has a dtype fednb does not accept")
    return header, n


def decode_message(data: bytes, max_bytes: int | None = None) -> tuple[JSON, dict[str, Array]]:
    """Decode what :func:`encode_message` made.

    Parameters
    ----------
    data
        The message bytes.
    max_bytes
        Refuse messages larger than this many bytes (default: no cap).
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLarge(f"message of {len(data)} bytes exceeds the cap of {max_bytes}")
    header, _ = peek_header(data)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or _META_KEY not in meta:
        raise InvalidInput("safetensors message carries no fednb header")
    try:
        body = json.loads(meta[_META_KEY])
        tensors = st.load(data)
    except RecursionError:
        raise InvalidInput(_TOO_DEEP.format(what="fednb header")) from None
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise InvalidInput(f"corrupt safetensors message: {type(exc).__name__}") from None
    return body, dict(tensors)
