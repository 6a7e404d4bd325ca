"""The notebook workflow: ``@remote``, ``%%fednb``, ``Query``, ``DPSGD``, ``Federation``,
``simulate`` and the partition helpers."""

from fednb.scientist._driver import Driver, RoundFailed
from fednb.scientist._federation import Federation, card_differences, simulate
from fednb.scientist._history import ClientRecord, History
from fednb.scientist._kinds import DPSGD, DPSGDSpec, Query
from fednb.scientist._magic import load_ipython_extension
from fednb.scientist._partition import dirichlet_split, feature_shift, iid_split, quantity_skew
from fednb.scientist._remote import RemoteFunction, parse_params, remote
from fednb.scientist._spec import TrainingSpec

__all__ = [
    "DPSGD",
    "ClientRecord",
    "DPSGDSpec",
    "Driver",
    "Federation",
    "History",
    "Query",
    "RemoteFunction",
    "RoundFailed",
    "TrainingSpec",
    "card_differences",
    "dirichlet_split",
    "feature_shift",
    "iid_split",
    "load_ipython_extension",
    "parse_params",
    "quantity_skew",
    "remote",
    "simulate",
]
