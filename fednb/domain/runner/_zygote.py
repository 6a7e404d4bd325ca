"""The domain's side of one warm sandboxed worker: the job it holds, its start, one run.

A worker is a zygote (:mod:`._worker`) in a sandbox (:mod:`._sandbox`) holding one dataset
of one approved request; the pool (:mod:`._pool`) decides which workers stay warm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fednb.domain.runner._frames import (
    FrameError,
    FrameTimeout,
    read_frame,
    write_frame,
)
from fednb.domain.runner._nproc import sandbox_limit
from fednb.domain.runner._sandbox import (
    Limits,
    SandboxedProcess,
    SandboxMode,
    SandboxSpec,
    host_uid,
    launch,
    oom_kill_count,
    oom_killed,
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

__all__ = ["START_TIMEOUT", "JobSpec", "Key", "RawOutcome", "Use", "Worker", "WorkerOutcome", "one_dataset",
           "parse_outcome"]

_LOG_KEEP = 20_000
START_TIMEOUT = 120.0
# beyond a run's own limit, which the zygote enforces: its kill of the run and clean-up on a
# busy machine. A zygote silent past that is stopped.
_GRACE = 30.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
Key = tuple[str, str]  # (request id, dataset)
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


def one_dataset(job: JobSpec, dataset: str) -> JobSpec:
    """The job as one worker runs it: the run's dataset only, its own work directory."""
    if list(job.datasets) == [dataset]:  # the domain made it so already
        return job
    return dataclasses.replace(job, datasets={dataset: job.datasets[dataset]},
                               workdir=job.workdir / _subdir(dataset))


@dataclass
class Use:
    """How a warm worker was used, for the pool's eviction (``time.monotonic()`` moments).

    ``taken``: when a run last took it (its start, or the worker's); ``idle_from``: when it
    became free, for a scheduled (DP) run the end of the run's slot, so that when an idle
    worker goes never depends on how long a run took; ``pins``: until when scheduled runs
    that made it warm (``ensure_warm``) may still come for it, one moment per run."""

    taken: float = field(default_factory=time.monotonic)
    idle_from: float = field(default_factory=time.monotonic)
    pins: list[float] = field(default_factory=list)

    def pinned(self, now: float) -> bool:
        """True while a scheduled run may still come (expired pins are dropped)."""
        self.pins[:] = [t for t in self.pins if t > now]
        return bool(self.pins)

    def unpin(self) -> None:
        """A scheduled run came: its pin (the oldest) goes."""
        if self.pins:
            self.pins.remove(min(self.pins))


class Worker:
    """A sandboxed zygote (``_worker``) holding one dataset of one request."""

    def __init__(self, job: JobSpec, mode: SandboxMode, limits: Limits, max_output: int) -> None:
        self.job, self.mode, self.limits, self.max_output = job, mode, limits, max_output
        ((self.dataset, self.path),) = job.datasets.items()
        self.proc: SandboxedProcess | None = None
        self.runs = 0
        self.use = Use()

    def start(self) -> RawOutcome | None:
        binds = [(self.path, f"/data/{self.dataset}")]
        env = {"PYTHONPATH": str(Path(__file__).resolve().parents[3]), "HOME": "/job",
               "OMP_NUM_THREADS": str(self.limits.cpus),
               "OPENBLAS_NUM_THREADS": str(self.limits.cpus), "PYTHONDONTWRITEBYTECODE": "1",
               # no JIT compiler in the sandbox (DP-SGD's noise uses the kernels): the NumPy
               # references, no code generation or cache writes beside untrusted code
               "FEDNB_BACKEND": "numpy",
               # no thread pool of dask's may cross a fork (the zygote does not import dask)
               "DASK_SCHEDULER": "synchronous", **self._gpu_env()}
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
                "dataset": self.dataset, "path": path, "max_output": self.max_output,
                "max_procs": sandbox_limit(self.limits.max_procs, host_uid(self.mode),
                                           own_userns=self.mode == "bubblewrap")}
        try:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            write_frame(self.proc.stdin, encode_message(init))
            header, _ = decode_message(read_frame(self.proc.stdout, 1 << 16, START_TIMEOUT))
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


