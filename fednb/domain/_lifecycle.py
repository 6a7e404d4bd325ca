"""The lifecycle of runs, releases and charges: the one place their states and moves live.

Three state machines, each an enumeration and one table of allowed transitions:

- a run: ``queued → running → succeeded | failed | refused | timeout | killed``; a run the
  domain was running when it stopped ends ``failed`` (``domain_restarted``) and may be
  queued again under the same id;
- its result's release: none, then ``held`` (waiting for the owner), ``released``,
  ``secagg`` (kept to leave only masked, in a secure round), ``masked`` (sent masked and
  deleted) or ``withheld`` (deleted by the owner);
- its privacy charge: ``reserved`` when the run is queued, ``committed`` when the run ends
  (whatever its outcome, for a DP run), ``freed`` only when the domain stopped before the
  run released anything.

And what a scientist may see of a DP run (:func:`scientist_view`): the outcome they see is
a function of the approved request and the noised release alone. Every DP run looks like a
success (a failure released the data-independent default, see
:func:`fednb.runtime.release`), and it becomes visible at its scheduled time
(``release_at``: the run's creation plus the approved slot), not when it ended; the real
status, reason and times are the owner's.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime, timedelta
from typing import Any

from fednb.domain._store import RunRow
from fednb.errors import Conflict
from fednb.protocol import RunInfo

__all__ = [
    "RELEASE_MOVES",
    "RUN_MOVES",
    "Charge",
    "Release",
    "Run",
    "check_move",
    "is_dp",
    "scientist_view",
    "visible_at",
]


class Run(str, enum.Enum):
    """A run's (real) status."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    KILLED = "killed"


class Release(str, enum.Enum):
    """Where a run's result stands."""

    HELD = "held"
    RELEASED = "released"
    SECAGG = "secagg"
    MASKED = "masked"
    WITHHELD = "withheld"


class Charge(str, enum.Enum):
    """A run's privacy charge on the ledger."""

    RESERVED = "reserved"
    COMMITTED = "committed"
    FREED = "freed"


DONE: frozenset[str] = frozenset({Run.SUCCEEDED, Run.FAILED, Run.REFUSED, Run.TIMEOUT, Run.KILLED})
"""Statuses a run ends in."""

RUN_MOVES: dict[str | None, frozenset[str]] = {
    None: frozenset({Run.QUEUED}),
    Run.QUEUED: frozenset({Run.RUNNING, Run.FAILED}),  # failed: the domain stopped first
    Run.RUNNING: frozenset(DONE),
    Run.FAILED: frozenset({Run.QUEUED}),  # only a run the domain's restart failed (requeue)
    Run.SUCCEEDED: frozenset(), Run.REFUSED: frozenset(), Run.TIMEOUT: frozenset(), Run.KILLED: frozenset(),
}

RELEASE_MOVES: dict[str | None, frozenset[str]] = {
    None: frozenset({Release.HELD, Release.RELEASED, Release.SECAGG}),
    Release.HELD: frozenset({Release.RELEASED, Release.SECAGG, Release.WITHHELD}),
    Release.SECAGG: frozenset({Release.MASKED}),
    Release.RELEASED: frozenset(), Release.MASKED: frozenset(), Release.WITHHELD: frozenset(),
}

CHARGE_MOVES: dict[str | None, frozenset[str]] = {
    None: frozenset({Charge.RESERVED}),
    Charge.RESERVED: frozenset({Charge.COMMITTED, Charge.FREED}),
    Charge.FREED: frozenset({Charge.RESERVED}),  # a run queued again after a restart
    Charge.COMMITTED: frozenset(),
}

_TABLES = {"run": RUN_MOVES, "release": RELEASE_MOVES, "charge": CHARGE_MOVES}


def check_move(what: str, old: str | None, new: str) -> str:
    """``new`` if the ``what`` ("run", "release" or "charge") may move from ``old`` to it,
    else :class:`~fednb.errors.Conflict` naming both."""
    old_s, new_s = _plain(old), _plain(new)
    if new_s not in _TABLES[what].get(old_s, frozenset()):
        raise Conflict(f"a {what} cannot move from {old_s or 'nothing'} to {new_s}")
    return str(new_s)


def _plain(state: str | None) -> str | None:
    """A state as the plain string the store keeps (``str()`` of a str-mixin enum member is
    its qualified name, not its value)."""
    return state.value if isinstance(state, enum.Enum) else state


def is_dp(row: RunRow) -> bool:
    """True for a run of a DP request: it has a release schedule."""
    return row.release_at is not None


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=datetime.now().astimezone().tzinfo)


def visible_at(row: RunRow) -> datetime | None:
    """When a scientist may see a finished DP run: its scheduled ``release_at``, or, for one
    the domain could only finish later (a query that overran its slot), the first multiple of
    the slot after it ended. None while the run has not ended."""
    if row.release_at is None or row.finished is None:
        return None
    due, done = _aware(row.release_at), _aware(row.finished)
    if done <= due:
        return due
    slot = (due - _aware(row.created)).total_seconds()
    late = (done - due).total_seconds()
    return due + timedelta(seconds=slot * math.ceil(late / slot)) if slot > 0 else done


def _public(row: RunRow) -> dict[str, Any]:
    fields = {c: getattr(row, c) for c in RunInfo.model_fields}
    fields["owner_log"] = fields["backend"] = None  # the job's report: code could spell data into it
    return fields


def scientist_view(row: RunRow, now: datetime, num_examples: int) -> RunInfo:
    """The run as its scientist sees it.

    A run without DP shows its real status and reason codes (its result is held for the
    owner's review anyway). A DP run shows ``running`` until its scheduled time, then
    ``succeeded``/``ok`` with ``finished`` at that time, the public example count and its
    release state, whatever really happened; a run the domain's restart interrupted shows
    that (a fact about the domain, not the data), and a ``compression_overflow`` refusal
    shows at the scheduled time (whether float16 overflows is a function of the noised
    release alone).
    """
    fields = _public(row)
    if not is_dp(row) or (row.status == Run.FAILED and row.reason == "domain_restarted"):
        return RunInfo.model_validate(fields)
    shown = visible_at(row)
    if shown is None or now < shown:
        fields.update(status=Run.RUNNING.value, reason=None, finished=None, release_state=None,
                      num_examples=None)
    elif row.reason == "compression_overflow":
        fields.update(finished=shown)
    else:
        fields.update(status=Run.SUCCEEDED.value, reason="ok", finished=shown, num_examples=num_examples)
    return RunInfo.model_validate(fields)
