"""The sandbox and the worker pool (local processes)."""

from fednb.domain.runner._pool import JobSpec, WorkerOutcome, WorkerPool
from fednb.domain.runner._sandbox import Limits, SandboxMode, bwrap_available

__all__ = ["JobSpec", "Limits", "SandboxMode", "WorkerOutcome", "WorkerPool", "bwrap_available"]
