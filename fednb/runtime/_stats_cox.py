"""``cox_step``: one site's part of a Newton step of the Cox proportional-hazards model.

Two outputs, chosen by ``spec.cox_output``:

- ``"risk_sets"`` (the pooled model): at each of the pooled event times ``spec.times``,
  the site's number of events ``d``, the sum of their covariates ``sx``, the risk-set
  sums ``r0 = sum exp(x'b)``, ``r1 = sum x exp(x'b)``, ``r2 = sum x x' exp(x'b)`` over
  rows still at risk (time >= t) and the same sums ``e0, e1, e2`` over the rows with an
  event at t (Efron's correction). Every one adds up across sites, so :func:`efron` on
  the sums is the pooled data's log partial likelihood, gradient and Hessian.
- ``"gradient"`` (stratified by site, or a per-site fit): :func:`efron` of the site's own
  sums at its own event times: ``loglik``, ``grad`` (p), ``hess`` (p x p).

The covariates come from a right-hand-side formula (``"~ age + C(grade)"``) coded like a
GLM's design (fednb.runtime._stats_glm.design), without an intercept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fednb.errors import InvalidInput
from fednb.protocol import DatasetCard, StatsSpec
from fednb.runtime._stats import StatsPart
from fednb.runtime._stats_glm import design
from fednb.runtime._stats_tables import survival_columns
from fednb.typing import Array

__all__ = ["RISK_SET_ARRAYS", "cox_step", "efron", "risk_set_sums"]

RISK_SET_ARRAYS = ("d", "sx", "r0", "r1", "r2", "e0", "e1", "e2")


def risk_set_sums(t: Array, event: Array, x: Array, beta: Array, times: Array) -> dict[str, Array]:
    """The sums of the module docstring at each of ``times`` (ascending)."""
    n = len(x)
    k = len(times)
    r = np.exp(x @ beta)
    terms = [r, r[:, None] * x, r[:, None, None] * x[:, :, None] * x[:, None, :]]
    order = np.argsort(t, kind="stable")
    start = np.searchsorted(t[order], times, side="left")  # first row still at risk at each time
    out: dict[str, Array] = {}
    for name, term in zip(("r0", "r1", "r2"), terms, strict=True):
        tail = np.concatenate([np.cumsum(term[order][::-1], axis=0)[::-1], np.zeros((1, *term.shape[1:]))])
        out[name] = tail[start]
    pos = np.searchsorted(times, t)
    hit = event & (pos < k)
    hit[hit] = times[pos[hit]] == t[hit]
    for name, term in zip(("d", "sx", "e0", "e1", "e2"), [np.ones(n), x, *terms], strict=True):
        acc = np.zeros((k, *term.shape[1:]))
        np.add.at(acc, pos[hit], term[hit])
        out[name] = acc
    return {name: out[name] for name in RISK_SET_ARRAYS}


def efron(sums: dict[str, Array], beta: Array, ties: str) -> tuple[float, Array, Array]:
    """Log partial likelihood, gradient and Hessian from risk-set sums (Efron's or
    Breslow's ties)."""
    d = np.rint(sums["d"]).astype(np.int64)
    loglik = float((sums["sx"] @ beta).sum())
    grad = sums["sx"].sum(axis=0)
    p = len(beta)
    hess = np.zeros((p, p))
    for level in range(int(d.max(initial=0))):
        m = d > level
        f = (level / d[m]) if ties == "efron" else np.zeros(int(m.sum()))
        den = sums["r0"][m] - f * sums["e0"][m]
        num1 = sums["r1"][m] - f[:, None] * sums["e1"][m]
        num2 = sums["r2"][m] - f[:, None, None] * sums["e2"][m]
        loglik -= float(np.log(den).sum())
        mean = num1 / den[:, None]
        grad = grad - mean.sum(axis=0)
        hess -= (num2 / den[:, None, None]).sum(axis=0) - np.einsum("ki,kj->ij", mean, mean)
    return loglik, grad, hess


def cox_step(spec: StatsSpec, df: pd.DataFrame, card: DatasetCard) -> StatsPart:
    """The site's ``risk_sets`` sums or its ``gradient`` (module docstring) at ``spec.beta``."""
    assert spec.beta is not None
    t_all, e_all, ok = survival_columns(spec, df)
    sub = df.loc[ok].reset_index(drop=True)
    _, x, names, rows = design(spec, sub, response=False)
    if len(spec.beta) != len(names):
        raise InvalidInput(f"beta has {len(spec.beta)} coefficients; the covariates are {names}")
    t, e = t_all[ok][rows], e_all[ok][rows]
    beta = np.asarray(spec.beta, dtype=np.float64)
    if spec.cox_output == "risk_sets":
        arrays = risk_set_sums(t, e, x, beta, np.asarray(spec.times, dtype=np.float64))
        counts = {"d": arrays["d"]}
    else:
        sums = risk_set_sums(t, e, x, beta, np.unique(t[e]))
        loglik, grad, hess = efron(sums, beta, spec.ties)
        arrays = {"loglik": np.asarray(loglik), "grad": grad, "hess": hess,
                  "events": np.asarray(float(e.sum()))}
        counts = {"events": arrays["events"]}
    return StatsPart(arrays, counts, len(t), len(names), {})
