"""What ``fednb.stats`` returns for models and survival: pandas tables with HTML reprs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from fednb.typing import Array

__all__ = ["CoxResult", "GLMResult", "KaplanMeier", "coef_table"]


def coef_table(names: list[str], params: Array, cov: Array, alpha: float = 0.05) -> pd.DataFrame:
    """Coefficients, standard errors, z, two-sided p and normal confidence limits (as
    statsmodels' GLM summary and lifelines' Cox summary give them)."""
    se = np.sqrt(np.diag(cov))
    z = params / se
    q = sps.norm.ppf(1 - alpha / 2)
    return pd.DataFrame({"coef": params, "se": se, "z": z, "p": 2 * sps.norm.sf(np.abs(z)),
                         f"ci_lower_{1 - alpha:g}": params - q * se,
                         f"ci_upper_{1 - alpha:g}": params + q * se}, index=pd.Index(names, name="term"))


def _html(title: str, facts: dict[str, Any], table: pd.DataFrame) -> str:
    items = " · ".join(f"<b>{k}</b> {v}" for k, v in facts.items())
    body = table.to_html(float_format="%.6g")
    return f"<div><h4 style='margin:4px 0'>{title}</h4><div>{items}</div>{body}</div>"


@dataclass
class GLMResult:
    """A federated GLM: pooled (federated IRLS) or meta-analysed (inverse variance)."""

    family: str
    method: str
    params: pd.Series
    cov: pd.DataFrame
    table: pd.DataFrame
    n: float
    deviance: float | None
    scale: float
    iterations: int
    sites: list[str]
    protection: str
    per_site: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def bse(self) -> pd.Series:
        """Standard errors."""
        return self.table["se"]

    def _repr_html_(self) -> str:
        facts = {"family": self.family, "method": self.method, "n": f"{self.n:g}",
                 "deviance": "—" if self.deviance is None else f"{self.deviance:.6g}",
                 "scale": f"{self.scale:.6g}", "iterations": self.iterations,
                 "sites": ", ".join(self.sites), "protection": self.protection}
        return _html("Federated GLM", facts, self.table)

    def __repr__(self) -> str:
        return f"GLMResult({self.family}, {self.method}, n={self.n:g})\n{self.table}"


@dataclass
class CoxResult:
    """A federated Cox model (pooled over risk sets, or stratified by site)."""

    strata: str | None
    ties: str
    params: pd.Series
    cov: pd.DataFrame
    table: pd.DataFrame
    loglik: float
    n: float
    events: float
    iterations: int
    sites: list[str]
    protection: str

    @property
    def hazard_ratios(self) -> pd.Series:
        """exp(coef)."""
        return pd.Series(np.exp(self.params.to_numpy()), index=self.params.index, name="exp(coef)")

    def _repr_html_(self) -> str:
        facts = {"strata": self.strata or "none (pooled)", "ties": self.ties, "n": f"{self.n:g}",
                 "events": f"{self.events:g}", "log partial likelihood": f"{self.loglik:.6g}",
                 "iterations": self.iterations, "sites": ", ".join(self.sites)}
        table = self.table.assign(**{"exp(coef)": self.hazard_ratios})
        return _html("Federated Cox model", facts, table)

    def __repr__(self) -> str:
        return f"CoxResult(strata={self.strata}, ties={self.ties})\n{self.table}"


@dataclass
class KaplanMeier:
    """Pooled Kaplan-Meier survival: ``table`` has at_risk, events, censored, survival and
    the exponential-Greenwood band at each time."""

    table: pd.DataFrame
    sites: list[str]
    protection: str
    label: str = "pooled"

    @property
    def survival_function(self) -> pd.Series:
        return self.table["survival"]

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """A step plot with its confidence band (matplotlib); returns the axes."""
        import matplotlib.pyplot as plt

        ax = ax or plt.gca()
        t = self.table.index.to_numpy(dtype=np.float64)
        finite = np.isfinite(t)
        t = np.concatenate([[0.0], t[finite]])
        s = np.concatenate([[1.0], self.table["survival"].to_numpy()[finite]])
        lo = np.concatenate([[1.0], self.table["ci_lower"].to_numpy()[finite]])
        hi = np.concatenate([[1.0], self.table["ci_upper"].to_numpy()[finite]])
        (line,) = ax.step(t, s, where="post", label=kwargs.pop("label", self.label), **kwargs)
        ax.fill_between(t, lo, hi, step="post", alpha=0.25, color=line.get_color())
        ax.set_xlabel(str(self.table.index.name or "time"))
        ax.set_ylabel("survival")
        ax.set_ylim(0, 1.02)
        return ax

    def _repr_html_(self) -> str:
        facts = {"sites": ", ".join(self.sites), "protection": self.protection,
                 "times": len(self.table)}
        return _html("Kaplan-Meier (pooled)", facts, self.table)
