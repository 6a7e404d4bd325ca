"""``Domain``: a hospital's datasite on disk, its owner's Python API, and its server."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xarray as xr
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fednb.domain import _datasets as dsets
from fednb.domain import _users as users
from fednb.domain._audit import AuditLog, AuditReport
from fednb.domain._kinds import request_kind
from fednb.domain._ledger import Ledger
from fednb.domain._policy import Policy, PolicyView
from fednb.domain._requests import RequestBook
from fednb.domain._runs import RunBook
from fednb.domain._secagg import PeerBook, SecAggDesk
from fednb.domain._store import AuditRow, DatasetRow, RequestRow, RunRow, SettingRow, Store, UserRow
from fednb.domain.runner import JobRunner, Limits, SandboxMode, WorkerPool, bwrap_available
from fednb.errors import Conflict, InvalidInput, NotFound
from fednb.privacy import SecureNoise
from fednb.protocol import BudgetInfo, DatasetCard, MockInfo, Role, UserInfo
from fednb.secagg import Identity

if TYPE_CHECKING:
    from fednb.domain._server import Server

__all__ = ["Domain"]

_MANIFEST = "domain.json"


@dataclass
class _Tx:
    s: Session
    domain: Domain
    rows: list[AuditRow] = field(default_factory=list)

    def log(self, actor: str, action: str, **details: Any) -> None:
        self.rows.append(self.domain.audit.append(self.s, actor, action, **details))


class Domain:
    """A hospital's domain: its home directory, store, datasets, users and policy.

    Create one with :meth:`create` or open one with :meth:`open`; never call the
    constructor directly.

    Examples
    --------
    >>> dom = Domain.create("st-mary/", name="St Mary")       # doctest: +SKIP
    >>> token = dom.add_user("alice", role="scientist")      # doctest: +SKIP
    >>> server = dom.serve(port=0)                           # doctest: +SKIP
    """

    def __init__(self, home: Path, manifest: dict[str, Any], store_url: str | None,
                 dask_address: str | None = None) -> None:
        self.home = home
        self.name: str = manifest["name"]
        self.domain_id: str = manifest["domain_id"]
        self.dask_address: str | None = dask_address or manifest.get("dask_address")
        if self.dask_address is not None:
            from fednb.domain.runner._dask import check_scheduler_address

            check_scheduler_address(self.dask_address)  # before anything is written
        self.store = Store(store_url or manifest.get("store_url") or
                           f"sqlite:///{home / 'store.sqlite'}")
        self.audit = AuditLog(self.store, home / "audit.key", home / "audit.head")
        self.policy = PolicyView(self)
        self.requests = RequestBook(self)
        self.runs = RunBook(self)
        self.ledger = Ledger(self)
        self.peers = PeerBook(self)
        self.secagg = SecAggDesk(self)
        self._identity: Identity | None = None
        self._noise = threading.local()
        self.sandbox_mode: SandboxMode | None = None
        self._lock = threading.RLock()
        self._pool: JobRunner | None = None
        self._exec: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None

    # -- lifecycle -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], name: str, *, store_url: str | None = None,
               dask_address: str | None = None, exist_ok: bool = False) -> Domain:
        """Make a new domain home at ``path`` (0700) and return the open domain.

        Parameters
        ----------
        store_url
            SQLAlchemy URL of the store (default: SQLite in the home), e.g.
            ``postgresql+psycopg://fednb@db.example/st_mary`` (``pip install 'fednb[postgres]'``).
        dask_address
            Address of a Dask scheduler whose workers run this domain's jobs, each in the
            same sandbox (``pip install 'fednb[dask]'``); they must see the domain home at
            the same path. ``tcp://`` only on loopback; beyond it ``tls://`` (whoever
            reaches the scheduler runs code beside the data). Default: local processes.
        """
        if dask_address is not None:
            from fednb.domain.runner._dask import check_scheduler_address

            check_scheduler_address(dask_address)
        home = Path(path).expanduser().resolve()
        if (home / _MANIFEST).exists():
            if exist_ok:
                return cls.open(home, store_url=store_url, dask_address=dask_address)
            raise Conflict(f"{home} already holds a domain: use Domain.open({str(home)!r})")
        if not name.strip():
            raise InvalidInput("a domain needs a non-empty name")
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        manifest = {"name": name.strip(), "domain_id": uuid.uuid4().hex, "store_url": store_url,
                    "dask_address": dask_address}
        (home / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        dom = cls(home, manifest, store_url)
        with dom.transaction() as tx:
            tx.log("owner", "domain.created", name=dom.name, domain_id=dom.domain_id)
        return dom

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, store_url: str | None = None,
             dask_address: str | None = None) -> Domain:
        """Open an existing domain home; ``store_url`` and ``dask_address`` override the
        ones it was created with."""
        home = Path(path).expanduser().resolve()
        try:
            manifest = json.loads((home / _MANIFEST).read_text())
        except FileNotFoundError:
            raise NotFound(f"{home} holds no domain: create one with Domain.create") from None
        return cls(home, manifest, store_url, dask_address)

    @property
    def identity(self) -> Identity:
        """This domain's long-term Ed25519 identity for secure aggregation (a 0600 file in
        the home, made on first use); peers put ``identity.public`` on their roster."""
        with self._lock:
            if self._identity is None:
                self._identity = Identity.load_or_create(self.home / "identity.key")
            return self._identity

    def close(self) -> None:
        """Stop workers and release the store."""
        if self._pool is not None:
            self._pool.shutdown()
        if self._exec is not None:
            self._exec.shutdown(wait=True, cancel_futures=True)
        self._release_server_lock()
        self.store.close()

    def __repr__(self) -> str:
        return f"Domain(name={self.name!r}, home={str(self.home)!r})"

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        """One store transaction whose audit entries commit with it."""
        with self._lock:
            with self.store.write() as s:
                tx = _Tx(s, self)
                yield tx
            if tx.rows:
                self.audit.publish_head(tx.rows[-1])

    def _fail_interrupted_runs(self) -> None:
        with self.transaction() as tx:
            stuck = list(tx.s.execute(select(RunRow.id).where(
                RunRow.status.in_(("queued", "running")))).scalars())
            if stuck:
                tx.s.execute(update(RunRow).where(RunRow.id.in_(stuck)).values(
                    status="failed", reason="domain_restarted"))
                freed = self.ledger.free_interrupted(tx.s, stuck)
                tx.log("domain", "run.interrupted", runs=stuck, charges_freed=freed)

    # -- users -----------------------------------------------------------------------
    def add_user(self, name: str, role: Role = "scientist", *, epsilon: float | None = None,
                 actor: str = "owner") -> str:
        """Add a user; returns their token, which is shown only this once.

        ``epsilon`` gives a scientist a privacy budget on every dataset (per dataset;
        :meth:`set_budget` sets one dataset's). Without one, their DP runs are refused.
        """
        role = users.check_new_user(name, role)
        users.ensure_absent(self.store, name)
        token = users.new_token()
        with self.transaction() as tx:
            tx.s.add(UserRow(name=name, role=role, token_hash=users.hash_token(token)))
            tx.log(actor, "user.added", user=name, role=role)
            if epsilon is not None:
                tx.s.flush()
                self.ledger.set_budget(tx.s, name, epsilon)
                tx.log(actor, "budget.set", scientist=name, dataset="*", epsilon=epsilon)
        return token

    def set_budget(self, scientist: str, epsilon: float, dataset: str = "*", *,
                   actor: str = "owner") -> None:
        """Set a scientist's epsilon budget on one dataset, or on every dataset (``"*"``)."""
        users.get_user(self.store, scientist)
        if dataset != "*":
            self.card(dataset)
        with self.transaction() as tx:
            self.ledger.set_budget(tx.s, scientist, epsilon, dataset)
            tx.log(actor, "budget.set", scientist=scientist, dataset=dataset, epsilon=epsilon)

    def budgets(self, scientist: str | None = None) -> list[BudgetInfo]:
        """Epsilon spent, reserved and left per (scientist, dataset), with the dataset caps."""
        return self.ledger.summary(scientist)

    @property
    def noise(self) -> SecureNoise:
        """This thread's CSPRNG noise source (cipher contexts are not shared across threads)."""
        src: SecureNoise | None = getattr(self._noise, "src", None)
        if src is None:
            src = self._noise.src = SecureNoise()
        return src

    def list_users(self) -> list[UserInfo]:
        with self.store.session() as s:
            return [users.user_info(r) for r in s.execute(select(UserRow).order_by(UserRow.name))
                    .scalars()]

    def revoke_user(self, name: str, *, actor: str = "owner") -> None:
        """Revoke a user's token; they can do nothing until it is rotated."""
        with self.transaction() as tx:
            row = tx.s.get(UserRow, name)
            if row is None:
                raise NotFound(f"no user called {name!r}")
            row.revoked = True
            tx.log(actor, "user.revoked", user=name)

    def rotate_token(self, name: str, *, actor: str = "owner") -> str:
        """Give a user a new token (re-activating a revoked user); the old one stops working."""
        token = users.new_token()
        with self.transaction() as tx:
            row = tx.s.get(UserRow, name)
            if row is None:
                raise NotFound(f"no user called {name!r}")
            row.token_hash, row.revoked = users.hash_token(token), False
            tx.log(actor, "user.token_rotated", user=name)
        return token

    def authenticate(self, token: str | None) -> UserRow:
        return users.authenticate(self.store, token)

    # -- policy ----------------------------------------------------------------------
    def _load_policy(self) -> Policy:
        with self.store.session() as s:
            row = s.get(SettingRow, "policy")
        return Policy.model_validate(row.value if row is not None else {})

    def _save_policy(self, policy: Policy, changed: list[str]) -> Policy:
        with self.transaction() as tx:
            row = tx.s.get(SettingRow, "policy")
            value = policy.model_dump()
            if row is None:
                tx.s.add(SettingRow(key="policy", value=value))
            else:
                row.value = value
            tx.log("owner", "policy.updated", changed={k: value[k] for k in changed})
        if {"max_concurrent_jobs", "worker_memory_bytes", "max_result_bytes", "gpu_jobs", "gpu_memory_bytes",
                "gpu_without_host_memory_cap"} & set(changed):
            with self._lock:  # new caps take effect with fresh workers; running jobs finish
                old, self._pool = self._pool, None
            if old is not None:
                old.shutdown()
        return policy

    # -- datasets --------------------------------------------------------------------
    def add_dataset(self, name: str, private: xr.Dataset | str | os.PathLike[str], *,
                    mock: xr.Dataset | None = None,
                    bounds: dsets.Bounds | None = None, units: Mapping[str, str] | None = None,
                    description: str = "", example_dim: str | None = None,
                    format: str | None = None, actor: str = "owner",
                    **loader_options: Any) -> DatasetCard:
        """Add a dataset from an ``xarray.Dataset`` or a file (NetCDF, Zarr, CSV, Parquet,
        a DICOM folder, a FHIR Bundle).

        Parameters
        ----------
        bounds
            ``{variable: (low, high)}`` for numbers, ``{variable: [categories]}`` for text.
            Needed for every variable when ``mock`` is None (the mock is synthesised
            uniformly within them); later used to clip and noise released statistics.
        mock
            A mock twin you made; None synthesises one within ``bounds``.
        """
        dsets.check_name(name)
        source = "xarray"
        if not isinstance(private, xr.Dataset):
            private, source = dsets.load_private(private, format=format, example_dim=example_dim,
                                                 **loader_options)
        ex = dsets.example_dim_of(private, example_dim)
        bounds = dict(bounds or {})
        if mock is None:
            mock = dsets.synthesise_mock(private, bounds, ex)
            info = MockInfo(method="synthesised-within-bounds",
                            note="each value drawn uniformly within the declared bounds; "
                                 "no statistic of the private data was used")
        else:
            dsets.check_mock(private, mock)
            info = MockInfo(method="provided-by-owner", note="made by the data owner")
        card = dsets.build_card(name, private, bounds=bounds, units=dict(units or {}),
                                description=description, source=source, example_dim=ex,
                                mock=info)
        # the owner's to know (never a scientist's): missing, infinite, out-of-bounds values
        findings = dsets.validate_private(private, bounds)
        for finding in findings:  # (variables without bounds: in the audit log only, not noise here)
            if "no declared bounds" not in finding:
                warnings.warn(f"dataset {name!r}: {finding}", UserWarning, stacklevel=2)
        base = self.home / "datasets" / name
        base.mkdir(parents=True, exist_ok=True)
        dsets.write_zarr(private, base / "private.zarr")
        dsets.write_zarr(mock, base / "mock.zarr")
        with self.transaction() as tx:
            row = tx.s.get(DatasetRow, name)
            if row is None:
                tx.s.add(DatasetRow(name=name, card=card.model_dump(mode="json")))
            else:
                row.card = card.model_dump(mode="json")
            tx.log(actor, "dataset.added", dataset=name, rows=card.num_examples,
                   mock=info.method, replaced=row is not None, findings=findings)
        return card

    def datasets(self) -> list[DatasetCard]:
        with self.store.session() as s:
            rows = s.execute(select(DatasetRow).order_by(DatasetRow.name)).scalars()
            return [DatasetCard.model_validate(r.card) for r in rows]

    def card(self, name: str) -> DatasetCard:
        with self.store.session() as s:
            row = s.get(DatasetRow, name)
        if row is None:
            raise NotFound(f"no dataset called {name!r}")
        return DatasetCard.model_validate(row.card)

    def private_path(self, name: str) -> Path:
        self.card(name)
        return self.home / "datasets" / name / "private.zarr"

    def mock(self, name: str) -> xr.Dataset:
        """The mock twin (public)."""
        self.card(name)
        return dsets.read_zarr(self.home / "datasets" / name / "mock.zarr")

    def private(self, name: str) -> xr.Dataset:
        """The private data (for the owner, on the domain's machine)."""
        return dsets.read_zarr(self.private_path(name))

    # -- execution -------------------------------------------------------------------
    def configure_sandbox(self, insecure_demo: bool = False) -> SandboxMode | None:
        """Pick the sandbox: bubblewrap where it works, else only with ``insecure_demo``."""
        if bwrap_available():
            self.sandbox_mode = "bubblewrap"
        elif insecure_demo:
            self.sandbox_mode = "insecure-demo"
        else:
            self.sandbox_mode = None
        return self.sandbox_mode

    def pool(self) -> JobRunner:
        """What runs this domain's jobs: local sandboxed workers, or a Dask cluster's."""
        with self._lock:
            if self._pool is None:
                if self.sandbox_mode is None:
                    raise RuntimeError("no sandbox configured")
                p = self.policy.get()
                limits = Limits(memory_bytes=p.worker_memory_bytes, gpu=p.gpu_jobs,
                                gpu_memory_bytes=p.gpu_memory_bytes,
                                host_memory_uncapped_ok=p.gpu_without_host_memory_cap)
                if self.dask_address is not None:
                    from fednb.domain.runner._dask import DaskPool

                    self._pool = DaskPool(self.dask_address, self.sandbox_mode, limits,
                                          max_concurrent=p.max_concurrent_jobs,
                                          max_output=p.max_result_bytes, domain=self.domain_id)
                else:
                    self._pool = WorkerPool(self.sandbox_mode, limits,
                                            max_concurrent=p.max_concurrent_jobs,
                                            max_output=p.max_result_bytes)
            return self._pool

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._exec is None:
                self._exec = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fednb-run")
            return self._exec

    def _prewarm(self, row: RequestRow) -> None:
        # a query or stats run runs in this process (the trusted runtime): a worker would only hold a job
        # slot and push the warm workers of code requests out
        # (the first dataset's worker: a worker per dataset would hold memory for each)
        if self.sandbox_mode is not None and not request_kind(row).trusted:
            self.pool().prewarm(self.runs._job(row, row.datasets[0]))

    def verify_audit(self) -> AuditReport:
        """Check the audit chain (edits, deletions, truncation)."""
        return self.audit.verify()

    def serve(self, host: str = "127.0.0.1", port: int = 0, *, insecure_demo: bool = False,
              certfile: str | None = None, keyfile: str | None = None,
              background: bool = True, relay: str | None = None,
              relay_name: str | None = None) -> Server:
        """Start the HTTP server; returns once it accepts connections.

        With ``background=True`` (default) it serves from a daemon thread; otherwise call
        ``server.run_forever()``. One server per domain home: a second one is refused.
        With ``relay`` (a relay's URL) it listens on loopback only, under TLS keyed by
        :attr:`identity`, and dials out to the relay as ``relay_name`` (default: the name
        as a DNS label); see docs/deployment.md.
        """
        from fednb.domain._server import Server

        self._take_server_lock()
        try:
            self.configure_sandbox(insecure_demo)
            # this process executes runs from now on, so none can be in flight: end those a
            # crash interrupted before the server accepts a call (a run queued after this
            # point must not be taken for one)
            self._fail_interrupted_runs()
            if relay is not None:
                from fednb.domain._outbound import RelayedServer, check_relay_host

                check_relay_host(host)
                server: Server = RelayedServer.through(self, relay, relay_name, background=background)
            else:
                server = Server.start(self, host, port, certfile=certfile, keyfile=keyfile,
                                      background=background)
        except BaseException:
            self._release_server_lock()
            raise
        return server

    def _take_server_lock(self) -> None:
        fd = os.open(self.home / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise Conflict(f"another process is serving {self.home}; stop it first") from None
        self._lock_fd = fd

    def _release_server_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
