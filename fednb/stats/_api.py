"""The scientist's federated statistics: one call, many hospitals, a pandas answer.

Every function takes ``domains`` -- connected :class:`~fednb.client.DomainClient` s
(a list, or a ``{name: client}`` dict) with ``dataset=``, or any :class:`Sites` such as
:class:`LocalSites` -- and the same protection arguments: ``protection`` (what the
scientist asks for; the domain's policy may add more) and ``noise_multiplier`` under DP.
``where`` filters rows: ``[("age", ">=", 50), ("tgrade", "in", ["II", "III"])]``.
``levels`` gives the public levels of the categorical variables the call reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from formulaic import Formula

from fednb.errors import InvalidInput
from fednb.protocol import Comparison, StatsSpec
from fednb.stats import _combine
from fednb.stats._models import fit_cox, fit_glm
from fednb.stats._results import CoxResult, GLMResult, KaplanMeier
from fednb.stats._sites import Sites, as_sites
from fednb.typing import Weights

__all__ = ["correlation", "covariance", "cox", "crosstab", "describe", "glm", "kaplan_meier", "quantiles"]

Where = Sequence[Comparison | Mapping[str, Any] | tuple[Any, ...]] | None
_BISECT_ROUNDS = 16
"""Rounds of threshold counts an exact quantile may take (each narrows by the number of
thresholds per target)."""


def _conditions(where: Where) -> list[Comparison]:
    out = []
    for w in where or []:
        if isinstance(w, Comparison):
            out.append(w)
        elif isinstance(w, Mapping):
            out.append(Comparison.model_validate(w))
        else:
            out.append(Comparison(variable=w[0], op=w[1], value=w[2] if len(w) > 2 else None))
    return out


def _spec(op: str, reads: Sequence[str], *, where: Where, group: str | None, levels: Mapping[str, Any] | None,
          protection: str, noise_multiplier: float | None, **extra: Any) -> StatsSpec:
    conds = _conditions(where)
    names = list(dict.fromkeys([*reads, *(c.variable for c in conds), *([group] if group else [])]))
    lv = {k: list(v) for k, v in (levels or {}).items() if k in names}
    return StatsSpec.model_validate({"op": op, "variables": names, "where": conds, "group": group,
                                     "levels": lv,
                                     "protection": protection, "noise_multiplier": noise_multiplier, **extra})


def _sites(domains: Any, dataset: str | None) -> Sites:
    return as_sites(domains, dataset)


def describe(domains: Any, variables: Sequence[str], *, dataset: str | None = None, by: str | None = None,
             levels: Mapping[str, Sequence[Any]] | None = None, where: Where = None,
             quantiles: Sequence[float] = (), protection: str = "disclosure",
             noise_multiplier: float | None = None) -> pd.DataFrame:
    """Table 1: per variable (and level of ``by``) the count, missing count, mean and SD of
    numbers (and the ``quantiles`` asked for, e.g. ``(0.25, 0.5, 0.75)`` for median and
    IQR), and the count and percentage of each level of categorical variables."""
    sites = _sites(domains, dataset)
    levels = dict(levels or {})
    groups = [str(g) for g in levels[by]] if by else None
    kw: dict[str, Any] = {"where": where, "group": by, "levels": levels, "protection": protection,
                          "noise_multiplier": noise_multiplier}
    numeric = [v for v in variables if v not in levels]
    frames = []
    if numeric:
        t = _combine.total(sites.run(_spec("moments", numeric, **kw)))
        df = _combine.moments_table(t, numeric, groups)
        if quantiles:
            qs = _quantiles(sites, numeric, quantiles, kw)
            for q in quantiles:
                df[f"q{q:g}"] = [qs[key[1]][(key[0], q)] if by else qs[key][q] for key in df.index]
        frames.append(df)
    for v in (v for v in variables if v in levels):
        table = _combine.total(sites.run(_spec("table", [v], **kw)))["table"]
        rows = []
        for gi, g in enumerate(groups or [None]):
            counts = table[gi]
            present = counts[:-1].sum()
            for li, lv in enumerate([*map(str, levels[v]), "missing"]):
                share = 100 * counts[li] / present if lv != "missing" and present else np.nan
                rows.append({"group": g, "variable": f"{v}={lv}", "n": counts[li], "percent": share})
        cat = pd.DataFrame(rows)
        frames.append(cat.drop(columns="group").set_index("variable") if by is None
                      else cat.set_index(["group", "variable"]))
    return pd.concat(frames) if frames else pd.DataFrame()


def crosstab(domains: Any, row: str, col: str | None = None, *, dataset: str | None = None,
             levels: Mapping[str, Sequence[Any]], where: Where = None, protection: str = "disclosure",
             noise_multiplier: float | None = None) -> pd.DataFrame:
    """The pooled 1-D or 2-D table of categorical variables (levels that nobody has are
    dropped, as pandas does); a 2-D table carries scipy's chi-square test in ``.attrs``
    (``chi2``, ``p``, ``dof``)."""
    sites = _sites(domains, dataset)
    spec = _spec("table", [row] + ([col] if col else []), where=where, group=None, levels=levels,
                 protection=protection, noise_multiplier=noise_multiplier)
    counts = _combine.total(sites.run(spec))["table"][0]
    df, test = _combine.crosstab(counts, [str(x) for x in levels[row]],
                                 [str(x) for x in levels[col]] if col else None)
    if test is not None:
        df.attrs.update(chi2=float(test[0]), p=float(test[1]), dof=int(test[2]))  # type: ignore[index]
    return df


def _bisect(sites: Sites, name: str, kw: dict[str, Any], groups: int, ranks: np.ndarray,
            lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Order statistics (0-based ``ranks`` per group) by bisection on threshold counts:
    the smallest threshold with count >= rank + 1 narrows to the data value itself."""
    for _ in range(_BISECT_ROUNDS):
        width = hi - lo
        if np.all(width <= 1e-11 * np.maximum(np.abs(hi), np.abs(lo)) + 1e-300):
            break
        per = max(2, 255 // ranks.size)
        cuts = lo[..., None] + width[..., None] * np.linspace(0, 1, per + 1)[1:]
        grid = np.unique(np.concatenate([cuts.ravel(), hi.ravel()]))
        le = _combine.total(sites.run(_spec_q(kw, name, grid)))["le"]  # (groups, len(grid))
        for g in range(groups):
            for r in range(ranks.shape[1]):
                reach = np.searchsorted(le[g], ranks[g, r] + 1, side="left")  # first grid point reaching it
                k = min(reach, len(grid) - 1)
                below = grid[grid < grid[k]]
                hi[g, r] = grid[k]
                lo[g, r] = max(lo[g, r], below[-1]) if below.size else lo[g, r]
    return hi


def _spec_q(kw: dict[str, Any], name: str, grid: np.ndarray) -> StatsSpec:
    return _spec("quantile_counts", [name], thresholds=[float(x) for x in grid], **kw)


def _quantiles(sites: Sites, variables: Sequence[str], qs: Sequence[float],
               kw: dict[str, Any]) -> dict[str, pd.Series]:
    out = {}
    groups = [str(g) for g in kw["levels"][kw["group"]]] if kw.get("group") else None
    ng = len(groups or [None])
    for name in variables:
        start = [-(2.0 ** e) for e in range(62, -31, -1)] + [0.0] + [2.0 ** e for e in range(-30, 63)]
        card = sites.card(sites.names[0]).variables[name]
        if kw["protection"] != "disclosure":
            if card.bounds is None:
                raise InvalidInput(f"a DP quantile of {name!r} needs its declared bounds")
            grid = np.linspace(card.bounds[0], card.bounds[1], 256)
            t = _combine.total(sites.run(_spec_q(kw, name, grid)))
            vals = [[_combine.quantile_from_cdf(grid, t["le"][g], float(t["n"][g]), q) for q in qs]
                    for g in range(ng)]
        else:
            t = _combine.total(sites.run(_spec_q(kw, name, np.asarray(start))))
            n = t["n"]
            h = np.asarray([[(n[g] - 1) * q for q in qs] for g in range(ng)])
            ranks = np.concatenate([np.floor(h), np.minimum(np.floor(h) + 1, n[:, None] - 1)], axis=1)
            lo = np.full(ranks.shape, -np.inf)
            hi = np.full(ranks.shape, np.inf)
            for g in range(ng):  # the first bracket from the powers of two
                for r in range(ranks.shape[1]):
                    k = int(np.searchsorted(t["le"][g], ranks[g, r] + 1, side="left"))
                    hi[g, r] = start[min(k, len(start) - 1)]
                    lo[g, r] = start[k - 1] if k > 0 else -2.0**63
            x = _bisect(sites, name, kw, ng, ranks, lo, hi)
            m = len(qs)
            vals = [[x[g, i] + (h[g, i] - np.floor(h[g, i])) * (x[g, m + i] - x[g, i]) for i in range(m)]
                    for g in range(ng)]
        index = (pd.MultiIndex.from_product([groups, list(qs)], names=["group", "q"]) if groups
                 else pd.Index(qs, name="q"))
        out[name] = pd.Series(np.asarray(vals).ravel(), index=index, name=name)
    return out


def quantiles(domains: Any, variables: Sequence[str], q: Sequence[float] = (0.25, 0.5, 0.75), *,
              dataset: str | None = None, by: str | None = None,
              levels: Mapping[str, Sequence[Any]] | None = None,
              where: Where = None, protection: str = "disclosure",
              noise_multiplier: float | None = None) -> pd.DataFrame:
    """Pooled quantiles (pandas' linear interpolation). Exact mode: bisection on counts at
    thresholds, to the data values themselves; DP: one noisy count per point of a
    256-point grid over the declared bounds, interpolated."""
    sites = _sites(domains, dataset)
    kw = {"where": where, "group": by, "levels": dict(levels or {}), "protection": protection,
          "noise_multiplier": noise_multiplier}
    return pd.DataFrame(_quantiles(sites, variables, q, kw))


def _cross(domains: Any, variables: Sequence[str], dataset: str | None, where: Where, protection: str,
           noise_multiplier: float | None, corr: bool) -> pd.DataFrame:
    spec = _spec("moments", variables, where=where, group=None, levels=None, protection=protection,
                 noise_multiplier=noise_multiplier, cross=True)
    sums = _combine.total(_sites(domains, dataset).run(spec))
    return _combine.covariance(sums, variables, correlation=corr)


def covariance(domains: Any, variables: Sequence[str], *, dataset: str | None = None, where: Where = None,
               protection: str = "disclosure", noise_multiplier: float | None = None) -> pd.DataFrame:
    """The pooled complete-case covariance matrix (pandas' ``df.dropna().cov()``)."""
    return _cross(domains, variables, dataset, where, protection, noise_multiplier, False)


def correlation(domains: Any, variables: Sequence[str], *, dataset: str | None = None, where: Where = None,
                protection: str = "disclosure", noise_multiplier: float | None = None) -> pd.DataFrame:
    """The pooled complete-case Pearson correlation matrix (``df.dropna().corr()``)."""
    return _cross(domains, variables, dataset, where, protection, noise_multiplier, True)


def glm(domains: Any, formula: str, family: str = "gaussian", *, method: str = "pooled",
        dataset: str | None = None, levels: Mapping[str, Sequence[Any]] | None = None, where: Where = None,
        protection: str = "disclosure", noise_multiplier: float | None = None, max_iter: int = 30,
        tol: float = 1e-10) -> GLMResult:
    """A GLM with canonical link (gaussian, binomial, poisson) from a formula.

    ``method="pooled"``: federated IRLS, one ``glm_step`` per iteration at every site,
    equal to the fit on the pooled data. ``method="meta"``: each site's own fit, combined
    by inverse variance (fixed effects).
    """
    reads = sorted(Formula(formula).required_variables)
    base = _spec("glm_step", reads, where=where, group=None, levels=levels, protection=protection,
                 noise_multiplier=noise_multiplier, formula=formula, family=family, beta=[])
    return fit_glm(_sites(domains, dataset), base, method, max_iter, tol, protection)


def kaplan_meier(domains: Any, time: str, event: str, *, dataset: str | None = None,
                 times: Sequence[float] | None = None, where: Where = None,
                 levels: Mapping[str, Sequence[Any]] | None = None,
                 protection: str = "disclosure", noise_multiplier: float | None = None,
                 alpha: float = 0.05) -> KaplanMeier:
    """Pooled Kaplan-Meier survival with exponential-Greenwood bands (lifelines').

    ``times=None`` pools each site's distinct times (exact; not under DP); a grid counts
    events and censorings per interval (needed under DP, coarser under disclosure rules).
    """
    sites = _sites(domains, dataset)
    spec = _spec("km_table", [time, event], where=where, group=None, levels=levels, protection=protection,
                 noise_multiplier=noise_multiplier, time=time, event=event,
                 times=None if times is None else [float(t) for t in times])
    parts: dict[str, Weights] = sites.run(spec)
    table = _combine.kaplan_meier_table(parts, times, alpha)
    table.index.name = time
    return KaplanMeier(table, sites.names, protection)


def cox(domains: Any, formula: str, time: str, event: str, *, strata: str | None = None,
        ties: str = "efron", dataset: str | None = None, levels: Mapping[str, Sequence[Any]] | None = None,
        where: Where = None, protection: str = "disclosure", max_iter: int = 30,
        tol: float = 1e-10) -> CoxResult:
    """A Cox proportional-hazards model of ``formula`` (covariates only: ``"~ age + C(grade)"``),
    ``strata="site"`` (each hospital its own baseline hazard) or pooled (``None``: risk sets
    summed over sites at every pooled event time), Efron's or Breslow's ties."""
    reads = sorted(Formula(formula).required_variables)
    base = _spec("cox_step", [*reads, time, event], where=where, group=None, levels=levels,
                 protection=protection, noise_multiplier=None, formula=formula, time=time, event=event,
                 beta=[], ties=ties)
    return fit_cox(_sites(domains, dataset), base, strata, max_iter, tol, protection)
