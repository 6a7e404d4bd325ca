"""Pydantic models of everything that travels as JSON between a domain and its clients."""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "NAME_PATTERN",
    "REASON_CODES",
    "RUN_STATUSES",
    "Aggregation",
    "ApproveDecision",
    "BudgetInfo",
    "ClientDP",
    "DatasetCard",
    "DenyDecision",
    "DomainInfo",
    "MockInfo",
    "ParamSpec",
    "QuerySpec",
    "ReasonCode",
    "ReleaseMode",
    "ReleaseState",
    "RequestCreate",
    "RequestInfo",
    "RequestKind",
    "RequestStatus",
    "Role",
    "RunCreate",
    "RunInfo",
    "RunStatus",
    "TensorSpec",
    "UserInfo",
    "VariableCard",
    "code_hash",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Names of users, datasets and functions: ASCII letters, digits, '.', '_', '-'; 1-64 long."""
_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
"""Names of functions, run parameters and metrics: ASCII Python identifiers, 1-64 long."""

Role = Literal["owner", "scientist"]
RequestStatus = Literal["pending", "approved", "denied"]
ReleaseMode = Literal["auto", "manual"]
RequestKind = Literal["update", "query", "dp-sgd", "stats"]
"""The kinds of request: ``update`` is code; the others are specs sent as data
(:mod:`fednb.runtime` describes each: ``fednb.runtime.KINDS``)."""
RunStatus = Literal["queued", "running", "succeeded", "failed", "refused", "timeout", "killed"]
RUN_STATUSES: tuple[str, ...] = RunStatus.__args__  # type: ignore[attr-defined]
ReleaseState = Literal["held", "released", "withheld", "secagg", "masked"]
"""``secagg``: kept for a secure round, never downloadable; ``masked``: sent masked, deleted."""
ReasonCode = Literal[
    "ok",
    "exception",
    "memory_limit",
    "process_limit",
    "wall_clock",
    "output_too_large",
    "invalid_output",
    "nonfinite_output",
    "compression_overflow",
    "shape_mismatch",
    "worker_crashed",
    "sandbox_unavailable",
    "domain_restarted",
]
REASON_CODES: tuple[str, ...] = ReasonCode.__args__  # type: ignore[attr-defined]


def code_hash(source: str) -> str:
    """SHA-256 (hex) of a function's source text, the identity an owner approves."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Model):
    """One run parameter the owner approves: its type and, for numbers, inclusive bounds."""

    type: Literal["float", "int", "bool", "str"]
    low: float | None = None
    high: float | None = None
    choices: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type in ("float", "int"):
            if self.low is None or self.high is None:
                raise ValueError("numeric parameters need both bounds (low, high)")
            if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
                raise ValueError(f"bounds ({self.low}, {self.high}) are not finite and ordered")
        if self.type == "str" and not self.choices:
            raise ValueError("string parameters need a list of allowed choices")
        return self

    def check(self, name: str, value: Any) -> str | None:
        """Return why ``value`` is outside this spec, or None when it fits."""
        if self.type == "bool":
            return None if isinstance(value, bool) else f"{name} must be a bool"
        if self.type == "str":
            ok = isinstance(value, str) and value in (self.choices or [])
            return None if ok else f"{name} must be one of {self.choices}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number"
        if self.type == "int" and not float(value).is_integer():
            return f"{name} must be an integer"
        assert self.low is not None and self.high is not None
        if not (math.isfinite(value) and self.low <= value <= self.high):
            return f"{name}={value!r} is outside the approved range [{self.low}, {self.high}]"
        return None


class TensorSpec(_Model):
    """Shape and dtype of one named tensor."""

    shape: list[int] = Field(max_length=8)
    dtype: Literal["float16", "float32", "float64"]

    @field_validator("shape")
    @classmethod
    def _nonneg(cls, v: list[int]) -> list[int]:
        if any(d < 0 for d in v):
            raise ValueError("tensor dimensions must be non-negative")
        return v


class VariableCard(_Model):
    """What a scientist may know of one variable: never its values."""

    dims: list[str]
    dtype: str
    units: str | None = None
    bounds: tuple[float, float] | None = None
    description: str = ""


class MockInfo(_Model):
    """How the mock twin was made."""

    method: Literal["synthesised-within-bounds", "provided-by-owner"]
    note: str


class DatasetCard(_Model):
    """A dataset's public description: schema, units, bounds, size; no private values."""

    name: str
    description: str = ""
    source: str
    dims: dict[str, int]
    example_dim: str
    num_examples: int
    variables: dict[str, VariableCard]
    coords: dict[str, VariableCard]
    mock: MockInfo
    created: datetime


class ClientDP(_Model):
    """Client-level DP for an ``update`` request: the domain clips each update to L2 norm
    ``clip`` and adds Gaussian noise of standard deviation ``noise_multiplier * clip``.

    Accounted with sensitivity ``2 * clip`` (any change of the dataset moves a clipped
    update by at most that), so the guarantee holds whatever the code does.

    Examples
    --------
    >>> ClientDP(clip=1.0, noise_multiplier=8.0)  # about epsilon 1 per run at delta 1e-6
    ClientDP(clip=1.0, noise_multiplier=8.0)
    """

    clip: float = Field(gt=0, le=1e6)
    noise_multiplier: float = Field(gt=0, le=1e4)


class Aggregation(_Model):
    """One aggregation of a ``query`` request, over a variable with declared bounds."""

    op: Literal["count", "sum", "mean", "histogram", "quantile"]
    variable: str | None = None
    bins: int | None = Field(default=None, ge=2, le=1000)
    quantiles: list[float] | None = Field(default=None, min_length=1, max_length=20)

    @model_validator(mode="after")
    def _check(self) -> Aggregation:
        if self.op != "count" and not self.variable:
            raise ValueError(f"{self.op} needs a variable")
        if self.op == "histogram" and self.bins is None:
            raise ValueError("a histogram needs bins")
        if self.op == "quantile" and not self.quantiles:
            raise ValueError("quantile needs quantiles, e.g. [0.5]")
        if self.quantiles and not all(0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles lie strictly between 0 and 1")
        return self


class QuerySpec(_Model):
    """A declared ``query``: aggregations the runtime computes (no code), with the patient
    as the privacy unit. Counts, sums and histograms get Gaussian noise of standard
    deviation ``noise_multiplier`` times their L2 sensitivity; each quantile is chosen by
    the exponential mechanism at ``quantile_epsilon``."""

    aggregations: list[Aggregation] = Field(min_length=1, max_length=32)
    noise_multiplier: float = Field(gt=0, le=1e4)
    quantile_epsilon: float = Field(default=0.1, gt=0, le=10)


class BudgetInfo(_Model):
    """Epsilon spent (committed and reserved) and left for one scientist on one dataset."""

    scientist: str
    dataset: str
    delta: float
    epsilon_budget: float | None
    epsilon_spent: float
    epsilon_reserved: float
    epsilon_remaining: float | None
    dataset_cap: float | None
    dataset_spent: float
    dataset_remaining: float | None


class RequestCreate(_Model):
    """What a scientist files: the exact source text and the envelope it may run in."""

    id: str = Field(pattern=_ID_PATTERN)
    function_name: str = Field(pattern=_IDENTIFIER)
    kind: RequestKind = "update"
    source: str = Field(min_length=1, max_length=200_000)
    code_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    datasets: list[str] = Field(min_length=1, max_length=16)
    params: dict[str, ParamSpec] = Field(default_factory=dict, max_length=64)
    weights: dict[str, TensorSpec] | None = Field(default=None, max_length=1024)
    metrics: dict[str, tuple[float, float]] = Field(default_factory=dict, max_length=64)
    runs: int = Field(ge=1, le=100_000)
    description: str = Field(default="", max_length=10_000)
    dp: ClientDP | None = None
    slot_s: float | None = Field(default=None, gt=0, le=86_400)
    """A DP request's proposed release slot, seconds: each run's result appears this long
    after the run was created, however long it took (a run past it releases the default).
    The owner approves it or sets another; None: the domain policy's ``dp_slot_s``."""

    @model_validator(mode="after")
    def _check(self) -> RequestCreate:
        if "\x00" in self.source or "\x00" in self.description:
            # a store may not keep NUL as it came (PostgreSQL text cannot): the reviewed
            # source must be exactly what runs, so it is refused, never rewritten
            raise ValueError("source and description must not contain NUL characters")
        if code_hash(self.source) != self.code_hash:
            raise ValueError("code_hash is not the SHA-256 of source")
        for d in self.datasets:
            if not re.fullmatch(NAME_PATTERN, d):
                raise ValueError(f"dataset name {d[:80]!r} is not a valid name")
        for what, names in (("parameter", self.params), ("metric", self.metrics)):
            for k in names:  # keyword arguments and metric keys: no look-alikes, no RTL overrides
                if not re.fullmatch(_IDENTIFIER, k):
                    raise ValueError(f"{what} name {k[:80]!r} must be an ASCII identifier ({_IDENTIFIER})")
        for k, (lo, hi) in self.metrics.items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"metric {k!r} bounds must be finite and ordered")
        return self


class RequestInfo(_Model):
    """A request as the domain stores it, with its review state."""

    id: str
    scientist: str
    function_name: str
    kind: str
    source: str
    code_hash: str
    datasets: list[str]
    params: dict[str, ParamSpec]
    weights: dict[str, TensorSpec] | None
    metrics: dict[str, tuple[float, float]]
    runs: int
    runs_used: int
    description: str
    status: RequestStatus
    release: ReleaseMode | None
    reviewed_by: str | None
    review_reason: str | None
    created: datetime
    reviewed: datetime | None
    previous_hash: str | None = None
    diff: str | None = None
    dp: ClientDP | None = None
    delta: float | None = None
    epsilon_per_run: float | None = None
    projected_epsilon: float | None = None
    budget: BudgetInfo | None = None
    slot_s: float | None = None


class ApproveDecision(_Model):
    release: ReleaseMode = "manual"
    slot_s: float | None = Field(default=None, gt=0, le=86_400)
    """For a DP request: the release slot, seconds (None: the scientist's proposal, else the
    policy's ``dp_slot_s``)."""


class DenyDecision(_Model):
    reason: str = Field(min_length=1, max_length=2_000, pattern=r"^[^\x00]*$")


class RunCreate(_Model):
    """The JSON header of a run body (the weights travel as tensors beside it)."""

    dataset: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, max_length=64)
    weights: bool = False
    compression: Literal["none", "fp16", "int8"] = "none"
    secure: bool = False  # the result leaves the domain only masked, by secure aggregation


class RunInfo(_Model):
    """A run's fixed-category outcome; owner-only fields are None for scientists."""

    id: str
    request_id: str
    scientist: str
    dataset: str
    status: RunStatus
    reason: ReasonCode | None
    params: dict[str, Any]
    num_examples: int | None
    release_state: ReleaseState | None
    created: datetime
    finished: datetime | None
    epsilon: float | None = None
    backend: str | None = None  # owner only: the device the run used, "cpu" or "cuda:<name>"
    owner_log: str | None = None
    release_at: datetime | None = None
    """A DP run's scheduled release (creation plus the approved slot); None without DP."""


class UserInfo(_Model):
    name: str
    role: Role
    created: datetime
    revoked: bool


class DomainInfo(_Model):
    """The public ``/api/v1/info`` document."""

    name: str
    domain_id: str
    api_version: str
    fednb_version: str
    sandbox: Literal["bubblewrap", "insecure-demo", "unavailable"]
    identity: str | None = None  # Ed25519 public key (hex): what peers put on their roster
    kernels: str | None = None  # fednb.kernels backend of the domain's process (numba, cupy ...)
