"""Warm sandboxed workers, one per approved request, behind a domain-wide job cap."""

from __future__ import annotations

import re
import sys
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fednb.domain.runner._frames import (
    FrameError,
    FrameTimeout,
    FrameTooLarge,
    read_frame,
    write_frame,
)
from fednb.domain.runner._sandbox import (
    Limits,
    SandboxedProcess,
    SandboxMode,
    SandboxSpec,
    launch,
    oom_killed,
    sweep_once,
)
from fednb.errors import FednbError, SandboxUnavailable
from fednb.protocol import (
    REASON_CODES,
    ReasonCode,
    RunStatus,
    Update,
    decode_message,
    encode_message,
)
from fednb.typing import Weights

__all__ = ["JobRunner", "JobSpec", "RawOutcome", "WorkerOutcome", "WorkerPool", "parse_outcome"]

_LOG_KEEP = 20_000
_START_TIMEOUT = 120.0
# the device a run used, as its worker reports it: "cpu" or "cuda:<device name>" (printable
# ASCII, 32 characters in all); anything else is recorded as None
_BACKEND = re.compile(r"cpu|cuda(:[ -~]{1,27})?")


@dataclass(frozen=True)
class JobSpec:
    """One approved request as the runner needs it."""

    request_id: str
    source: str
    function_name: str
    datasets: dict[str, Path]
    workdir: Path


@dataclass
class WorkerOutcome:
    """What came back from one run, before the output policy. ``update`` is untrusted."""

    status: RunStatus
    reason: ReasonCode
    update: Update | None = None
    log: str = ""
    backend: str | None = None  # reported by the (untrusted) worker: for the owner's eyes only


@dataclass
class RawOutcome:
    """What the trusted launcher saw of one run: the worker's reply frame, undecoded
    (``reply``: untrusted safetensors bytes, on ``status == "succeeded"`` only), or how the
    exchange failed; and the owner's log. :func:`parse_outcome` decodes and checks it."""

    status: RunStatus
    reason: ReasonCode
    reply: bytes | None = None
    log: str = ""


def parse_outcome(raw: RawOutcome) -> WorkerOutcome:
    """Decode a worker's reply (safetensors and JSON only; nothing is unpickled) and check it."""
    if raw.status != "succeeded":
        return WorkerOutcome(raw.status, raw.reason, log=raw.log)
    try:
        header, tensors = decode_message(raw.reply or b"")
        backend = header.get("backend")
        backend = backend if isinstance(backend, str) and _BACKEND.fullmatch(backend) else None
        if header.get("status") != "ok":
            reason = header.get("reason")
            return WorkerOutcome("failed", reason if reason in REASON_CODES else "exception",
                                 log=raw.log, backend=backend)
        metrics = {str(k): float(v) for k, v in dict(header.get("metrics") or {}).items()}
        return WorkerOutcome("succeeded", "ok", Update(weights=tensors, metrics=metrics), raw.log,
                             backend)
    except (FednbError, TypeError, ValueError, AttributeError):
        return WorkerOutcome("failed", "invalid_output", log=raw.log)


class _Worker:
    def __init__(self, job: JobSpec, mode: SandboxMode, limits: Limits, max_output: int) -> None:
        self.job, self.mode, self.limits, self.max_output = job, mode, limits, max_output
        self.proc: SandboxedProcess | None = None

    def _paths(self) -> dict[str, str]:
        if self.mode == "bubblewrap":
            return {name: f"/data/{name}" for name in self.job.datasets}
        return {name: str(p) for name, p in self.job.datasets.items()}

    def start(self) -> RawOutcome | None:
        binds = [(p, f"/data/{name}") for name, p in self.job.datasets.items()]
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[3]), "HOME": "/job",
               "OMP_NUM_THREADS": str(self.limits.cpus),
               "OPENBLAS_NUM_THREADS": str(self.limits.cpus), "PYTHONDONTWRITEBYTECODE": "1",
               # no JIT compiler in the sandbox (DP-SGD's noise uses the kernels): the NumPy
               # references, no code generation or cache writes beside untrusted code
               "FEDNB_BACKEND": "numpy", **self._gpu_env()}
        argv = [sys.executable, "-s", "-m", "fednb.domain.runner._worker"]
        spec = SandboxSpec(argv, self.job.workdir, binds, env, self.limits)
        try:
            self.proc = launch(spec, self.mode)
        except SandboxUnavailable as exc:  # a GPU job where no memory cgroup caps it
            return RawOutcome("refused", "sandbox_unavailable", log=f"{exc}\n")
        init = {"source": self.job.source, "function_name": self.job.function_name,
                "datasets": self._paths(), "max_output": self.max_output}
        try:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            write_frame(self.proc.stdin, encode_message(init))
            header, _ = decode_message(read_frame(self.proc.stdout, 1 << 16, _START_TIMEOUT))
        except (FrameError, OSError, FednbError):
            return self._died()
        if header.get("status") != "ready":
            self.stop()
            return RawOutcome("failed", "exception", log=self.take_log())
        return None

    def _gpu_env(self) -> dict[str, str]:
        """What the worker's runtime reads before user code starts (``prepare_gpu``)."""
        if not self.limits.gpu:
            return {}
        env = {"FEDNB_GPU": "1"}
        if self.limits.gpu_memory_bytes is not None:
            cap = str(self.limits.gpu_memory_bytes)
            # CuPy reads this when it makes its pool, in case code swaps the default pool
            env.update(FEDNB_GPU_MEMORY_BYTES=cap, CUPY_GPU_MEMORY_LIMIT=cap)
        return env

    def run(self, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float) -> RawOutcome:
        """One run: the worker's reply frame, undecoded, or how the exchange failed."""
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        msg = encode_message({"dataset": dataset, "params": params, "weights": weights is not None},
                             weights or {})
        try:
            write_frame(self.proc.stdin, msg)
            data = read_frame(self.proc.stdout, self.max_output + (1 << 20), timeout)
        except FrameTimeout:
            self.stop()
            return RawOutcome("timeout", "wall_clock", log=self.take_log())
        except FrameTooLarge:
            self.stop()
            return RawOutcome("failed", "output_too_large", log=self.take_log())
        except (FrameError, OSError):
            return self._died()
        return RawOutcome("succeeded", "ok", reply=data, log=self.take_log())

    def _died(self) -> RawOutcome:
        oom = self._oom_seen()  # read the cgroup before stop() removes it
        rc = self.stop()
        # the OOM killer's victim is the worker, pid 1 of its namespace: bubblewrap, which
        # this process waits for, then exits with a status, not by the signal
        if oom or (rc is not None and rc < 0):
            return RawOutcome("killed", "memory_limit" if oom else "worker_crashed",
                              log=self.take_log())
        return RawOutcome("failed", "worker_crashed", log=self.take_log())

    def _cgroup_dirs(self) -> list[Path]:
        return self.proc.cgroup.dirs if self.proc is not None else []

    def _oom_seen(self) -> bool:
        return oom_killed(self._cgroup_dirs())

    def take_log(self) -> str:
        path = self.job.workdir / "log.txt"
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - _LOG_KEEP))
                text = f.read().decode("utf-8", "replace")
            path.write_bytes(b"")
        except OSError:
            return ""
        return text

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait()
        for s in (proc.stdin, proc.stdout):
            if s is not None:
                s.close()
        proc.cleanup()
        return rc


class JobRunner(Protocol):
    """What a domain runs its jobs on: a :class:`WorkerPool` of local processes, or a
    ``DaskPool`` (``fednb.domain.runner._dask``) on a Dask cluster."""

    def run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float) -> WorkerOutcome: ...

    def prewarm(self, job: JobSpec) -> None: ...

    def discard(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


class WorkerPool:
    """Keeps up to ``max_warm`` workers warm and runs at most ``max_concurrent`` jobs.

    Parameters
    ----------
    mode
        ``"bubblewrap"`` or ``"insecure-demo"``.
    limits
        Caps applied to every worker.
    max_concurrent
        Jobs running at once across the domain (default 2).
    max_warm
        Warm workers kept (least recently used are stopped first; default 8).
    max_output
        Cap on one result, bytes (default 64 MiB).
    """

    def __init__(self, mode: SandboxMode, limits: Limits | None = None, max_concurrent: int = 2,
                 max_warm: int = 8, max_output: int = 64 << 20) -> None:
        self.mode, self.limits = mode, limits or Limits()
        self.max_warm, self.max_output = max_warm, max_output
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._workers: OrderedDict[str, _Worker] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        # cgroups of workers a domain killed with kill -9 left behind, once per process
        sweep_once()
        # a pool dropped without shutdown() (or still open at exit) stops its workers and
        # removes their cgroups all the same
        weakref.finalize(self, _stop_all, self._workers, self._guard)

    def _lock(self, request_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(request_id, threading.Lock())

    def _worker(self, job: JobSpec) -> tuple[_Worker, RawOutcome | None]:
        with self._guard:
            w = self._workers.pop(job.request_id, None)
        if w is not None and w.job != job:  # same id, other code, data or home: never reuse
            w.stop()
            w = None
        if w is not None and w.alive():
            failure = None
        else:
            w = _Worker(job, self.mode, self.limits, self.max_output)
            failure = w.start()
        with self._guard:
            self._workers[job.request_id] = w
            while len(self._workers) > self.max_warm:
                _, old = self._workers.popitem(last=False)
                old.stop()
        return w, failure

    def prewarm(self, job: JobSpec) -> None:
        """Start the request's worker in the background so its first run is warm."""

        def go() -> None:
            with self._lock(job.request_id), self._slots:
                self._worker(job)

        threading.Thread(target=go, name=f"prewarm-{job.request_id}", daemon=True).start()

    def run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float) -> WorkerOutcome:
        """Run the job once; a worker that failed in any way is stopped, not reused."""
        return self._run(job, dataset, params, weights, timeout)[1]

    def run_raw(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
                timeout: float) -> RawOutcome:
        """:meth:`run`, returning the worker's reply undecoded (for a Dask worker to send on)."""
        return self._run(job, dataset, params, weights, timeout)[0]

    def _run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
             timeout: float) -> tuple[RawOutcome, WorkerOutcome]:
        with self._lock(job.request_id), self._slots:
            worker, failure = self._worker(job)
            raw = failure or worker.run(dataset, params, weights, timeout)
            outcome = parse_outcome(raw)
            if outcome.status != "succeeded":
                worker.stop()
            return raw, outcome

    def warm(self) -> list[str]:
        """The requests whose workers are warm."""
        with self._guard:
            return [rid for rid, w in self._workers.items() if w.alive()]

    def discard(self, request_id: str) -> None:
        """Stop the request's worker (denied, revoked or exhausted)."""
        with self._guard:
            w = self._workers.pop(request_id, None)
        if w is not None:
            w.stop()

    def shutdown(self) -> None:
        """Stop every worker."""
        _stop_all(self._workers, self._guard)


def _stop_all(workers: OrderedDict[str, _Worker], guard: threading.Lock) -> None:
    with guard:
        stopping = list(workers.values())
        workers.clear()
    for w in stopping:
        w.stop()
