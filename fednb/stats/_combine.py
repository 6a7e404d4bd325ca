"""Pure arithmetic that turns the sites' released parts into pooled statistics.

Each function takes summed (or per-site) arrays as :func:`fednb.runtime.compute` names
them and gives what pandas, scipy, statsmodels or lifelines give on the pooled data.
A cell a domain suppressed (disclosure control) arrives as NaN and stays NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from fednb.typing import Array, Weights

__all__ = ["covariance", "crosstab", "kaplan_meier_table", "moments_table", "quantile_from_cdf", "total"]


def total(parts: Mapping[str, Weights], names: Sequence[str] | None = None) -> Weights:
    """Element-wise sums of the sites' arrays (all of them, or ``names``)."""
    first = next(iter(parts.values()))
    keys = list(names) if names is not None else list(first)
    return {k: np.sum([np.asarray(p[k], dtype=np.float64) for p in parts.values()], axis=0) for k in keys}


def moments_table(t: Weights, variables: Sequence[str], groups: Sequence[str] | None) -> pd.DataFrame:
    """Count, missing, mean and standard deviation (ddof 1) per group and variable."""
    n, s, ss = t["n"], t["sum"], t["sumsq"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        sd = np.sqrt(np.maximum(ss - s * mean, 0.0) / (n - 1))
    rows = []
    for gi, g in enumerate(groups or [None]):
        for vi, v in enumerate(variables):
            rows.append({"group": g, "variable": v, "n": n[gi, vi], "missing": t["missing"][gi, vi],
                         "mean": mean[gi, vi], "sd": sd[gi, vi]})
    df = pd.DataFrame(rows)
    if groups is None:
        return df.drop(columns="group").set_index("variable")
    return df.set_index(["group", "variable"])


def covariance(t: Weights, variables: Sequence[str], *, correlation: bool = False) -> pd.DataFrame:
    """Complete-case covariance (ddof 1) or correlation of the first group's cross-products
    (pandas' ``df.dropna().cov()`` / ``.corr()``)."""
    n, s, c = t["n_complete"][0], t["sum_complete"][0], t["cross"][0]
    cov = (c - np.outer(s, s) / n) / (n - 1)
    if correlation:
        sd = np.sqrt(np.diag(cov))
        cov = cov / np.outer(sd, sd)
    return pd.DataFrame(cov, index=list(variables), columns=list(variables))


def crosstab(counts: Array, rows: Sequence[str], cols: Sequence[str] | None) -> tuple[pd.DataFrame, object]:
    """The pooled table without its missing cells (levels nobody has dropped, as pandas'
    crosstab does) and, for two variables, scipy's chi-square test of independence."""
    table = counts[:-1, :-1] if cols is not None else counts[:-1]
    if cols is None:
        df = pd.DataFrame({"count": table}, index=pd.Index(list(rows)))
        return df[df["count"] != 0], None
    df = pd.DataFrame(table, index=list(rows), columns=list(cols))
    df = df.loc[df.sum(axis=1) != 0, df.sum(axis=0) != 0]
    test = sps.chi2_contingency(df.to_numpy()) if df.shape[0] > 1 and df.shape[1] > 1 else None
    return df, test


def quantile_from_cdf(grid: Array, le: Array, n: float, q: float) -> float:
    """A quantile from counts at or below a grid's points (DP mode): the first point whose
    count reaches ``q n``, interpolated linearly within its interval."""
    cdf = np.maximum.accumulate(np.clip(le, 0, None))
    target = q * max(n, 1.0)
    k = int(np.searchsorted(cdf, target))
    if k == 0:
        return float(grid[0])
    if k >= len(grid):
        return float(grid[-1])
    lo, hi = cdf[k - 1], cdf[k]
    frac = 0.0 if hi <= lo else (target - lo) / (hi - lo)
    return float(grid[k - 1] + frac * (grid[k] - grid[k - 1]))


def _at_risk_table(times: Array, d: Array, c: Array) -> pd.DataFrame:
    at_risk = (d + c)[::-1].cumsum()[::-1]
    return pd.DataFrame({"at_risk": at_risk, "events": d, "censored": c}, index=pd.Index(times, name="time"))


def kaplan_meier_table(parts: Mapping[str, Weights], grid: Sequence[float] | None,
                       alpha: float = 0.05) -> pd.DataFrame:
    """Pooled Kaplan-Meier survival with exponential-Greenwood bands (lifelines'), from
    each site's event and censoring counts at its own distinct times or on a shared grid
    (then each interval's counts sit at its right end, the last interval at +inf)."""
    if grid is None:
        times = np.unique(np.concatenate([p["time"] for p in parts.values()]))
        d, c = np.zeros(len(times)), np.zeros(len(times))
        for p in parts.values():
            idx = np.searchsorted(times, p["time"])
            np.add.at(d, idx, p["counts"][:, 0])
            np.add.at(c, idx, p["counts"][:, 1])
    else:
        times = np.append(np.asarray(grid, dtype=np.float64), np.inf)
        counts = total(parts, ["counts"])["counts"]
        d, c = counts[:, 0], counts[:, 1]
    df = _at_risk_table(times, d, c)
    n, deaths = df["at_risk"].to_numpy(), df["events"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        surv = np.cumprod(np.where(n > 0, 1.0 - deaths / n, 1.0))
        var = np.cumsum(np.where(n - deaths > 0, deaths / (n * (n - deaths)), 0.0))
        z = sps.norm.ppf(1 - alpha / 2)
        v = np.log(surv)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(var) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(var) / v))
    df["survival"] = surv
    df["ci_lower"] = np.where(np.isnan(lower), 1.0, lower)
    df["ci_upper"] = np.where(np.isnan(upper), 1.0, upper)
    return df
