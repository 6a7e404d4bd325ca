"""FedAdam, FedYogi and FedAdagrad: adaptive server optimisers over the clients' mean update.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar and McMahan (2021), "Adaptive
Federated Optimization", ICLR, Algorithm 2. With ``delta`` the example-weighted mean of
``client - global`` (the negated pseudo-gradient)::

    m  = beta1 * m + (1 - beta1) * delta
    v  = v + delta^2                                           (FedAdagrad)
    v  = beta2 * v + (1 - beta2) * delta^2                     (FedAdam)
    v  = v - (1 - beta2) * delta^2 * sign(v - delta^2)         (FedYogi)
    global = global + eta * m / (sqrt(v) + tau)

As in the paper there is no bias correction. ``m`` and ``v`` start at zero (as in
Flower); ``tau`` keeps the denominator positive and bounds the first steps. The three
share :class:`_FedOpt` and differ only in the update of ``v``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import numpy as np

from fednb.errors import InvalidInput
from fednb.strategies._base import MeanStrategy, StateDict, check_flat, check_int, check_real
from fednb.typing import FloatArray

__all__ = ["FedAdagrad", "FedAdam", "FedYogi"]


class _FedOpt(MeanStrategy):
    """Shared server-optimiser step of FedAdam, FedYogi and FedAdagrad (Reddi et al. 2021)."""

    def __init__(
        self, *, eta: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
        fraction: float = 1.0,
    ) -> None:
        super().__init__(fraction=fraction)
        self.eta = check_real("eta", eta, 0.0, open_low=True)
        self.beta1 = check_real("beta1", beta1, 0.0, 1.0, open_high=True)
        self.beta2 = check_real("beta2", beta2, 0.0, 1.0, open_high=True)
        self.tau = check_real("tau", tau, 0.0, open_low=True)
        self.steps = 0
        self.m: FloatArray | None = None
        self.v: FloatArray | None = None

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {"eta": self.eta, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau,
                **super().hyperparameters}

    @abc.abstractmethod
    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        """The new ``v`` from the old one and ``delta ** 2``."""

    def server_step(self, global_vec: FloatArray, delta: FloatArray) -> FloatArray:
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(delta), np.zeros_like(delta)
        if self.m.shape != delta.shape:
            raise InvalidInput(
                f"{type(self).__name__} holds state for {self.m.size} parameters, the update has "
                f"{delta.size}; start a new strategy for a new model"
            )
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * delta
        self.v = self._second_moment(self.v, delta * delta)
        self.steps += 1
        return global_vec + self.eta * self.m / (np.sqrt(self.v) + self.tau)

    def state_dict(self) -> StateDict:
        """``steps`` and, after the first step, copies of ``m`` and ``v``."""
        state: StateDict = {"steps": self.steps}
        if self.m is not None and self.v is not None:
            state["m"], state["v"] = self.m.copy(), self.v.copy()
        return state

    def load_state_dict(self, state: Mapping[str, FloatArray | float | int]) -> None:
        """Restore ``steps``, ``m`` and ``v`` from :meth:`state_dict`'s output."""
        name = type(self).__name__
        if set(state) not in ({"steps"}, {"steps", "m", "v"}):
            raise InvalidInput(f"{name} state holds steps (and m and v after a step), got {sorted(state)}")
        steps = check_int("steps", state["steps"], 0)
        if "m" not in state:
            self.steps, self.m, self.v = steps, None, None
            return
        m, v = check_flat(state["m"], f"{name} state m"), check_flat(state["v"], f"{name} state v")
        if m.shape != v.shape or (v < 0).any():
            raise InvalidInput(f"{name} state needs m and v of one shape and v >= 0")
        self.steps, self.m, self.v = steps, m.copy(), v.copy()


class FedAdam(_FedOpt):
    """FedAdam (Reddi et al. 2021): Adam on the server over the clients' mean update.

    Parameters
    ----------
    eta
        Server learning rate, > 0; default 0.1.
    beta1
        Momentum decay in [0, 1); default 0.9.
    beta2
        Second-moment decay in [0, 1); default 0.99.
    tau
        Adaptivity: added to ``sqrt(v)``, > 0; default 1e-3.
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.
    """

    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


class FedYogi(_FedOpt):
    """FedYogi (Reddi et al. 2021): Yogi's additive second moment, steadier than Adam's.

    Parameters are those of :class:`FedAdam` (default eta 0.1, beta1 0.9, beta2 0.99,
    tau 1e-3).
    """

    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        return v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)


class FedAdagrad(_FedOpt):
    """FedAdagrad (Reddi et al. 2021): the second moment sums every squared update.

    Parameters
    ----------
    eta
        Server learning rate, > 0; default 0.1.
    beta1
        Momentum decay in [0, 1); default 0.9.
    tau
        Adaptivity: added to ``sqrt(v)``, > 0; default 1e-3.
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.
    """

    def __init__(
        self, *, eta: float = 0.1, beta1: float = 0.9, tau: float = 1e-3, fraction: float = 1.0
    ) -> None:
        super().__init__(eta=eta, beta1=beta1, tau=tau, fraction=fraction)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in super().hyperparameters.items() if k != "beta2"}

    def _second_moment(self, v: FloatArray, delta_sq: FloatArray) -> FloatArray:
        return v + delta_sq
