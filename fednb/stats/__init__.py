"""Federated statistics for a study over many hospitals (issue #19).

Each function files ``stats`` requests (declared steps, no code) with every domain,
combines the released partial statistics here and returns what pandas, scipy,
statsmodels or lifelines would give on the pooled data: exactly, under the owners'
disclosure rules, or with charged DP noise. docs/stats.md lists what each releases.

Examples
--------
>>> import fednb, fednb.stats as fs                                    # doctest: +SKIP
>>> hs = [fednb.connect(url, token=t) for url, t in hospitals]        # doctest: +SKIP
>>> fs.describe(hs, ["age", "tsize"], dataset="gbsg2", by="horTh",
...             levels={"horTh": ["no", "yes"]})                       # doctest: +SKIP
>>> fs.glm(hs, "cens ~ age + C(tgrade)", "binomial", dataset="gbsg2",
...        levels={"tgrade": ["I", "II", "III"]})                      # doctest: +SKIP
"""

from fednb.stats._api import correlation, covariance, cox, crosstab, describe, glm, kaplan_meier, quantiles
from fednb.stats._results import CoxResult, GLMResult, KaplanMeier
from fednb.stats._sites import DomainSites, LocalSites, Sites

__all__ = [
    "CoxResult",
    "DomainSites",
    "GLMResult",
    "KaplanMeier",
    "LocalSites",
    "Sites",
    "correlation",
    "covariance",
    "cox",
    "crosstab",
    "describe",
    "glm",
    "kaplan_meier",
    "quantiles",
]
