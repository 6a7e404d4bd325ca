"""The ``stats`` request kind's spec: one federated-statistics step, as JSON.

A :class:`StatsSpec` names one *op*, the variables it reads, an optional row filter and
grouping, the op's parameters and the protection the scientist asks for. The domain
computes one site's exact partial sufficient statistics for it
(:func:`fednb.runtime.compute`), applies the protection its policy sets
(disclosure control, DP or both) and releases the arrays; the scientist's library
(:mod:`fednb.stats`) combines the parts of many sites into the pooled answer.

Ops and what they release (docs/stats.md has the details):

======================  ==============================================================
``moments``             per group and variable: present count, missing count, sum, sum
                        of squares; with ``cross``, complete-case cross-products
``table``               counts of one or two categorical variables (levels public)
``quantile_counts``     per group: how many values lie at or below each threshold
``glm_step``            X'WX, X'Wz and the deviance of a GLM at coefficients ``beta``
``km_table``            event and censoring counts at each distinct time (or on a grid)
``cox_step``            risk-set sums at given event times (pooled Cox) or this site's
                        partial-likelihood gradient and Hessian (Cox stratified by site)
======================  ==============================================================

Categorical variables have their levels in ``levels`` (public, from the card or the
study protocol), so every site codes a table or a design matrix the same way; a value
outside its levels counts as missing.
"""

from __future__ import annotations

import builtins
import itertools
import keyword
import re
from typing import Literal

from pydantic import Field, model_validator

from fednb.protocol._models import _Model

__all__ = ["STATS_OPS", "Comparison", "StatsOp", "StatsProtection", "StatsSpec"]

StatsOp = Literal["moments", "table", "quantile_counts", "glm_step", "km_table", "cox_step"]
STATS_OPS: tuple[str, ...] = StatsOp.__args__  # type: ignore[attr-defined]
StatsProtection = Literal["disclosure", "dp", "both"]
_VAR = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
"""Variable names a stats spec may name (formula-friendly identifiers)."""
Level = str | float


_FORMULA_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\d+)|(\*\*|[-+*:~()]))")


def _check_formula(formula: str, variables: list[str]) -> None:
    """Allow only what a model formula needs: variables, ``C(var)``, ``+ - * : ** ~ ( )``
    and the numbers 0 and 1 (and exponents of ``**``).

    The domain evaluates the formula in its trusted process (formulaic evaluates each
    term as Python), so nothing else -- attributes, calls, strings -- may reach it.
    """
    pos, previous = 0, ""
    while pos < len(formula):
        m = _FORMULA_TOKEN.match(formula, pos)
        if m is None or m.end() == pos:
            if formula[pos:].strip() == "":
                break
            raise ValueError(f"formula {formula[:200]!r}: unexpected {formula[pos:pos + 20]!r}; use "
                             "variables, C(variable), + - * : ** ( ), 0 and 1")
        name, number, _ = m.groups()
        if name is not None and name != "C" and name not in variables:
            raise ValueError(f"formula names {name!r}, which is not in variables")
        if name is not None and name != "C" and (keyword.iskeyword(name) or hasattr(builtins, name)
                                                 or name in ("Q", "I")):
            raise ValueError(f"variable {name!r} shadows a Python or formula name: rename it to use it "
                             "in a formula")
        if m.group(0).strip() == "(" and re.fullmatch(r"[A-Za-z_]\w*", previous) and previous != "C":
            raise ValueError(f"formula {formula[:200]!r}: only C(...) may be called")
        if name == "C" and not formula[m.end():].lstrip().startswith("("):
            raise ValueError("C must be called on a variable: C(variable)")
        if number is not None and number not in ("0", "1") and previous != "**":
            raise ValueError(f"formula {formula[:200]!r}: only the numbers 0 and 1 may appear")
        previous = m.group(0).strip()
        pos = m.end()


class Comparison(_Model):
    """One condition of a row filter: ``variable op value``; rows must meet all of them.

    A missing value (NaN, or a text value outside the variable's levels) meets no
    condition but ``notna``'s negation never holds either: such rows are filtered out.
    """

    variable: str = Field(pattern=_VAR)
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "notna"]
    value: Level | list[Level] | None = None

    @model_validator(mode="after")
    def _check(self) -> Comparison:
        if self.op == "notna":
            if self.value is not None:
                raise ValueError("notna takes no value")
        elif self.op == "in":
            if not isinstance(self.value, list) or not 1 <= len(self.value) <= 256:
                raise ValueError("'in' takes a list of 1 to 256 values")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"{self.op!r} takes one value")
        elif self.op in ("<", "<=", ">", ">=") and isinstance(self.value, str):
            raise ValueError(f"{self.op!r} compares numbers only")
        return self


class StatsSpec(_Model):
    """One step of a federated statistic, as the owner reviews it and the domain runs it.

    Parameters
    ----------
    op
        What to compute (module docstring).
    variables
        Every variable the step reads, filter, group, time and event included: the
        owner's allow and deny lists check this list, and the runtime reads nothing else.
    where
        Row filter: all comparisons must hold. The subset's size is what the minimum
        subset rule checks.
    group
        A categorical variable (levels in ``levels``): ``moments``, ``table`` and
        ``quantile_counts`` give one slice per level (rows outside the levels drop out).
    levels
        Public levels of each categorical variable the step reads: text values, or
        numbers for coded variables (matched by equality).
    cross
        ``moments``: also release complete-case cross-products (covariance, correlation).
    thresholds
        ``quantile_counts``: the cut points, ascending (at most 256).
    formula
        ``glm_step``: ``"y ~ x1 + C(x2)"`` (formulaic syntax, an intercept unless ``0 +``);
        ``cox_step``: the covariates only, ``"~ age + tgrade"`` (no intercept).
    family
        ``glm_step``: the family, with its canonical link (identity, logit, log).
    beta
        ``glm_step``, ``cox_step``: the current coefficients, in the design's column order.
    time, event
        ``km_table``, ``cox_step``: follow-up time and event indicator (1 event, 0 censored).
    times
        ``km_table``: a public grid (counts per interval ``(t[k-1], t[k]]`` and above the
        last); None: this site's distinct observed times (not under DP, whose shapes must
        be public). ``cox_step`` pooled: the event times at which risk sets are summed.
    cox_output
        ``cox_step``: ``"risk_sets"`` (pooled Cox: sums at ``times``) or ``"gradient"``
        (this site's own log partial likelihood, gradient and Hessian: Cox stratified by
        site, or a per-site fit for meta-analysis).
    ties
        ``cox_step``: Efron's or Breslow's handling of tied event times.
    protection
        ``"disclosure"``: exact values under the owner's disclosure rules; ``"dp"``:
        Gaussian noise on every array, charged; ``"both"``.
    noise_multiplier
        With DP: each array's noise standard deviation over its L2 sensitivity.
    """

    op: StatsOp
    variables: list[str] = Field(min_length=1, max_length=64)
    where: list[Comparison] = Field(default_factory=list, max_length=16)
    group: str | None = Field(default=None, pattern=_VAR)
    levels: dict[str, list[Level]] = Field(default_factory=dict, max_length=64)
    cross: bool = False
    thresholds: list[float] | None = Field(default=None, min_length=1, max_length=256)
    formula: str | None = Field(default=None, min_length=1, max_length=2_000)
    family: Literal["gaussian", "binomial", "poisson"] | None = None
    beta: list[float] | None = Field(default=None, max_length=256)
    time: str | None = Field(default=None, pattern=_VAR)
    event: str | None = Field(default=None, pattern=_VAR)
    times: list[float] | None = Field(default=None, min_length=1, max_length=20_000)
    cox_output: Literal["risk_sets", "gradient"] = "gradient"
    ties: Literal["efron", "breslow"] = "efron"
    protection: StatsProtection = "disclosure"
    noise_multiplier: float | None = Field(default=None, gt=0, le=1e4)

    @property
    def dp(self) -> bool:
        """Whether DP noise is asked for (``"dp"`` or ``"both"``)."""
        return self.protection != "disclosure"

    @model_validator(mode="after")
    def _check(self) -> StatsSpec:
        for v in self.variables:
            if not re.fullmatch(_VAR, v):
                raise ValueError(f"variable name {v[:80]!r} must match {_VAR}")
        named = {c.variable for c in self.where} | {self.group, self.time, self.event} | set(self.levels)
        missing = sorted(v for v in named if v is not None and v not in self.variables)
        if missing:
            raise ValueError(f"variables must list every variable the step reads; add {missing}")
        for name, lv in self.levels.items():
            if not 1 <= len(lv) <= 1000 or len(set(map(str, lv))) != len(lv):
                raise ValueError(f"levels of {name!r} must be 1 to 1000 distinct values")
        if self.group is not None and self.group not in self.levels:
            raise ValueError(f"the group variable {self.group!r} needs its levels")
        if self.dp != (self.noise_multiplier is not None):
            raise ValueError("noise_multiplier is set exactly when protection is 'dp' or 'both'")
        for name in ("thresholds", "times"):
            grid = getattr(self, name)
            if grid is not None and any(b <= a for a, b in itertools.pairwise(grid)):
                raise ValueError(f"{name} must be strictly ascending")
        self._check_op()
        if self.formula is not None:
            _check_formula(self.formula, self.variables)
        return self

    def _check_op(self) -> None:
        need: dict[str, tuple[str, ...]] = {
            "table": (), "moments": (), "quantile_counts": ("thresholds",),
            "glm_step": ("formula", "family", "beta"), "km_table": ("time", "event"),
            "cox_step": ("formula", "beta", "time", "event")}
        absent = [f for f in need[self.op] if getattr(self, f) is None]
        if absent:
            raise ValueError(f"{self.op} needs {absent}")
        if self.op == "table":
            if not 1 <= len(self.variables) - len(self._others()) <= 2:
                raise ValueError("table counts one or two variables (besides filter and group)")
            if any(v not in self.levels for v in self.tabulated()):
                raise ValueError("a table's variables need their levels")
        if self.op == "quantile_counts" and len(self.tabulated()) != 1:
            raise ValueError("quantile_counts reads one variable (besides filter and group)")
        if self.op == "cox_step" and self.cox_output == "risk_sets" and self.times is None:
            raise ValueError("cox_step with risk_sets needs the pooled event times")
        if self.dp:
            if self.op == "cox_step":
                raise ValueError("cox_step has no DP form (its risk-set terms have no useful bound); "
                                 "use protection='disclosure', or Kaplan-Meier on a grid under DP")
            if self.op == "km_table" and self.times is None:
                raise ValueError("a DP km_table needs a public time grid (times=)")

    def _others(self) -> set[str]:
        return {c.variable for c in self.where} | {v for v in (self.group,) if v is not None}

    def tabulated(self) -> list[str]:
        """The variables ``moments``, ``table`` and ``quantile_counts`` summarise, in order
        (``variables`` without those only used by the filter or the group)."""
        others = self._others()
        return [v for v in self.variables if v not in others]
