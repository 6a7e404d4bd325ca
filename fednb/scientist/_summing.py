"""How a round's (or a buffer's) answers become the new model: plain or secure summing.

:class:`PlainSumming` sees every update: it turns answers into client updates, admits
them through the one finiteness check (:func:`fednb.strategies.admit`) and calls the
strategy's ``aggregate``. :class:`SecureSumming` never sees one: the answers' updates stay
with their participants, a SecAgg+ round sums them, and the strategy's ``aggregate_sum``
takes the sum. The loops (:mod:`fednb.scientist._loops`) call either through the same
four methods.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fednb.errors import InvalidInput
from fednb.protocol import MIN_STALENESS_FACTOR
from fednb.scientist._participants import LocalParticipant, Outcome, Participant, SecureParticipant
from fednb.secagg import RoundAbandoned, SecAggPeer, SecureSum, propose, round_id, secure_sum
from fednb.strategies import ClientUpdate, admit
from fednb.typing import FloatArray

if TYPE_CHECKING:
    from fednb.scientist._driver import Driver

__all__ = ["Buffered", "Flight", "PlainSumming", "RoundFailed", "SecureSumming", "examples",
           "nonfinite_reason"]


class RoundFailed(InvalidInput):
    """Fewer domains than ``min_domains`` answered a round."""

    code = "round_failed"
    status = 409


@dataclass
class Flight:
    """An asynchronous run in flight: whose, from which model version, and that model."""

    name: str
    version: int
    start: FloatArray
    run_id: str = ""


@dataclass
class Buffered:
    """An answer waiting for its buffer; ``vector`` is None when it stays with its
    participant for a secure round."""

    flight: Flight
    vector: FloatArray | None
    outcome: Outcome


def examples(out: Outcome) -> int:
    """The examples behind a successful answer (0 for a failure)."""
    if out.status != "succeeded" or out.update is None:
        return 0
    return int(out.update.num_examples or 0)


def _dropped(out: Outcome, reason: str) -> Outcome:
    """A run that succeeded at its domain but whose update the driver cannot use: recorded
    as failed, with why, so the history does not show it as taken into the round."""
    return Outcome("failed", reason, None, out.seconds, out.bytes_up, out.bytes_down, out.epsilon)


def nonfinite_reason(participant: Participant) -> str:
    """Why an update that :func:`fednb.strategies.admit` refused is recorded.

    A virtual hospital (:class:`LocalParticipant`) without DP, compression or secure
    aggregation hands its update to admit unscanned: admit's scan is the one its output
    policy would have made, so its refusal is recorded as that policy's,
    ``nonfinite_output``, as a domain records it. Any other participant's update was
    scanned where it was made (a domain's output policy); one that reached the driver
    holding NaN or infinity all the same is the driver's refusal, ``nonfinite_update``.
    """
    return "nonfinite_output" if isinstance(participant, LocalParticipant) else "nonfinite_update"


def _first_error(outcomes: Mapping[str, Outcome]) -> BaseException | None:
    """The scientist's own exception behind a failed answer (virtual hospitals only)."""
    return next((o.error for o in outcomes.values() if o.error is not None), None)


def _too_few(rnd: int, counts: Mapping[str, int], answers: Mapping[str, Outcome], min_domains: int) -> str:
    """Why a secure round could not be summed: each missing domain's reason, and what to do
    when the runs' results were summed already (a rebuilt federation without its checkpoint)."""
    why = {n: o.reason or o.status for n, o in sorted(answers.items()) if n not in counts}
    text = (f"round {rnd}: {len(counts)} of {len(answers)} domains answered, fewer than "
            f"min_domains={min_domains} (secure aggregation needs 2): "
            + ", ".join(f"{n} {r}" for n, r in why.items()))
    if "result_already_summed" in why.values():
        text += ("; those runs' results were summed in an earlier secure round of this federation "
                 "(its id, and so its run ids, is a hash of its arguments) and a hospital masks a "
                 "result for one round only: resume from the federation's checkpoint "
                 "(Federation(checkpoint=DIRECTORY)) or change an argument to train anew")
    return text


class PlainSumming:
    """Summing that sees the single updates (no secure aggregation)."""

    restarts_on_arrival = True
    """Asynchronously, a participant restarts as soon as its answer is buffered."""

    def round(self, d: Driver, pool: Executor, rnd: int, futures: dict[str, Future[Outcome]]) -> FloatArray:
        """The new global vector from a synchronous round's answers (recorded, in order)."""
        answers: dict[str, Outcome] = {}
        updates: list[ClientUpdate] = []
        try:
            for name, fut in futures.items():
                out = answers[name] = fut.result()
                update = self._update(d, name, out)
                if update is not None:
                    updates.append(update)
                elif out.status == "succeeded":
                    answers[name] = _dropped(out, _unusable(out))
            admitted, refused = admit(updates)
            for u in refused:
                answers[u.domain] = _dropped(answers[u.domain], nonfinite_reason(d.participants[u.domain]))
            if len(admitted) < d.spec.min_domains:
                raise RoundFailed(f"round {rnd}: {len(admitted)} of {len(futures)} domains answered, fewer "
                                  f"than min_domains={d.spec.min_domains}; see history.metrics.status"
                                  ) from _first_error(answers)
            return d.strategy.aggregate(d.vec, admitted)
        finally:
            for name, out in answers.items():
                d.record(rnd, name, out)

    def arrived(self, d: Driver, fl: Flight, out: Outcome) -> Buffered | None:
        """Record an asynchronous answer; what to buffer, if its update is usable (admitted
        now, so that its record says whether it was)."""
        update = self._update(d, fl.name, out)
        if update is None and out.status == "succeeded":
            out = _dropped(out, _unusable(out))
        elif update is not None and admit([update])[1]:
            out, update = _dropped(out, nonfinite_reason(d.participants[fl.name])), None
        d.record(d.done, fl.name, out, d.done - fl.version)
        return None if update is None else Buffered(fl, update.vector, out)

    def buffer(self, d: Driver, pool: Executor, batch: list[Buffered]) -> FloatArray:
        """The new global vector from a full buffer, its updates rebased onto the current
        model now (``global + new - start``) and weighted by their staleness."""
        updates = []
        for b in batch:
            assert b.vector is not None and b.outcome.update is not None
            updates.append(ClientUpdate(d.vec + (b.vector - b.flight.start),
                                        int(b.outcome.update.num_examples or 0), b.flight.name,
                                        d.done - b.flight.version, dict(b.outcome.update.metrics)))
        admitted, _ = admit(updates)  # each was admitted on arrival: only an overflow refuses one now
        return d.strategy.aggregate(d.vec, admitted) if admitted else d.vec

    def forget(self, d: Driver, fl: Flight) -> None:
        """Nothing is kept for a straggler's run."""

    @staticmethod
    def _update(d: Driver, name: str, out: Outcome) -> ClientUpdate | None:
        vec = d.vector(out)
        if vec is None or out.update is None:
            return None
        return ClientUpdate(vec, int(out.update.num_examples or 0), name, 0, dict(out.update.metrics))


def _unusable(out: Outcome) -> str:
    return "update_mismatch" if out.update is not None and out.update.num_examples else "no_examples"


class SecureSumming:
    """Summing by SecAgg+: the driver learns only the weighted sum of the survivors' updates.

    Parameters
    ----------
    participants
        Every participant, each a :class:`SecureParticipant`.
    bound
        Coordinates are clipped into ``[-bound, bound]`` before quantisation.
    noise
        The client-level noise ``z C`` each round asks distributed noise for; None: none.
    """

    restarts_on_arrival = False
    """Asynchronously, a participant whose update is kept restarts once its buffer is summed."""

    def __init__(self, participants: Mapping[str, Participant], bound: float, noise: float | None) -> None:
        lacking = sorted(n for n, p in participants.items() if not isinstance(p, SecureParticipant))
        if lacking:
            raise InvalidInput(f"secure aggregation needs participants that keep their updates for a "
                               f"SecAgg+ round; {lacking} cannot")
        self.members: dict[str, SecureParticipant] = {
            n: p for n, p in participants.items() if isinstance(p, SecureParticipant)}
        self.bound, self.noise = bound, noise

    def round(self, d: Driver, pool: Executor, rnd: int, futures: dict[str, Future[Outcome]]) -> FloatArray:
        """The new global vector from a synchronous round's secure sum."""
        counts: dict[str, int] = {}
        for name, fut in futures.items():
            out = fut.result()
            if examples(out):
                counts[name] = examples(out)
            else:
                d.record(rnd, name, out)
        if len(counts) < max(2, d.spec.min_domains):
            answers = {n: f.result() for n, f in futures.items()}
            raise RoundFailed(_too_few(rnd, counts, answers, d.spec.min_domains)) from _first_error(answers)
        runs = {n: d.run_id(f"r{rnd}", n) for n in counts}
        total = self._sum(d, pool, f"r{rnd}", counts, runs)
        self._records(d, rnd, {n: (runs[n], futures[n].result(), 0) for n in counts}, total)
        if total is None:
            return d.vec
        if len(total.survivors) < d.spec.min_domains:
            raise RoundFailed(f"round {rnd}: {len(total.survivors)} domains survived secure aggregation, "
                              f"fewer than min_domains={d.spec.min_domains}")
        n = float(total.num_examples)
        return d.strategy.aggregate_sum(d.vec, total.mean * n, n, total_examples=n)

    def arrived(self, d: Driver, fl: Flight, out: Outcome) -> Buffered | None:
        """Keep a successful answer for its buffer's round (recorded after it); record a failure."""
        if examples(out):
            return Buffered(fl, None, out)
        d.record(d.done, fl.name, out, d.done - fl.version)
        return None

    def buffer(self, d: Driver, pool: Executor, batch: list[Buffered]) -> FloatArray:
        """One buffer's step by SecAgg+ over its members. The driver learns only
        ``sum_i w_i new_i`` (w_i: examples times staleness factor, signed in the round) and
        rebases it with the starts it sent: ``sum_i w_i (g + new_i - start_i)``, as FedBuff."""
        rnd = d.done
        counts = {b.flight.name: examples(b.outcome) for b in batch}
        factors = {b.flight.name: self._staleness_factor(d, b.flight.name, counts[b.flight.name],
                                                         rnd - b.flight.version) for b in batch}
        runs = {b.flight.name: b.flight.run_id for b in batch}
        total = self._sum(d, pool, f"a{rnd}", counts, runs, factors)
        self._records(d, rnd, {b.flight.name: (b.flight.run_id, b.outcome, rnd - b.flight.version)
                               for b in batch}, total)
        if total is None:
            return d.vec
        weight = total.total_weight
        rebased = total.mean * weight
        rebased += weight * d.vec
        for b in batch:
            if self.members[b.flight.name].secagg_id in total.survivors:
                rebased -= (counts[b.flight.name] * factors[b.flight.name]) * b.flight.start
        return d.strategy.aggregate_sum(d.vec, rebased, weight, total_examples=float(total.num_examples))

    def forget(self, d: Driver, fl: Flight) -> None:
        """Forget what a straggler or an unsummed buffer entry keeps."""
        self.members[fl.name].discard(fl.run_id)

    def _staleness_factor(self, d: Driver, name: str, count: int, staleness: int) -> float:
        """``strategy.weight`` over the examples: FedBuff's s(staleness), in
        [MIN_STALENESS_FACTOR, 1] (staler updates count as the floor, which members require)."""
        probe = ClientUpdate(np.zeros(1), count, name, staleness)
        return min(1.0, max(MIN_STALENESS_FACTOR, d.strategy.weight(probe) / count))

    def _sum(self, d: Driver, pool: Executor, tag: str, counts: dict[str, int], runs: dict[str, str],
             factors: dict[str, float] | None = None) -> SecureSum | None:
        """One SecAgg+ round over the kept results ``runs`` (domain -> run id), weighted by
        ``counts`` times ``factors``; None when it was abandoned (nothing was unmasked)."""
        ids = {n: self.members[n].secagg_id for n in runs}
        config = propose(round_id(f"{d.prefix}-{tag}"), {ids[n]: c for n, c in counts.items()}, d.vec.size,
                         self.bound, noise_std=self.noise,
                         staleness=None if factors is None else {ids[n]: f for n, f in factors.items()})
        peers: dict[str, SecAggPeer] = {ids[n]: self.members[n].secagg_peer(run) for n, run in runs.items()}
        try:
            return secure_sum(config, peers, executor=None if d.serial else pool)
        except RoundAbandoned as exc:  # the model stays as it was and training goes on
            warnings.warn(f"secure round {tag} abandoned: {exc}", RuntimeWarning, stacklevel=3)
            return None
        finally:
            for name, run in runs.items():
                self.members[name].discard(run, config.round_id)

    def _records(self, d: Driver, rnd: int, members: dict[str, tuple[str, Outcome, int]],
                 total: SecureSum | None) -> None:
        """Record each member (name -> run id, answer, staleness) of a secure round."""
        for name, (run, out, staleness) in members.items():
            if total is None:  # abandoned: charged all the same
                d.record(rnd, name, Outcome("failed", "secagg_abandoned", None, out.seconds, 0,
                                            out.bytes_down, out.epsilon), staleness)
                continue
            eps = self.members[name].charged(run, out.epsilon)  # after distributed noise
            if self.members[name].secagg_id in total.dropped:
                out = Outcome("failed", "secagg_dropped", None, out.seconds, 0, out.bytes_down, eps)
            else:
                out = Outcome(out.status, out.reason, out.update, out.seconds, 4 * d.vec.size,
                              out.bytes_down, eps)
            d.record(rnd, name, out, staleness)
