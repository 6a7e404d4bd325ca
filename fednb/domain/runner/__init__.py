"""The sandbox and the executors of jobs: a pool of local processes, or a Dask cluster."""

from fednb.domain.runner._pool import JobRunner, JobSpec, WorkerOutcome, WorkerPool
from fednb.domain.runner._sandbox import Limits, SandboxMode, bwrap_available

__all__ = ["JobRunner", "JobSpec", "Limits", "SandboxMode", "WorkerOutcome", "WorkerPool",
           "bwrap_available"]
