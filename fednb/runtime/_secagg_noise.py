"""Distributed discrete noise for secure aggregation: each member adds a share of it.

With distributed noise a member's update enters the round clipped but not noised, and
every member adds a discrete Gaussian share N_Z(0, s^2) (``config.noise_sigma``, signed
with the round) to its quantised update. The protocol unmasks a sum only with at least
``threshold`` survivors, so the sum carries at least t shares: a member relies on that,
and on nothing the orchestrator says beyond the signed settings. It is charged a
:class:`fednb.privacy.DistributedDiscreteGaussianEvent` for t shares, in place of its
full local noise, only when that charges less; otherwise it adds its own full noise, as
without distributed noise (and the share all the same, which only adds noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fednb.privacy import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    Event,
    GaussianEvent,
    SecureNoise,
    clip_l2,
    grid_gaussian,
)
from fednb.protocol import ClientDP, SecAggConfig
from fednb.secagg import scale_for
from fednb.typing import FloatArray

__all__ = ["SecAggInput", "distributed_event", "secagg_input"]


def distributed_event(config: SecAggConfig, name: str, clip: float, metrics: bool = False,
                      noise_multiplier: float = 1.0) -> Event | None:
    """What the round's distributed noise guarantees ``name`` (None without it).

    ``name``'s clipped update (L2 norm at most ``clip``) enters the sum weighted by its
    share w of the round's weights (examples, times staleness factors) and quantised at the
    round's scale: within C = clip w scale + sqrt(d) quantised units (stochastic rounding
    moves each of the d coordinates by under one), so its sensitivity is 2C; the sum's noise
    is at least sqrt(t) s. With ``metrics``, the metric vector's own Gaussian release at
    ``noise_multiplier`` is composed in.
    """
    if config.noise_sigma is None or config.noise_sigma < 0.5:  # Proposition 14 needs s >= 1/2
        return None
    w = config.weight_share(name)
    c = clip * w * scale_for(config.bound, len(config.members)) + math.sqrt(config.size)
    t = config.threshold
    event: Event = DistributedDiscreteGaussianEvent(config.noise_sigma * math.sqrt(t) / c, t,
                                                    config.noise_sigma, config.size)
    if metrics:
        event = ComposedEvent((event, GaussianEvent(noise_multiplier, sensitivity_factor=1.0)))
    return event


@dataclass(frozen=True)
class SecAggInput:
    """What a member puts into a round: its vector, its noise share's source, its charge.

    ``event`` is the charge that replaces the run's full local one (None: keep that one).
    """

    vector: FloatArray
    noise: Callable[[int, float], np.ndarray]
    event: Event | None = None


def secagg_input(config: SecAggConfig, name: str, vector: FloatArray, *, dp: ClientDP | None,
                 deferred: bool, metrics: bool, noise: SecureNoise,
                 accept: Callable[[Event], bool]) -> SecAggInput:
    """``name``'s input to the round ``config``.

    Parameters
    ----------
    vector
        The flat update as kept for the round: noised already unless ``deferred``.
    dp
        The run's client-level DP (None: no DP).
    deferred
        The update was clipped with its noise deferred (``OutputPolicy.defer_noise``).
    metrics
        The run also released noised metrics (composed into the distributed charge).
    noise
        The CSPRNG source of both the share and, on fallback, the full local noise.
    accept
        Given the distributed charge, whether to take it in place of the local one: the
        caller's ledger says whether it charges less.
    """
    def share(n: int, sigma: float) -> np.ndarray:
        return noise.discrete_gaussian(n, sigma)

    if not deferred or dp is None:
        return SecAggInput(vector, share)
    # Both charges below assume an L2 norm of at most clip: clip again here, whatever path
    # (a compression, a later change) the kept vector took since the output policy clipped it.
    vector = clip_l2({"v": vector}, dp.clip)[0]["v"]
    event = distributed_event(config, name, dp.clip, metrics, dp.noise_multiplier)
    if event is not None and accept(event):
        return SecAggInput(vector, share, event)
    # the round cannot carry this member's noise: its own full noise, as without distribution
    # (on the grid, as the output policy would have released it: no floating-point channel)
    full = grid_gaussian({"v": vector}, 2.0 * dp.clip, dp.noise_multiplier * dp.clip, noise)["v"]
    return SecAggInput(full.astype(vector.dtype, copy=False), share)
