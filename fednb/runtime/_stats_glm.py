"""``glm_step``: one site's part of an iteratively reweighted least-squares step.

For a GLM with canonical link (gaussian/identity, binomial/logit, poisson/log) at the
coefficients ``beta``, a site releases ``xtwx`` = X'WX, ``xtwz`` = X'Wz (the working
response z = eta + (y - mu) / w), the ``deviance`` and ``n`` (complete cases). Summed over
sites these are the pooled data's, so the pooled Newton step
``beta' = (sum X'WX)^-1 sum X'Wz`` is exactly the step on the pooled data, and at
convergence ``(sum X'WX)^-1`` times the dispersion is statsmodels' covariance.

The design matrix comes from the formula by formulaic, categorical variables coded on
their public levels (treatment contrasts, the first level the reference), so every site
has the same columns. Under DP each term must be a variable or ``C(variable)``: the
design's columns are then bounded by the card's bounds (indicators by 1), which with
``beta`` bounds eta, mu, the weights and each row's contribution.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from formulaic import Formula, model_matrix

from fednb.errors import InvalidInput
from fednb.protocol import DatasetCard, StatsSpec
from fednb.runtime._stats import StatsPart, bounds_of
from fednb.typing import Array

__all__ = ["design", "design_columns", "glm_step", "unit_deviance"]


def design(spec: StatsSpec, df: pd.DataFrame, *,
           response: bool = True) -> tuple[Array, Array, list[str], Array]:
    """The response, the design matrix (complete cases), its column names and the rows
    (index of ``df``) it kept."""
    assert spec.formula is not None
    formula = Formula(spec.formula)
    outside = sorted(set(formula.required_variables) - set(spec.variables))
    if outside:
        raise InvalidInput(f"the formula reads {outside}, which the spec's variables do not list")
    if response != ("~" in spec.formula and spec.formula.split("~", 1)[0].strip() != ""):
        raise InvalidInput("glm_step's formula is 'y ~ terms'; cox_step's is '~ terms' (no response)")
    mm = model_matrix(spec.formula, df, na_action="drop")
    rhs = mm.rhs if response else mm
    if not response and "Intercept" in rhs.columns:  # a Cox model's baseline hazard absorbs it
        rhs = rhs.drop(columns="Intercept")
    names = [str(c) for c in rhs.columns]
    x = np.asarray(rhs.to_numpy(), dtype=np.float64).reshape(-1, len(names))
    y = np.asarray(mm.lhs.to_numpy(), dtype=np.float64).reshape(-1) if response else np.zeros(len(x))
    if response and np.asarray(mm.lhs.to_numpy()).ndim == 2 and mm.lhs.shape[1] != 1:
        raise InvalidInput("the response must be one numeric variable (0/1 for binomial)")
    return y, x, names, np.asarray(rhs.index)


def _mean(family: str, eta: Array) -> tuple[Array, Array]:
    """mu and the IRLS weight w = dmu/deta for a canonical link."""
    if family == "gaussian":
        return eta, np.ones_like(eta)
    if family == "binomial":
        mu = 0.5 * (1.0 + np.tanh(0.5 * eta))  # expit without overflow
        return mu, mu * (1.0 - mu)
    mu = np.exp(np.minimum(eta, 700.0))
    return mu, mu


def _xlogy(x: Array, y: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x * np.log(np.where(x == 0, 1.0, y)))


def unit_deviance(family: str, y: Array, mu: Array) -> Array:
    """Each row's deviance contribution (statsmodels' definitions)."""
    if family == "gaussian":
        return np.asarray((y - mu) ** 2)
    if family == "binomial":
        return np.asarray(2.0 * (_xlogy(y, y / mu) + _xlogy(1.0 - y, (1.0 - y) / (1.0 - mu))))
    return np.asarray(2.0 * (_xlogy(y, y / mu) - (y - mu)))


def glm_step(spec: StatsSpec, df: pd.DataFrame, card: DatasetCard) -> StatsPart:
    """``xtwx`` (p x p), ``xtwz`` (p), ``deviance`` and ``n`` at ``spec.beta``."""
    assert spec.family is not None and spec.beta is not None
    y, x, names, _ = design(spec, df)
    p = len(names)
    if len(spec.beta) != p:
        raise InvalidInput(f"beta has {len(spec.beta)} coefficients; the design has {p}: {names}")
    beta = np.asarray(spec.beta, dtype=np.float64)
    if spec.family == "binomial":
        y = np.clip(y, 0.0, 1.0)  # a 0/1 response: the bounds' clamp, also without DP
    eta = x @ beta
    mu, w = _mean(spec.family, eta)
    arrays = {"xtwx": x.T @ (w[:, None] * x), "xtwz": x.T @ (w * eta + (y - mu)),
              "deviance": np.asarray(unit_deviance(spec.family, y, mu).sum()),
              "n": np.asarray(float(len(y)))}
    sens = _sensitivity(spec, card, names, beta) if spec.dp else {}
    return StatsPart(arrays, {"n": arrays["n"]}, len(y), p, sens)


def _column_bounds(spec: StatsSpec, card: DatasetCard, names: list[str]) -> Array:
    """Largest absolute value of each design column, from the card (DP: simple terms only)."""
    out = []
    for col in names:
        if col == "Intercept":
            out.append(1.0)
            continue
        base = col.split("[", 1)[0]
        if base.startswith("C(") and base.endswith(")"):
            base = base[2:-1]
        if base not in spec.variables or ":" in col:
            raise InvalidInput(f"a DP glm_step takes terms that are a variable or C(variable); "
                               f"{col!r} is neither (use disclosure protection for interactions)")
        if base in spec.levels:
            out.append(1.0)
        else:
            lo, hi = bounds_of(spec, card, base)
            out.append(max(abs(lo), abs(hi)))
    return np.asarray(out)


def _sensitivity(spec: StatsSpec, card: DatasetCard, names: list[str], beta: Array) -> dict[str, float]:
    """Replace-one L2 sensitivities at ``beta`` with every value inside its bounds."""
    assert spec.family is not None and spec.formula is not None
    m = _column_bounds(spec, card, names)
    r2 = float((m**2).sum())  # a row's squared norm, at most
    e = float(np.abs(beta) @ m)  # |eta|, at most
    yname = spec.formula.split("~", 1)[0].strip()
    ylo, yhi = bounds_of(spec, card, yname) if yname in spec.variables else (0.0, 0.0)
    if spec.family == "binomial":
        ylo, yhi = max(ylo, 0.0), min(yhi, 1.0)
    mus, ws = _mean(spec.family, np.asarray([-e, e]))
    w_max = 0.25 if spec.family == "binomial" else float(ws.max())
    resid = max(abs(ylo - mus.max()), abs(yhi - mus.min()))
    corners = [(yy, mm) for yy in (ylo, yhi) for mm in mus]
    dev = max(float(unit_deviance(spec.family, np.asarray(yy), np.asarray(mm))) for yy, mm in corners)
    return {"xtwx": math.sqrt(2) * w_max * r2, "xtwz": 2 * math.sqrt(r2) * (w_max * e + resid),
            "deviance": dev, "n": 1.0}


def design_columns(spec: StatsSpec, card: DatasetCard, *, response: bool = True) -> list[str]:
    """The design's column names from the spec and the card alone (no rows read)."""
    import xarray as xr

    from fednb.runtime._stats import frame

    blank = xr.Dataset({name: ((card.example_dim,), np.zeros(0) if np.dtype(card.variables[name].dtype).kind
                               in "biuf" else np.zeros(0, dtype=object))
                        for name in spec.variables if name in card.variables})
    return design(spec, frame(spec, blank, card), response=response)[2]
