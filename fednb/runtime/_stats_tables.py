"""Counting ops of the ``stats`` kind: ``moments``, ``table``, ``quantile_counts``, ``km_table``.

Every array has a leading group axis (one slice per level of ``spec.group``, a single
slice without one) except ``km_table``'s. Sensitivities are L2 under replace-one: one
row leaves its cells (in its group) and another row enters cells of its own (perhaps
another group), values inside their declared bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fednb.errors import InvalidInput
from fednb.protocol import DatasetCard, StatsSpec
from fednb.runtime._stats import StatsPart, bounds_of, group_codes
from fednb.typing import Array

__all__ = ["km_table", "moments", "quantile_counts", "table"]


def _numeric(spec: StatsSpec, df: pd.DataFrame, names: list[str]) -> Array:
    cats = [n for n in names if n in spec.levels]
    if cats:
        raise InvalidInput(f"{spec.op} summarises numbers; {cats} are categorical (use a table)")
    return np.asarray(df[names].to_numpy(dtype=np.float64)).reshape(len(df), len(names))


def _by_group(codes: Array, groups: int, values: Array) -> Array:
    """Sums of ``values`` (rows x ...) per group code; rows with code -1 drop out."""
    out = np.zeros((groups, *values.shape[1:]))
    keep = codes >= 0
    np.add.at(out, codes[keep], values[keep])
    return out


def moments(spec: StatsSpec, df: pd.DataFrame, card: DatasetCard) -> StatsPart:
    """Per group and variable: ``n`` (present), ``missing``, ``sum``, ``sumsq``; with
    ``cross``: ``n_complete``, ``sum_complete`` and ``cross`` (complete cases)."""
    names = spec.tabulated()
    x = _numeric(spec, df, names)
    codes, g = group_codes(spec, df)
    present: Array = np.asarray(~np.isnan(x))
    v: Array = np.where(present, x, 0.0)
    n = _by_group(codes, g, present.astype(np.float64))
    arrays = {"n": n, "missing": _by_group(codes, g, (~present).astype(np.float64)),
              "sum": _by_group(codes, g, v), "sumsq": _by_group(codes, g, v * v)}
    counts = {"n": n, "missing": arrays["missing"], "sum": n, "sumsq": n}
    if spec.cross:
        full: Array = np.asarray(present.all(axis=1))
        cc: Array = np.where(full[:, None], v, 0.0)
        arrays["n_complete"] = _by_group(codes, g, full.astype(np.float64))
        arrays["sum_complete"] = _by_group(codes, g, cc)
        arrays["cross"] = _by_group(codes, g, cc[:, :, None] * cc[:, None, :])
        counts |= {k: arrays["n_complete"].reshape(g, *(1,) * (arrays[k].ndim - 1))
                   for k in ("n_complete", "sum_complete", "cross")}
    sens: dict[str, float] = {}
    if spec.dp:
        b = np.asarray([bounds_of(spec, card, name) for name in names], dtype=np.float64)
        m = np.abs(b).max(axis=1)
        width = np.maximum(b[:, 1], 0) - np.minimum(b[:, 0], 0)
        sens = {"n": math.sqrt(2 * len(names)), "missing": math.sqrt(2 * len(names)),
                "sum": float(np.sqrt(np.maximum(width**2, 2 * m**2).sum())),
                "sumsq": float(math.sqrt(2) * np.linalg.norm(m**2))}
        if spec.cross:
            sens |= {"n_complete": math.sqrt(2), "sum_complete": sens["sum"],
                     "cross": float(2 * np.linalg.norm(np.outer(m, m)))}
    return StatsPart(arrays, counts, int((codes >= 0).sum()), 0, sens)


def table(spec: StatsSpec, df: pd.DataFrame, card: DatasetCard) -> StatsPart:
    """``table``: counts per group of one or two categorical variables, shape
    ``(groups, L1 + 1[, L2 + 1])``, the last index of each axis counting missing values."""
    names = spec.tabulated()
    codes, g = group_codes(spec, df)
    shape = [g] + [len(spec.levels[n]) + 1 for n in names]
    idx = [codes] + [np.where(c < 0, s - 1, c) for c, s in
                     ((np.asarray(df[n].cat.codes), s) for n, s in zip(names, shape[1:], strict=True))]
    out = np.zeros(shape)
    keep = codes >= 0
    np.add.at(out, tuple(i[keep] for i in idx), 1.0)
    sens = {"table": math.sqrt(2)} if spec.dp else {}
    return StatsPart({"table": out}, {"table": out}, int(keep.sum()), 0, sens)


def quantile_counts(spec: StatsSpec, df: pd.DataFrame, card: DatasetCard) -> StatsPart:
    """``le``: per group, how many present values are ``<=`` each threshold; ``n``: how
    many are present. A quantile is found by bisection over calls (fednb.stats)."""
    (name,) = spec.tabulated()
    x = _numeric(spec, df, [name])[:, 0]
    codes, g = group_codes(spec, df)
    t = np.asarray(spec.thresholds, dtype=np.float64)
    present = ~np.isnan(x)
    with np.errstate(invalid="ignore"):
        le = (x[:, None] <= t[None, :]) & present[:, None]
    n = _by_group(codes, g, present.astype(np.float64))
    le_counts = _by_group(codes, g, le.astype(np.float64))
    sens = {"le": math.sqrt(2 * len(t)), "n": math.sqrt(2)} if spec.dp else {}
    return StatsPart({"le": le_counts, "n": n}, {"le": le_counts, "n": n}, int((codes >= 0).sum()),
                     0, sens)


def survival_columns(spec: StatsSpec, df: pd.DataFrame) -> tuple[Array, Array, Array]:
    """Follow-up times, event indicators (a value above 0.5 is an event) and which rows are
    complete cases of time and event."""
    assert spec.time is not None and spec.event is not None
    if spec.time in spec.levels or spec.event in spec.levels:
        raise InvalidInput("time and event must be numeric (event: 1 event, 0 censored)")
    t = df[spec.time].to_numpy(dtype=np.float64)
    e = df[spec.event].to_numpy(dtype=np.float64)
    ok = ~(np.isnan(t) | np.isnan(e))
    return t, e > 0.5, ok


def km_table(spec: StatsSpec, df: pd.DataFrame, card: DatasetCard) -> StatsPart:
    """``counts`` (K x 2: events, censored) at each distinct time (``time``, K), or on the
    grid ``times``: row k counts times in ``(times[k-1], times[k]]``, the last row those
    above the grid (K = len(times) + 1)."""
    t, e, ok = survival_columns(spec, df)
    t, e = t[ok], e[ok]
    arrays: dict[str, Array] = {}
    if spec.times is None:
        grid, index = np.unique(t, return_inverse=True)
        arrays["time"] = grid.astype(np.float64)
        k = len(grid)
    else:
        index = np.searchsorted(np.asarray(spec.times, dtype=np.float64), t, side="left")
        k = len(spec.times) + 1
    counts = np.zeros((k, 2))
    np.add.at(counts, (index.reshape(-1), np.where(e, 0, 1)), 1.0)
    arrays["counts"] = counts
    sens = {"counts": math.sqrt(2)} if spec.dp else {}
    return StatsPart(arrays, {"counts": counts}, int(ok.sum()), 0, sens)
