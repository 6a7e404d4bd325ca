"""The domain's store: SQLAlchemy tables on SQLite (default) or PostgreSQL (by URL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

__all__ = ["AuditRow", "Base", "BudgetRow", "ChargeRow", "DatasetRow", "RequestRow", "RunRow",
           "SettingRow", "Store", "UserRow", "is_busy", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend: SQLite drops the offset that
    ``DateTime(timezone=True)`` keeps on PostgreSQL, so it is put back on reading (the API
    promises RFC 3339 date-times, which carry one)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Str(TypeDecorator[str]):
    """``String(length)`` that every backend can store.

    PostgreSQL's text types cannot hold NUL (U+0000), which SQLite keeps and which free
    text (an untrusted job's log, a description) or a hostile id in a URL may carry: on
    PostgreSQL a NUL is stored as U+FFFD, so such text is kept and a lookup by such a key
    finds nothing, as on SQLite, instead of failing the call.
    """

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is not None and dialect.name == "postgresql" and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


class LongText(Str):
    """``Text`` that every backend can store (see :class:`Str`)."""

    impl = Text


class Base(DeclarativeBase):
    pass


class UserRow(Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(Str(64), primary_key=True)
    role: Mapped[str] = mapped_column(Str(16))
    token_hash: Mapped[str] = mapped_column(Str(64), unique=True, index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class DatasetRow(Base):
    __tablename__ = "datasets"
    name: Mapped[str] = mapped_column(Str(64), primary_key=True)
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RequestRow(Base):
    __tablename__ = "requests"
    id: Mapped[str] = mapped_column(Str(64), primary_key=True)
    scientist: Mapped[str] = mapped_column(ForeignKey("users.name"), index=True)
    function_name: Mapped[str] = mapped_column(Str(64), index=True)
    kind: Mapped[str] = mapped_column(Str(16))
    source: Mapped[str] = mapped_column(LongText())
    code_hash: Mapped[str] = mapped_column(Str(64))
    datasets: Mapped[list[str]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    runs: Mapped[int] = mapped_column(Integer)
    runs_used: Mapped[int] = mapped_column(Integer, default=0)
    dp: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    description: Mapped[str] = mapped_column(LongText(), default="")
    status: Mapped[str] = mapped_column(Str(16), default="pending", index=True)
    release: Mapped[str | None] = mapped_column(Str(16), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(Str(64), nullable=True)
    review_reason: Mapped[str | None] = mapped_column(LongText(), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reviewed: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # a DP request's release slot (seconds from a run's creation to its scheduled release)
    slot_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(Str(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id"), index=True)
    scientist: Mapped[str] = mapped_column(Str(64), index=True)
    dataset: Mapped[str] = mapped_column(Str(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(Str(16), default="queued")
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(Str(32), nullable=True)
    num_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    release_state: Mapped[str | None] = mapped_column(Str(16), nullable=True, index=True)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    owner_log: Mapped[str | None] = mapped_column(LongText(), nullable=True)
    backend: Mapped[str | None] = mapped_column(Str(32), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # a DP run's scheduled release: its creation plus the approved slot (None without DP)
    release_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BudgetRow(Base):
    """A scientist's epsilon budget on one dataset ("*": on every dataset)."""

    __tablename__ = "budgets"
    scientist: Mapped[str] = mapped_column(Str(64), primary_key=True)
    dataset: Mapped[str] = mapped_column(Str(64), primary_key=True)
    epsilon: Mapped[float] = mapped_column(Float)


class ChargeRow(Base):
    """One run's privacy charge: reserved before it runs, committed with its release."""

    __tablename__ = "charges"
    run_id: Mapped[str] = mapped_column(Str(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(Str(64), index=True)
    scientist: Mapped[str] = mapped_column(Str(64), index=True)
    dataset: Mapped[str] = mapped_column(Str(64), index=True)
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(Str(16), index=True)  # reserved | committed | freed
    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SettingRow(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(Str(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class AuditRow(Base):
    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(Str(40))
    actor: Mapped[str] = mapped_column(Str(64))
    action: Mapped[str] = mapped_column(Str(64), index=True)
    details: Mapped[str] = mapped_column(LongText())
    prev: Mapped[str] = mapped_column(Str(64))
    mac: Mapped[str] = mapped_column(Str(64))


BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for a lock before the call fails as busy
# PostgreSQL's counterpart of SQLite's database write lock: a transaction-scoped advisory
# lock (per database) that every write transaction takes first. The number is arbitrary
# but fixed: every process writing to one domain's database must agree on it.
WRITE_LOCK_KEY = 0x66656E6201  # "fednb" 1
# SQLSTATEs of PostgreSQL errors that mean "try again": lock_not_available (lock_timeout),
# serialization_failure, deadlock_detected, cannot_connect_now (starting up), too_many_connections
_BUSY_SQLSTATES = frozenset({"55P03", "40001", "40P01", "57P03", "53300"})


def is_busy(exc: BaseException) -> bool:
    """True when a store error is transient (a held lock, a full pool): the caller may retry."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _BUSY_SQLSTATES:
        return True
    msg = str(orig).lower()
    return "database is locked" in msg or "database is busy" in msg or "database table is locked" in msg


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # busy_timeout first: any later statement on a fresh connection may meet a held lock.
    # journal_mode=WAL is set once in Store() (it persists in the file); setting it on every
    # new connection needs a lock and failed at once ("database is locked") under load.
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against process crashes
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _autocommit_driver(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _begin_immediate)


def _begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres_options() -> dict[str, Any]:
    # READ COMMITTED, whatever the server's default: each statement of a write transaction
    # sees what every writer before it committed, once it holds the write lock (under
    # REPEATABLE READ the snapshot would predate the wait for the lock). lock_timeout turns
    # a writer stuck behind a held lock into a "busy" error, like SQLite's busy_timeout.
    return {"isolation_level": "READ COMMITTED", "pool_pre_ping": True,
            "connect_args": {"options": f"-c lock_timeout={int(BUSY_TIMEOUT_MS)}"}}


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a newer fednb defines to a store an older one made
    (``create_all`` makes missing tables only); every such column starts NULL."""
    have = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            if not have.has_table(table.name):
                continue
            present = {c["name"] for c in have.get_columns(table.name)}
            for col in table.columns:
                if col.name not in present and col.nullable:
                    kind = col.type.compile(dialect=engine.dialect)
                    conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {kind}')


class Store:
    """Sessions on the domain's database; ``url`` defaults to a SQLite file.

    Write transactions (:meth:`write`) are serialised across every process that writes the
    database (the server and the owner's CLI): on SQLite they begin with ``BEGIN
    IMMEDIATE``; on PostgreSQL they first take a transaction-scoped advisory lock
    (``pg_advisory_xact_lock``). Either way a writer that meets a held lock waits up to
    :data:`BUSY_TIMEOUT_MS` and then fails as busy (:func:`is_busy`) instead of failing
    halfway, and reads stay concurrent. One writer at a time is what the ledger (exactly k
    runs fit a k-run budget: a reservation reads the charges, then adds one) and the audit
    chain (each entry links to the last) need; write transactions are short.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        sqlite = url.startswith("sqlite")
        self.postgres = url.startswith("postgresql")
        # Opening connections under load is slow (a fork per connection on PostgreSQL): keep
        # a pool as large as the server's thread pool so bursts reuse connections.
        opts: dict[str, Any] = {"pool_size": 16, "max_overflow": 48}
        if self.postgres:
            opts.update(_postgres_options())
        elif not sqlite:
            opts = {"pool_pre_ping": True}
        self.engine: Engine = create_engine(url, **opts)
        self.write_engine: Engine = self.engine
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            self.write_engine = create_engine(url, **opts)
            event.listen(self.write_engine, "connect", _sqlite_pragmas)
            event.listen(self.write_engine, "connect", _autocommit_driver)
            event.listen(self.write_engine, "begin", _begin_immediate)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self.write_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction that holds the database's write lock from its start."""
        with self._writes() as s, s.begin():
            if self.postgres:
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK_KEY})
            yield s

    def close(self) -> None:
        self.engine.dispose()
        self.write_engine.dispose()
