"""The two round loops: synchronous rounds and buffered asynchronous ones (FedBuff).

Each loop decides who runs when and on which model; the driver's summing object
(:mod:`fednb.scientist._summing`, plain or secure) turns answers into the new model, and
the driver (:mod:`fednb.scientist._driver`) keeps the model, the records and the
checkpoints. Neither loop knows whether summing is secure.
"""

from __future__ import annotations

import warnings
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from typing import TYPE_CHECKING, Any

from fednb.scientist._participants import Outcome
from fednb.scientist._summing import Buffered, Flight, RoundFailed
from fednb.typing import FloatArray

if TYPE_CHECKING:
    from fednb.scientist._driver import Driver

__all__ = ["MAX_FAILURES_IN_A_ROW", "AsyncLoop", "SyncLoop"]

MAX_FAILURES_IN_A_ROW = 3
"""An asynchronous run stops restarting a domain whose last this many runs failed."""


class SyncLoop:
    """Rounds one after another: sample, run every chosen participant, sum, step."""

    def run(self, d: Driver, pool: Executor, bar: Any) -> None:
        """Run the rounds left."""
        while d.done < d.spec.rounds:
            d.step(self.round(d, pool), bar)

    @staticmethod
    def round(d: Driver, pool: Executor) -> FloatArray:
        """One round's new global vector. Its answers (every update) are freed when it
        returns, before the next round's runs start: held on to by the loop, two rounds'
        updates were alive at once (peak memory), and the next round's updates went to
        memory no longer in the cache (about 10% of a round of 100 hospitals)."""
        rnd = d.done
        cfg = d.strategy.configure_round(rnd, d.spec.params)
        weights = d.weights()
        futures = {n: pool.submit(d.participants[n].run, weights, dict(cfg.params),
                                  d.run_id(f"r{rnd}", n), d.spec.timeout) for n in d.sample(cfg.fraction)}
        return d.summing.round(d, pool, rnd, futures)


class AsyncLoop:
    """Every participant restarts as soon as it answers; a full buffer is one aggregation.

    Updates are rebased onto the current model when their buffer is aggregated and
    weighted by their staleness. A participant whose last :data:`MAX_FAILURES_IN_A_ROW`
    runs failed is no longer restarted; when those left cannot fill a buffer the run
    raises :class:`RoundFailed` instead of waiting for ever.
    """

    def __init__(self) -> None:
        self.flights: dict[Future[Outcome], Flight] = {}
        self.seq: dict[str, int] = {}
        self.fails: dict[str, int] = {}
        self.buffer: list[Buffered] = []

    def launch(self, d: Driver, pool: Executor, name: str) -> None:
        """Start ``name`` on the current model."""
        cfg = d.strategy.configure_round(d.done, d.spec.params)
        self.seq[name] = self.seq.get(name, 0) + 1
        run = d.run_id(f"a{d.done}-{self.seq[name]}", name)
        fut = pool.submit(d.participants[name].run, d.weights(), dict(cfg.params), run, d.spec.timeout)
        self.flights[fut] = Flight(name, d.done, d.vec.copy(), run)

    def arrived(self, d: Driver, pool: Executor, fl: Flight, out: Outcome) -> None:
        """Buffer (or record) an answer and restart its participant unless it keeps failing:
        an answer counts as a failure unless its update was buffered (a run that failed, or
        whose update the driver dropped: NaN or infinity, another layout, no examples)."""
        kept = d.summing.arrived(d, fl, out)
        self.fails[fl.name] = 0 if kept is not None else self.fails.get(fl.name, 0) + 1
        if kept is not None:
            self.buffer.append(kept)
            if not d.summing.restarts_on_arrival:  # restarted once its buffer is summed
                return
        if self.fails[fl.name] >= MAX_FAILURES_IN_A_ROW:  # a dead or broken domain: not restarted
            why = d.history.records[-1].reason  # this answer's record, as arrived() made it
            warnings.warn(f"{fl.name} failed {self.fails[fl.name]} runs in a row ({why}); it is no "
                          "longer restarted in this asynchronous run", RuntimeWarning, stacklevel=4)
        elif d.done < d.spec.rounds:
            self.launch(d, pool, fl.name)

    def run(self, d: Driver, pool: Executor, bar: Any) -> None:
        """Run the aggregations left."""
        k = d.spec.buffer_size
        for name in sorted(d.participants):
            self.launch(d, pool, name)
        while d.done < d.spec.rounds and self.flights:
            finished, _ = wait(list(self.flights), return_when=FIRST_COMPLETED)
            for fut in finished:
                self.arrived(d, pool, self.flights.pop(fut), fut.result())
            while len(self.buffer) >= k and d.done < d.spec.rounds:
                batch, self.buffer = self.buffer[:k], self.buffer[k:]
                d.step(d.summing.buffer(d, pool, batch), bar)
                if not d.summing.restarts_on_arrival and d.done < d.spec.rounds:
                    for b in batch:  # from the new model
                        self.launch(d, pool, b.flight.name)
        stopped = d.done < d.spec.rounds  # every domain stopped before the buffers could fill
        self.settle(d)
        if stopped:
            raise RoundFailed(f"the asynchronous run stopped after {d.done} of {d.spec.rounds} "
                              f"aggregations: domains that failed {MAX_FAILURES_IN_A_ROW} runs in a row are "
                              f"not restarted, and those left cannot fill a buffer of {k}; see "
                              "history.metrics.status")

    def settle(self, d: Driver) -> None:
        """Stragglers of the last round finish unheard; what they and the buffer keep is forgotten."""
        for fut, fl in self.flights.items():
            if not fut.cancel():  # already running: forget what it keeps once it is done
                fut.add_done_callback(lambda _, fl=fl: d.summing.forget(d, fl))  # type: ignore[misc]
        for b in self.buffer:  # kept updates no round took
            d.summing.forget(d, b.flight)
