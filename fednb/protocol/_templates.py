"""What an owner sets for ``stats`` requests: disclosure rules and templates.

:class:`DisclosureRules` are the owner's thresholds for exact (disclosure-controlled)
statistics on one dataset; :class:`StatsTemplate` lets a ``stats`` request that stays in
its limits run without a new review ("approve once, run many"). Both travel as JSON: the
domain keeps them, the owner's tools show them. Defaults follow the systems hospitals use
(docs/stats-domain.md): DataSHIELD's ``nfilter.tab=3``, ``nfilter.subset=3``,
``nfilter.glm=0.33``; vantage6's ``CROSSTAB_PRIVACY_THRESHOLD=5`` and
``GLM_MINIMUM_ORGANIZATIONS=3``; OHDSI's ``minCellCount=5``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from fednb.protocol._models import ReleaseMode, _Model
from fednb.protocol._stats import STATS_OPS, StatsProtection

_TEMPLATE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$"
"""Template names: like user and dataset names, at most 48 long (the audit log and the
request's reviewer field carry ``template:<name>``)."""

__all__ = ["LIBRARY_OPS", "DisclosureRules", "StatsTemplate", "TemplateInfo", "template_ops"]

LIBRARY_OPS: dict[str, tuple[str, ...]] = {
    "describe": ("moments", "quantile_counts", "table"),
    "crosstab": ("table",),
    "quantiles": ("quantile_counts",),
    "correlation": ("moments",),
    "covariance": ("moments",),
    "glm": ("glm_step",),
    "kaplan_meier": ("km_table",),
    "cox": ("cox_step",),
}
"""The ops each function of :mod:`fednb.stats` files, so a template may name either."""


def template_ops(functions: list[str]) -> set[str]:
    """The ops a template naming ``functions`` (library functions or ops) covers."""
    return {op for f in functions for op in LIBRARY_OPS.get(f, (f,))}


class DisclosureRules(_Model):
    """The owner's disclosure rules for exact statistics on one dataset.

    Attributes
    ----------
    min_cell_count
        Smallest non-zero count a released cell may hold (rows; default 5, as vantage6 and
        OHDSI; DataSHIELD's ``nfilter.tab`` is 3). A release with a cell of 1 to
        ``min_cell_count - 1`` rows is refused.
    zero_cell_suppression
        Also refuse a release holding an empty cell (default False): a zero says that no
        patient of the subset has that combination, which can disclose an attribute of
        every one of them (vantage6's zero-cell suppression).
    min_subset
        Fewest rows a filtered subset may hold, and fewest rows by which it may differ from
        any subset this scientist was already given on this dataset, the whole dataset
        included (default 5; DataSHIELD's ``nfilter.subset`` is 3): two releases on subsets
        differing by fewer rows would tell those rows apart (differencing).
    max_params_ratio
        Most model parameters per row used (default 0.33, DataSHIELD's ``nfilter.glm``):
        a saturated model's fitted values are the data.
    allowed_variables
        Variables a stats request may read (None: all the card lists).
    denied_variables
        Variables no stats request may read (wins over ``allowed_variables``).
    min_sites
        Fewest sites a pooled model over this dataset must combine (default 3, vantage6's
        ``GLM_MINIMUM_ORGANIZATIONS``). The domain cannot count the other sites; it
        publishes this number with every stats release (metric ``min_sites``) and records
        it in the audit log, and :mod:`fednb.stats` refuses a pooled fit over fewer.
    """

    min_cell_count: int = Field(default=5, ge=1, le=1_000)
    zero_cell_suppression: bool = False
    min_subset: int = Field(default=5, ge=1, le=100_000)
    max_params_ratio: float = Field(default=0.33, gt=0, le=1)
    allowed_variables: list[str] | None = Field(default=None, max_length=10_000)
    denied_variables: list[str] = Field(default_factory=list, max_length=10_000)
    min_sites: int = Field(default=3, ge=1, le=1_000)


class StatsTemplate(_Model):
    """A kind of ``stats`` request the owner approves once: a request within its limits is
    approved on submission, and the audit log names the template.

    Attributes
    ----------
    name
        The template's name (what the audit log records): ASCII letters, digits, '.', '_',
        '-'; 1-48 long.
    functions
        :mod:`fednb.stats` functions (``"glm"``, ``"describe"``, see :data:`LIBRARY_OPS`)
        or ops (``"glm_step"``) it covers.
    datasets
        Datasets it covers (``["*"]``: all).
    scientists
        Scientists it covers (``["*"]``: all).
    variables
        Variables a covered request may read (None: any the disclosure rules allow).
    max_params
        Most model parameters (GLM and Cox design columns) a covered request may fit.
    max_iterations
        Most requests of one model (the same op, formula, family, filter, grouping and
        dataset; only the coefficients differ: one Newton/IRLS step each) this template
        approves for one scientist (default 25).
    max_runs
        Most runs one covered request may ask for (default 1).
    protection
        The protection a covered request must ask for (None: whatever the dataset's policy
        accepts). A template never weakens the dataset's protection.
    min_noise_multiplier
        With DP, the smallest noise multiplier a covered request may ask for (None: the
        policy's floor only).
    release
        How covered requests' results are released (default ``"auto"``).
    reviewers
        Distinct owners who must approve the template before it is active (1 or 2: the
        two-person rule); the one who adds it counts as the first.
    """

    name: str = Field(pattern=_TEMPLATE_NAME)
    functions: list[str] = Field(min_length=1, max_length=32)
    datasets: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=256)
    scientists: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=1_000)
    variables: list[str] | None = Field(default=None, max_length=10_000)
    max_params: int | None = Field(default=None, ge=1, le=256)
    max_iterations: int = Field(default=25, ge=1, le=10_000)
    max_runs: int = Field(default=1, ge=1, le=1_000)
    protection: StatsProtection | None = None
    min_noise_multiplier: float | None = Field(default=None, gt=0)
    release: ReleaseMode = "auto"
    reviewers: Literal[1, 2] = 1

    @model_validator(mode="after")
    def _check(self) -> StatsTemplate:
        unknown = sorted(template_ops(self.functions) - set(STATS_OPS))
        if unknown:
            raise ValueError(f"unknown stats functions {unknown}: name ops {list(STATS_OPS)} or "
                             f"library functions {sorted(LIBRARY_OPS)}")
        return self


class TemplateInfo(_Model):
    """A template as the domain keeps it: who approved it, and whether it is active."""

    template: StatsTemplate
    approved_by: list[str]
    active: bool
    added: datetime
