"""The privacy ledger: budgets per (scientist, dataset), a cap per dataset, charges.

Every release is a DP event stored as JSON. Spent epsilon is recomputed by composing the
events with the accountant (PLD), never by adding epsilons. A run reserves its charge
inside the same write transaction that reserves the run, so concurrent runs cannot
overspend. A DP run's charge is committed when the run ends, whatever its outcome (a run
that failed released its data-independent default), and stays committed when the owner
withholds the result (the scientist learns of that decision, which may depend on the
values); it is freed only when the domain stopped before the run released anything.
A scientist sees reserved and committed charges as one figure (``epsilon_spent``), so the
moment a run's charge moves from one to the other tells nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fednb.domain._store import BudgetRow, ChargeRow, RequestRow, utcnow
from fednb.errors import InvalidInput, RunRefused
from fednb.privacy import Event, accountant_for, event_from_json
from fednb.protocol import BudgetInfo, DatasetCard
from fednb.runtime import kind_of

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["Ledger"]

_LIVE = ("reserved", "committed")


class Ledger:
    """``dom.ledger``: budgets, charges and the epsilon they add up to."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain
        self.accountant = accountant_for("pld")

    # -- parameters ------------------------------------------------------------------
    def delta(self, card: DatasetCard) -> float:
        """The domain's delta for a dataset: the policy's, else min(1e-6, 1/(10 n))."""
        policy = self._d.policy.get().delta
        return policy if policy is not None else min(1e-6, 1.0 / (10 * max(card.num_examples, 1)))

    def run_event(self, req: RequestRow, dataset: str | None = None) -> Event | None:
        """The DP event one run of ``req`` on ``dataset`` (default: its first) releases;
        None for a no-DP request. A DP-SGD run's event depends on the dataset's size."""
        from fednb.domain._kinds import kind_event

        return kind_event(self._d, req, dataset or req.datasets[0])

    def has_charges(self) -> bool:
        """True once any privacy charge was ever recorded (then delta is frozen)."""
        with self._d.store.session() as s:
            return s.execute(select(ChargeRow.run_id).limit(1)).first() is not None

    def epsilon(self, events: list[Event], card: DatasetCard) -> float:
        return 0.0 if not events else float(self.accountant.epsilon(events, self.delta(card)))

    # -- budgets ---------------------------------------------------------------------
    def set_budget(self, s: Session, scientist: str, epsilon: float, dataset: str = "*") -> None:
        if not epsilon >= 0:
            raise InvalidInput(f"an epsilon budget is a number >= 0, not {epsilon!r}")
        row = s.get(BudgetRow, (scientist, dataset))
        if row is None:
            s.add(BudgetRow(scientist=scientist, dataset=dataset, epsilon=float(epsilon)))
        else:
            row.epsilon = float(epsilon)

    def budget(self, s: Session, scientist: str, dataset: str) -> float | None:
        row = s.get(BudgetRow, (scientist, dataset)) or s.get(BudgetRow, (scientist, "*"))
        return None if row is None else row.epsilon

    def _events(self, s: Session, dataset: str, scientist: str | None = None,
                states: tuple[str, ...] = _LIVE) -> list[Event]:
        q = select(ChargeRow.event).where(ChargeRow.dataset == dataset, ChargeRow.state.in_(states))
        if scientist is not None:
            q = q.where(ChargeRow.scientist == scientist)
        return [event_from_json(e) for e in s.execute(q).scalars()]

    # -- charges ---------------------------------------------------------------------
    def reserve(self, s: Session, run_id: str, req: RequestRow, dataset: str, event: Event) -> float:
        """Reserve ``event`` for ``run_id`` or raise RunRefused; returns the pair's epsilon after."""
        card = self._d.card(dataset)
        budget = self.budget(s, req.scientist, dataset)
        if budget is None:
            raise RunRefused(f"{req.scientist!r} has no privacy budget on {dataset!r}; the owner "
                             "sets one with add_user(..., epsilon=...) or set_budget")
        after = self.epsilon([*self._events(s, dataset, req.scientist), event], card)
        if after > budget + 1e-9:
            raise RunRefused(f"this run would bring {req.scientist!r} to epsilon {after:.3f} on "
                             f"{dataset!r}, over the budget of {budget:g}")
        cap = self._d.policy.get().dataset_epsilon_cap
        if cap is not None:
            total = self.epsilon([*self._events(s, dataset), event], card)
            if total > cap + 1e-9:
                raise RunRefused(f"this run would bring dataset {dataset!r} to epsilon {total:.3f}, "
                                 f"over its cap of {cap:g}")
        freed = s.get(ChargeRow, run_id)  # a run queued again after a crash freed its charge
        if freed is not None and freed.state == "freed":
            # queued again, perhaps on another of the request's datasets: charge that one
            freed.event, freed.state, freed.updated = event.to_json(), "reserved", utcnow()
            freed.dataset, freed.scientist, freed.request_id = dataset, req.scientist, req.id
        else:
            s.add(ChargeRow(run_id=run_id, request_id=req.id, scientist=req.scientist, dataset=dataset,
                            event=event.to_json(), state="reserved"))
        return after

    def settle(self, s: Session, run_id: str, state: str) -> bool:
        """Move a reserved charge to ``committed`` or ``freed``; False if there is none."""
        row = s.get(ChargeRow, run_id)
        if row is None or row.state != "reserved":
            return False
        row.state, row.updated = state, utcnow()
        return True

    def lowers(self, s: Session, run_id: str, event: Event) -> bool:
        """Whether charging ``event`` instead of ``run_id``'s charge lowers both the scientist's
        epsilon and the dataset's on the ledger (composition is not additive: checked whole)."""
        row = s.get(ChargeRow, run_id)
        if row is None or row.state not in _LIVE:
            return False
        card, old = self._d.card(row.dataset), event_from_json(row.event)
        for who in (row.scientist, None):
            events = self._events(s, row.dataset, who)
            events.remove(old)
            if self.epsilon([*events, event], card) >= self.epsilon([*events, old], card):
                return False
        return True

    def rebook(self, s: Session, run_id: str, event: Event) -> float:
        """Charge ``event`` for ``run_id`` in place of its charge (which :meth:`lowers` approved);
        returns the scientist's epsilon after on the run's dataset."""
        row = s.get(ChargeRow, run_id)
        assert row is not None
        row.event, row.updated = event.to_json(), utcnow()
        return self.epsilon(self._events(s, row.dataset, row.scientist), self._d.card(row.dataset))

    def free_interrupted(self, s: Session, run_ids: list[str]) -> int:
        """Free the charges of runs a crash interrupted (nothing of them was released)."""
        n = 0
        for rid in run_ids:
            n += self.settle(s, rid, "freed")
        return n

    # -- reports ---------------------------------------------------------------------
    def info(self, scientist: str, dataset: str, *, owner: bool = True) -> BudgetInfo:
        """One (scientist, dataset) pair's budget. ``owner=False`` (the scientist's own
        view) reports reserved charges as spent: when a charge is committed is a run's end,
        which a DP run's scientist must not see before its scheduled release."""
        card = self._d.card(dataset)
        with self._d.store.session() as s:
            budget = self.budget(s, scientist, dataset)
            committed = self.epsilon(self._events(s, dataset, scientist, ("committed",)), card)
            live = self.epsilon(self._events(s, dataset, scientist), card)
            total = self.epsilon(self._events(s, dataset), card)
        cap = self._d.policy.get().dataset_epsilon_cap
        if not owner:
            committed = live
        return BudgetInfo(
            scientist=scientist, dataset=dataset, delta=self.delta(card), epsilon_budget=budget,
            epsilon_spent=committed, epsilon_reserved=max(live - committed, 0.0),
            epsilon_remaining=None if budget is None else max(budget - live, 0.0),
            dataset_cap=cap, dataset_spent=total,
            dataset_remaining=None if cap is None else max(cap - total, 0.0))

    def summary(self, scientist: str | None = None) -> list[BudgetInfo]:
        """Budgets of every (scientist, dataset) pair, or of one scientist's."""
        from fednb.domain._store import UserRow

        with self._d.store.session() as s:
            users = [u.name for u in s.execute(select(UserRow).where(UserRow.role == "scientist"))
                     .scalars() if scientist in (None, u.name)]
        return [self.info(u, c.name, owner=scientist is None) for u in users for c in self._d.datasets()]

    def projected(self, req: RequestRow) -> dict[str, Any]:
        """What the owner sees at review: epsilon per run and for all approved runs; nothing
        for a request without DP (charged nothing)."""
        from fednb.privacy import RepeatedEvent

        kind = kind_of(req.kind)
        if not kind.is_dp(kind.spec(req.source, req.dp)):
            return {}
        # the dataset where one run costs most: DP-SGD's cost depends on the dataset's size
        costs = []
        for name in req.datasets:
            event, card = self.run_event(req, name), self._d.card(name)
            assert event is not None
            costs.append((self.epsilon([event], card), name, event, card))
        per_run, name, event, card = max(costs, key=lambda c: c[0])
        return {"delta": self.delta(card), "epsilon_per_run": per_run,
                "projected_epsilon": self.epsilon([RepeatedEvent(event, req.runs)], card),
                "budget": self.info(req.scientist, name),
                "slot_s": self.slot(req)}

    def slot(self, req: RequestRow) -> float:
        """A DP request's release slot: the approval's, else the request's, else the policy's."""
        return float(req.slot_s) if req.slot_s is not None else self._d.policy.get().dp_slot_s
