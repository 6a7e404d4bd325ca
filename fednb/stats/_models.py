"""Federated GLMs (IRLS over ``glm_step``) and Cox models (Newton over ``cox_step``).

Pooled fits take one step per iteration at every site and solve the summed normal
equations here: the iterates are those of the same algorithm on the pooled data, so
the estimates equal statsmodels' and lifelines' to their convergence tolerance. The
meta-analysed GLM fits each site on its own and combines the estimates by inverse
variance (fixed effects).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from fednb.errors import InvalidInput
from fednb.protocol import StatsSpec
from fednb.runtime import design_columns, efron
from fednb.stats._combine import total
from fednb.stats._results import CoxResult, GLMResult, coef_table
from fednb.stats._sites import Sites
from fednb.typing import Array, Weights

__all__ = ["fit_cox", "fit_glm"]

Step = Callable[[Array], Weights]


def check_min_sites(sites: Sites) -> None:
    """Refuse a pooled model over fewer sites than an owner requires (the domain cannot
    count the other sites; it states its minimum with every release)."""
    if len(sites.names) < sites.min_sites:
        raise InvalidInput(f"an owner requires pooled models over at least {sites.min_sites} sites "
                           f"(rule min_sites); this one has {len(sites.names)}: add sites, or fit "
                           "each site on its own (method='meta')")


def _irls(step: Step, p: int, max_iter: int, tol: float,
          check_sites: Callable[[], None]) -> tuple[Array, Weights, int]:
    """Newton/IRLS with step halving on the deviance; returns beta, the sums at beta, iterations."""
    beta, prev, best = np.zeros(p), None, None
    for it in range(1, max_iter + 1):
        s = step(beta)
        if it == 1:
            check_sites()
        dev = float(s["deviance"])
        if best is not None and prev is not None and dev > float(best["deviance"]) * (1 + 1e-12) + 1e-12:
            beta = (beta + prev) / 2  # overshoot: halve the step back towards the better point
            continue
        new = np.linalg.solve(s["xtwx"], s["xtwz"])
        best, prev = s, beta
        if np.max(np.abs(new - beta)) <= tol * (1 + np.max(np.abs(beta))):
            return beta, s, it
        beta = new
    raise InvalidInput(f"the GLM did not converge in {max_iter} iterations; raise max_iter or simplify "
                       "the model")


def _glm_fit(sites: Sites, names: list[str], base: StatsSpec, family: str, who: list[str],
             max_iter: int, tol: float) -> tuple[Array, Array, float, float, float, int]:
    def step(beta: Array) -> Weights:
        spec = base.model_copy(update={"beta": [float(b) for b in beta]})
        return total(sites.run_each(dict.fromkeys(who, spec)))

    pooled = len(who) > 1
    beta, s, iters = _irls(step, len(names), max_iter, tol,
                           (lambda: check_min_sites(sites)) if pooled else (lambda: None))
    n, dev = float(s["n"]), float(s["deviance"])
    scale = dev / (n - len(names)) if family == "gaussian" else 1.0
    return beta, np.linalg.inv(s["xtwx"]) * scale, n, dev, scale, iters


def fit_glm(sites: Sites, base: StatsSpec, method: str, max_iter: int, tol: float,
            protection: str) -> GLMResult:
    """A pooled or meta-analysed GLM of ``base`` (a glm_step spec without beta)."""
    assert base.family is not None
    names = design_columns(base, sites.card(sites.names[0]))
    if method == "pooled":
        beta, cov, n, dev, scale, iters = _glm_fit(sites, names, base, base.family, sites.names,
                                                   max_iter, tol)
        return GLMResult(base.family, "pooled (federated IRLS)", pd.Series(beta, index=names),
                         pd.DataFrame(cov, index=names, columns=names), coef_table(names, beta, cov), n, dev,
                         scale, iters, sites.names, protection)
    if method != "meta":
        raise InvalidInput(f"method must be 'pooled' or 'meta', not {method!r}")
    fits = {s: _glm_fit(sites, names, base, base.family, [s], max_iter, tol) for s in sites.names}
    precision = sum(np.linalg.inv(f[1]) for f in fits.values())
    cov = np.linalg.inv(precision)
    beta = cov @ sum(np.linalg.inv(f[1]) @ f[0] for f in fits.values())
    per_site = {s: coef_table(names, f[0], f[1]) for s, f in fits.items()}
    return GLMResult(base.family, "meta-analysis (inverse variance, fixed effects)",
                     pd.Series(beta, index=names),
                     pd.DataFrame(cov, index=names, columns=names), coef_table(names, beta, cov),
                     sum(f[2] for f in fits.values()), None, float("nan"),
                     max(f[5] for f in fits.values()), sites.names, protection, per_site)


def _newton(step: Callable[[Array], tuple[float, Array, Array]], p: int, max_iter: int,
            tol: float, check_sites: Callable[[], None]) -> tuple[Array, float, Array, int]:
    beta = np.zeros(p)
    ll, grad, hess = step(beta)
    check_sites()
    for it in range(1, max_iter + 1):
        delta = np.linalg.solve(-hess, grad)
        halvings = 0
        while True:
            cand = beta + delta
            ll_new, g_new, h_new = step(cand)
            if ll_new >= ll - 1e-12 * abs(ll) or halvings >= 20:
                break
            delta, halvings = delta / 2, halvings + 1
        beta, done = cand, np.max(np.abs(delta)) <= tol * (1 + np.max(np.abs(cand)))
        ll, grad, hess = ll_new, g_new, h_new
        if done:
            return beta, ll, hess, it
    raise InvalidInput(f"the Cox model did not converge in {max_iter} iterations")


def event_times(sites: Sites, base: StatsSpec) -> Array:
    """The pooled distinct event times, from each site's exact ``km_table``."""
    km = base.model_copy(update={"op": "km_table", "formula": None, "beta": None, "times": None})
    parts = sites.run(StatsSpec.model_validate(km.model_dump()))
    times = [p["time"][p["counts"][:, 0] > 0] for p in parts.values()]
    return np.unique(np.concatenate(times))


def fit_cox(sites: Sites, base: StatsSpec, strata: str | None, max_iter: int, tol: float,
            protection: str) -> CoxResult:
    """A Cox model of ``base`` (a cox_step spec without beta): pooled or stratified by site."""
    names = design_columns(base, sites.card(sites.names[0]), response=False)
    if strata not in (None, "site"):
        raise InvalidInput(f"strata is None (pooled) or 'site', not {strata!r}")
    if strata is None:
        times = event_times(sites, base)
        spec0 = base.model_copy(update={"cox_output": "risk_sets", "times": [float(t) for t in times]})
    else:
        spec0 = base.model_copy(update={"cox_output": "gradient"})
    last: dict[str, Mapping[str, Weights]] = {}

    def step(beta: Array) -> tuple[float, Array, Array]:
        spec = StatsSpec.model_validate({**spec0.model_dump(), "beta": [float(b) for b in beta]})
        last["parts"] = parts = sites.run(spec)
        if strata is None:
            return efron(total(parts), beta, base.ties)
        t = total(parts, ["loglik", "grad", "hess"])
        return float(t["loglik"]), t["grad"], t["hess"]

    beta, ll, hess, iters = _newton(step, len(names), max_iter, tol, lambda: check_min_sites(sites))
    cov = np.linalg.inv(-hess)
    parts = last["parts"]
    events = float(sum(np.sum(p["d"] if strata is None else p["events"]) for p in parts.values()))
    return CoxResult(strata, base.ties, pd.Series(beta, index=names),
                     pd.DataFrame(cov, index=names, columns=names),
                     coef_table(names, beta, cov), ll, float("nan"), events, iters, sites.names, protection)
