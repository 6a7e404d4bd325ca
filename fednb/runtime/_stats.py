"""The ``stats`` kind: one site's exact partial sufficient statistics for a :class:`StatsSpec`.

:func:`compute` is a pure function of the spec, the private dataset and its card. It
gives the arrays the domain releases (after its protection: disclosure rules, DP noise
or both, fednb/domain) and what the protection needs: the cell counts behind each
array, the subset size, the number of model parameters and, under DP, each array's L2
sensitivity. Sensitivities follow from the spec and the card alone (bounds, levels,
coefficients), never from the data, and hold under replace-one (docs/privacy.md): under
DP every numeric value is first brought into its declared bounds by the one missing-value
rule (:func:`fednb.runtime._query.missing_rule`: NaN is missing, anything else clamped).

Missing values: a NaN, or a categorical value outside its public levels, is missing. A
row filter's comparison on a missing value fails; ``moments`` and ``quantile_counts``
leave missing values out (and count them); a ``table`` counts them in a last "missing"
cell of each axis; models and survival ops use complete cases.

:func:`default` is the same step over a data-independent input (the card's number of
rows, every value missing): what the domain releases in place of a run that failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from fednb.errors import InvalidInput
from fednb.protocol import DatasetCard, StatsSpec
from fednb.runtime._query import missing_rule
from fednb.typing import Array

__all__ = ["StatsPart", "check_stats", "compute", "default", "frame", "level_labels", "row_mask"]


@dataclass(frozen=True)
class StatsPart:
    """One site's partial statistics, exact, before any protection.

    Attributes
    ----------
    arrays
        What is released (float64), by name; the names are the op's (docs/stats.md).
    counts
        For each released array subject to the minimum cell count: the number of rows
        behind each of its cells (the array's shape, or broadcastable to it). A cell
        whose count is below the owner's minimum is suppressed in that array.
    n_rows
        Rows the step used after the filter (the subset size the minimum-subset rule
        checks): rows with a group level when grouped; complete cases for models and
        survival.
    n_params
        Parameters of a model (design columns), 0 otherwise.
    sensitivity
        Under DP: each array's L2 sensitivity under replace-one, from the spec and the
        card alone; empty without DP.
    """

    arrays: dict[str, Array]
    counts: dict[str, Array] = field(default_factory=dict)
    n_rows: int = 0
    n_params: int = 0
    sensitivity: dict[str, float] = field(default_factory=dict)


def level_labels(levels: list[str | float]) -> list[str]:
    """The category labels of public levels (numbers as ``%g``: 1.0 is ``"1"``)."""
    return [lv if isinstance(lv, str) else f"{lv:g}" for lv in levels]


def bounds_of(spec: StatsSpec, card: DatasetCard, name: str) -> tuple[float, float]:
    """A numeric variable's declared bounds, or InvalidInput saying DP needs them."""
    b = card.variables[name].bounds
    if b is None:
        raise InvalidInput(f"variable {name!r} has no declared bounds, so no DP {spec.op} of it is "
                           "possible; the owner declares bounds when adding the dataset")
    return b


def check_stats(spec: StatsSpec, card: DatasetCard) -> None:
    """Refuse at submission what the card already rules out: unknown variables, variables
    with more than one value per row, text without levels, DP without bounds."""
    for name in spec.variables:
        var = card.variables.get(name)
        if var is None:
            raise InvalidInput(f"dataset {card.name!r} has no variable {name!r}")
        if var.dims != [card.example_dim]:
            raise InvalidInput(f"stats read one value per {card.example_dim}; {name!r} has dims "
                               f"{var.dims}")
        numeric = np.dtype(var.dtype).kind in "biuf"
        if not numeric and name not in spec.levels:
            raise InvalidInput(f"text variable {name!r} needs its levels (levels={{{name!r}: [...]}})")
        if spec.dp and numeric and name not in spec.levels:
            bounds_of(spec, card, name)


def _column(spec: StatsSpec, card: DatasetCard, name: str, values: Array) -> pd.Series:
    levels = spec.levels.get(name)
    if levels is not None:
        if values.dtype.kind in "biuf":
            x = values.astype(np.float64)
            codes = np.full(len(x), -1)
            for i, lv in enumerate(levels):
                if not isinstance(lv, str):
                    codes[x == float(lv)] = i
        else:
            lookup = {lv: i for i, lv in enumerate(levels) if isinstance(lv, str)}
            codes = np.asarray([lookup.get(v, -1) if isinstance(v, str) else -1 for v in values.tolist()])
        return pd.Series(pd.Categorical.from_codes(codes, categories=level_labels(levels)), name=name)
    x = values.astype(np.float64)
    if spec.dp:
        lo, hi = bounds_of(spec, card, name)
        x = missing_rule(x, lo, hi, np.nan)[0]
    return pd.Series(x, name=name)


def frame(spec: StatsSpec, data: xr.Dataset, card: DatasetCard) -> pd.DataFrame:
    """The variables the spec reads, one row per example (categoricals coded on their
    levels, numbers clamped into their bounds under DP), filtered by ``where``."""
    check_stats(spec, card)
    cols = {}
    for name in spec.variables:
        if name not in data.data_vars:
            raise InvalidInput(f"dataset {card.name!r} has no variable {name!r}")
        cols[name] = _column(spec, card, name, np.asarray(data[name].values).ravel())
    df = pd.DataFrame(cols)
    keep = np.ones(len(df), dtype=bool)
    for cond in spec.where:
        keep &= _holds(df[cond.variable], cond.op, cond.value)
    return df.loc[keep].reset_index(drop=True)


def _holds(col: pd.Series, op: str, value: object) -> Array:
    present: Array = np.asarray(col.notna().to_numpy(), dtype=bool)
    if op == "notna":
        return present
    if isinstance(col.dtype, pd.CategoricalDtype):
        labels = col.astype(object).to_numpy()
        wanted = level_labels(list(value) if isinstance(value, list) else [value])  # type: ignore[list-item]
        hit = np.isin(labels, wanted)
        out = {"==": hit, "in": hit, "!=": ~hit}.get(op)
        if out is None:
            raise InvalidInput(f"{col.name!r} is categorical: compare it with ==, != or in")
        return np.asarray(out & present)
    x = col.to_numpy(dtype=np.float64)
    vals = np.asarray(value if isinstance(value, list) else [value])
    if vals.dtype.kind not in "biuf":
        raise InvalidInput(f"{col.name!r} is numeric: compare it with numbers")
    v = vals.astype(np.float64)
    with np.errstate(invalid="ignore"):
        res = {"==": x == v[0], "!=": x != v[0], "<": x < v[0], "<=": x <= v[0], ">": x > v[0],
               ">=": x >= v[0], "in": np.isin(x, v)}[op]
    return np.asarray(res & present, dtype=bool)


def row_mask(spec: StatsSpec, data: xr.Dataset, card: DatasetCard) -> tuple[Array, Array | None]:
    """The rows of ``data`` that ``spec``'s ``where`` keeps, as a boolean mask over all of
    them (:func:`compute`'s filter), and, when the spec is grouped, each row's group index
    (-1: no level); None without a group."""
    keep = np.ones(card.num_examples, dtype=bool)
    names = {c.variable for c in spec.where} | ({spec.group} if spec.group else set())
    cols = {name: _column(spec, card, name, np.asarray(data[name].values).ravel()) for name in names}
    for cond in spec.where:
        keep &= _holds(cols[cond.variable], cond.op, cond.value)
    if spec.group is None:
        return keep, None
    return keep, np.asarray(cols[spec.group].cat.codes)


def group_codes(spec: StatsSpec, df: pd.DataFrame) -> tuple[Array, int]:
    """Each row's group index (-1: no level) and the number of groups (1 without a group)."""
    if spec.group is None:
        return np.zeros(len(df), dtype=np.int64), 1
    return np.asarray(df[spec.group].cat.codes, dtype=np.int64), len(spec.levels[spec.group])


def compute(spec: StatsSpec, data: xr.Dataset, card: DatasetCard) -> StatsPart:
    """One site's exact partial statistics for ``spec`` on ``data`` (module docstring).

    Raises
    ------
    InvalidInput
        The spec does not fit the card or the data (unknown variables, text without
        levels, DP without bounds, a formula naming something else): a refusal at
        submission, before any data is read, where the card suffices.
    """
    from fednb.runtime import _stats_cox, _stats_glm, _stats_tables

    df = frame(spec, data, card)
    ops = {"moments": _stats_tables.moments, "table": _stats_tables.table,
           "quantile_counts": _stats_tables.quantile_counts, "km_table": _stats_tables.km_table,
           "glm_step": _stats_glm.glm_step, "cox_step": _stats_cox.cox_step}
    return ops[spec.op](spec, df, card)


def default(spec: StatsSpec, card: DatasetCard) -> StatsPart:
    """``spec`` over the card's number of rows with every value missing: data-independent,
    with :func:`compute`'s names, shapes (but a ``km_table`` without a grid, whose length
    is data: none) and sensitivities."""
    n = card.num_examples
    blank = xr.Dataset({name: ((card.example_dim,), np.full(n, np.nan) if name not in spec.levels
                               or np.dtype(card.variables[name].dtype).kind in "biuf"
                               else np.full(n, None, dtype=object))
                        for name in spec.variables if name in card.variables})
    return compute(spec, blank, card)
