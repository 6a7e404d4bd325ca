"""Noise from a cryptographically secure generator, and the clip-then-noise mechanism.

DP noise must be unpredictable to whoever sees the output: a seeded PRNG (NumPy's
``default_rng``, Mersenne Twister) can be reconstructed from its outputs or its seed,
and a job running in the same process could monkeypatch it. :class:`SecureNoise`
therefore never touches ``numpy.random``: it draws its bits from a ChaCha20 keystream
(``cryptography``, OpenSSL) under a 256-bit key from ``os.urandom`` that it alone holds,
and shapes them with NumPy arithmetic only.

Floating-point samplers leak a little through the low bits of their outputs (Mironov
2012); the continuous Gaussian and Laplace samplers here are the usual textbook ones
(Box-Muller, inverse CDF), while :meth:`SecureNoise.discrete_gaussian` serves integer
(secure-aggregation) pipelines.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fednb.errors import InvalidInput
from fednb.kernels import box_muller
from fednb.typing import Array, FloatArray

__all__ = ["SecureNoise", "clip_l2", "gaussian_mechanism"]

Shape = int | tuple[int, ...]

_CHUNK = 1 << 16
"""Samples shaped per pass: temporaries this size stay in cache and avoid page faults."""
_REKEY_BYTES = 1 << 32
"""Fresh key and nonce after this many keystream bytes (far below ChaCha20's 2^38 per nonce)."""


def _size(shape: Shape) -> tuple[tuple[int, ...], int]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in dims):
        raise InvalidInput(f"shape must be non-negative integers, got {shape!r}")
    dims = tuple(int(d) for d in dims)
    return dims, math.prod(dims)


def _check_scale(name: str, value: float, *, allow_zero: bool = True) -> float:
    x = float(value)
    if not (math.isfinite(x) and (x >= 0 if allow_zero else x > 0)):
        raise InvalidInput(f"{name} must be finite and {'>=' if allow_zero else '>'} 0, got {value!r}")
    return x


class SecureNoise:
    """A source of DP noise keyed from the operating system's CSPRNG.

    Each instance draws its own 256-bit ChaCha20 key and 96-bit nonce from
    ``os.urandom`` and re-keys every 4 GiB of output and in a forked child (which would
    otherwise repeat its parent's noise); two instances give independent streams.
    Thread-safe. Nothing here reads or seeds ``numpy.random``.

    Examples
    --------
    >>> noise = SecureNoise()
    >>> noise.gaussian((2, 3), sigma=1.5).shape
    (2, 3)
    >>> bool(((noise.uniform(1000) > 0) & (noise.uniform(1000) < 1)).all())
    True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rekey()

    def _rekey(self) -> None:
        # cryptography's 16-byte ChaCha20 nonce is a 32-bit little-endian block counter
        # followed by the 96-bit nonce: start the counter at 0 so it cannot wrap.
        nonce = bytes(4) + os.urandom(12)
        self._stream = Cipher(algorithms.ChaCha20(os.urandom(32), nonce), mode=None).encryptor()
        self._used = 0
        self._pid = os.getpid()

    def random_bytes(self, n: int) -> bytes:
        """``n`` uniformly random bytes (ChaCha20 keystream: zeros encrypted)."""
        with self._lock:
            if self._used + n > _REKEY_BYTES or self._pid != os.getpid():
                self._rekey()
            self._used += n
            return self._stream.update(bytes(n))

    def _bits53(self, n: int) -> Array:
        raw = np.frombuffer(self.random_bytes(8 * n), dtype="<u8")
        bits: Array = np.right_shift(raw, np.uint64(11))
        return bits

    def uniform(self, n: int) -> FloatArray:
        """``n`` uniforms on the open interval (0, 1), float64.

        Each is k / 2^53 with k uniform on 1 .. 2^53 - 1 (53 random bits; a zero k,
        probability 2^-53, is drawn again), so neither 0 nor 1 ever occurs.
        """
        _, n = _size(n)
        k = self._bits53(n)
        if not k.all():
            bad = np.flatnonzero(k == 0)
            while bad.size:
                k[bad] = self._bits53(bad.size)
                bad = bad[k[bad] == 0]
        u = k.astype(np.float64)
        u *= 2.0**-53
        return u

    def gaussian(self, shape: Shape, sigma: float) -> FloatArray:
        """Samples of N(0, sigma^2), float64, by the Box-Muller transform.

        Parameters
        ----------
        shape
            Output shape.
        sigma
            Standard deviation (in the units of the noised quantity, >= 0).

        Notes
        -----
        With 53-bit uniforms the largest magnitude is sqrt(2 * 53 ln 2) ≈ 8.57 sigma;
        the normal mass beyond that is below 1e-17, negligible against any delta used.
        """
        s = _check_scale("sigma", sigma)
        dims, n = _size(shape)
        m = (n + 1) // 2
        out = np.empty(2 * m)
        for i in range(0, m, _CHUNK):  # chunks that stay in cache: ~7x faster than whole arrays
            j = min(m, i + _CHUNK)
            c = j - i
            box_muller(self.uniform(2 * c), s, out[i:j], out[m + i : m + j])
        return out[:n].reshape(dims)

    def laplace(self, shape: Shape, scale: float) -> FloatArray:
        """Samples of the Laplace distribution with scale b, float64, by inverse CDF.

        Parameters
        ----------
        shape
            Output shape.
        scale
            b, in the units of the noised quantity (>= 0); the variance is 2 b^2.
        """
        b = _check_scale("scale", scale)
        dims, n = _size(shape)
        out = np.empty(n)
        for i in range(0, n, _CHUNK):
            v = self.uniform(min(n, i + _CHUNK) - i)
            v -= 0.5  # exact on the 2^-53 grid, and never +-0.5
            x = np.log1p(-2.0 * np.abs(v))
            x *= np.sign(v)
            np.multiply(x, -b, out=out[i : i + v.size])
        return out.reshape(dims)

    def discrete_gaussian(self, shape: Shape, sigma: float) -> Array:
        """Samples of the discrete Gaussian N_Z(0, sigma^2) on the integers, int64.

        Canonne, Kamath & Steinke (2020), Algorithm 3, vectorised: a discrete Laplace
        proposal of scale t = floor(sigma) + 1 (a difference of two geometric draws),
        accepted with probability exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)); rejected
        entries are drawn again. Probabilities are evaluated in float64 rather than with
        the paper's exact rational arithmetic.

        Parameters
        ----------
        shape
            Output shape.
        sigma
            Scale parameter (> 0, in integer units); the variance is close to sigma^2
            for sigma >= 1.
        """
        s = _check_scale("sigma", sigma, allow_zero=False)
        dims, n = _size(shape)
        t = math.floor(s) + 1
        out = np.empty(n, dtype=np.int64)
        todo = np.arange(n)
        while todo.size:
            m = todo.size
            u = self.uniform(3 * m)
            g = np.floor(-t * np.log(u[: 2 * m]))  # geometric: P(G >= k) = exp(-k / t)
            y = g[:m] - g[m:]
            accept = u[2 * m :] < np.exp(-((np.abs(y) - s * s / t) ** 2) / (2 * s * s))
            out[todo[accept]] = y[accept].astype(np.int64)
            todo = todo[~accept]
        return out.reshape(dims)


def clip_l2(tensors: Mapping[str, Array], clip: float) -> tuple[dict[str, FloatArray], float]:
    """Scale a whole update, as one flat vector, to L2 norm at most ``clip``.

    Parameters
    ----------
    tensors
        Named numeric arrays (an update). Floating arrays keep their dtype; others
        become float64.
    clip
        The clipping norm C (> 0, in the units of the update).

    Returns
    -------
    clipped : dict of str to ndarray
        New arrays: unchanged values if the norm was at most C, else all scaled by the
        same factor so that the norm is at most C (a margin of a few units in the last
        place of the least precise dtype keeps rounding from pushing it above C).
    norm : float
        The L2 norm before clipping. It depends on private data: log it only where the
        data owner alone can read it.

    Raises
    ------
    fednb.errors.InvalidInput
        Non-numeric or non-finite values, or a bad ``clip``.
    """
    c = _check_scale("clip", clip, allow_zero=False)
    arrays: dict[str, FloatArray] = {}
    for name, value in tensors.items():
        a = np.asarray(value)
        if a.dtype.kind not in "biuf":
            raise InvalidInput(f"tensor {name!r} has non-numeric dtype {a.dtype}; updates are real arrays")
        arrays[name] = a if a.dtype.kind == "f" else a.astype(np.float64)
    norm = math.sqrt(math.fsum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values()))
    if not math.isfinite(norm):
        raise InvalidInput("the update holds NaN or infinite values (or overflows); it cannot be clipped")
    if norm <= c:
        return {k: a.copy() for k, a in arrays.items()}, norm
    eps = max((float(np.finfo(a.dtype).eps) for a in arrays.values()), default=0.0)
    scale = c / norm * (1.0 - 4.0 * eps)
    return {k: (a.astype(np.float64) * scale).astype(a.dtype) for k, a in arrays.items()}, norm


def gaussian_mechanism(
    tensors: Mapping[str, Array], clip: float, noise_multiplier: float, noise: SecureNoise
) -> dict[str, FloatArray]:
    """Clip an update to L2 norm ``clip``, then add N(0, (noise_multiplier * clip)^2) per coordinate.

    Record the release as ``GaussianEvent(noise_multiplier, sensitivity_factor=2.0)``
    (replace-one adjacency) for ``update`` runs.

    Parameters
    ----------
    tensors
        The update: named numeric arrays.
    clip
        Clipping norm C (> 0).
    noise_multiplier
        z, noise standard deviation over C (> 0; zero noise is not a DP release).
    noise
        The secure noise source.

    Returns
    -------
    dict of str to ndarray
        The noised update, with the dtypes :func:`clip_l2` returns.
    """
    z = _check_scale("noise_multiplier", noise_multiplier, allow_zero=False)
    clipped, _ = clip_l2(tensors, clip)
    sigma = z * float(clip)
    return {
        k: (a.astype(np.float64) + noise.gaussian(a.shape, sigma)).astype(a.dtype) for k, a in clipped.items()
    }
