"""The Dask executor: a domain's runs on the workers of a Dask cluster.

Each Dask worker is trusted (the hospital runs it, like the domain's own process) and
launches the same bubblewrap sandbox the local :class:`WorkerPool` does, keeping a warm
worker per (request, dataset). What crosses the cluster is bytes only, both ways:

- the domain sends :func:`run_job` a safetensors message (the job, the run's parameters,
  the weights);
- :func:`run_job` returns a safetensors message of its own making (the run's status,
  reason and the owner's log, and the sandboxed worker's reply frame as a ``uint8``
  tensor, undecoded), never an object the job made;
- the domain decodes it (safetensors and JSON: nothing is unpickled) and checks the
  reply with :func:`parse_outcome`, exactly as for a local run, before the output policy.

Dask pickles the ``bytes`` object it carries, which is safe: no job-made object reaches
the pickle, and a launcher failure is caught and sent as a reason code, so no exception
travels either. The Dask workers must see the domain home (datasets, work directories)
at the same path: one machine, or a shared filesystem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from fednb.domain.runner._pool import (
    JobSpec,
    RawOutcome,
    WorkerOutcome,
    WorkerPool,
    parse_outcome,
    release_at,
)
from fednb.domain.runner._sandbox import Limits, SandboxMode, bwrap_available
from fednb.domain.runner._warm import MAX_WARM
from fednb.domain.runner._zygote import START_TIMEOUT
from fednb.errors import FednbError, InsecureSetting, InvalidInput
from fednb.protocol import REASON_CODES, RUN_STATUSES, decode_message, encode_message
from fednb.typing import Weights

__all__ = ["DaskPool", "pinned_requests", "run_job", "warm_requests"]

_SLACK_S = 150.0  # beyond the run's own timeout: a worker's start, the scheduler's queue
_POOLS: dict[str, WorkerPool] = {}  # on a Dask worker: one pool per domain configuration
_POOLS_GUARD = threading.Lock()


# -- on the Dask worker (trusted) ---------------------------------------------------------
def encode_raw(raw: RawOutcome) -> bytes:
    """The launcher's answer as one safetensors message."""
    tensors = {} if raw.reply is None else {"reply": np.frombuffer(raw.reply, np.uint8)}
    return encode_message({"status": raw.status, "reason": raw.reason, "log": raw.log}, tensors)


def decode_raw(data: bytes, max_bytes: int) -> RawOutcome:
    """Read :func:`encode_raw`'s message back; raises FednbError or ValueError if it is not one."""
    header, tensors = decode_message(data, max_bytes)
    status, reason, log = header.get("status"), header.get("reason"), header.get("log")
    if status not in RUN_STATUSES or reason not in REASON_CODES or not isinstance(log, str):
        raise ValueError("not a launcher's answer")
    reply = tensors.get("reply")
    if reply is not None and (reply.dtype != np.uint8 or reply.ndim != 1):
        raise ValueError("the reply is not a byte string")
    return RawOutcome(status, reason, None if reply is None else reply.tobytes(), log)


def check_scheduler_address(address: str) -> None:
    """Refuse a plain-TCP scheduler that is not on this machine.

    Whoever can reach a Dask scheduler runs code on its workers (which read the domain's
    home) and talks pickle to the domain's client: a cluster beyond loopback needs TLS
    (``tls://``, with the certificates in Dask's ``distributed.comm.tls`` config).
    """
    scheme, _, rest = address.partition("://")
    if not rest:
        scheme, rest = "tcp", address
    host = rest.rsplit(":", 1)[0].strip("[]")
    if scheme == "tls":
        return
    if scheme in ("tcp", "inproc") and (scheme == "inproc" or host in ("localhost", "127.0.0.1", "::1")
                                        or host.startswith("127.")):
        return
    raise InsecureSetting(f"refusing the Dask scheduler {address!r}: plain {scheme} beyond loopback lets "
                          "anyone on the path run code beside the domain's data; use tls:// with "
                          "Dask's TLS settings")


def _settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _local_pool(settings: dict[str, Any]) -> WorkerPool:
    key = _settings_key(settings)
    with _POOLS_GUARD:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = WorkerPool(settings["mode"], Limits(**settings["limits"]),
                                            max_concurrent=settings["max_concurrent"],
                                            max_warm=settings["max_warm"],
                                            max_output=settings["max_output"])
        return pool


def _unpack(spec: bytes) -> tuple[dict[str, Any], JobSpec, Weights | None]:
    header, weights = decode_message(spec)
    j = header["job"]
    job = JobSpec(request_id=j["request_id"], source=j["source"], function_name=j["function_name"],
                  datasets={k: Path(v) for k, v in j["datasets"].items()}, workdir=Path(j["workdir"]))
    return header, job, (weights if header["weights"] else None)


def run_job(spec: bytes) -> bytes:
    """The Dask task: run one job in this machine's sandbox; returns :func:`encode_raw` bytes."""
    try:
        header, job, weights = _unpack(spec)
        settings = header["settings"]
        if settings["mode"] == "bubblewrap" and not bwrap_available():  # never run unsandboxed
            return encode_raw(RawOutcome("refused", "sandbox_unavailable",
                                         log="this Dask worker has no working bubblewrap"))
        pool = _local_pool(settings)
        if header.get("prewarm"):
            pool.prewarm(job)
            return encode_raw(RawOutcome("succeeded", "ok"))
        if header.get("ensure_warm"):
            pool.ensure_warm(job)
            return encode_raw(RawOutcome("succeeded", "ok"))
        # a DP run's schedule crosses machines as the seconds left (clocks differ): its
        # cut here, and the pin its ensure_warm left goes with it
        cut_in = header.get("cut_in")
        cut_at = None if cut_in is None else time.monotonic() + float(cut_in)
        raw = pool.run_raw(job, header["dataset"], header["params"], weights, header["timeout"],
                           cut_at=cut_at)
        return encode_raw(raw)
    except Exception:  # a launcher failure travels as a reason code, never as an exception
        return encode_raw(RawOutcome("failed", "worker_crashed",
                                     log="Dask launcher error:\n" + traceback.format_exc()[-4000:]))


def warm_requests() -> list[str]:
    """The requests with a warm sandboxed worker on this Dask worker (``client.run`` it)."""
    with _POOLS_GUARD:
        pools = list(_POOLS.values())
    return sorted({rid for p in pools for rid in p.warm()})


def pinned_requests() -> list[str]:
    """The requests whose warm worker on this Dask worker waits for a DP run
    (``client.run`` it)."""
    with _POOLS_GUARD:
        pools = list(_POOLS.values())
    return sorted({rid for p in pools for rid in p.pinned()})


def discard_request(request_id: str) -> None:
    """Stop a request's warm workers on this Dask worker."""
    with _POOLS_GUARD:
        pools = list(_POOLS.values())
    for p in pools:
        p.discard(request_id)


def shutdown_pool(key: str) -> None:
    """Stop the warm workers of one domain configuration on this Dask worker."""
    with _POOLS_GUARD:
        pool = _POOLS.pop(key, None)
    if pool is not None:
        pool.shutdown()


# -- in the domain ------------------------------------------------------------------------
class DaskPool:
    """The :class:`WorkerPool` interface over a Dask cluster at ``address``.

    Parameters are those of :class:`WorkerPool`; ``max_concurrent`` caps the domain's jobs
    in flight on the whole cluster (and on each Dask worker). A request's runs go to one
    Dask worker, picked by a hash of its id, where its sandboxed workers (one per dataset)
    stay warm; if that worker leaves, Dask runs them elsewhere.
    """

    def __init__(self, address: str, mode: SandboxMode, limits: Limits | None = None,
                 max_concurrent: int = 2, max_warm: int = MAX_WARM, max_output: int = 64 << 20,
                 domain: str = "") -> None:
        try:
            from distributed import Client
        except ImportError:
            raise InvalidInput("a Dask executor needs dask.distributed: pip install 'fednb[dask]'") \
                from None

        caps = dataclasses.asdict(limits or Limits())
        caps.pop("cpus")  # how many cores a job may use is each Dask worker's own default
        self.address, self.max_output = address, max_output
        check_scheduler_address(address)
        # the domain is part of the key of a Dask worker's pool: two domains on one cluster
        # never share warm workers (request ids are the scientists' choice)
        self._settings = {"mode": mode, "limits": caps, "max_concurrent": max_concurrent,
                          "max_warm": max_warm, "max_output": max_output, "domain": domain}
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._client: Any = Client(address, set_as_default=False, timeout=60)  # type: ignore[no-untyped-call]

    def _spec(self, job: JobSpec, **run: Any) -> bytes:
        weights: Weights | None = run.pop("weights", None)
        j = {"request_id": job.request_id, "source": job.source, "function_name": job.function_name,
             "datasets": {k: str(v) for k, v in job.datasets.items()}, "workdir": str(job.workdir)}
        return encode_message({"job": j, "settings": self._settings, "weights": weights is not None,
                               **run}, weights or {})

    def _home(self, request_id: str) -> list[str] | None:
        workers = sorted(self._client.scheduler_info().get("workers", {}))
        if not workers:
            return None
        return [workers[int(hashlib.sha256(request_id.encode()).hexdigest(), 16) % len(workers)]]

    def _submit(self, job: JobSpec, spec: bytes) -> Any:
        return self._client.submit(run_job, spec, key=f"fednb-run-{uuid.uuid4().hex}", pure=False,
                                   workers=self._home(job.request_id), allow_other_workers=True)

    def run(self, job: JobSpec, dataset: str, params: dict[str, Any], weights: Weights | None,
            timeout: float, hold_until: float | None = None,
            cut_at: float | None = None) -> WorkerOutcome:
        """Run the job once on the cluster; the answer is decoded and checked here.

        ``timeout`` is the run's own limit (the sandbox's zygote on the Dask worker enforces
        it); with ``hold_until`` (this process's ``time.monotonic()``) the domain's job slot
        stays taken until then, as in :meth:`WorkerPool.run`; with ``cut_at`` the domain
        stops waiting for the answer then (the cluster's queue and the worker's start
        included) and the run ends ``timeout``.
        """
        cut_in = None if cut_at is None else cut_at - time.monotonic()
        spec = self._spec(job, dataset=dataset, params=params, weights=weights, timeout=timeout,
                          cut_in=cut_in)
        self._slots.acquire()
        try:
            future = self._submit(job, spec)
            wait = timeout + _SLACK_S if cut_at is None else max(0.0, cut_at - time.monotonic())
            try:
                data = future.result(timeout=wait)
            except Exception as exc:  # the cluster failed (worker lost, timeout): not the job
                future.cancel()
                if cut_at is not None and time.monotonic() >= cut_at:
                    return WorkerOutcome("timeout", "wall_clock", log="Dask: the run's schedule passed")
                return WorkerOutcome("failed", "worker_crashed", log=f"Dask: {type(exc).__name__}")
        finally:
            release_at(self._slots, hold_until)
        if type(data) is not bytes:
            return WorkerOutcome("failed", "invalid_output", log="Dask task returned no bytes")
        try:
            raw = decode_raw(data, self.max_output + (4 << 20))
        except (FednbError, ValueError):
            return WorkerOutcome("failed", "invalid_output", log="Dask task returned a bad message")
        return parse_outcome(raw)

    def ensure_warm(self, job: JobSpec) -> None:
        """Start the request's workers on its Dask worker and pin them there for the DP run
        to come, as :meth:`WorkerPool.ensure_warm` does; returns when they are up (a failure
        to start is the next run's to report), so a DP run's schedule is not spent on a
        worker's start, and other requests' workers starting meanwhile do not evict it."""
        future = self._submit(job, self._spec(job, ensure_warm=True))
        try:
            future.result(timeout=START_TIMEOUT + _SLACK_S)
        except Exception:  # the cluster failed or is slow: the run starts it within its schedule
            future.cancel()

    def prewarm(self, job: JobSpec) -> None:
        """Start the request's worker on its Dask worker, in the background."""
        from distributed import fire_and_forget

        fire_and_forget(self._submit(job, self._spec(job, prewarm=True)))  # type: ignore[no-untyped-call]

    def discard(self, request_id: str) -> None:
        """Stop the request's warm workers on every Dask worker."""
        with contextlib.suppress(Exception):  # a cluster that is gone has no workers to stop
            self._client.run(discard_request, request_id)

    def shutdown(self) -> None:
        """Stop every warm worker this domain started, and disconnect."""
        with contextlib.suppress(Exception):
            self._client.run(shutdown_pool, _settings_key(self._settings))
        self._client.close()
