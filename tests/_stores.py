"""The stores the domain runs on in tests: SQLite files, and a throwaway PostgreSQL cluster.

The cluster is Debian's ``postgresql`` (``scripts/test-deps.sh`` installs it): ``initdb``
and ``pg_ctl`` run as an unprivileged user (``postgres``, else ``nobody``, when the tests
run as root) into a fresh directory under /tmp; the server listens on a unix socket in
that directory only (no TCP), trusts its local users, and skips fsync (nothing in it
outlives the test run). Every domain gets a database of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PostgresCluster", "execute_sql", "find_postgres"]

_SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "400",
    "shared_buffers": "64MB",
}


def find_postgres() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb, or initdb on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


class PostgresCluster:
    """A PostgreSQL server on a unix socket in a temporary directory.

    Use as a context manager: ``with PostgresCluster(bindir) as pg: url = pg.new_database()``.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fednb-pg-"))
        self.data, self.socket = self.root / "data", self.root
        self._names = itertools.count(1)
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb refuses root; run the server as an ordinary user
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pw = pwd.getpwnam("nobody")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
                        "env": {"PATH": "/usr/bin:/bin", "HOME": str(self.root), "LC_ALL": "C"}}
        os.chmod(self.root, 0o700)

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([str(self.bindir / tool), *args], check=True, capture_output=True,
                       cwd=self.root, timeout=120, **self._as)

    def start(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-U", "fednb", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        opts = " ".join([f"-k {self.socket}", *(f"-c {k}={v}" for k, v in _SETTINGS.items())])
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of one database of this cluster."""
        return f"postgresql+psycopg://fednb@/{database}?host={self.socket}"

    def new_database(self) -> str:
        """Create an empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"domain_{next(self._names)}"
        with psycopg.connect(host=str(self.socket), user="fednb", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return self.url(name)


def execute_sql(url: str, statement: str) -> None:
    """Run one statement on a domain's store behind its back (another process's writer,
    an attacker with database access), committing it."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.split("///", 1)[1])) as db, db:
            db.execute(statement)
        return
    import psycopg

    with psycopg.connect(libpq_conninfo(url), autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def libpq_conninfo(url: str) -> str:
    """A libpq connection string for a SQLAlchemy ``postgresql+psycopg://`` URL."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts = {"dbname": u.database, "user": u.username, "host": u.query.get("host") or u.host,
             "port": u.port, "password": u.password}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)
