"""The notebook workflow: ``@remote``, ``%%fednb`` and running on mocks."""

from fednb.scientist._magic import load_ipython_extension
from fednb.scientist._remote import RemoteFunction, parse_params, remote

__all__ = ["RemoteFunction", "load_ipython_extension", "parse_params", "remote"]
