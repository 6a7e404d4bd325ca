"""Calibrating noise to a privacy target, and back.

Both directions build the ledger a plan would write, and ask an accountant about it:

- ``update`` releases (``sampling_rate=None``): ``runs`` Gaussian releases, each with
  noise ``z * C`` on an update of sensitivity ``sensitivity_factor * C`` (default
  ``2 * GRID_SLACK``: replace-one, and the rounding to the noise grid, as a domain charges);
- DP-SGD (``sampling_rate=q``): ``runs * steps`` Poisson-subsampled Gaussian steps with
  noise multiplier z under replace-one adjacency, one record's term at most
  ``GRID_SLACK * C`` (as a domain charges them; ``sensitivity_factor`` is not used).

Examples
--------
>>> round(epsilon_for(8.0, 1e-6), 2)  # one update release, z = 8, sensitivity 2C
1.06
>>> z = noise_multiplier_for(1.0, 1e-6)
>>> 8.0 < z < 8.6 and epsilon_for(z, 1e-6) <= 1.0
True
"""

from __future__ import annotations

import math
import numbers

from fednb.errors import InvalidInput
from fednb.privacy._accountant import Accountant, accountant_for
from fednb.privacy._analytic import analytic_gaussian_epsilon
from fednb.privacy._events import Event, GaussianEvent, RepeatedEvent, ReplaceOneSubsampledGaussianEvent
from fednb.privacy._noise import GRID_SLACK

__all__ = ["analytic_gaussian_epsilon", "epsilon_for", "noise_multiplier_for"]

_RTOL = 1e-4
"""Relative tolerance of :func:`noise_multiplier_for` on the noise multiplier."""
_Z_MIN, _Z_MAX = 1e-4, 1e6


def _ledger(
    noise_multiplier: float, runs: int, sensitivity_factor: float, sampling_rate: float | None,
    steps: int | None,
) -> Event:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InvalidInput(f"runs must be an integer >= 1, got {runs!r}")
    if sampling_rate is None:
        if steps is not None:
            raise InvalidInput("steps only applies with sampling_rate (DP-SGD); leave it out for updates")
        return RepeatedEvent(GaussianEvent(noise_multiplier, sensitivity_factor), runs)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInput(f"DP-SGD needs steps, an integer >= 1 per run; got {steps!r}")
    return RepeatedEvent(ReplaceOneSubsampledGaussianEvent(sampling_rate, noise_multiplier, GRID_SLACK),
                         runs * steps)


def _accountant(accountant: str | Accountant) -> Accountant:
    return accountant if isinstance(accountant, Accountant) else accountant_for(accountant)


def epsilon_for(
    noise_multiplier: float,
    delta: float,
    *,
    runs: int = 1,
    sensitivity_factor: float = 2.0 * GRID_SLACK,
    sampling_rate: float | None = None,
    steps: int | None = None,
    accountant: str | Accountant = "pld",
) -> float:
    """The epsilon spent by ``runs`` releases at a given noise multiplier.

    Parameters
    ----------
    noise_multiplier
        Noise standard deviation over the clipping norm C (unitless, > 0).
    delta
        Target delta (probability, in (0, 1)).
    runs
        Number of releases (default 1).
    sensitivity_factor
        L2 sensitivity over C of an update release (default 2 * GRID_SLACK: replace-one
        adjacency and the noise grid's rounding); not used for DP-SGD.
    sampling_rate
        Poisson sampling rate q in (0, 1] for DP-SGD; ``None`` (default) for updates.
    steps
        DP-SGD steps per run; only with ``sampling_rate``.
    accountant
        ``"pld"`` (default), ``"rdp"`` or an :class:`Accountant`.

    Returns
    -------
    float
        Epsilon (nats).
    """
    ledger = _ledger(noise_multiplier, runs, sensitivity_factor, sampling_rate, steps)
    return _accountant(accountant).epsilon(ledger, delta)


def noise_multiplier_for(
    epsilon: float,
    delta: float,
    *,
    runs: int = 1,
    sensitivity_factor: float = 2.0 * GRID_SLACK,
    sampling_rate: float | None = None,
    steps: int | None = None,
    accountant: str | Accountant = "pld",
) -> float:
    """The smallest noise multiplier whose ``runs`` releases spend at most ``epsilon``.

    Bisection on ln z over the accountant's answer. The result z satisfies
    ``epsilon_for(z, ...) <= epsilon`` (checked, not assumed) and lies within a
    relative 1e-4 above the smallest such z, so the target is met within about 0.01%
    (Gaussian epsilon is roughly proportional to 1/z).

    Parameters
    ----------
    epsilon
        Target epsilon (nats, > 0).
    delta
        Target delta (probability, in (0, 1)).
    runs, sensitivity_factor, sampling_rate, steps, accountant
        As in :func:`epsilon_for`.

    Returns
    -------
    float
        Noise multiplier z (noise standard deviation over C, unitless).

    Raises
    ------
    fednb.errors.InvalidInput
        Bad arguments, or a target no noise multiplier up to 1e6 reaches.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not (
        math.isfinite(epsilon) and epsilon > 0
    ):
        raise InvalidInput(f"target epsilon must be finite and > 0 (nats), got {epsilon!r}")
    acc = _accountant(accountant)

    def fits(z: float) -> bool:
        return acc.epsilon(_ledger(z, runs, sensitivity_factor, sampling_rate, steps), delta) <= epsilon

    lo, hi = 1.0, 1.0
    if fits(hi):
        while lo > _Z_MIN and fits(lo):
            hi, lo = lo, lo / 2
        if lo <= _Z_MIN:
            return hi
    else:
        while not fits(hi):
            lo, hi = hi, hi * 2
            if hi > _Z_MAX:
                raise InvalidInput(
                    f"no noise multiplier up to {_Z_MAX:g} reaches epsilon {epsilon!r} at delta {delta!r}"
                    f" over {runs} run(s); allow a larger epsilon or fewer runs"
                )
    while hi / lo > 1 + _RTOL:
        mid = math.sqrt(lo * hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
