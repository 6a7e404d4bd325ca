"""Aggregation strategies: small classes of hooks over flat float vectors.

A strategy configures a round (:meth:`Strategy.configure_round`), aggregates the flat
client updates (:meth:`Strategy.aggregate`, or :meth:`Strategy.aggregate_sum` from a
secure sum) and keeps its server-optimiser state (:meth:`Strategy.state_dict`). It owns
no loop and no transport: the round driver shared by ``Federation`` and ``simulate``
does, together with DP and secure aggregation. :func:`flatten` and :func:`unflatten`
convert named weights; :func:`compose_check` refuses combinations DESIGN.md rules out;
:func:`admit` is the one finiteness check every aggregated update goes through.

========================  ===============================================  ============
strategy                  paper                                            secure sum
========================  ===============================================  ============
:class:`FedAvg`           McMahan et al. 2017                              yes
:class:`FedProx`          Li et al. 2020                                   yes
:class:`FedAdam`,         Reddi et al. 2021                                yes
:class:`FedYogi`,
:class:`FedAdagrad`
:class:`FedAdamW`         Loshchilov and Hutter 2019 (on FedAdam)          yes
:class:`FedBuff`          Nguyen et al. 2022 (asynchronous)                yes
:class:`Median`           Yin et al. 2018                                  no (robust)
:class:`TrimmedMean`      Yin et al. 2018                                  no (robust)
:class:`Krum`             Blanchard et al. 2017 (``m > 1``: multi-Krum)    no (robust)
========================  ===============================================  ============

A leaf package: it imports nothing of fednb but ``fednb.errors`` and ``fednb.typing``.
"""

from fednb.strategies._admit import RoundUpdates, admit
from fednb.strategies._base import (
    ClientUpdate,
    MeanStrategy,
    ParamValue,
    RoundConfig,
    StateDict,
    Strategy,
)
from fednb.strategies._compose import compose_check
from fednb.strategies._fedadamw import FedAdamW
from fednb.strategies._fedavg import FedAvg
from fednb.strategies._fedbuff import FedBuff, StalenessFunction
from fednb.strategies._fedopt import FedAdagrad, FedAdam, FedYogi
from fednb.strategies._fedprox import FedProx
from fednb.strategies._krum import Krum
from fednb.strategies._layout import Layout, flatten, unflatten
from fednb.strategies._median import Median
from fednb.strategies._ops import (
    coordinate_median,
    krum_scores,
    pairwise_sq_distances,
    trimmed_mean,
    weighted_mean,
)
from fednb.strategies._trimmed_mean import TrimmedMean

__all__ = [
    "ClientUpdate",
    "FedAdagrad",
    "FedAdam",
    "FedAdamW",
    "FedAvg",
    "FedBuff",
    "FedProx",
    "FedYogi",
    "Krum",
    "Layout",
    "MeanStrategy",
    "Median",
    "ParamValue",
    "RoundConfig",
    "RoundUpdates",
    "StalenessFunction",
    "StateDict",
    "Strategy",
    "TrimmedMean",
    "admit",
    "compose_check",
    "coordinate_median",
    "flatten",
    "krum_scores",
    "pairwise_sq_distances",
    "trimmed_mean",
    "unflatten",
    "weighted_mean",
]
