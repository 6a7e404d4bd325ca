"""The round driver: the one loop behind ``Federation`` and ``simulate``.

It samples participants, hands each the global weights and the round's parameters,
drops those that fail or time out (going on while ``min_domains`` answer), aggregates
with the strategy's hooks, checkpoints after every round and resumes from the last
checkpoint. Run ids are derived from the federation's id, the round and the domain, so
a restarted notebook re-sends the same ids and no domain runs (or charges) twice.
Asynchronous mode (FedBuff-style) restarts each participant as soon as it answers and
aggregates whenever the buffer is full, rebasing stale updates onto the current model;
under secure aggregation each full buffer is summed by one SecAgg+ round over its members.
"""

from __future__ import annotations

import re
import secrets
import warnings
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fednb import kernels
from fednb.errors import InvalidInput
from fednb.protocol import MIN_STALENESS_FACTOR, decode_message, encode_message
from fednb.scientist._history import ClientRecord, History
from fednb.scientist._participants import Outcome, Participant
from fednb.secagg import RoundAbandoned, SecAggPeer, SecureSum, propose, round_id, secure_sum
from fednb.strategies import ClientUpdate, Strategy, flatten, unflatten
from fednb.typing import Weights

__all__ = ["Driver", "RoundFailed", "SerialExecutor"]


MAX_FAILURES_IN_A_ROW = 3
"""An asynchronous run stops restarting a domain whose last this many runs failed."""


class RoundFailed(InvalidInput):
    """Fewer domains than ``min_domains`` answered a round."""

    code = "round_failed"
    status = 409


@dataclass
class _Flight:
    name: str
    version: int
    start: np.ndarray
    run_id: str = ""


_Buffered = tuple[_Flight, np.ndarray | None, Outcome]  # the update's vector: None when kept for SecAgg+


def _dropped(out: Outcome, reason: str) -> Outcome:
    """A run that succeeded at its domain but whose update the driver cannot use: recorded
    as failed, with why, so the history does not show it as taken into the round."""
    return Outcome("failed", reason, None, out.seconds, out.bytes_up, out.bytes_down, out.epsilon)


def _examples(out: Outcome) -> int:
    """The examples behind a successful answer (0 for a failure)."""
    if out.status != "succeeded" or out.update is None:
        return 0
    return int(out.update.num_examples or 0)


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
    """Run ``rounds`` rounds of ``strategy`` over ``participants``.

    Parameters
    ----------
    participants
        By name; each has ``run(weights, params, run_id, timeout)``.
    strategy
        A :class:`fednb.strategies.Strategy`.
    initial
        The initial global weights (named arrays).
    params
        The client function's parameters (the strategy may add some per round).
    rounds
        Rounds to run (asynchronous: aggregations).
    run_prefix
        Stable prefix of run ids (the federation's id): the key to idempotent resumes.
    min_domains
        Fewest answers a round needs (default 1).
    timeout
        Seconds one run may take before its domain is dropped from the round (default 600).
    checkpoint
        A directory to checkpoint into after every round and to resume from; None: none.
    secure_bound
        With secure aggregation: every coordinate is clipped into [-bound, bound] before
        quantisation, and the driver learns only the survivors' weighted mean (SecAgg+).
        None: plain aggregation. Participants must offer ``secagg_peer(run_id)``.
        Asynchronously, each full buffer (``buffer_size`` distinct domains, at least 2: a
        domain restarts only once its kept update was summed) is one secure round.
    secure_noise
        With secure aggregation, the members' client-level noise z C: each round then asks
        for distributed discrete noise sized to it (:func:`fednb.secagg.propose`). None: none.
    """

    def __init__(self, participants: dict[str, Participant], strategy: Strategy, initial: Weights,
                 params: dict[str, Any], rounds: int, *, run_prefix: str, min_domains: int = 1,
                 timeout: float = 600.0, checkpoint: str | Path | None = None,
                 asynchronous: bool = False, progress: bool = True,
                 settings: dict[str, Any] | None = None, executor: Executor | None = None,
                 secure_bound: float | None = None, history: History | None = None,
                 secure_noise: float | None = None) -> None:
        if rounds < 1:
            raise InvalidInput(f"rounds must be >= 1, not {rounds}")
        if not 1 <= min_domains <= len(participants):
            raise InvalidInput(f"min_domains must be between 1 and {len(participants)}, not {min_domains}")
        need = int(getattr(strategy, "min_updates", 1))
        if len(participants) < need:
            raise InvalidInput(f"{strategy!r} needs at least {need} updates a round; there are only "
                               f"{len(participants)} domains")
        self.participants, self.strategy, self.params = participants, strategy, dict(params)
        self.rounds, self.prefix, self.min_domains = rounds, run_prefix, min_domains
        self.timeout, self.asynchronous, self.progress = timeout, asynchronous, progress
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.executor, self.secure_bound, self.secure_noise = executor, secure_bound, secure_noise
        k = int(getattr(strategy, "buffer_size", min_domains))
        if secure_bound is not None and asynchronous and not 2 <= k <= len(participants):
            raise InvalidInput(f"asynchronous secure aggregation sums buffers of distinct domains: "
                               f"buffer_size must be between 2 and {len(participants)} (the domains), "
                               f"not {k}")
        self.vec, self.layout = flatten(initial)
        self.history = history if history is not None else History()
        self.history.records.clear()  # a new run starts afresh; _resume() restores a checkpoint's
        self.history.settings.update(settings or {})
        self.done = 0
        self._rng = np.random.default_rng(secrets.randbits(64))  # sampling only, not privacy noise
        self._resume()

    # -- checkpoints -----------------------------------------------------------------
    def _save(self) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        state = {k: np.asarray(v) for k, v in self.strategy.state_dict().items()}
        blob = encode_message({"done": self.done, "state_keys": sorted(state)},
                              {"__global__": self.vec, **{f"state/{k}": v for k, v in state.items()}})
        tmp = self.checkpoint / "checkpoint.safetensors.tmp"
        tmp.write_bytes(blob)
        self.history.weights = unflatten(self.vec, self.layout)
        self.history.save(self.checkpoint / "history")  # checkpoint is not None: checked above
        tmp.replace(self.checkpoint / "checkpoint.safetensors")

    def _resume(self) -> None:
        if self.checkpoint is None or not (self.checkpoint / "checkpoint.safetensors").exists():
            return
        path = self.checkpoint / "checkpoint.safetensors"
        header, tensors = decode_message(path.read_bytes())
        if tensors["__global__"].shape != self.vec.shape:
            raise InvalidInput(f"the checkpoint in {self.checkpoint} is of another model; remove it")
        self.vec, self.done = tensors["__global__"], int(header["done"])
        state = {k: tensors[f"state/{k}"] for k in header["state_keys"]}
        self.strategy.load_state_dict({k: (v if v.ndim else v.item()) for k, v in state.items()})
        self.history.replace(History.load(self.checkpoint / "history"))

    # -- one run ---------------------------------------------------------------------
    def _record(self, rnd: int, name: str, out: Outcome, staleness: int = 0) -> None:
        u = out.update
        self.history.records.append(ClientRecord(
            round=rnd, domain=name, status=out.status, reason=out.reason,
            num_examples=int(u.num_examples or 0) if u else 0, seconds=round(out.seconds, 4),
            bytes_up=out.bytes_up, bytes_down=out.bytes_down, staleness=staleness,
            metrics=dict(u.metrics) if u else {}, epsilon=out.epsilon))

    def _vector(self, out: Outcome) -> np.ndarray | None:
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

    def _run_id(self, tag: str, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:16]
        return f"{self.prefix}-{tag}-{safe}"

    def _sample(self, fraction: float) -> list[str]:
        names = sorted(self.participants)
        k = max(self.min_domains, int(np.ceil(fraction * len(names))))
        return sorted(self._rng.choice(names, size=min(k, len(names)), replace=False).tolist())

    # -- secure aggregation ----------------------------------------------------------
    def _secagg_id(self, name: str) -> str:
        # members are named by their secure-aggregation id: a domain's identity key over HTTP
        return getattr(self.participants[name], "secagg_id", None) or name

    def _secure_sum(self, pool: Executor, tag: str, counts: dict[str, int], runs: dict[str, str],
                    factors: dict[str, float] | None = None) -> SecureSum | None:
        """One SecAgg+ round over the kept results ``runs`` (domain -> run id), weighted by
        ``counts`` times ``factors``; None when it was abandoned (nothing was unmasked)."""
        assert self.secure_bound is not None
        ids = {n: self._secagg_id(n) for n in runs}
        config = propose(round_id(f"{self.prefix}-{tag}"), {ids[n]: c for n, c in counts.items()},
                         self.vec.size, self.secure_bound, noise_std=self.secure_noise,
                         staleness=None if factors is None else {ids[n]: f for n, f in factors.items()})
        peers: dict[str, SecAggPeer] = {ids[n]: self.participants[n].secagg_peer(  # type: ignore[attr-defined]
            run) for n, run in runs.items()}
        try:
            return secure_sum(config, peers, executor=None if isinstance(pool, SerialExecutor) else pool)
        except RoundAbandoned as exc:
            # the model stays as it was and training goes on
            warnings.warn(f"secure round {tag} abandoned: {exc}", RuntimeWarning, stacklevel=3)
            return None
        finally:
            for peer in peers.values():
                getattr(peer, "forget", lambda _: None)(config.round_id)
            for name, run in runs.items():
                getattr(self.participants[name], "discard", lambda _: None)(run)

    def _secure_records(self, rnd: int, members: dict[str, tuple[str, Outcome, int]],
                        out_sum: SecureSum | None) -> None:
        """Record each member (name -> run id, answer, staleness) of a secure round."""
        for name, (run, out, staleness) in members.items():
            if out_sum is None:  # abandoned: charged all the same
                out = Outcome("failed", "secagg_abandoned", None, out.seconds, 0, out.bytes_down, out.epsilon)
                self._record(rnd, name, out, staleness)
                continue
            charged = getattr(self.participants[name], "charged", None)  # after distributed noise
            eps = charged(run, out.epsilon) if charged else out.epsilon
            if self._secagg_id(name) in out_sum.dropped:
                out = Outcome("failed", "secagg_dropped", None, out.seconds, 0, out.bytes_down, eps)
            else:
                out = Outcome(out.status, out.reason, out.update, out.seconds, 4 * self.vec.size,
                              out.bytes_down, eps)
            self._record(rnd, name, out, staleness)

    # -- synchronous -----------------------------------------------------------------
    def _secure_round(self, pool: Executor, rnd: int, futures: dict[str, Future[Outcome]]) -> None:
        """The round's sum by SecAgg+: the driver never sees a single update."""
        counts: dict[str, int] = {}
        for name, fut in futures.items():
            out = fut.result()
            if _examples(out):
                counts[name] = _examples(out)
            else:
                self._record(rnd, name, out)
        if len(counts) < max(2, self.min_domains):
            raise RoundFailed(f"round {rnd}: {len(counts)} of {len(futures)} domains answered, fewer than "
                              f"min_domains={self.min_domains} (secure aggregation needs 2)")
        runs = {n: self._run_id(f"r{rnd}", n) for n in counts}
        out_sum = self._secure_sum(pool, f"r{rnd}", counts, runs)
        self._secure_records(rnd, {n: (runs[n], futures[n].result(), 0) for n in counts}, out_sum)
        if out_sum is None:
            return
        if len(out_sum.survivors) < self.min_domains:
            raise RoundFailed(f"round {rnd}: {len(out_sum.survivors)} domains survived secure aggregation, "
                              f"fewer than min_domains={self.min_domains}")
        n = float(out_sum.num_examples)
        self.vec = self.strategy.aggregate_sum(self.vec, out_sum.mean * n, n, total_examples=n)

    def _round(self, pool: Executor, rnd: int) -> None:
        cfg = self.strategy.configure_round(rnd, self.params)
        weights = unflatten(self.vec, self.layout)
        chosen = self._sample(cfg.fraction)
        futures = {n: pool.submit(self.participants[n].run, weights, dict(cfg.params),
                                  self._run_id(f"r{rnd}", n), self.timeout) for n in chosen}
        if self.secure_bound is not None:
            self._secure_round(pool, rnd, futures)
            return
        updates: list[ClientUpdate] = []
        answers: dict[str, Outcome] = {}  # recorded once the round's aggregate is known
        try:
            for name, fut in futures.items():
                out = answers[name] = fut.result()
                vec = self._vector(out)
                if vec is not None and out.update is not None:
                    try:  # ClientUpdate refuses NaN/Inf: such an update is dropped like a failure
                        updates.append(ClientUpdate(vec, int(out.update.num_examples or 0), name, 0,
                                                    dict(out.update.metrics),
                                                    checked=out.checked or out.deferred))
                    except InvalidInput:
                        answers[name] = _dropped(out, "nonfinite_update")
                elif out.status == "succeeded":
                    answers[name] = _dropped(out, "update_mismatch" if out.update is not None
                                             and out.update.num_examples else "no_examples")
            self.vec = self._aggregate(rnd, updates, answers, len(chosen))
        finally:
            for name, out in answers.items():
                self._record(rnd, name, out)

    def _aggregate(self, rnd: int, updates: list[ClientUpdate], answers: dict[str, Outcome],
                   asked: int) -> np.ndarray:
        """The strategy's new global vector from the round's updates. Updates whose values no
        one scanned (``Outcome.deferred``: a virtual hospital's, for the FedAvg family, whose
        aggregate checks the finiteness of the mean) are scanned only when the aggregate is
        refused: those holding NaN or infinity are then dropped, as their hospital's output
        policy would have refused them, and the rest aggregated again."""
        if len(updates) < self.min_domains:
            raise RoundFailed(f"round {rnd}: {len(updates)} of {asked} domains answered, fewer than "
                              f"min_domains={self.min_domains}; see history.metrics.status")
        try:
            return self.strategy.aggregate(self.vec, updates)
        except InvalidInput:
            bad = {u.domain for u in updates
                   if answers[u.domain].deferred and not kernels.all_finite(u.vector)}
            if not bad:
                raise
        for name in bad:
            answers[name] = _dropped(answers[name], "nonfinite_output")
        return self._aggregate(rnd, [u for u in updates if u.domain not in bad], answers, asked)

    def run(self) -> History:
        """Run the remaining rounds; returns the history (also kept on ``self.history``)."""
        from tqdm.auto import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=self.rounds, initial=self.done, desc="rounds", disable=not self.progress)
        workers = max(4, len(self.participants))
        own = self.executor is None
        pool = self.executor or ThreadPoolExecutor(max_workers=min(workers, 64),
                                                   thread_name_prefix="fednb-round")
        try:
            if self.asynchronous:
                self._run_async(pool, bar)
            else:
                while self.done < self.rounds:
                    self._round(pool, self.done)
                    self.done += 1
                    self._save()
                    bar.update(1)
                    self.history.notify()
        finally:
            if own:  # on an error or Ctrl-C, runs not yet started are not started
                pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        self.history.weights = unflatten(self.vec, self.layout)
        return self.history

    # -- asynchronous ----------------------------------------------------------------
    def _launch(self, pool: Executor, name: str, seq: dict[str, int],
                flights: dict[Future[Outcome], _Flight]) -> None:
        cfg = self.strategy.configure_round(self.done, self.params)
        seq[name] = seq.get(name, 0) + 1
        run = self._run_id(f"a{self.done}-{seq[name]}", name)
        fut = pool.submit(self.participants[name].run, unflatten(self.vec, self.layout), dict(cfg.params),
                          run, self.timeout)
        flights[fut] = _Flight(name, self.done, self.vec.copy(), run)

    def _aggregate_buffer(self, buffer: list[_Buffered]) -> None:
        # Rebase and weigh staleness now, against the model the buffer is applied to.
        updates = []
        for fl, new, out in buffer:
            assert out.update is not None and new is not None
            try:
                updates.append(ClientUpdate(self.vec + (new - fl.start), int(out.update.num_examples or 0),
                                            fl.name, self.done - fl.version, dict(out.update.metrics)))
            except InvalidInput:  # NaN or Inf: dropped
                continue
        if updates:
            self.vec = self.strategy.aggregate(self.vec, updates)

    def _staleness_factor(self, name: str, examples: int, staleness: int) -> float:
        """``strategy.weight`` over the examples: FedBuff's s(staleness), in
        [MIN_STALENESS_FACTOR, 1] (staler updates count as the floor, which members require)."""
        probe = ClientUpdate(np.zeros(1), examples, name, staleness, checked=True)
        return min(1.0, max(MIN_STALENESS_FACTOR, self.strategy.weight(probe) / examples))

    def _secure_buffer(self, pool: Executor, buffer: list[_Buffered]) -> None:
        """One buffer's step by SecAgg+ over its members. The driver learns only
        ``sum_i w_i new_i`` (w_i: examples times staleness factor, signed in the round) and
        rebases it with the starts it sent: ``sum_i w_i (g + new_i - start_i)``, as FedBuff."""
        rnd = self.done
        counts = {fl.name: _examples(out) for fl, _, out in buffer}
        factors = {fl.name: self._staleness_factor(fl.name, counts[fl.name], rnd - fl.version)
                   for fl, _, _ in buffer}
        out_sum = self._secure_sum(pool, f"a{rnd}", counts, {fl.name: fl.run_id for fl, _, _ in buffer},
                                   factors)
        self._secure_records(rnd, {fl.name: (fl.run_id, out, rnd - fl.version) for fl, _, out in buffer},
                             out_sum)
        if out_sum is None:
            return
        total = out_sum.total_weight
        rebased = out_sum.mean * total
        rebased += total * self.vec
        for fl, _, _ in buffer:
            if self._secagg_id(fl.name) in out_sum.survivors:
                rebased -= (counts[fl.name] * factors[fl.name]) * fl.start
        self.vec = self.strategy.aggregate_sum(self.vec, rebased, total,
                                               total_examples=float(out_sum.num_examples))

    def _arrived(self, pool: Executor, fl: _Flight, out: Outcome, buffer: list[_Buffered],
                 seq: dict[str, int], flights: dict[Future[Outcome], _Flight],
                 fails: dict[str, int]) -> None:
        fails[fl.name] = 0 if _examples(out) else fails.get(fl.name, 0) + 1
        if self.secure_bound is not None and _examples(out):
            buffer.append((fl, None, out))  # kept for its round: recorded and restarted after it
            return
        self._record(self.done, fl.name, out, self.done - fl.version)
        vec = None if self.secure_bound is not None else self._vector(out)
        if vec is not None:
            buffer.append((fl, vec, out))
        if fails[fl.name] >= MAX_FAILURES_IN_A_ROW:  # a dead or broken domain: not restarted
            warnings.warn(f"{fl.name} failed {fails[fl.name]} runs in a row ({out.reason}); it is no "
                          "longer restarted in this asynchronous run", RuntimeWarning, stacklevel=3)
        elif self.done < self.rounds:
            self._launch(pool, fl.name, seq, flights)

    def _run_async(self, pool: Executor, bar: Any) -> None:
        k = int(getattr(self.strategy, "buffer_size", self.min_domains))
        flights: dict[Future[Outcome], _Flight] = {}
        seq: dict[str, int] = {}
        buffer: list[_Buffered] = []
        fails: dict[str, int] = {}
        for name in sorted(self.participants):
            self._launch(pool, name, seq, flights)
        while self.done < self.rounds and flights:
            finished, _ = wait(list(flights), return_when=FIRST_COMPLETED)
            for fut in finished:
                fl = flights.pop(fut)
                self._arrived(pool, fl, fut.result(), buffer, seq, flights, fails)
            while len(buffer) >= k and self.done < self.rounds:
                batch, buffer = buffer[:k], buffer[k:]
                if self.secure_bound is None:
                    self._aggregate_buffer(batch)
                else:
                    self._secure_buffer(pool, batch)
                self.done += 1
                self._save()
                bar.update(1)
                self.history.notify()
                if self.secure_bound is not None and self.done < self.rounds:
                    for fl, _, _ in batch:  # from the new model
                        self._launch(pool, fl.name, seq, flights)
        stopped = self.done < self.rounds  # every domain stopped before the buffers could fill
        for fut, fl in flights.items():  # stragglers of the last round: let them finish, drop their answers
            if not fut.cancel():  # already running: forget what it keeps once it is done
                fut.add_done_callback(lambda _, fl=fl: getattr(  # type: ignore[misc]
                    self.participants[fl.name], "discard", lambda _: None)(fl.run_id))
        for fl, _, _ in buffer:  # kept updates no round took
            getattr(self.participants[fl.name], "discard", lambda _: None)(fl.run_id)
        if stopped:
            raise RoundFailed(f"the asynchronous run stopped after {self.done} of {self.rounds} "
                              f"aggregations: domains that failed {MAX_FAILURES_IN_A_ROW} runs in a row are "
                              f"not restarted, and those left cannot fill a buffer of {k}; see "
                              "history.metrics.status")
