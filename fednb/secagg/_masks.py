"""Masks from a stream cipher, stochastic quantisation into 32-bit integers, the graph.

Masks are AES-256-CTR keystreams (OpenSSL through ``cryptography``; several GB/s per
core with AES-NI), read as uint32 and added mod 2^32 by NumPy's wrapping arithmetic.
Each key is used for one mask only (a fresh key per round and pair), so the all-zero
nonce is safe.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fednb.errors import InvalidInput
from fednb.kernels import stochastic_round
from fednb.typing import FloatArray

__all__ = ["MaskStream", "default_degree", "dequantise", "derive_key", "neighbours", "quantise",
           "random_bits", "scale_for"]

U32 = np.uint32
_NONCE = bytes(16)


def derive_key(secret: bytes, info: str) -> bytes:
    """A 256-bit key bound to ``info`` (HKDF-SHA256)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode()).derive(secret)


class MaskStream:
    """Expands 256-bit keys into uint32 masks of one size, reusing one buffer."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._zeros = bytes(4 * self.size)
        self._buf = bytearray(4 * self.size + 16)
        self._view = np.frombuffer(self._buf, dtype=U32, count=self.size)

    def mask(self, key: bytes) -> np.ndarray:
        """The mask of ``key`` (a view valid until the next call)."""
        enc = Cipher(algorithms.AES(key), modes.CTR(_NONCE)).encryptor()
        enc.update_into(self._zeros, self._buf)
        return self._view

    def add(self, acc: np.ndarray, key: bytes, sign: int = 1) -> None:
        """``acc += sign * mask(key)`` mod 2^32, in place."""
        m = self.mask(key)
        if sign > 0:
            np.add(acc, m, out=acc)
        else:
            np.subtract(acc, m, out=acc)


def scale_for(bound: float, members: int) -> float:
    """Quantisation steps per unit: the members' summed, clipped inputs fit in int32."""
    return float((2**31 - 1 - 2 * members) / bound)


def random_bits(n: int) -> np.ndarray:
    """``n`` uniform uint32 from a fresh AES-CTR stream under an ``os.urandom`` key."""
    return MaskStream(n).mask(os.urandom(32))


def quantise(x: FloatArray, scale: float, bound: float,
             bits: Callable[[int], np.ndarray] = random_bits) -> np.ndarray:
    """Clip ``x`` into [-bound, bound], scale and round stochastically (unbiased; the
    rounding bits come from ``bits``, a fresh AES-CTR stream) into uint32 two's complement."""
    if not np.isfinite(x).all():
        raise InvalidInput("the update has NaN or Inf values; secure aggregation refuses it")
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    return stochastic_round(flat, scale, bound, np.ascontiguousarray(bits(flat.size), dtype=U32))


def dequantise(total: np.ndarray, scale: float) -> FloatArray:
    """The sum of quantised inputs, back to floats (uint32 read as int32)."""
    return np.asarray(total, dtype=U32).view(np.int32).astype(np.float64) / scale


def neighbours(round_id: str, members: list[str], degree: int) -> dict[str, list[str]]:
    """SecAgg+'s sparse graph: members on a ring in an order fixed by the round id (so the
    orchestrator cannot choose it), each joined to the ``degree`` nearest on the ring
    (a Harary graph); with ``degree = len(members) - 1``, everyone to everyone."""
    n = len(members)
    if not 1 <= degree <= n - 1:
        raise InvalidInput(f"degree must be between 1 and {n - 1}, not {degree}")
    ring = sorted(members, key=lambda m: hashlib.sha256(f"{round_id}|{m}".encode()).digest())
    out: dict[str, set[str]] = {m: set() for m in members}
    for i, m in enumerate(ring):
        for d in range(1, degree // 2 + 1):
            for other in (ring[(i + d) % n], ring[(i - d) % n]):
                out[m].add(other)
        if degree % 2:  # odd degree: also the member opposite (n even), as in Harary graphs
            out[m].add(ring[(i + n // 2) % n])
    for m in members:
        out[m].discard(m)
        for other in out[m]:
            out[other].add(m)  # edges both ways: a pair's masks must cancel
    return {m: sorted(v) for m, v in out.items()}


def default_degree(n: int) -> int:
    """Neighbours per member: everyone in rounds of up to 32 (which survive any dropouts that
    leave a majority), 8 ceil(log2 n) beyond (SecAgg+: a majority of each neighbourhood
    must survive, which at 10% dropouts fails with probability below 1e-6 a member)."""
    return n - 1 if n <= 32 else min(n - 1, 8 * math.ceil(math.log2(n)))
