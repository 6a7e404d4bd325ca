"""Helpers for the tutorials: reach the hospitals ``fednb demo`` started, and play their owners.

``fednb demo`` writes every hospital's URL and its owner's and scientist's tokens to
``tokens.json`` (mode 0600) in its home, ``$FEDNB_DEMO_HOME`` or ``.fednb-demo``.

>>> from fednb.demo import hospitals, ReleaseDesk             # doctest: +SKIP
>>> scientist = hospitals("scientist")                       # doctest: +SKIP
>>> owners = hospitals("owner")                              # doctest: +SKIP
>>> with ReleaseDesk(owners):                                # doctest: +SKIP
...     history = federation.run()
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np
import xarray as xr

from fednb.client import DomainClient, RemoteRequest, connect

__all__ = ["SEED", "ReleaseDesk", "approve", "breast_cancer", "demo_home", "hospitals"]

SEED = 20261123


def breast_cancer() -> tuple[xr.Dataset, xr.Dataset]:
    """The Wisconsin breast cancer set as the demo splits it: the 80% the hospitals hold
    between them, and the 20% held out as the scientist's public test set (stratified).

    ``x``: (patient, feature) 30 measurements of the cell nuclei; ``y``: 1 benign, 0 malignant.
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    bc = load_breast_cancer()
    idx = np.arange(len(bc.target))
    tr, te = train_test_split(idx, test_size=0.2, stratify=bc.target, random_state=SEED % 1000)

    def ds(rows: np.ndarray) -> xr.Dataset:
        return xr.Dataset({"x": (("patient", "feature"), bc.data[rows]), "y": ("patient", bc.target[rows])},
                          coords={"feature": [str(f) for f in bc.feature_names]})

    return ds(tr), ds(te)


def demo_home() -> Path:
    """The demo's home: ``$FEDNB_DEMO_HOME``, else ``.fednb-demo`` here or one folder up
    (a notebook in ``notebooks/`` runs there)."""
    env = os.environ.get("FEDNB_DEMO_HOME")
    if env:
        return Path(env)
    for candidate in (Path(".fednb-demo"), Path("..") / ".fednb-demo"):
        if (candidate / "tokens.json").exists():
            return candidate
    return Path(".fednb-demo")


def hospitals(role: Literal["scientist", "owner"] = "scientist",
              home: str | os.PathLike[str] | None = None) -> dict[str, DomainClient]:
    """A client of every demo hospital, as its scientist or its owner.

    Raises
    ------
    FileNotFoundError
        No demo has run in ``home``: start one with ``fednb demo``.
    """
    path = Path(home) if home is not None else demo_home()
    tokens = path / "tokens.json"
    if not tokens.exists():
        raise FileNotFoundError(f"no {tokens}: start the hospitals first with `fednb demo` "
                                "(or set FEDNB_DEMO_HOME to the demo's --home)")
    state = json.loads(tokens.read_text())["hospitals"]
    return {name: connect(h["url"], token=h[role]) for name, h in state.items()}


def approve(owners: Mapping[str, DomainClient], requests: Mapping[str, RemoteRequest],
            release: Literal["auto", "manual"] = "manual") -> None:
    """Each hospital's owner approves the request filed with it (after reading it)."""
    for name, req in requests.items():
        pending = owners[name].requests.get(req.id)
        if pending.info.status == "pending":
            pending.approve(release=release)


class ReleaseDesk:
    """The owners at their consoles: every held result is looked at and released.

    Results of runs without differential privacy are always held for the owner; a
    federation without DP waits for each one. Use as a context manager around
    ``Federation.run()``; ``run_ids`` limits the desk to those runs.
    """

    def __init__(self, owners: Iterable[DomainClient] | Mapping[str, DomainClient],
                 run_ids: set[str] | None = None, poll: float = 0.05) -> None:
        self.owners = list(owners.values() if isinstance(owners, Mapping) else owners)
        self.run_ids, self.poll = run_ids, poll
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fednb-release-desk")

    def _loop(self) -> None:
        while not self._halt.is_set():
            for owner in self.owners:
                for held in owner.results.held():
                    if self.run_ids is None or held.id in self.run_ids:
                        held.release()
            self._halt.wait(self.poll)

    def __enter__(self) -> ReleaseDesk:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._halt.set()
        self._thread.join()
