"""``fednb.connect()`` and ``DomainClient``: one domain, any role, over HTTP."""

from __future__ import annotations

import builtins
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import xarray as xr

from fednb.client._handles import RemoteRequest, RemoteRun
from fednb.client._html import budget_html, card_html
from fednb.client._http import Transport
from fednb.client._templates import Templates
from fednb.errors import InvalidInput, NotFound
from fednb.protocol import (
    BudgetInfo,
    DatasetCard,
    DomainInfo,
    RequestCreate,
    RequestInfo,
    RunInfo,
    UserInfo,
    dataset_from_bytes,
)

__all__ = ["Budgets", "DatasetHandle", "DomainClient", "connect"]


class DatasetHandle:
    """A remote dataset: its public ``card`` and its ``mock`` twin (fetched once)."""

    def __init__(self, client: DomainClient, card: DatasetCard) -> None:
        self.client, self.card = client, card
        self._mock: xr.Dataset | None = None

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def mock(self) -> xr.Dataset:
        """The mock dataset (synthesised or owner-provided; never private values)."""
        if self._mock is None:
            data = self.client._t.call("GET", f"/datasets/{self.name}/mock").content
            self._mock = dataset_from_bytes(data)
        return self._mock

    def preview(self, rows: int = 5) -> list[dict[str, Any]]:
        """The first ``rows`` examples of the mock, one dict each (long vectors shortened)."""
        mock, dim = self.mock, self.card.example_dim
        out: list[dict[str, Any]] = []
        for i in range(min(rows, int(mock.sizes.get(dim, 0)))):
            row: dict[str, Any] = {dim: str(mock[dim].values[i]) if dim in mock.coords else i}
            for k, v in mock.data_vars.items():
                if dim not in v.dims:
                    continue
                vals = v.isel({dim: i}).values.ravel()
                shown = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in vals[:4].tolist())
                row[str(k)] = shown if vals.size == 1 else f"[{shown}{', …' if vals.size > 4 else ''}]"
            out.append(row)
        return out

    def _repr_html_(self) -> str:
        return card_html(self.card, self.preview())

    def __repr__(self) -> str:
        c = self.card
        variables = ", ".join(f"{k}[{v.units}]" if v.units else k for k, v in c.variables.items())
        return (f"DatasetHandle({c.name!r}, {c.num_examples} {c.example_dim}s, "
                f"variables: {variables}; mock: {c.mock.method})")


class Budgets(builtins.list[BudgetInfo]):
    """Budget rows (a list of :class:`~fednb.protocol.BudgetInfo`) that draw themselves as
    meters in a notebook."""

    def _repr_html_(self) -> str:
        return budget_html(self)


class _Datasets(Mapping[str, DatasetHandle]):
    def __init__(self, client: DomainClient) -> None:
        self._c = client
        self._cache: dict[str, DatasetHandle] = {}

    def _cards(self) -> builtins.list[DatasetCard]:
        return [DatasetCard.model_validate(d) for d in self._c._t.json("GET", "/datasets")]

    def __getitem__(self, name: str) -> DatasetHandle:
        if name not in self._cache:
            try:
                card = DatasetCard.model_validate(self._c._t.json("GET", f"/datasets/{name}"))
            except NotFound:
                raise KeyError(name) from None
            self._cache[name] = DatasetHandle(self._c, card)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter([c.name for c in self._cards()])

    def __len__(self) -> int:
        return len(self._cards())

    def __repr__(self) -> str:
        return "\n".join(repr(DatasetHandle(self._c, c)) for c in self._cards()) or "(no datasets)"


class _Requests:
    def __init__(self, client: DomainClient) -> None:
        self._c = client

    def list(self, status: str | None = None) -> builtins.list[RemoteRequest]:
        """Requests you may see (a scientist: their own; the owner: all)."""
        params = {"status": status} if status else None
        data = self._c._t.json("GET", "/requests", params=params)
        return [RemoteRequest(self._c, RequestInfo.model_validate(d)) for d in data]

    def pending(self) -> builtins.list[RemoteRequest]:
        return self.list("pending")

    def get(self, request_id: str) -> RemoteRequest:
        info = RequestInfo.model_validate(self._c._t.json("GET", f"/requests/{request_id}"))
        return RemoteRequest(self._c, info)

    def submit(self, body: RequestCreate) -> RemoteRequest:
        """File a request (idempotent on ``body.id``)."""
        data = self._c._t.json("POST", "/requests", json=body.model_dump(mode="json"))
        return RemoteRequest(self._c, RequestInfo.model_validate(data))


class _Runs:
    def __init__(self, client: DomainClient) -> None:
        self._c = client

    def list(self, request_id: str | None = None,
             release_state: str | None = None) -> builtins.list[RemoteRun]:
        params = {k: v for k, v in {"request_id": request_id, "release_state": release_state}.items()
                  if v is not None}
        return [RemoteRun(self._c, RunInfo.model_validate(d))
                for d in self._c._t.json("GET", "/runs", params=params)]

    def get(self, run_id: str) -> RemoteRun:
        return RemoteRun(self._c, RunInfo.model_validate(self._c._t.json("GET", f"/runs/{run_id}")))


class _Results:
    def __init__(self, client: DomainClient) -> None:
        self._c = client

    def held(self) -> builtins.list[RemoteRun]:
        """(Owner) runs whose results wait for release; each has ``release()``/``withhold()``."""
        return self._c.runs.list(release_state="held")


class DomainClient:
    """A connection to one domain. Scientists and owners use the same class; the domain
    decides what each token may do."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self.url = transport.url
        self.datasets = _Datasets(self)
        self.requests = _Requests(self)
        self.runs = _Runs(self)
        self.results = _Results(self)
        self.me = UserInfo.model_validate(self._t.json("GET", "/me"))
        if self.info.sandbox == "insecure-demo":
            warnings.warn(f"{self.url} runs jobs WITHOUT a sandbox (--insecure-demo): use it only "
                          "for teaching, never with real patient data", stacklevel=3)

    @property
    def budget(self) -> Budgets:
        """Epsilon spent, reserved and left per dataset (a scientist: their own; owner: all)."""
        return Budgets(BudgetInfo.model_validate(b) for b in self._t.json("GET", "/budget"))

    @property
    def templates(self) -> Templates:
        """(Owner) the domain's ``stats`` templates: ``list``/``add``/``approve``/``remove``."""
        return Templates(self)

    @property
    def info(self) -> DomainInfo:
        """The domain's public info (name, id, versions, sandbox)."""
        return DomainInfo.model_validate(self._t.json("GET", "/info"))

    def users(self) -> builtins.list[UserInfo]:
        """(Owner) the domain's users."""
        return [UserInfo.model_validate(u) for u in self._t.json("GET", "/users")]

    def audit(self, limit: int = 100) -> dict[str, Any]:
        """(Owner) the newest audit entries and whether the chain verifies."""
        return dict(self._t.json("GET", "/audit", params={"limit": limit}))

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> DomainClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DomainClient({self.url!r}, user={self.me.name!r}, role={self.me.role!r})"


def connect(url: str | None = None, token: str | None = None, *, insecure: bool = False,
            timeout: float = 60.0, verify: bool | str = True, relay: str | None = None,
            domain: str | None = None, identity: str | None = None) -> DomainClient:
    """Connect to a domain and check the token.

    Parameters
    ----------
    url
        The domain's base URL, e.g. ``https://st-mary.example:8443``; None with ``relay``.
    token
        Your bearer token (from the domain's owner).
    insecure
        Allow plain HTTP to a host that is not loopback (the token travels in clear).
    timeout
        Seconds per HTTP call (default 60).
    verify
        TLS verification: True, False, or a CA bundle path (through a relay: of the relay's
        own certificate; the domain's is checked against ``identity``).
    relay, domain
        A relay's URL (``https://relay.example``) and the domain's name on it (``st-mary``),
        for a domain behind a firewall that dials out to the relay. TLS 1.3 then runs end
        to end between you and the domain; the relay sees only bytes it cannot read.
    identity
        The domain's Ed25519 public key (64 hex digits, from its owner: ``fednb domain
        peers``), pinned in the domain's TLS certificate. Through a relay without it, the
        key seen first is remembered and required after (with a warning). With ``url``
        (https), it replaces the CA check.

    Raises
    ------
    InsecureSetting
        Plain HTTP to a non-loopback host without ``insecure=True``.
    AuthenticationError
        The token is unknown or revoked.
    IdentityMismatch
        The domain reached does not hold the pinned identity (a relay that swaps domains).
    ChannelTampered
        Bytes were altered between you and the domain.

    Examples
    --------
    >>> h = fednb.connect(relay="https://relay.example", domain="st-mary",   # doctest: +SKIP
    ...                   identity="3f1c...", token=token)
    """
    if token is None:
        raise InvalidInput("connect() needs token=: the bearer token the domain's owner gave you")
    return DomainClient(Transport(url, token, insecure=insecure, timeout=timeout, verify=verify,
                                  relay=relay, domain=domain, identity=identity))
