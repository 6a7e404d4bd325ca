"""Warm sandboxed workers, one per (approved request, dataset), behind a domain-wide job cap."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fednb.domain.runner._frames import (
    FrameError,
    FrameTimeout,
    read_frame,
    write_frame,
)
from fednb.domain.runner._sandbox import (
    Limits,
    SandboxedProcess,
    SandboxMode,
    SandboxSpec,
    launch,
    oom_kill_count,
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

__all__ = ["JobRunner", "JobSpec", "RawOutcome", "WorkerInfo", "WorkerOutcome", "WorkerPool",
           "parse_outcome", "release_at"]

_LOG_KEEP = 20_000
_START_TIMEOUT = 120.0
# beyond a run's own limit, which the zygote enforces: its kill of the run and clean-up on a
# busy machine. A zygote silent past that is stopped.
_GRACE = 30.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_Key = tuple[str, str]  # (request id, dataset)
# what the zygote saw of a run that sent no reply: the status and reason codes of old,
# when a run's death was its worker's
_VERDICTS: dict[str, tuple[RunStatus, ReasonCode]] = {
    "timeout": ("timeout", "wall_clock"),
    "too_large": ("failed", "output_too_large"),
    "signal": ("killed", "worker_crashed"),
    "exit": ("failed", "worker_crashed"),
    "no_fork": ("failed", "process_limit"),
}
# the device a run used, as its worker reports it: "cpu" or "cuda:<device name>" (printable
# ASCII, 32 characters in all); anything else is recorded as None
_BACKEND = re.compile(r"cpu|cuda(:[ -~]{1,27})?")


@dataclass(frozen=True)
class JobSpec:
    """One approved request as the runner needs it. A worker mounts one of ``datasets``
    only, the one its runs are charged to."""

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


def _subdir(dataset: str) -> str:
    """The work directory of a dataset's worker under the request's: a name that is safe
    as one path component whatever the dataset's name."""
    digest = hashlib.sha256(dataset.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', dataset)[:40]}-{digest}"


def _one_dataset(job: JobSpec, dataset: str) -> JobSpec:
    """The job as one worker runs it: the run's dataset only, its own work directory."""
    if list(job.datasets) == [dataset]:  # the domain made it so already
        return job
    return dataclasses.replace(job, datasets={dataset: job.datasets[dataset]},
                               workdir=job.workdir / _subdir(dataset))


class _Worker:
    """A sandboxed zygote (``_worker``) holding one dataset of one request."""

    def __init__(self, job: JobSpec, mode: SandboxMode, limits: Limits, max_output: int) -> None:
        self.job, self.mode, self.limits, self.max_output = job, mode, limits, max_output
        ((self.dataset, self.path),) = job.datasets.items()
        self.proc: SandboxedProcess | None = None
        self.runs = 0

    def start(self) -> RawOutcome | None:
        binds = [(self.path, f"/data/{self.dataset}")]
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[3]), "HOME": "/job",
               "OMP_NUM_THREADS": str(self.limits.cpus),
               "OPENBLAS_NUM_THREADS": str(self.limits.cpus), "PYTHONDONTWRITEBYTECODE": "1",
               # no JIT compiler in the sandbox (DP-SGD's noise uses the kernels): the NumPy
               # references, no code generation or cache writes beside untrusted code
               "FEDNB_BACKEND": "numpy", **self._gpu_env()}
        # -P: the working directory, where runs write, is not put on the zygote's sys.path
        argv = [sys.executable, "-s", *(["-P"] if sys.version_info >= (3, 11) else []),
                "-m", "fednb.domain.runner._worker"]
        spec = SandboxSpec(argv, self.job.workdir, binds, env, self.limits)
        try:
            self.proc = launch(spec, self.mode)
        except SandboxUnavailable as exc:  # a GPU job where no memory cgroup caps it
            return RawOutcome("refused", "sandbox_unavailable", log=f"{exc}\n")
        path = f"/data/{self.dataset}" if self.mode == "bubblewrap" else str(self.path)
        init = {"source": self.job.source, "function_name": self.job.function_name,
                "dataset": self.dataset, "path": path, "max_output": self.max_output}
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

    def run(self, params: dict[str, Any], weights: Weights | None, timeout: float) -> RawOutcome:
        """One run: the child's reply frame, undecoded, or what the zygote saw of it. The
        zygote enforces ``timeout``; the worker is stopped only when the zygote itself does
        not answer within ``_GRACE`` beyond it, or died."""
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        msg = encode_message({"dataset": self.dataset, "params": params,
                              "weights": weights is not None}, weights or {})
        self.runs += 1
        oom = oom_kill_count(self._cgroup_dirs())
        try:  # the zygote's frame (the run's limit), then the child's request
            write_frame(self.proc.stdin, json.dumps({"timeout": timeout}).encode())
            write_frame(self.proc.stdin, msg)
            verdict = json.loads(read_frame(self.proc.stdout, 1 << 10, timeout + _GRACE))
            kind = verdict["verdict"]
            if kind == "reply":
                data = read_frame(self.proc.stdout, self.max_output + (1 << 20), _GRACE)
                return RawOutcome("succeeded", "ok", reply=data, log=self.take_log())
        except FrameTimeout:
            self.stop()
            return RawOutcome("timeout", "wall_clock", log=self.take_log())
        except (FrameError, OSError, ValueError, TypeError, KeyError):
            return self._died()
        if oom_kill_count(self._cgroup_dirs()) > oom:
            return RawOutcome("killed", "memory_limit", log=self.take_log())
        status, reason = _VERDICTS.get(kind, ("failed", "worker_crashed"))
        return RawOutcome(status, reason, log=self.take_log())

    def _died(self) -> RawOutcome:
        oom = self._oom_seen()  # read the cgroup before stop() removes it
        rc = self.stop()
        # the OOM killer's victim was the zygote, pid 1 of its namespace: bubblewrap, which
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


@dataclass(frozen=True)
class WorkerInfo:
    """A warm worker as the owner's tools see it: ``pid``, the sandbox's process on this
    host (the same until the worker is stopped), and ``runs``, the runs it served."""

    request_id: str
    dataset: str
    pid: int
    runs: int


class JobRunner(Protocol):
    """What a domain runs its jobs on: a :class:`WorkerPool` of local processes, or a
    ``DaskPool`` (``fednb.domain.runner._dask``) on a Dask cluster."""

    def run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float, hold_until: float | None = None,
            cut_at: float | None = None) -> WorkerOutcome: ...

    def prewarm(self, job: JobSpec) -> None: ...

    def ensure_warm(self, job: JobSpec) -> None: ...

    def discard(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


def release_at(slots: threading.BoundedSemaphore, hold_until: float | None) -> None:
    """Release one of ``slots`` at ``hold_until`` (``time.monotonic()``), or now if that
    moment has passed or is None: when the next job starts never depends on how long a
    run held its slot for less."""
    delay = 0.0 if hold_until is None else hold_until - time.monotonic()
    if delay <= 0:
        slots.release()
        return
    timer = threading.Timer(delay, slots.release)
    timer.daemon = True
    timer.start()


def _acquire(lock: threading.Lock | threading.BoundedSemaphore, cut_at: float | None) -> bool:
    """Take ``lock``, waiting at most until ``cut_at`` (``time.monotonic()``; None: for ever)."""
    if cut_at is None:
        return lock.acquire()
    return lock.acquire(timeout=max(0.0, cut_at - time.monotonic()))


def _cut(where: str) -> RawOutcome:
    return RawOutcome("timeout", "wall_clock", log=f"fednb: the run's schedule passed while {where}\n")


class WorkerPool:
    """Keeps up to ``max_warm`` workers warm and runs at most ``max_concurrent`` jobs.

    A worker is one sandboxed zygote per (request, dataset): it holds that one dataset,
    and forks a fresh process for every run, after which nothing of the run is left (see
    ``fednb.domain.runner._worker``). A run that failed, timed out or was killed leaves its
    worker warm; a worker is stopped only when its zygote itself fails.

    Parameters
    ----------
    mode
        ``"bubblewrap"`` or ``"insecure-demo"``.
    limits
        Caps applied to every worker.
    max_concurrent
        Jobs running at once across the domain (default 2).
    max_warm
        Warm workers kept, each one (request, dataset) (least recently used are stopped
        first; default 8).
    max_output
        Cap on one result, bytes (default 64 MiB).
    """

    def __init__(self, mode: SandboxMode, limits: Limits | None = None, max_concurrent: int = 2,
                 max_warm: int = 8, max_output: int = 64 << 20) -> None:
        self.mode, self.limits = mode, limits or Limits()
        self.max_warm, self.max_output = max_warm, max_output
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._workers: OrderedDict[_Key, _Worker] = OrderedDict()
        self._locks: dict[_Key, threading.Lock] = {}
        self._guard = threading.Lock()
        self._closed = False  # shut down: a worker a late prewarm or run starts is stopped at once
        self._starting = 0  # workers being started now: shutdown() waits for them
        self._started = threading.Condition(self._guard)
        # cgroups of workers a domain killed with kill -9 left behind, once per process
        sweep_once()
        # a pool dropped without shutdown() (or still open at exit) stops its workers and
        # removes their cgroups all the same
        weakref.finalize(self, _stop_all, self._workers, self._guard)

    def _lock(self, key: _Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _worker(self, job: JobSpec) -> tuple[_Worker, RawOutcome | None]:
        """The warm worker of a one-dataset ``job`` (see :func:`_one_dataset`), started if need be."""
        key = (job.request_id, next(iter(job.datasets)))
        with self._guard:
            w = self._workers.pop(key, None)
        if w is not None and w.job != job:  # same id, other code, data or home: never reuse
            w.stop()
            w = None
        if w is not None and w.alive():
            failure = None
        else:
            with self._guard:
                self._starting += 1
            try:
                w = _Worker(job, self.mode, self.limits, self.max_output)
                failure = w.start()
                with self._guard:
                    closed = self._closed
                if closed:  # shut down meanwhile (a prewarm still starting, a run cut at once)
                    w.stop()
                    return w, failure or RawOutcome("failed", "worker_crashed",
                                                    log="fednb: the domain is stopping\n")
            finally:
                with self._guard:
                    self._starting -= 1
                    self._started.notify_all()
        with self._guard:
            if self._closed:
                w.stop()
                return w, RawOutcome("failed", "worker_crashed", log="fednb: the domain is stopping\n")
            self._workers[key] = w
        with self._guard:
            while len(self._workers) > self.max_warm:
                _, old = self._workers.popitem(last=False)
                old.stop()
        return w, failure

    def ensure_warm(self, job: JobSpec) -> None:
        """Start the job's worker for each of its datasets now, unless it is warm; returns
        when they are up (or failed to start, which the next run reports), at most after
        the start timeout. A DP run's schedule starts after this, so it is not spent on a
        worker's start."""
        for dataset in job.datasets:
            one, key = _one_dataset(job, dataset), (job.request_id, dataset)
            with self._guard:
                w = self._workers.get(key)
            if w is not None and w.job == one and w.alive():
                continue
            until = time.monotonic() + _START_TIMEOUT
            lock = self._lock(key)
            if not _acquire(lock, until):
                continue
            try:
                if _acquire(self._slots, until):
                    try:
                        self._worker(one)
                    finally:
                        self._slots.release()
            finally:
                lock.release()

    def prewarm(self, job: JobSpec) -> None:
        """Start a worker for each dataset of the job in the background, so that its first
        run is warm."""

        def go() -> None:
            for dataset in job.datasets:
                one = _one_dataset(job, dataset)
                with self._lock((job.request_id, dataset)), self._slots:
                    self._worker(one)

        threading.Thread(target=go, name=f"prewarm-{job.request_id}", daemon=True).start()

    def run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float, hold_until: float | None = None,
            cut_at: float | None = None) -> WorkerOutcome:
        """Run the job once on ``dataset``, in a fresh process of its warm worker.

        Parameters
        ----------
        timeout
            The run's own wall-clock limit, seconds (the worker's start is not in it).
        hold_until
            A ``time.monotonic()`` moment: the job slot stays taken until then even when
            the run ended earlier (default None: freed when the run ends). The outcome is
            returned when the run ends.
        cut_at
            A ``time.monotonic()`` moment by which the run must have ended, waiting for
            the job slot and the worker's start included (a DP run's schedule): past it the
            run is cut, or never started, with ``timeout``/``wall_clock``.
        """
        return self._run(job, dataset, params, weights, timeout, hold_until, cut_at)[1]

    def run_raw(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
                timeout: float, hold_until: float | None = None, cut_at: float | None = None) -> RawOutcome:
        """:meth:`run`, returning the worker's reply undecoded (for a Dask worker to send on)."""
        return self._run(job, dataset, params, weights, timeout, hold_until, cut_at)[0]

    def _run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
             timeout: float, hold_until: float | None,
             cut_at: float | None = None) -> tuple[RawOutcome, WorkerOutcome]:
        if dataset not in job.datasets:
            raw = RawOutcome("failed", "exception", log=f"fednb: {dataset!r} is not a dataset of this job\n")
            return raw, parse_outcome(raw)
        one = _one_dataset(job, dataset)
        lock = self._lock((job.request_id, dataset))
        if not _acquire(lock, cut_at):
            return _cut("waiting for its worker"), parse_outcome(_cut("waiting for its worker"))
        try:
            if not _acquire(self._slots, cut_at):
                return _cut("waiting for a job slot"), parse_outcome(_cut("waiting for a job slot"))
            try:
                worker, failure = self._worker(one)
                if failure is None and cut_at is not None:
                    timeout = min(timeout, cut_at - time.monotonic())
                raw = failure or (worker.run(params, weights, timeout) if timeout > 0
                                  else _cut("waiting for its worker to start"))
            finally:
                release_at(self._slots, hold_until)
        finally:
            lock.release()
        return raw, parse_outcome(raw)

    def warm(self) -> list[str]:
        """The requests with a warm worker."""
        with self._guard:
            return sorted({rid for (rid, _), w in self._workers.items() if w.alive()})

    def workers(self) -> list[WorkerInfo]:
        """The warm workers, least recently used first."""
        with self._guard:
            return [WorkerInfo(rid, ds, w.proc.pid, w.runs) for (rid, ds), w in self._workers.items()
                    if w.proc is not None and w.alive()]

    def discard(self, request_id: str) -> None:
        """Stop the request's workers, one per dataset (denied, revoked or exhausted)."""
        with self._guard:
            keys = [k for k in self._workers if k[0] == request_id]
            stopping = [self._workers.pop(k) for k in keys]
        for w in stopping:
            w.stop()

    def shutdown(self) -> None:
        """Stop every worker, and any a prewarm or a run still starts."""
        with self._guard:
            self._closed = True
            # a worker still starting (a prewarm) is stopped by its starter once it is up:
            # wait for that, or its cgroup would outlive a domain that exits right after
            self._started.wait_for(lambda: self._starting == 0, timeout=_START_TIMEOUT)
        _stop_all(self._workers, self._guard)


def _stop_all(workers: OrderedDict[_Key, _Worker], guard: threading.Lock) -> None:
    with guard:
        stopping = list(workers.values())
        workers.clear()
    for w in stopping:
        w.stop()
