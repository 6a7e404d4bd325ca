"""Participants of a federation: a domain over HTTP, or a virtual hospital in-process.

Both return what the same output policy let out of the same execution path, so
``simulate`` and ``Federation`` differ only in transport.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from fednb.client import RemoteRequest, RemoteRun, RemoteSecAggPeer
from fednb.errors import FednbError, InvalidInput
from fednb.privacy import Event, SecureNoise, accountant_for
from fednb.protocol import ClientDP, Compression, ReasonCode, SecAggConfig, Update, compress, decompress
from fednb.runtime import (
    OutputPolicy,
    OutputRejected,
    apply_output_policy,
    call_function,
    check_structure,
    compile_function,
    release,
    secagg_input,
    update_event,
)
from fednb.runtime import weight_specs as _specs
from fednb.secagg import Identity, LocalPeer, Roster, SecAggMember, SecAggPeer
from fednb.strategies import flatten
from fednb.typing import FloatArray, Weights

__all__ = ["LocalParticipant", "Outcome", "Participant", "RemoteParticipant", "SecureParticipant"]


@dataclass
class Outcome:
    """One participant's answer to one run."""

    status: str
    reason: str | None = None
    update: Update | None = None
    seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    epsilon: float | None = None  # the domain's ledger after this run (this dataset, this scientist)
    # what the scientist's own code raised, in this process (a virtual hospital): never from a
    # domain, whose owner alone sees why a run failed
    error: BaseException | None = None


@runtime_checkable
class Participant(Protocol):
    """A hospital as the round driver sees it: one run per round (or per restart)."""

    name: str

    def run(self, weights: Weights, params: dict[str, Any], run_id: str, timeout: float) -> Outcome:
        """Run once on ``weights`` with ``params``; never raises for a failed run."""
        ...


@runtime_checkable
class SecureParticipant(Participant, Protocol):
    """A participant that can take part in secure aggregation: its run's update stays with
    it and leaves only masked, through a SecAgg+ round the driver orchestrates."""

    @property
    def secagg_id(self) -> str:
        """Its name in secure rounds: a domain's identity key over HTTP."""
        ...

    def secagg_peer(self, run_id: str) -> SecAggPeer:
        """Its side of the secure round that sums the run ``run_id``."""
        ...

    def charged(self, run_id: str, epsilon: float | None) -> float | None:
        """Epsilon after the run ``run_id``'s round (a distributed-noise charge may replace
        the full one); ``epsilon`` when it cannot tell."""
        ...

    def discard(self, run_id: str, round_id: str | None = None) -> None:
        """Forget the kept update of ``run_id`` (which no secure round took, or one did) and,
        with ``round_id``, that round's keys and seeds."""
        ...


def _nbytes(weights: Weights | None) -> int:
    return sum(int(a.nbytes) for a in (weights or {}).values())


class RemoteParticipant:
    """A domain over HTTP: one approved request, one run per round (idempotent run ids).

    With ``secure=True`` each run's result stays in the domain (``secagg``) and leaves only
    masked, when the driver takes the domain through the round's SecAgg+ steps.
    """

    def __init__(self, name: str, request: RemoteRequest, dataset: str,
                 compression: Compression = "none", secure: bool = False) -> None:
        self.name, self.request, self.dataset, self.compression = name, request, dataset, compression
        self.secure = secure

    @property
    def secagg_id(self) -> str:
        """The domain's identity key (its ``/info``): its name in secure rounds."""
        return self.request.client.info.identity or self.name

    def secagg_peer(self, run_id: str) -> RemoteSecAggPeer:
        """This domain's side of the secure round that sums the run ``run_id``."""
        return RemoteSecAggPeer(self.request.client, run_id)

    def charged(self, run_id: str, epsilon: float | None) -> float | None:
        """The domain's epsilon after the run ``run_id`` once its round is over (a charge for
        distributed noise replaces the full one when the update leaves masked)."""
        try:
            return self.request.client.runs.get(run_id).info.epsilon
        except FednbError:
            return epsilon

    def discard(self, run_id: str, round_id: str | None = None) -> None:
        """Nothing to forget here: the domain forgets a round's keys when it ends, and keeps a
        secure run's result until it expires."""

    def _kept(self, run: RemoteRun, t0: float, timeout: float) -> Outcome:
        """Wait until a secure run's result is kept for the round (the owner may hold it)."""
        while True:
            info = run.refresh().info
            if info.release_state == "secagg":
                return Outcome("succeeded", "ok", Update({}, {}, num_examples=info.num_examples),
                               time.monotonic() - t0, epsilon=info.epsilon)
            if info.release_state == "masked":
                # its result already left, masked, in an earlier secure round: a hospital masks a
                # kept result for one round only, and this run id (derived from the federation's
                # id) came again from a Federation rebuilt with the same arguments
                return Outcome("failed", "result_already_summed", seconds=time.monotonic() - t0)
            if info.release_state == "withheld" or time.monotonic() - t0 > timeout:
                return Outcome("failed", f"result_{info.release_state}", seconds=time.monotonic() - t0)
            time.sleep(0.2)

    def run(self, weights: Weights, params: dict[str, Any], run_id: str, timeout: float) -> Outcome:
        t0 = time.monotonic()
        try:
            run = self.request.run(weights=weights, dataset=self.dataset, run_id=run_id,
                                   compression=self.compression, secure=self.secure, **params)
            info = run.wait(timeout)
            if info.status != "succeeded":
                return Outcome(info.status, info.reason, seconds=time.monotonic() - t0)
            if self.secure:
                return self._kept(run, t0, timeout)
            left = max(timeout - (time.monotonic() - t0), 1.0)
            update = run.result(timeout=left)
        except FednbError as exc:
            return Outcome("failed", exc.code, seconds=time.monotonic() - t0)
        return Outcome("succeeded", "ok", update, time.monotonic() - t0, run.result_bytes,
                       _nbytes(weights), run.info.epsilon)


class LocalParticipant:
    """A virtual hospital for ``simulate``: the runtime's path, in this process.

    The source is compiled from text, the output policy (with ``dp``: clipping and CSPRNG
    noise) applied, and ``num_examples`` taken from the data, as in a domain.

    One step of the policy moves: without DP, compression or secure aggregation an update
    goes from here unchanged into the driver's :func:`fednb.strategies.admit`, in this
    process, and the scan of its values for NaN and infinity is admit's (one pass that
    also sums the round) instead of a second one here
    (:func:`fednb.runtime.check_structure`: names, shapes, dtypes, size cap and
    metrics as in a domain). The driver records an update admit refuses from a virtual
    hospital as ``nonfinite_output``, as a domain's policy refuses it
    (``fednb.scientist._summing.nonfinite_reason``).
    """

    def __init__(self, name: str, source: str, function_name: str, data: xr.Dataset,
                 example_dim: str, *, dp: ClientDP | None = None,
                 metrics: dict[str, tuple[float, float]] | None = None,
                 compression: Compression = "none") -> None:
        self.name, self.data, self.dp, self.compression = name, data, dp, compression
        self.source, self.function_name = source, function_name
        self.fn: Any = compile_function(source, function_name)
        self.metrics = dict(metrics or {})
        self.num_examples = int(data.sizes[example_dim])
        self.noise = SecureNoise() if dp is not None or compression == "int8" else None
        self.member: SecAggMember | None = None  # set by join_secure_aggregation
        self._held: dict[str, FloatArray] = {}
        self._policies: dict[tuple[Any, ...], OutputPolicy] = {}
        self._charges: dict[str, Event] = {}  # run id -> its DP event, as a domain's ledger holds them
        self.distributed = False  # set by join_secure_aggregation
        self.delta = min(1e-6, 1.0 / (10 * self.num_examples))  # a domain's default delta

    @property
    def secagg_id(self) -> str:
        """Its name in secure rounds: its own (virtual hospitals have no identity service)."""
        return self.name

    def epsilon(self) -> float | None:
        """Epsilon spent by this hospital's releases so far (PLD accountant, as a domain's)."""
        if self.dp is None:
            return None
        return float(accountant_for("pld").epsilon(list(self._charges.values()), self.delta))

    def charged(self, run_id: str, epsilon: float | None) -> float | None:
        """Epsilon after the run ``run_id``'s round (its charge may be the distributed one)."""
        return self.epsilon()

    def _policy(self, weights: Weights) -> OutputPolicy:
        """The output policy for updates of ``weights``' names, shapes and dtypes (built once
        per layout: validating the specs each run costs more than the run on small models)."""
        key = tuple((k, v.shape, v.dtype) for k, v in weights.items())
        policy = self._policies.get(key)
        if policy is None:
            try:
                policy = OutputPolicy(weights=_specs(weights) if weights else None, metrics=self.metrics,
                                      dp=self.dp, defer_noise=self.distributed and self.dp is not None)
            except ValueError as exc:  # DP without initial weights: no approved structure to release
                raise InvalidInput(str(exc)) from None
            self._policies[key] = policy
        return policy

    def join_secure_aggregation(self, identity: Identity, roster: Roster, *,
                                distributed_noise: bool = False) -> None:
        """Keep updates here and give them out only masked, through SecAgg+; with
        ``distributed_noise`` (a domain's ``secagg_distributed_noise``), noised in the round."""
        self.member = SecAggMember(self.name, identity, roster, min_members=2)
        self.distributed = distributed_noise
        self._policies.clear()
        self.noise = self.noise or SecureNoise()  # the round's noise share

    def discard(self, run_id: str, round_id: str | None = None) -> None:
        """Forget a held update (which no secure round took, or one did) and, with
        ``round_id``, that round's keys and seeds."""
        self._held.pop(run_id, None)
        if round_id is not None and self.member is not None:
            self.member.forget(round_id)

    def secagg_peer(self, run_id: str) -> LocalPeer:
        """This hospital's side of the secure round that sums the run ``run_id``."""
        assert self.member is not None
        return LocalPeer(self.member, self.num_examples, lambda: self._held.pop(run_id),
                         lambda config, vector: self._prepare(run_id, config, vector))

    def _prepare(self, run_id: str, config: SecAggConfig,
                 vector: FloatArray) -> tuple[FloatArray, Callable[[int, float], np.ndarray]]:
        """What enters the round, as in a domain (``SecAggDesk.masked``)."""
        assert self.noise is not None
        acc = accountant_for("pld")
        others = [e for r, e in self._charges.items() if r != run_id]

        def lowers(event: Event) -> bool:
            old = self._charges.get(run_id)
            return old is not None and (acc.epsilon([*others, event], self.delta)
                                        < acc.epsilon([*others, old], self.delta))

        entry = secagg_input(config, self.name, vector, dp=self.dp, deferred=self.distributed,
                             metrics=bool(self.metrics), noise=self.noise, accept=lowers)
        if entry.event is not None:
            self._charges[run_id] = entry.event
        return entry.vector, entry.noise

    def __getstate__(self) -> dict[str, Any]:
        # For a Dask cluster: ship the source, not the compiled function or the cipher state
        # (this is the scientist's own simulation, inside their own trust domain).
        return {**self.__dict__, "fn": None, "noise": self.noise is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.fn = compile_function(self.source, self.function_name)
        self.noise = SecureNoise() if state["noise"] else None

    def _dp_release(self, weights: Weights, params: dict[str, Any],
                    policy: OutputPolicy) -> tuple[Update, ReasonCode]:
        """A DP run as a domain releases it (``runtime.release``): a run that raises or
        returns what the policy rejects releases the default, noised, and counts as a
        success. The real reason is this hospital's record's ``reason`` in the History, and a
        warning shows it with the traceback: simulate runs your own code on your own data."""
        update: Update | None = None
        reason: ReasonCode = "ok"
        trace = ""
        try:
            update = call_function(self.fn, self.data, weights, params)
        except Exception:
            reason, trace = "exception", traceback.format_exc()
        out, reason = release(update, policy, self.noise, reason)
        if reason != "ok":
            message = (f"virtual hospital {self.name!r}: a run ended with {reason!r}; it released the "
                       "default (zeros, metric midpoints, noised) as a DP domain would, recorded as "
                       f"succeeded with reason {reason!r} in history.records")
            warnings.warn(message + (f"\n{trace}" if trace else ""), RuntimeWarning, stacklevel=2)
        return out, reason

    def run(self, weights: Weights, params: dict[str, Any], run_id: str, timeout: float) -> Outcome:
        t0 = time.monotonic()
        reason: ReasonCode = "ok"
        if self.dp is not None:
            policy = self._policy(weights)
            out, reason = self._dp_release(weights, params, policy)
        else:
            try:
                raw = call_function(self.fn, self.data, weights, params)
                policy = self._policy(weights)
                if self.member is None and self.compression == "none":
                    # its values go unchanged into the driver's admit(), the one NaN/Inf scan
                    # (an update it refuses is recorded nonfinite_output, as by a domain's policy)
                    out = check_structure(raw, policy)
                else:  # scanned before it is masked or compressed, as in a domain
                    out = apply_output_policy(raw, policy, self.noise)
            except OutputRejected as rej:
                return Outcome("failed", rej.reason, seconds=time.monotonic() - t0)
            except Exception as exc:  # the code failed: a fixed category, as in a domain
                # your own code on your own data: its traceback is yours to see
                warnings.warn(f"virtual hospital {self.name!r}: the run raised (recorded as failed, "
                              f"'exception'):\n{traceback.format_exc()}", RuntimeWarning, stacklevel=2)
                return Outcome("failed", "exception", seconds=time.monotonic() - t0, error=exc)
        if self.dp is not None:
            self._charges[run_id] = update_event(self.dp, bool(self.metrics))
        if self.member is not None:  # secure aggregation: the update leaves only masked
            self._held[run_id] = flatten(out.weights)[0]
            return Outcome("succeeded", reason, Update({}, out.metrics, num_examples=self.num_examples),
                           time.monotonic() - t0, 0, _nbytes(weights), self.epsilon())
        try:
            sent, meta = compress(out.weights, self.compression,
                                  self.noise.uniform if self.noise is not None else _no_uniform)
        except InvalidInput:  # float16 overflow: refused as a domain refuses it (its DP charge kept:
            # the refusal depends on the noised update)
            return Outcome("failed", "compression_overflow", seconds=time.monotonic() - t0,
                           epsilon=self.epsilon())
        update = Update(decompress(sent, meta), out.metrics, num_examples=self.num_examples)
        return Outcome("succeeded", reason, update, time.monotonic() - t0, _nbytes(sent), _nbytes(weights),
                       self.epsilon())


def _no_uniform(n: int) -> Any:
    raise AssertionError("int8 compression needs a noise source")
