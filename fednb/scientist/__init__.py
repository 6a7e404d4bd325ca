"""The notebook workflow: ``@remote``, ``%%fednb``, ``Query``, ``DPSGD`` and running on mocks."""

from fednb.scientist._kinds import DPSGD, Query
from fednb.scientist._magic import load_ipython_extension
from fednb.scientist._remote import RemoteFunction, parse_params, remote

__all__ = ["DPSGD", "Query", "RemoteFunction", "load_ipython_extension", "parse_params", "remote"]
