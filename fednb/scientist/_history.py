"""``History``: what a federation did, round by round and hospital by hospital."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from fednb.client.html import esc, svg_lines, table_html
from fednb.protocol import decode_message, encode_message
from fednb.typing import Weights

__all__ = ["ClientRecord", "History"]

_FIELDS = ("num_examples", "seconds", "bytes_up", "bytes_down", "staleness", "epsilon")


@dataclass(frozen=True)
class ClientRecord:
    """One domain's part in one round."""

    round: int
    domain: str
    status: str
    reason: str | None = None
    num_examples: int = 0
    seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    staleness: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None  # spent on this domain's data so far (its ledger), with DP


@dataclass
class History:
    """Per-round, per-domain records, the final weights, and the run's settings.

    ``metrics`` is an ``xarray.Dataset`` over (round, domain); ``rounds`` aggregates it
    per round (metrics weighted by examples, domains that took part, bytes on the wire,
    and with DP the epsilon spent on the most-charged domain).
    """

    records: list[ClientRecord] = field(default_factory=list)
    weights: Weights = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    _watchers: list[Callable[[History], None]] = field(default_factory=list, repr=False, compare=False)

    def watch(self, callback: Callable[[History], None]) -> Callable[[], None]:
        """Call ``callback(history)`` after every round the driver finishes (a live view's
        hook); returns a function that stops it. A failing callback warns, never stops the
        federation."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def notify(self) -> None:
        """Tell the watchers a round has finished (the driver calls this)."""
        for cb in list(self._watchers):
            try:
                cb(self)
            except Exception as exc:  # a view must not stop the training
                warnings.warn(f"a History watcher failed: {type(exc).__name__}: {exc}", RuntimeWarning,
                              stacklevel=2)

    def replace(self, other: History) -> None:
        """Take ``other``'s records, weights and settings, keeping this object's watchers."""
        self.records[:] = other.records
        self.weights = dict(other.weights)
        self.settings.update(other.settings)

    @property
    def domains(self) -> list[str]:
        return sorted({r.domain for r in self.records})

    @property
    def num_rounds(self) -> int:
        return 1 + max((r.round for r in self.records), default=-1)

    def _names(self) -> list[str]:
        return sorted({k for r in self.records for k in r.metrics})

    @property
    def metrics(self) -> xr.Dataset:
        """Metrics, examples, seconds, bytes and status over (round, domain)."""
        rounds, domains = np.arange(self.num_rounds), self.domains
        shape = (len(rounds), len(domains))
        data: dict[str, np.ndarray] = {k: np.full(shape, np.nan) for k in self._names()}
        for k in _FIELDS:
            data[k] = np.full(shape, np.nan)
        status = np.full(shape, "", dtype=object)
        col = {d: i for i, d in enumerate(domains)}
        for r in self.records:
            i, j = r.round, col[r.domain]
            status[i, j] = r.status
            for k, v in r.metrics.items():
                data[k][i, j] = v
            for k in _FIELDS:
                v = getattr(r, k)
                data[k][i, j] = np.nan if v is None else v
        ds = xr.Dataset({k: (("round", "domain"), v) for k, v in data.items()},
                        coords={"round": rounds, "domain": domains})
        ds["status"] = (("round", "domain"), status.astype(str))
        return ds

    @property
    def rounds(self) -> xr.Dataset:
        """Per round: metrics weighted by examples, domains that took part, bytes."""
        m = self.metrics
        ok = m["status"] == "succeeded"
        n = m["num_examples"].where(ok)
        out = {k: (m[k].where(ok) * n).sum("domain") / n.sum("domain") for k in self._names()}
        out["domains"] = ok.sum("domain")
        # the most spent on any one domain so far: a domain's epsilon only grows, so a round
        # it sat out keeps its last value (a running nan-aware max along the rounds)
        spent = np.fmax.accumulate(m["epsilon"].values, axis=0) if self.num_rounds else m["epsilon"].values
        out["epsilon"] = xr.DataArray(spent, dims=("round", "domain")).max("domain")
        out["bytes"] = (m["bytes_up"].fillna(0) + m["bytes_down"].fillna(0)).sum("domain")
        return xr.Dataset(out)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to a directory: ``records.json``, ``weights.safetensors``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        payload = {"settings": self.settings, "records": [r.__dict__ for r in self.records]}
        # each file whole or not at all: a notebook killed mid-save (a checkpoint after every
        # round) must leave the previous files, never a truncated one to resume from
        for name, data in (("weights.safetensors", encode_message({}, self.weights)),
                           ("records.json", json.dumps(payload, default=str).encode())):
            tmp = out / f"{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(out / name)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        """Read what :meth:`save` wrote."""
        p = Path(path)
        payload = json.loads((p / "records.json").read_text())
        _, weights = decode_message((p / "weights.safetensors").read_bytes())
        return cls([ClientRecord(**r) for r in payload["records"]], dict(weights), payload["settings"])

    def _repr_html_(self) -> str:
        if not self.num_rounds:
            return "<div class='fednb-history'>History: no rounds yet</div>"
        r, names, m = self.rounds, self._names(), self.metrics
        charts = "".join(
            svg_lines({"all domains": r[k].values.tolist(),
                       **{d: m[k].sel(domain=d).values.tolist() for d in self.domains}}, title=k)
            for k in names)
        charts += svg_lines({"bytes": r["bytes"].values.tolist()}, title="bytes on the wire")
        rows = [[i, *(f"{float(r[k][i]):.4g}" for k in names), int(r["domains"][i]), int(r["bytes"][i])]
                for i in range(self.num_rounds)][-10:]
        table = table_html(["round", *names, "domains", "bytes"], rows,
                           "last rounds (metrics weighted by examples)")
        return (f"<div class='fednb-history'><b>{esc(repr(self))}</b>"
                f"<div style='display:flex;flex-wrap:wrap'>{charts}</div>{table}</div>")

    def __repr__(self) -> str:
        last = self.rounds.isel(round=-1) if self.num_rounds else None
        shown = "" if last is None else ", ".join(
            f"{k}={float(last[k]):.4g}" for k in self._names())
        return (f"History({self.num_rounds} rounds over {len(self.domains)} domains"
                + (f"; last round: {shown}" if shown else "") + ")")
