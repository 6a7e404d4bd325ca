"""The HMAC-chained audit log.

Each entry's MAC covers its content and the previous entry's MAC, under a key kept in a
0600 file outside the database. The last (seq, MAC) is also written to ``audit.head``
beside it, so deleting entries from the end of the table is detected too; and the domain
refuses to append to a log that no longer holds that head, since the new entries would
move the head past the gap and hide it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fednb.domain._store import AuditRow, Store, utcnow
from fednb.errors import InternalError

__all__ = ["AuditLog", "AuditReport"]

_GENESIS = "0" * 64
_log = logging.getLogger("fednb.domain")


@dataclass(frozen=True)
class AuditReport:
    """The outcome of :meth:`AuditLog.verify`."""

    ok: bool
    entries: int
    problems: list[str]

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain OK: {self.entries} entries"
        return "audit chain BROKEN:\n" + "\n".join(f"  - {p}" for p in self.problems)


def _write_private(path: Path, data: bytes) -> None:
    # a temporary name of this writer's own: the server and the owner's CLI may publish at once
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AuditLog:
    """Append and verify entries; the key lives in ``key_path`` (created 0600)."""

    def __init__(self, store: Store, key_path: Path, head_path: Path) -> None:
        self.store, self.head_path = store, head_path
        if not key_path.exists():
            _write_private(key_path, secrets.token_bytes(32))
        self._key = key_path.read_bytes()

    def _mac(self, seq: int, ts: str, actor: str, action: str, details: str, prev: str) -> str:
        msg = json.dumps([seq, ts, actor, action, details, prev], separators=(",", ":"))
        return hmac.new(self._key, msg.encode(), hashlib.sha256).hexdigest()

    def append(self, s: Session, actor: str, action: str, **details: Any) -> AuditRow:
        """Add an entry inside the caller's transaction (callers hold the domain's write lock).

        Raises
        ------
        InternalError
            If the database no longer holds the published head (entries were deleted from
            its end): extending the chain would move the head past the gap and hide it.
        """
        head = self.head()  # before the query: a published head's row is committed, so visible
        last = s.execute(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1)).scalar()
        self._check_head(s, head, last)
        seq = 1 if last is None else last.seq + 1
        prev = _GENESIS if last is None else last.mac
        ts = utcnow().isoformat()
        body = json.dumps(details, sort_keys=True, default=str)
        row = AuditRow(seq=seq, ts=ts, actor=actor, action=action, details=body, prev=prev,
                       mac=self._mac(seq, ts, actor, action, body, prev))
        s.add(row)
        s.flush()
        return row

    def _check_head(self, s: Session, head: dict[str, Any] | None, last: AuditRow | None) -> None:
        """Refuse to extend a chain that lost its published head.

        Someone with write access to the database alone can delete entries from its end;
        ``verify`` sees that only while the head file still points past the new end. If
        the next entry were appended, the head would move on and the gap would vanish, so
        the domain stops writing instead, and stays detectably broken until its owner
        restores the database.
        """
        if head is None and last is None:  # a new log: the first entry publishes the first head
            return
        seq = None if head is None else head.get("seq")
        row = s.get(AuditRow, seq) if isinstance(seq, int) and not isinstance(seq, bool) else None
        if head is not None and row is not None and \
                hmac.compare_digest(row.mac.encode(), str(head.get("mac")).encode()):
            return
        why = ("the published head (audit.head) is missing or unreadable" if head is None else
               f"the database no longer holds the published head, entry {seq}: entries were "
               "deleted from the end of the log" if row is None else
               f"entry {seq} differs from the published head: the log was rewritten")
        _log.critical("audit log tampered with: %s; refusing to write", why)
        raise InternalError(f"the domain's audit log was tampered with ({why}); it refuses to "
                            "record anything more until its owner runs `fednb domain audit --verify` "
                            "and restores the database from a backup")

    def publish_head(self, row: AuditRow) -> None:
        """Record the last entry outside the database (after its transaction committed).

        Writers in several processes commit in one order but may publish in another: the
        head only moves forward, under a lock file beside it.
        """
        lock = os.open(self.head_path.with_name(self.head_path.name + ".lock"),
                       os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            head = self.head()
            if head is None or not isinstance(head.get("seq"), int) or head["seq"] < row.seq:
                _write_private(self.head_path, json.dumps({"seq": row.seq, "mac": row.mac}).encode())
        finally:
            os.close(lock)

    def head(self) -> dict[str, Any] | None:
        """The published head: ``{"seq": ..., "mac": ...}`` or None."""
        try:
            return dict(json.loads(self.head_path.read_text()))
        except (OSError, ValueError):
            return None

    def entries(self, limit: int | None = None) -> list[AuditRow]:
        """Entries, newest first."""
        with self.store.session() as s:
            q = select(AuditRow).order_by(AuditRow.seq.desc())
            return list(s.execute(q.limit(limit) if limit else q).scalars())

    def verify(self) -> AuditReport:
        """Recompute the chain; report edits, deletions, reordering and truncation."""
        problems: list[str] = []
        prev, expect, rows = _GENESIS, 1, self.entries()[::-1]
        for r in rows:
            if r.seq != expect:
                problems.append(f"entry {expect} is missing (next present is {r.seq})")
            if r.prev != prev:
                problems.append(f"entry {r.seq} does not link to the entry before it")
            if not hmac.compare_digest(
                r.mac, self._mac(r.seq, r.ts, r.actor, r.action, r.details, r.prev)
            ):
                problems.append(f"entry {r.seq} ({r.action}) was altered")
            prev, expect = r.mac, r.seq + 1
        head = self.head()
        if head is not None:
            match = [r for r in rows if r.seq == head.get("seq")]
            if not match:
                problems.append(f"the log ends before the published head (entry {head.get('seq')}):"
                                " entries were truncated")
            elif match[0].mac != head.get("mac"):
                problems.append(f"entry {match[0].seq} differs from the published head")
        elif rows:
            problems.append("the published head file is missing")
        return AuditReport(not problems, len(rows), problems)
