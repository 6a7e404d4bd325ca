"""The round driver: the one loop behind ``Federation`` and ``simulate``.

It holds what a training has (its validated :class:`~fednb.scientist._spec.TrainingSpec`,
the participants, the model, the history, the checkpoint) and runs one of two loops over
one of two ways of summing:

- :class:`~fednb.scientist._loops.SyncLoop` (rounds) or
  :class:`~fednb.scientist._loops.AsyncLoop` (FedBuff-style buffers), by
  ``spec.asynchronous``;
- :class:`~fednb.scientist._summing.PlainSumming` (single updates, admitted by the one
  finiteness check, :func:`fednb.strategies.admit`) or
  :class:`~fednb.scientist._summing.SecureSumming` (SecAgg+), by ``spec.secure``.

Run ids are derived from the run prefix (a federation's id), the round and the domain, so
a restarted notebook re-sends the same ids and no domain runs (or charges) twice; the
checkpoint after every round lets it resume where it stopped.
"""

from __future__ import annotations

import re
import secrets
import warnings
from collections.abc import Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from fednb.errors import InvalidInput
from fednb.protocol import decode_message, encode_message
from fednb.scientist._history import ClientRecord, History
from fednb.scientist._loops import MAX_FAILURES_IN_A_ROW, AsyncLoop, SyncLoop
from fednb.scientist._participants import Outcome, Participant
from fednb.scientist._spec import TrainingSpec
from fednb.scientist._summing import PlainSumming, RoundFailed, SecureSumming
from fednb.strategies import Strategy, flatten, unflatten
from fednb.typing import FloatArray, Weights

__all__ = ["MAX_FAILURES_IN_A_ROW", "Driver", "RoundFailed", "SerialExecutor"]


class SerialExecutor(Executor):
    """Runs each task at once in the calling thread: for in-process simulations, where a
    thread pool costs more (GIL, page faults of parallel temporaries) than it gains."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except (KeyboardInterrupt, SystemExit):
            raise  # a Ctrl-C stops the round here: the hospitals after this one are not run
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


class Driver:
    """Run ``spec`` over ``participants``.

    Parameters
    ----------
    participants
        By name (the spec's domains); each has ``run(weights, params, run_id, timeout)``;
        under secure aggregation each must be a
        :class:`~fednb.scientist._participants.SecureParticipant`.
    spec
        The validated training spec (:meth:`TrainingSpec.build`).
    run_prefix
        Stable prefix of run ids (the federation's id): the key to idempotent resumes.
    history
        The :class:`History` to fill (one a live viewer shows); default a new one.
    settings
        Recorded in ``history.settings``.
    executor
        Runs the participants; default a thread pool of the driver's own.
    """

    def __init__(self, participants: Mapping[str, Participant], spec: TrainingSpec, *, run_prefix: str,
                 history: History | None = None, settings: Mapping[str, Any] | None = None,
                 executor: Executor | None = None) -> None:
        if spec.domains and sorted(participants) != list(spec.domains):
            raise InvalidInput(f"the participants {sorted(participants)} are not the spec's domains "
                               f"{list(spec.domains)}")
        self.participants, self.spec, self.prefix = dict(participants), spec, run_prefix
        self.summing: PlainSumming | SecureSumming = (
            PlainSumming() if spec.secure_bound is None
            else SecureSumming(self.participants, spec.secure_bound, spec.secure_noise))
        self.executor = executor
        self.serial = isinstance(executor, SerialExecutor)
        self.vec, self.layout = flatten(spec.initial)
        self.history = history if history is not None else History()
        self.history.records.clear()  # a new run starts afresh; _resume() restores a checkpoint's
        self.history.settings.update(settings or {})
        self.done = 0
        self._rng = np.random.default_rng(secrets.randbits(64))  # sampling only, not privacy noise
        self._resume()

    @property
    def strategy(self) -> Strategy:
        return self.spec.strategy

    # -- checkpoints -----------------------------------------------------------------
    def _save(self) -> None:
        folder = self.spec.checkpoint
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: np.asarray(v) for k, v in self.strategy.state_dict().items()}
        blob = encode_message({"done": self.done, "state_keys": sorted(state)},
                              {"__global__": self.vec, **{f"state/{k}": v for k, v in state.items()}})
        tmp = folder / "checkpoint.safetensors.tmp"
        tmp.write_bytes(blob)
        self.history.weights = unflatten(self.vec, self.layout)
        self.history.save(folder / "history")
        tmp.replace(folder / "checkpoint.safetensors")

    def _resume(self) -> None:
        folder = self.spec.checkpoint
        if folder is None or not (folder / "checkpoint.safetensors").exists():
            return
        header, tensors = decode_message((folder / "checkpoint.safetensors").read_bytes())
        if tensors["__global__"].shape != self.vec.shape:
            raise InvalidInput(f"the checkpoint in {folder} is of another model; remove it")
        self.vec, self.done = tensors["__global__"], int(header["done"])
        state = {k: tensors[f"state/{k}"] for k in header["state_keys"]}
        self.strategy.load_state_dict({k: (v if v.ndim else v.item()) for k, v in state.items()})
        settings = dict(self.history.settings)
        self.history.replace(History.load(folder / "history"))
        self.history.settings.update(settings | {"resumed_at_round": self.done})
        # a checkpoint is only ever resumed out loud
        warnings.warn(f"{self.prefix}: resuming from the checkpoint in {folder} after {self.done} of "
                      f"{self.spec.rounds} rounds (remove the folder to start afresh)", UserWarning,
                      stacklevel=4)

    # -- what the loops and summing objects share -------------------------------------
    def weights(self) -> Weights:
        """The current global model, as named arrays of the initial weights' dtypes."""
        return unflatten(self.vec, self.layout)

    def record(self, rnd: int, name: str, out: Outcome, staleness: int = 0) -> None:
        u = out.update
        self.history.records.append(ClientRecord(
            round=rnd, domain=name, status=out.status, reason=out.reason,
            num_examples=int(u.num_examples or 0) if u else 0, seconds=round(out.seconds, 4),
            bytes_up=out.bytes_up, bytes_down=out.bytes_down, staleness=staleness,
            metrics=dict(u.metrics) if u else {}, epsilon=out.epsilon))

    def vector(self, out: Outcome) -> FloatArray | None:
        """The update as a flat vector, or None when it failed or does not fit the model."""
        if out.status != "succeeded" or out.update is None or not out.update.num_examples:
            return None
        try:
            new, layout = flatten(out.update.weights, copy=False)  # read only: into the sum
        except InvalidInput:
            return None
        if layout.names != self.layout.names or new.shape != self.vec.shape:
            return None
        return new

    def run_id(self, tag: str, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:16]
        return f"{self.prefix}-{tag}-{safe}"

    def sample(self, fraction: float) -> list[str]:
        names = sorted(self.participants)
        k = max(self.spec.min_domains, int(np.ceil(fraction * len(names))))
        return sorted(self._rng.choice(names, size=min(k, len(names)), replace=False).tolist())

    def step(self, vec: FloatArray, bar: Any) -> None:
        """Take the aggregation's new model, checkpoint, and tell the watchers."""
        self.vec = vec
        self.done += 1
        self._save()
        bar.update(1)
        self.history.notify()

    def run(self) -> History:
        """Run the remaining rounds; returns the history (also kept on ``self.history``)."""
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=self.spec.rounds, initial=self.done, desc="rounds", disable=not self.spec.progress)
        own = self.executor is None
        pool = self.executor or ThreadPoolExecutor(max_workers=min(max(4, len(self.participants)), 64),
                                                   thread_name_prefix="fednb-round")
        loop = AsyncLoop() if self.spec.asynchronous else SyncLoop()
        try:
            loop.run(self, pool, bar)
        finally:
            if own:  # on an error or Ctrl-C, runs not yet started are not started
                pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        self.history.weights = self.weights()
        return self.history
