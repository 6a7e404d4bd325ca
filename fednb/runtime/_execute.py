"""Compile approved source text and call it on a dataset: the one execution path.

The domain's sandboxed worker, ``simulate()`` and ``run_on_mock()`` all call
:func:`compile_function` and :func:`call_function`, so code behaves the same on mock
data in a notebook and on private data in a hospital.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from fednb.errors import InvalidInput
from fednb.protocol import Update, as_update
from fednb.typing import Weights

__all__ = ["call_function", "compile_function", "function_namespace"]


def function_namespace() -> dict[str, Any]:
    """Names a remote function may use without importing them: ``np``, ``xr``, ``fednb``."""
    import fednb

    return {"__name__": "__fednb_remote__", "np": np, "xr": xr, "fednb": fednb}


def compile_function(source: str, name: str) -> Callable[..., Any]:
    """Execute ``source`` in a fresh namespace and return the function called ``name``.

    Raises
    ------
    InvalidInput
        If the source does not define a callable ``name``.
    """
    namespace = function_namespace()
    exec(compile(source, f"<fednb:{name}>", "exec"), namespace)  # noqa: S102 - approved code
    fn = namespace.get(name)
    if not callable(fn):
        raise InvalidInput(f"the source does not define a function called {name!r}")
    return fn  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=4096)
def _accepts_weights(fn: Callable[..., Any]) -> bool:
    try:
        return "weights" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def call_function(
    fn: Callable[..., Any], data: xr.Dataset, weights: Weights | None, params: dict[str, Any]
) -> Update:
    """Call ``fn(data, [weights,] **params)`` and normalise what it returns to an Update.

    ``weights`` is passed only when the function has a parameter of that name.
    """
    if _accepts_weights(fn):
        copied = {k: np.array(v, copy=True) for k, v in (weights or {}).items()}
        return as_update(fn(data, copied, **params))
    return as_update(fn(data, **params))
