"""FedAdamW: FedAdam with decoupled weight decay on the server, added by one hook.

Loshchilov and Hutter (2019), "Decoupled Weight Decay Regularization", ICLR, Algorithm 2
(AdamW): the decay shrinks the weights apart from the adaptive step,
``theta = theta - eta * (m / (sqrt(v) + tau) + lambda * theta)``, instead of being added to
the gradient, where Adam's normalisation would scale it per coordinate. Here the server
step of FedAdam (Reddi et al. 2021, Algorithm 2) with the pseudo-gradient in place of the
gradient, as in :mod:`fednb.strategies._fedopt`.

This module is the worked example of extending the round loop (docs/federated.md,
"Extending the loop"): the new rule overrides one hook, :meth:`server_step`, and inherits
everything else (admission, the weighted mean, secure sums, state checkpoints).
"""

from __future__ import annotations

from typing import Any

from fednb.errors import InvalidInput
from fednb.strategies._base import check_real
from fednb.strategies._fedopt import FedAdam
from fednb.typing import FloatArray

__all__ = ["FedAdamW"]


class FedAdamW(FedAdam):
    """FedAdam with decoupled weight decay (Loshchilov and Hutter 2019).

    ``global = (1 - eta * weight_decay) * global + eta * m / (sqrt(v) + tau)``, with ``m``
    and ``v`` FedAdam's moments of the mean update. ``weight_decay=0`` is FedAdam.

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
    weight_decay
        lambda, the fraction of the weights removed per unit of ``eta`` each round, >= 0
        and at most ``1 / eta``; default 0.01.
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.

    Examples
    --------
    >>> import numpy as np
    >>> from fednb.strategies import ClientUpdate, FedAdamW
    >>> s = FedAdamW(eta=0.1, weight_decay=0.5)
    >>> s.aggregate(np.ones(2), [ClientUpdate(np.ones(2), 10, "a")]).tolist()  # no update: decay only
    [0.95, 0.95]
    """

    def __init__(self, *, eta: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 weight_decay: float = 0.01, fraction: float = 1.0) -> None:
        super().__init__(eta=eta, beta1=beta1, beta2=beta2, tau=tau, fraction=fraction)
        self.weight_decay = check_real("weight_decay", weight_decay, 0.0)
        if self.eta * self.weight_decay > 1.0:
            raise InvalidInput(f"eta * weight_decay must be at most 1 (it is the fraction of the weights "
                               f"removed each round), got {self.eta * self.weight_decay:g}")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters, "weight_decay": self.weight_decay}

    def server_step(self, global_vec: FloatArray, delta: FloatArray) -> FloatArray:
        # decoupled: the decay scales the weights, never the (normalised) step
        return super().server_step((1.0 - self.eta * self.weight_decay) * global_vec, delta)
