"""FedAvg: the example-weighted mean of the clients' new weights.

McMahan, Moore, Ramage, Hampson and Agüera y Arcas (2017), "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS, Algorithm 1: the server
replaces the global model by ``sum_k n_k w_k / sum_k n_k``.
"""

from __future__ import annotations

from fednb.strategies._base import MeanStrategy
from fednb.typing import FloatArray

__all__ = ["FedAvg"]


class FedAvg(MeanStrategy):
    """Federated averaging, weighted by ``num_examples`` (McMahan et al. 2017).

    Composes with client DP, secure aggregation (it needs only the weighted sum) and
    compression; for asynchronous rounds use :class:`FedBuff`.

    Parameters
    ----------
    fraction
        Fraction of the domains sampled each round, in (0, 1]; default 1.0.

    Examples
    --------
    >>> import numpy as np
    >>> from fednb.strategies import ClientUpdate, FedAvg
    >>> ups = [ClientUpdate(np.array([1.0, 0.0]), 30, "a"), ClientUpdate(np.array([0.0, 1.0]), 10, "b")]
    >>> FedAvg().aggregate(np.zeros(2), ups).tolist()
    [0.75, 0.25]
    """

    plain_mean = True

    def server_step(self, global_vec: FloatArray, delta: FloatArray) -> FloatArray:
        return global_vec + delta
