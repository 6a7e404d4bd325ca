"""The analytic Gaussian mechanism in closed form (Balle & Wang 2018, Theorem 8).

A Gaussian mechanism whose noise standard deviation is sigma times its L2 sensitivity
is (epsilon, delta)-DP exactly when

    delta >= Phi(1/(2 sigma) - epsilon sigma) - exp(epsilon) Phi(-1/(2 sigma) - epsilon sigma).

The bound is tight, and a composition of Gaussian mechanisms with ratios sigma_i is
again exactly a Gaussian mechanism with 1/sigma^2 = sum_i 1/sigma_i^2 (Dong, Roth & Su
2019, Corollary 3.3), so this formula is the exact privacy curve of any number of
Gaussian releases.
"""

from __future__ import annotations

import math

from fednb.errors import InvalidInput

__all__ = ["analytic_gaussian_delta", "analytic_gaussian_epsilon"]


def _check_sigma(sigma_over_sensitivity: float) -> float:
    s = float(sigma_over_sensitivity)
    if not (math.isfinite(s) and s > 0):
        raise InvalidInput(f"sigma_over_sensitivity must be finite and > 0, got {sigma_over_sensitivity!r}")
    return s


def _log_delta(mu: float, epsilon: float) -> float:
    """ln delta(epsilon) for a Gaussian mechanism with mu = sensitivity / sigma, stably."""
    from scipy.special import log_ndtr

    a = float(log_ndtr(mu / 2 - epsilon / mu))
    b = epsilon + float(log_ndtr(-mu / 2 - epsilon / mu))
    if b >= a:  # only through rounding, when delta underflows; finite keeps brentq happy
        return -1e300
    return a + math.log(-math.expm1(b - a))


def analytic_gaussian_delta(sigma_over_sensitivity: float, epsilon: float) -> float:
    """The exact delta of one Gaussian release at a given epsilon.

    Parameters
    ----------
    sigma_over_sensitivity
        Noise standard deviation over L2 sensitivity (unitless, > 0).
    epsilon
        Privacy loss bound (nats, >= 0).

    Returns
    -------
    float
        The smallest delta (probability, in [0, 1)) for which the release is
        (epsilon, delta)-DP.
    """
    s = _check_sigma(sigma_over_sensitivity)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise InvalidInput(f"epsilon must be finite and >= 0, got {epsilon!r}")
    return math.exp(_log_delta(1.0 / s, float(epsilon)))


def analytic_gaussian_epsilon(sigma_over_sensitivity: float, delta: float) -> float:
    """The exact epsilon of one Gaussian release at a given delta.

    Solves Balle & Wang's (2018, Theorem 8) delta(epsilon) = ``delta`` for epsilon with
    Brent's method on ln delta (absolute tolerance 1e-12 in epsilon).

    Parameters
    ----------
    sigma_over_sensitivity
        Noise standard deviation over L2 sensitivity (unitless, > 0).
    delta
        Target delta (probability, in (0, 1)).

    Returns
    -------
    float
        The smallest epsilon (nats, >= 0) with the release (epsilon, delta)-DP.

    Examples
    --------
    >>> round(analytic_gaussian_epsilon(4.0, 1e-6), 4)
    1.0607
    """
    from scipy.optimize import brentq

    s = _check_sigma(sigma_over_sensitivity)
    if not (0 < delta < 1):
        raise InvalidInput(f"delta must be in (0, 1), got {delta!r}")
    mu, target = 1.0 / s, math.log(delta)
    if _log_delta(mu, 0.0) <= target:
        return 0.0
    hi = max(1.0, mu * mu)
    while _log_delta(mu, hi) > target:
        hi *= 2.0
    root = brentq(lambda e: _log_delta(mu, e) - target, 0.0, hi, xtol=1e-12, rtol=1e-15, maxiter=500)
    return float(root)
