"""Released values that sit on a private value: a memorisation check for the owner.

Code that returns ``data.x.values[:3]`` releases patients' values as they are; a mean or
a trained weight almost never equals a private value exactly. For each released array
(and each metric) of a result, :func:`nearest_report` counts the finite values that equal
a value of a numeric private variable of the run's dataset, up to float rounding
(:data:`RTOL`: a float32 round trip stays well inside it), and says which of those private
values are rare (held by at most :data:`RARE` entries of their variable: a value that
many entries share, such as 0 or a category code, identifies nobody). It also gives the
released value nearest to any private value, with the distance.

Cost: one sort per numeric variable (``np.unique``) and a binary search per released
value, so it is cheap for tabular data; a variable of more than :data:`MAX_VALUES` values
(an image stack) is not checked and the report says so. The check reads private data,
so it runs in the domain's trusted process for the owner only (the domain's owner-only
``GET /runs/{id}/nearest`` and ``fednb domain results show``); nothing of it reaches a
scientist.

Examples
--------
>>> import numpy as np, xarray as xr
>>> private = xr.Dataset({"x": (("patient", "f"), np.array([[17.99, 1.0], [20.57, 1.0]]))})
>>> r = nearest_report({"first": np.array([17.99, 3.5])}, private)
>>> t = r["tensors"][0]
>>> t["matches"], t["rare_matches"], t["examples"][0]["index"]
(1, 1, [0])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from fednb.errors import PermissionDenied
from fednb.protocol import decode_message, decompress

if TYPE_CHECKING:
    from fednb.domain._domain import Domain
    from fednb.domain._store import UserRow

__all__ = ["MAX_VALUES", "RARE", "RTOL", "nearest_report", "run_nearest"]

RTOL = 1e-6
"""Relative distance under which a released value counts as equal to a private one."""
ATOL = 1e-12
"""Absolute floor of that distance (for values at or near zero)."""
RARE = 5
"""A private value held by at most this many entries of its variable is rare."""
MAX_VALUES = 20_000_000
"""Variables with more values than this are not checked (the sort would not be cheap)."""
EXAMPLES = 5
"""Matches listed per released array (the counts cover all of them)."""


def _num(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


class _Variable:
    """One private variable's distinct finite values, sorted, and how many entries hold each."""

    def __init__(self, name: str, values: np.ndarray) -> None:
        flat = np.asarray(values, dtype=np.float64).ravel()
        self.name = name
        self.values, self.holders = np.unique(flat[np.isfinite(flat)], return_counts=True)

    def nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per value of ``x``: the position of the nearest private value, and the distance."""
        hi = np.clip(np.searchsorted(self.values, x), 0, self.values.size - 1)
        lo = np.clip(hi - 1, 0, self.values.size - 1)
        d_lo, d_hi = np.abs(x - self.values[lo]), np.abs(x - self.values[hi])
        pos = np.where(d_lo <= d_hi, lo, hi)
        return pos, np.minimum(d_lo, d_hi)


def _variables(private: xr.Dataset) -> tuple[list[_Variable], list[str]]:
    checked, skipped = [], []
    for name, var in private.data_vars.items():
        if var.dtype.kind not in "biuf":
            continue  # text, dates: no released number is compared with them
        if var.size > MAX_VALUES:
            skipped.append(str(name))
            continue
        v = _Variable(str(name), var.values)
        if v.values.size:
            checked.append(v)
    return checked, skipped


def _flat(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    return np.asarray(arr, dtype=np.float64).ravel()


def _one(name: str, a: Any, variables: list[_Variable]) -> dict[str, Any]:
    arr = np.asarray(a)
    flat = _flat(arr)
    finite = np.flatnonzero(np.isfinite(flat))
    out: dict[str, Any] = {"name": name, "checked": int(finite.size), "matches": 0, "rare_matches": 0,
                           "variables": [], "examples": [], "nearest": None}
    if not finite.size or not variables:
        return out
    x = flat[finite]
    best_d = np.full(x.size, np.inf)
    best_var = np.zeros(x.size, dtype=np.int64)
    best_pos = np.zeros(x.size, dtype=np.int64)
    for k, v in enumerate(variables):
        pos, d = v.nearest(x)
        closer = d < best_d
        best_d[closer], best_var[closer], best_pos[closer] = d[closer], k, pos[closer]
    priv = np.array([variables[k].values[p] for k, p in zip(best_var, best_pos, strict=True)])
    holders = np.array([variables[k].holders[p] for k, p in zip(best_var, best_pos, strict=True)])
    hit = best_d <= ATOL + RTOL * np.abs(priv)
    rare = hit & (holders <= RARE)
    out.update(matches=int(hit.sum()), rare_matches=int(rare.sum()),
               variables=sorted({variables[k].name for k in best_var[hit]}))
    shape = arr.shape if arr.ndim else ()
    for i in np.flatnonzero(rare if rare.any() else hit)[:EXAMPLES]:
        out["examples"].append({
            "index": [int(j) for j in np.unravel_index(finite[i], shape)] if shape else [],
            "value": _num(float(x[i])), "variable": variables[best_var[i]].name,
            "holders": int(holders[i])})
    i = int(np.argmin(best_d))
    out["nearest"] = {"index": [int(j) for j in np.unravel_index(finite[i], shape)] if shape else [],
                      "value": _num(float(x[i])), "private": _num(float(priv[i])),
                      "variable": variables[best_var[i]].name, "distance": _num(float(best_d[i]))}
    return out


def nearest_report(weights: Mapping[str, Any], private: xr.Dataset,
                   metrics: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Per released array (then per metric, as ``metric NAME``): released values equal to a
    private value of ``private``, up to float rounding.

    Parameters
    ----------
    weights
        The released arrays, by name.
    private
        The run's private dataset (numeric variables are compared; others are ignored).
    metrics
        The released metrics, by name.

    Returns
    -------
    dict
        Plain JSON: ``tensors`` (per array: ``checked`` finite values, ``matches``,
        ``rare_matches``, the private ``variables`` matched, up to :data:`EXAMPLES`
        ``examples`` (index, value, variable, holders), and the ``nearest`` pair (index,
        value, private value, variable, distance)); ``warning`` (any rare match);
        ``skipped`` (variables too large to check); ``rtol`` and ``rare``, the rule used.
    """
    variables, skipped = _variables(private)
    items = list(weights.items()) + [(f"metric {k}", np.float64(v)) for k, v in (metrics or {}).items()]
    tensors = [_one(name, a, variables) for name, a in items]
    return {"version": 1, "rtol": RTOL, "rare": RARE, "skipped": skipped,
            "checked_variables": [v.name for v in variables],
            "warning": any(t["rare_matches"] for t in tensors), "tensors": tensors}


def run_nearest(dom: Domain, run_id: str, reader: UserRow) -> dict[str, Any]:
    """:func:`nearest_report` of run ``run_id``'s result (held or released) against its dataset.

    ``reader`` must be the owner: the result is read as :meth:`Runs.result` lets them, and
    the report describes private data.
    """
    if reader.role != "owner":
        raise PermissionDenied("the memorisation check reads private data: owner only")
    run = dom.runs.owner_view(run_id)
    header, tensors = decode_message(dom.runs.result(run_id, reader))
    report = nearest_report(decompress(tensors, header), dom.private(run.dataset),
                            header.get("metrics") or {})
    report["run"], report["dataset"] = run.id, run.dataset
    return report
