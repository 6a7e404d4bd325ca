"""The sandbox and the executors of jobs: a pool of local processes, or a Dask cluster."""

from fednb.domain.runner._pool import JobRunner, JobSpec, WorkerInfo, WorkerOutcome, WorkerPool
from fednb.domain.runner._sandbox import Limits, SandboxMode, bwrap_available
from fednb.domain.runner._warm import set_process_max_warm

__all__ = ["JobRunner", "JobSpec", "Limits", "SandboxMode", "WorkerInfo", "WorkerOutcome", "WorkerPool",
           "bwrap_available", "set_process_max_warm"]
