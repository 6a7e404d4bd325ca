"""The domain's policy: who may run without DP, the caps every run lives under, and how
``stats`` requests are protected on each dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fednb.errors import InvalidInput
from fednb.protocol import DisclosureRules, StatsProtection

if TYPE_CHECKING:
    from fednb.domain._domain import Domain
    from fednb.domain._templates import TemplateBook

__all__ = ["Policy", "PolicyView"]


class Policy(BaseModel):
    """Settings the owner controls.

    Attributes
    ----------
    allow_no_dp
        Scientists who may run code without differential privacy (default: none). Their
        results are always held for the owner's manual release.
    run_timeout_s
        Wall-clock limit of one run, seconds (default 600).
    max_result_bytes
        Largest result a run may return, bytes (default 64 MiB).
    max_concurrent_jobs
        Runs executing at once across the domain (default 2).
    worker_memory_bytes
        Memory cap of one sandboxed worker, bytes (default 3 GiB: room for torch, not for 4 GiB).
    gpu_jobs
        Let approved jobs see this machine's NVIDIA GPUs (default False): the sandbox binds
        the NVIDIA device nodes and driver libraries, and caps the worker's host memory by
        its cgroup instead of ``RLIMIT_AS`` (CUDA reserves far more address space than it
        uses). Where the domain cannot write a memory cgroup, GPU jobs are refused unless
        ``gpu_without_host_memory_cap`` is set.
    gpu_memory_bytes
        GPU memory of one job, bytes (default: none): CuPy's memory pool limit and PyTorch's
        per-process memory fraction, set before the job's code starts. An allocator limit
        in the job's own process, which code can lift: it stops accidents, not hostile code.
    gpu_without_host_memory_cap
        Run GPU jobs even where no memory cgroup can be written, so with no cap on their
        host memory at all (default False: such runs are refused with ``sandbox_unavailable``).
    delta
        The delta of every epsilon this domain reports and enforces; None (default) uses
        ``min(1e-6, 1 / (10 n))`` for a dataset of n examples.
    min_noise_multiplier
        Requests with a smaller noise multiplier are rejected at submission (default 0.5).
    max_epsilon_per_run
        Requests whose single run costs more epsilon are rejected at submission (default: none).
    max_clip
        Largest clipping bound a DP request may ask for (default: none).
    dataset_epsilon_cap
        Epsilon cap per dataset across all scientists (default 10): each new scientist's
        budget is spent on the same patients, so without a cap every account added is a
        full budget more. The owner may raise it, or set None to lift it.
    dp_slot_s
        The release slot of a DP run when neither the approval nor the request sets one,
        seconds (default 5): a DP run's result becomes visible exactly this long after the
        run was created, whatever the run did; a run that has not finished by then is cut
        and releases its data-independent default. Long jobs (DP-SGD) need a longer slot,
        which the scientist proposes and the owner approves.
    secagg_min_members
        Fewest members a secure-aggregation round may have for this domain to take part
        (default 3: with 2, either member learns the other's update from the sum).
    secagg_distributed_noise
        Let secure-aggregation runs carry distributed discrete Gaussian noise instead of this
        domain's full client-level noise (default False). The update is kept clipped but not
        noised; in the round, every member adds a discrete Gaussian share and this domain is
        charged what the sum of the round's threshold of shares guarantees, when that is
        less than its full noise would cost, else it adds its full noise. It relies on its
        roster: every member of a round must be on it (a stranger makes it refuse the round).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    allow_no_dp: list[str] = Field(default_factory=list)
    run_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    max_result_bytes: int = Field(default=64 << 20, gt=0, le=1 << 31)
    max_concurrent_jobs: int = Field(default=2, ge=1, le=256)
    worker_memory_bytes: int = Field(default=3 << 30, ge=256 << 20)
    gpu_jobs: bool = False
    gpu_memory_bytes: int | None = Field(default=None, ge=1 << 20)
    gpu_without_host_memory_cap: bool = False
    delta: float | None = Field(default=None, gt=0, lt=0.1)
    min_noise_multiplier: float = Field(default=0.5, ge=0)
    max_epsilon_per_run: float | None = Field(default=None, gt=0)
    max_clip: float | None = Field(default=None, gt=0)
    dataset_epsilon_cap: float | None = Field(default=10.0, gt=0)
    dp_slot_s: float = Field(default=5.0, gt=0, le=86_400)
    secagg_min_members: int = Field(default=3, ge=2)
    secagg_distributed_noise: bool = False
    stats_protection: dict[str, StatsProtection] = Field(default_factory=dict)
    disclosure: dict[str, DisclosureRules] = Field(default_factory=dict)

    def protection_for(self, dataset: str) -> StatsProtection:
        """The protection of ``stats`` requests on ``dataset``."""
        return self.stats_protection.get(dataset, self.stats_protection.get("*", "dp"))

    def rules_for(self, dataset: str) -> DisclosureRules:
        """The disclosure rules of ``dataset``."""
        return self.disclosure.get(dataset) or self.disclosure.get("*") or DisclosureRules()


class PolicyView:
    """``dom.policy``: read attributes, change them with :meth:`update` (audited)."""

    def __init__(self, domain: Domain) -> None:
        self._domain = domain

    def get(self) -> Policy:
        return self._domain._load_policy()

    @property
    def templates(self) -> TemplateBook:
        """The templates of ``stats`` requests (approve once, run many): ``add``,
        ``approve`` (a second owner, under the two-person rule), ``remove``, ``list``."""
        from fednb.domain._templates import TemplateBook

        return TemplateBook(self._domain)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.get(), name)

    def update(self, **changes: Any) -> Policy:
        """Change policy fields, e.g. ``dom.policy.update(allow_no_dp=["alice"])``.

        ``delta`` is frozen once any privacy charge exists: every epsilon on the ledger was
        computed at the old delta, and a new one would re-price the past.
        """
        old = self.get()
        if "delta" in changes and changes["delta"] != old.delta and self._domain.ledger.has_charges():
            raise InvalidInput("delta is frozen once privacy charges exist (it would re-price every "
                               "epsilon already spent); set it before the first DP run")
        try:
            new = Policy.model_validate({**old.model_dump(), **changes})
        except ValidationError as exc:
            raise InvalidInput(f"invalid policy: {exc.errors()[0]['msg']} "
                               f"({'.'.join(map(str, exc.errors()[0]['loc']))})") from None
        return self._domain._save_policy(new, changed=sorted(changes))

    def __repr__(self) -> str:
        return f"Policy({self.get().model_dump()})"
