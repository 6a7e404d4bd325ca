"""Differential privacy: DP events, accountants, calibration and secure noise.

A release is recorded as an immutable event (:class:`GaussianEvent`, ...); an
:class:`Accountant` composes a ledger of events into epsilon for a delta (PLD by
default); :func:`noise_multiplier_for` calibrates noise to a target; :class:`SecureNoise`
draws the noise from a CSPRNG, :func:`grid_gaussian` releases values on a power-of-two
grid with discrete Gaussian noise (accounted at sensitivity times :data:`GRID_SLACK`), and
:func:`gaussian_mechanism` clips an update and releases it that way.

A leaf package: it imports nothing of fednb but ``fednb.errors`` and ``fednb.typing``.
"""

from fednb.privacy._accountant import Accountant, EventsLike, PLDAccountant, RDPAccountant, accountant_for
from fednb.privacy._analytic import analytic_gaussian_delta, analytic_gaussian_epsilon
from fednb.privacy._calibrate import epsilon_for, noise_multiplier_for
from fednb.privacy._events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    Event,
    GaussianEvent,
    LaplaceEvent,
    PureDPEvent,
    RepeatedEvent,
    ReplaceOneSubsampledGaussianEvent,
    SubsampledGaussianEvent,
    event_from_json,
    to_dp_accounting,
)
from fednb.privacy._noise import GRID_SLACK, SecureNoise, clip_l2, gaussian_mechanism, grid_gaussian

__all__ = [  # noqa: RUF022 - plain sorted(), as tests/unit/test_privacy.py pins it
    "Accountant",
    "ComposedEvent",
    "DistributedDiscreteGaussianEvent",
    "Event",
    "EventsLike",
    "GRID_SLACK",
    "GaussianEvent",
    "LaplaceEvent",
    "PLDAccountant",
    "PureDPEvent",
    "RDPAccountant",
    "RepeatedEvent",
    "ReplaceOneSubsampledGaussianEvent",
    "SecureNoise",
    "SubsampledGaussianEvent",
    "accountant_for",
    "analytic_gaussian_delta",
    "analytic_gaussian_epsilon",
    "clip_l2",
    "epsilon_for",
    "event_from_json",
    "gaussian_mechanism",
    "grid_gaussian",
    "noise_multiplier_for",
    "to_dp_accounting",
]
