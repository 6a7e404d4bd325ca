"""FedProx: FedAvg whose clients add a proximal term to their local objective.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith (2020), "Federated Optimization in
Heterogeneous Networks", MLSys, Algorithm 2: client k minimises
``F_k(w) + mu / 2 * ||w - w_global||^2``; the server aggregates as FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fednb.errors import InvalidInput
from fednb.strategies._base import ParamValue, RoundConfig, check_real
from fednb.strategies._fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg aggregation, a proximal term on the clients.

    The strategy only tells the clients ``mu``: :meth:`configure_round` adds it to the
    round's parameters. The client function receives ``mu`` and the global weights (its
    ``weights`` argument) and must itself add ``mu * (w - weights)`` to its gradient (the
    gradient of ``mu / 2 * ||w - weights||^2``). Declare ``mu`` in the request's parameter
    schema so the data owner approves it.

    Parameters
    ----------
    mu
        Proximal coefficient, >= 0 (0 is FedAvg); Li et al. try 0.001 to 1.
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.
    """

    def __init__(self, *, mu: float, fraction: float = 1.0) -> None:
        super().__init__(fraction=fraction)
        self.mu = check_real("mu", mu, 0.0)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {"mu": self.mu, **super().hyperparameters}

    def configure_round(self, server_round: int, params: Mapping[str, ParamValue]) -> RoundConfig:
        """The scientist's parameters plus ``mu``.

        Raises
        ------
        InvalidInput
            If ``params`` already holds a different ``mu``.
        """
        config = super().configure_round(server_round, params)
        if "mu" in config.params and config.params["mu"] != self.mu:
            raise InvalidInput(
                f"params hold mu={config.params['mu']!r} but FedProx(mu={self.mu!r}) sets it; drop one"
            )
        config.params["mu"] = self.mu
        return config
