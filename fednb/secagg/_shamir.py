"""Shamir t-of-n secret sharing of 256-bit secrets over the prime field GF(2^521 - 1)."""

from __future__ import annotations

import secrets

from fednb.errors import InvalidInput

__all__ = ["PRIME", "combine", "split"]

PRIME = (1 << 521) - 1  # a Mersenne prime, far above any 32-byte secret


def split(secret: bytes, threshold: int, xs: list[int]) -> dict[int, int]:
    """Shares of ``secret`` at the points ``xs`` (distinct, non-zero): any ``threshold`` of
    them recover it, fewer reveal nothing."""
    if not 1 <= threshold <= len(xs):
        raise InvalidInput(f"threshold must be between 1 and {len(xs)}, not {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise InvalidInput("share points must be distinct and non-zero")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def combine(shares: dict[int, int], size: int = 32) -> bytes:
    """The secret from ``threshold`` or more shares (Lagrange interpolation at zero)."""
    if not shares:
        raise InvalidInput("no shares to combine")
    total = 0
    points = list(shares.items())
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    if total >= 1 << (8 * size):
        raise InvalidInput("the shares do not combine to a secret (too few, or corrupt)")
    return total.to_bytes(size, "big")
