"""Helpers for the tutorials: reach the hospitals ``fednb demo`` started, and play their owners.

``fednb demo`` writes every hospital's URL and its owner's and scientist's tokens to
``tokens.json`` (mode 0600) in its home, ``$FEDNB_DEMO_HOME`` or ``.fednb-demo``, with the
sandbox its hospitals run code in: where bubblewrap is missing (as on most Binder hosts)
the demo runs them in insecure-demo mode, and :func:`hospitals` says so with an
:class:`InsecureDemoWarning` (:func:`sandbox_notice`).

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
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import xarray as xr

from fednb.client import DomainClient, RemoteRequest, connect

__all__ = ["INSECURE_NOTICE", "SEED", "InsecureDemoWarning", "ReleaseDesk", "approve", "breast_cancer",
           "demo_home", "hospitals", "sandbox_notice"]

SEED = 20261123

INSECURE_NOTICE = (
    "the demo's hospitals run submitted code WITHOUT the bubblewrap sandbox: bubblewrap is "
    "missing on this machine or cannot create its namespaces (as on most Binder hosts), so "
    "`fednb demo` started them in insecure-demo mode. A function an owner approves runs as "
    "this user, with this user's files and network: it could read every hospital's private "
    "data and tokens, so the privacy guarantees these tutorials show hold only for honest "
    "code. Everything else works the same. Fine for the demo's public sample data, never for "
    "real patients: install bubblewrap (apt install bubblewrap) and restart `fednb demo`.")

_noticed: set[Path] = set()  # demo homes whose insecure mode this process has announced


class InsecureDemoWarning(UserWarning):
    """The demo's hospitals run code without the bubblewrap sandbox (insecure-demo mode)."""


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


def _state(home: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Any]]:
    path = Path(home) if home is not None else demo_home()
    tokens = path / "tokens.json"
    if not tokens.exists():
        raise FileNotFoundError(f"no {tokens}: start the hospitals first with `fednb demo` "
                                "(or set FEDNB_DEMO_HOME to the demo's --home)")
    return path, json.loads(tokens.read_text())


def sandbox_notice(home: str | os.PathLike[str] | None = None) -> str | None:
    """The sandbox the demo's hospitals run code in, said plainly when there is none.

    Where the demo runs in insecure-demo mode this warns (:class:`InsecureDemoWarning`,
    once per process and demo) with :data:`INSECURE_NOTICE`: what that mode means and how
    to leave it. :func:`hospitals` does the same; a tutorial's first cell shows it.

    Returns
    -------
    str or None
        ``"bubblewrap"`` or ``"insecure-demo"``, as ``fednb demo`` recorded it in its
        ``tokens.json``; None where no demo has run in ``home``.
    """
    try:
        path, state = _state(home)
    except FileNotFoundError:
        return None
    return _announce(path, state)


def _announce(path: Path, state: dict[str, Any]) -> str | None:
    mode = state.get("sandbox")
    key = path.resolve()
    if mode == "insecure-demo" and key not in _noticed:
        _noticed.add(key)
        # stacklevel 3: the notebook line that called sandbox_notice() or hospitals()
        warnings.warn(INSECURE_NOTICE, InsecureDemoWarning, stacklevel=3)
    return None if mode is None else str(mode)


def hospitals(role: Literal["scientist", "owner"] = "scientist",
              home: str | os.PathLike[str] | None = None) -> dict[str, DomainClient]:
    """A client of every demo hospital, as its scientist or its owner.

    Warns once (:class:`InsecureDemoWarning`) where the hospitals run without the
    bubblewrap sandbox (:func:`sandbox_notice`).

    Raises
    ------
    FileNotFoundError
        No demo has run in ``home``: start one with ``fednb demo``.
    """
    path, state = _state(home)
    _announce(path, state)
    return {name: connect(h["url"], token=h[role]) for name, h in state["hospitals"].items()}


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
