"""Noise from a cryptographically secure generator, and the clip-then-noise mechanism.

DP noise must be unpredictable to whoever sees the output: a seeded PRNG (NumPy's
``default_rng``, Mersenne Twister) can be reconstructed from its outputs or its seed,
and a job running in the same process could monkeypatch it. :class:`SecureNoise`
therefore never touches ``numpy.random``: it draws its bits from a ChaCha20 keystream
(``cryptography``, OpenSSL) under a 256-bit key from ``os.urandom`` that it alone holds,
and shapes them with NumPy arithmetic only.

Floating-point samplers leak through the low bits of ``x + noise`` (Mironov 2012; Jin
et al., "Are We There Yet?", 2022): the set of floats a sampler can reach differs from
one input to its neighbour. :func:`grid_gaussian` closes that channel: it rounds the
input to a power-of-two grid and adds an exact integer from the discrete Gaussian
(:meth:`SecureNoise.discrete_gaussian`), so the output is a function of an integer
alone. Every ``update`` release (tensors and metrics, :func:`gaussian_mechanism` and
``fednb.runtime.apply_output_policy``) goes through it. The continuous samplers
(:meth:`SecureNoise.gaussian`, Box-Muller using one half of each pair;
:meth:`SecureNoise.laplace`, inverse CDF) are the textbook ones and still leak low bits:
use them only where their output is not released as ``x + noise`` in float64.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fednb.errors import InvalidInput
from fednb.kernels import all_finite, box_muller
from fednb.typing import Array, FloatArray

__all__ = ["GRID_SLACK", "SecureNoise", "clip_l2", "gaussian_mechanism", "grid_gaussian"]

Shape = int | tuple[int, ...]

_CHUNK = 1 << 16
"""Samples shaped per pass: temporaries this size stay in cache and avoid page faults."""
GRID_SLACK: float = 1 + 2**-10
"""Factor on the L2 sensitivity of a :func:`grid_gaussian` release: rounding to its grid
moves each of two neighbouring inputs by at most sensitivity * 2^-11."""
_MAX_DISCRETE_SIGMA = 2.0**47
"""Above this, 36.8 t (the largest geometric a 53-bit uniform gives) passes 2^53."""
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

        Only the cosine half of each Box-Muller pair is used: the two halves of one pair,
        (r cos t, r sin t), together give away r^2 and t, hence the uniforms behind them,
        which is what lets an observer of ``x + noise`` test which ``x`` produced it (Jin
        et al. 2022). This costs two uniforms (16 keystream bytes) per sample instead of one.

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
        out = np.empty(n)
        spare = np.empty(min(n, _CHUNK))  # the sine halves: computed by the kernel, never released
        for i in range(0, n, _CHUNK):  # chunks that stay in cache: ~7x faster than whole arrays
            j = min(n, i + _CHUNK)
            box_muller(self.uniform(2 * (j - i)), s, out[i:j], spare[: j - i])
        return out.reshape(dims)

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

        Canonne, Kamath & Steinke (2020), Algorithms 2 and 3, vectorised: a discrete
        Laplace proposal of scale t = floor(sigma) + 1 (a sign bit and a geometric
        magnitude, -0 rejected), accepted with probability
        exp(-(|y| - sigma^2/t)^2 / (2 sigma^2)); rejected entries are drawn again (about
        1.3 proposals per sample once sigma is a few units). Probabilities are evaluated
        in float64 rather than with the paper's exact rational arithmetic: the geometric
        is floor(-t ln u) for a 53-bit uniform u, exact in distribution up to the 2^-53
        grid of u and a unit in the last place of the logarithm, and the acceptance test
        is written so that no intermediate overflows for any sigma allowed here.

        Parameters
        ----------
        shape
            Output shape.
        sigma
            Scale parameter (> 0, in integer units, at most 2^47 so that every proposal
            stays below 2^53 and is an exact integer in float64); the variance is close to
            sigma^2 for sigma >= 1.
        """
        s = _check_scale("sigma", sigma, allow_zero=False)
        if s > _MAX_DISCRETE_SIGMA:
            raise InvalidInput(f"sigma {sigma!r} is above 2^47: the sampler's integers would not be "
                               "exact in float64; use a coarser grid")
        dims, n = _size(shape)
        out = np.empty(n, dtype=np.int64)
        step = _CHUNK // 4  # 24 keystream bytes a sample: a quarter chunk stays in cache
        for i in range(0, n, step):
            self._discrete_gaussian_into(out[i : min(n, i + step)], s)
        return out.reshape(dims)

    def _discrete_gaussian_into(self, out: Array, s: float) -> None:
        t = math.floor(s) + 1.0
        shift = s * (s / t)  # sigma^2 / t, written so that it cannot overflow
        filled = 0
        while filled < out.size:
            # proposals are i.i.d. and chosen without looking at their values, so the first
            # accepted ones fill the output in order; ~1/0.7 proposals per missing sample
            m = (out.size - filled) * 3 // 2 + 16
            # two 64-bit words per proposal: the magnitude's uniform with the sign in its
            # lowest bit (below the 53 bits the uniform keeps), and the acceptance uniform
            raw = np.frombuffer(self.random_bytes(16 * m), dtype="<u8").reshape(2, m)
            negative = (raw[0] & np.uint64(1)) == 1
            u = np.right_shift(raw, np.uint64(11)) * 2.0**-53  # on the 2^-53 grid of [0, 1)
            with np.errstate(divide="ignore"):
                # u = 0 (probability 2^-53): an infinite magnitude, never accepted; an
                # acceptance uniform of 0 accepts, as one of 2^-53 would
                logs = np.log(u)
            g = logs[0]
            g *= -t
            np.floor(g, out=g)  # geometric: P(G >= j) = exp(-j / t)
            a = g - shift
            a /= s
            a *= a
            a *= -0.5  # ln of the acceptance probability, <= 0
            accept = (logs[1] < a) & ~(negative & (g == 0))
            np.negative(g, out=g, where=negative)
            kept = g[accept][: out.size - filled]
            out[filled : filled + kept.size] = kept
            filled += kept.size


def _l2_norm(arrays: list[Array]) -> float:
    """The L2 norm of all values together, float64; finite whenever every value is (a sum
    of squares that overflows is computed again on values scaled by their largest magnitude,
    so that a huge but finite update is clipped like any other, never refused)."""
    with np.errstate(over="ignore"):
        norm = math.sqrt(math.fsum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))
    if math.isfinite(norm) or not all(all_finite(a) for a in arrays if a.dtype.kind == "f"):
        return norm
    top = max(float(np.max(np.abs(a), initial=0.0)) for a in arrays)
    scaled = math.fsum(float(np.sum(np.square(a / top, dtype=np.float64))) for a in arrays)
    return top * math.sqrt(scaled)


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
    norm = _l2_norm(list(arrays.values()))
    if not math.isfinite(norm):
        raise InvalidInput("the update holds NaN or infinite values; it cannot be clipped")
    if norm <= c:
        return {k: a.copy() for k, a in arrays.items()}, norm
    eps = max((float(np.finfo(a.dtype).eps) for a in arrays.values()), default=0.0)
    scale = c / norm * (1.0 - 4.0 * eps)
    return {k: (a.astype(np.float64) * scale).astype(a.dtype) for k, a in arrays.items()}, norm


def _grid_step(sensitivity: float, d: int) -> float:
    """The largest power of two <= sensitivity * 2^-10 / sqrt(d)."""
    bound = sensitivity * 2.0**-10 / math.sqrt(d)
    step = math.ldexp(1.0, math.frexp(bound)[1] - 1)
    while step * math.sqrt(d) > sensitivity * 2.0**-10:  # float rounding at an exact power of two
        step /= 2
    return step


def grid_gaussian(tensors: Mapping[str, npt.ArrayLike], sensitivity: float, sigma: float,
                  noise: SecureNoise) -> dict[str, FloatArray]:
    """One Gaussian release on a power-of-two grid: the snapping defence against the
    floating-point attack.

    Each value x becomes ``(rint(x / gamma) + Z) * gamma`` with Z ~ N_Z(0, (sigma/gamma)^2)
    drawn by :meth:`SecureNoise.discrete_gaussian`, gamma the largest power of two
    <= ``sensitivity * 2^-10 / sqrt(d)`` and d the number of values over all tensors. The
    output is a function of the integers ``rint(x / gamma) + Z`` alone: its low bits say
    nothing of x (Mironov 2012; Jin et al. 2022).

    Parameters
    ----------
    tensors
        Named real arrays (an update, a metric vector), whose L2 distance between
        neighbouring datasets is at most ``sensitivity`` (the caller clips them).
    sensitivity
        That L2 sensitivity (> 0, units of the values).
    sigma
        Noise standard deviation per coordinate (> 0, units of the values).
    noise
        The secure noise source.

    Returns
    -------
    dict of str to ndarray
        float64 arrays of the input shapes, every value a multiple of gamma ({} when d is 0).

    Raises
    ------
    fednb.errors.InvalidInput
        Non-numeric or non-finite values, a bad ``sensitivity`` or ``sigma``, or
        ``sigma / gamma`` above 2^47 (an astronomically large noise multiplier).

    Notes
    -----
    Accounting: record the release with sensitivity ``sensitivity * GRID_SLACK``
    (:data:`GRID_SLACK` = 1 + 2^-10). Rounding moves each coordinate by at most gamma/2,
    each input by at most gamma sqrt(d) / 2 <= sensitivity * 2^-11 in L2, so two
    neighbouring rounded inputs, integer vectors in units of gamma, lie at most
    sensitivity * (1 + 2^-10) / gamma apart. The discrete Gaussian of scale sigma / gamma
    on such integer inputs is at least as private as the continuous Gaussian of that scale
    (Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", 2020:
    its Rényi divergences are at most the continuous one's, coordinate by coordinate; its
    (epsilon, delta) curve in d dimensions is the continuous one's up to a term of order
    tau = 10 sum_k exp(-2 pi^2 (sigma/gamma)^2 k / (k+1)), negligible here because
    sigma / gamma >= 2^10 sqrt(d) sigma / sensitivity: above 50 once sigma is a twentieth
    of the sensitivity, which puts tau below 1e-10000).

    Values are clamped to +-2^52 gamma before rounding (a projection onto a box: it never
    moves two inputs further apart) so that every integer is exact in float64; the noised
    integer k stays exact while |k| < 2^53, and beyond (only for noise of order 2^47
    gamma) float64 rounds k * gamma to a coarser power-of-two multiple of gamma: a
    function of the integer k all the same, so post-processing, private alike.
    """
    sens = _check_scale("sensitivity", sensitivity, allow_zero=False)
    s = _check_scale("sigma", sigma, allow_zero=False)
    arrays = {name: np.asarray(value) for name, value in tensors.items()}
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise InvalidInput(f"tensor {name!r} has non-numeric dtype {a.dtype}; releases are real")
    d = sum(a.size for a in arrays.values())
    if d == 0:
        return {}
    gamma = _grid_step(sens, d)
    flat = np.concatenate([a.ravel().astype(np.float64) for a in arrays.values()])
    if not all_finite(flat):
        raise InvalidInput("a release holds NaN or infinite values; clip or replace them first")
    flat /= gamma  # exact: a power of two (a tiny quotient rounds to 0 below all the same)
    np.clip(flat, -(2.0**52), 2.0**52, out=flat)
    np.rint(flat, out=flat)
    flat += noise.discrete_gaussian(d, s / gamma)  # integers below 2^53: exact sums
    flat *= gamma
    out: dict[str, FloatArray] = {}
    start = 0
    for name, a in arrays.items():
        out[name] = flat[start : start + a.size].reshape(a.shape)
        start += a.size
    return out


def gaussian_mechanism(
    tensors: Mapping[str, Array], clip: float, noise_multiplier: float, noise: SecureNoise
) -> dict[str, FloatArray]:
    """Clip an update to L2 norm ``clip``, then release it with :func:`grid_gaussian` at
    sensitivity 2 C (replace-one) and noise standard deviation ``noise_multiplier * C``.

    Record the release as ``GaussianEvent(noise_multiplier, sensitivity_factor=2 * GRID_SLACK)``
    (``fednb.runtime.update_event``).

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
        The noised update, with the dtypes :func:`clip_l2` returns (the grid values cast
        to them: post-processing).
    """
    z = _check_scale("noise_multiplier", noise_multiplier, allow_zero=False)
    clipped, _ = clip_l2(tensors, clip)
    c = float(clip)
    noised = grid_gaussian(clipped, 2.0 * c, z * c, noise)
    return {k: noised.get(k, a).astype(a.dtype, copy=False) for k, a in clipped.items()}  # d = 0: as is
