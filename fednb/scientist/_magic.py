"""``%%fednb``: register the function a cell defines as a remote function.

``%load_ext fednb`` once, then::

    %%fednb --kind update --params '{"lr": ["float", 0.0001, 1.0]}' --metrics '{"loss": [0, 10]}'
    def train(data, weights, lr=0.1):
        ...

The cell runs as usual, and its function name is rebound to a
:class:`~fednb.scientist.RemoteFunction` built from the cell's exact text.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
from typing import Any

from fednb.errors import InvalidInput
from fednb.scientist._remote import RemoteFunction, strip_decorators

__all__ = ["fednb_cell", "load_ipython_extension", "parse_magic_line"]


def parse_magic_line(line: str) -> dict[str, Any]:
    """Parse ``--kind K --params JSON --metrics JSON``."""
    parser = argparse.ArgumentParser(prog="%%fednb", add_help=False, exit_on_error=False)
    parser.add_argument("--kind", default="update")
    parser.add_argument("--params", default="{}")
    parser.add_argument("--metrics", default="{}")
    try:
        ns, extra = parser.parse_known_args(shlex.split(line))
        if extra:
            raise ValueError(f"unexpected arguments {extra}")
        return {"kind": ns.kind, "params": json.loads(ns.params), "metrics": json.loads(ns.metrics)}
    except (argparse.ArgumentError, json.JSONDecodeError, ValueError) as exc:
        raise InvalidInput(f"%%fednb: {exc}. Usage: %%fednb [--kind update] "
                           "[--params JSON] [--metrics JSON]") from None


def fednb_cell(line: str, cell: str, namespace: dict[str, Any]) -> RemoteFunction:
    """Run ``cell`` in ``namespace`` and rebind its one function as a RemoteFunction."""
    tree = ast.parse(cell)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(defs) != 1 or len(tree.body) != 1:
        raise InvalidInput("a %%fednb cell holds exactly one function definition and nothing else")
    name = defs[0].name
    exec(compile(cell, f"<%%fednb {name}>", "exec"), namespace)  # noqa: S102 - the user's own cell
    opts = parse_magic_line(line)
    rf = RemoteFunction(namespace[name], kind=opts["kind"], params=opts["params"],
                        metrics={k: tuple(v) for k, v in opts["metrics"].items()},
                        source=strip_decorators(cell, name))
    namespace[name] = rf
    return rf


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%fednb`` (``%load_ext fednb``)."""

    def magic(line: str, cell: str) -> RemoteFunction:
        return fednb_cell(line, cell, ipython.user_ns)

    ipython.register_magic_function(magic, magic_kind="cell", magic_name="fednb")
