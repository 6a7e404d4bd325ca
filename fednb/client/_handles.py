"""Handles a client returns: requests (with the owner's review calls), runs, results."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from fednb.client._html import request_html, run_html
from fednb.client._review import decode_result
from fednb.errors import ResultNotReady, RunFailed
from fednb.protocol import (
    Compression,
    ReleaseMode,
    RequestInfo,
    RunInfo,
    Update,
    decode_message,
    decompress,
    encode_message,
)
from fednb.typing import Weights

if TYPE_CHECKING:
    from fednb.client._client import DomainClient

__all__ = ["RemoteRequest", "RemoteRun"]

_DONE = ("succeeded", "failed", "refused", "timeout", "killed")


class RemoteRequest:
    """A filed request: its review state, and ``run()`` once approved.

    Owners get ``approve()`` and ``deny()`` on the same object.
    """

    def __init__(self, client: DomainClient, info: RequestInfo) -> None:
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        """Review status, refreshed from the domain."""
        return self.refresh().info.status

    def refresh(self) -> RemoteRequest:
        self.info = RequestInfo.model_validate(self.client._t.json("GET", f"/requests/{self.id}"))
        return self

    def wait_for_review(self, timeout: float = 3600.0, poll: float = 1.0) -> str:
        """Block until the owner approves or denies; returns the status."""
        deadline = time.monotonic() + timeout
        while self.status == "pending" and time.monotonic() < deadline:
            time.sleep(poll)
        return self.info.status

    def approve(self, release: ReleaseMode = "manual", slot_s: float | None = None) -> RemoteRequest:
        """(Owner) approve this exact source text; ``slot_s`` sets a DP request's release slot
        (seconds from a run's creation to its result; default: the scientist's proposal or
        the domain policy's ``dp_slot_s``)."""
        body: dict[str, object] = {"release": release}
        if slot_s is not None:
            body["slot_s"] = slot_s
        self.info = RequestInfo.model_validate(
            self.client._t.json("POST", f"/requests/{self.id}/approve", json=body))
        return self

    def deny(self, reason: str) -> RemoteRequest:
        """(Owner) deny, with a reason the scientist sees."""
        self.info = RequestInfo.model_validate(
            self.client._t.json("POST", f"/requests/{self.id}/deny", json={"reason": reason}))
        return self

    def run(self, weights: Weights | None = None, *, dataset: str | None = None,
            run_id: str | None = None, compression: Compression = "none", secure: bool = False,
            **params: Any) -> RemoteRun:
        """Start one run; re-using ``run_id`` returns the same run (one a crash of the domain
        interrupted runs again, in the slot and with the charge it already had).

        ``compression`` ("fp16" or "int8" with stochastic rounding) shrinks the result on
        the wire; :meth:`RemoteRun.result` restores the dtypes. ``secure=True`` keeps the
        result in the domain to leave only masked, through a secure round.
        """
        rid = run_id or uuid.uuid4().hex
        tensors = {k: np.asarray(v, order="C") for k, v in (weights or {}).items()}
        body = encode_message({"dataset": dataset, "params": params, "compression": compression,
                               "weights": weights is not None, "secure": secure}, tensors)
        info = self.client._t.json("PUT", f"/requests/{self.id}/runs/{rid}", content=body)
        return RemoteRun(self.client, RunInfo.model_validate(info))

    def _repr_html_(self) -> str:
        return request_html(self.info)

    def __repr__(self) -> str:
        i = self.info
        return (f"RemoteRequest({i.id!r}, function={i.function_name!r}, status={i.status!r}, "
                f"hash={i.code_hash[:12]}, runs={i.runs_used}/{i.runs})")


class RemoteRun:
    """One run: ``wait()`` for its status, ``result()`` once the owner released it; the
    owner reads a held result with ``held_result()`` before ``release()``."""

    def __init__(self, client: DomainClient, info: RunInfo) -> None:
        self.client, self.info = client, info
        self.result_bytes = 0  # size of the fetched result on the wire

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.refresh().info.status

    def refresh(self, wait: float = 0.0) -> RemoteRun:
        data = self.client._t.json("GET", f"/runs/{self.id}", params={"wait": wait},
                                   timeout=wait + 30)
        self.info = RunInfo.model_validate(data)
        return self

    def wait(self, timeout: float = 600.0) -> RunInfo:
        """Block until the run finishes (long-polls the domain); returns its info."""
        deadline = time.monotonic() + timeout
        while self.info.status not in _DONE:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.refresh(wait=min(left, 25.0))
        return self.info

    def result(self, timeout: float = 600.0, poll: float = 0.5) -> Update:
        """The released result as an :class:`~fednb.Update`.

        Raises
        ------
        RunFailed
            The run ended without a result (status and reason code only).
        ResultNotReady
            Still running, or held for the owner's release, when ``timeout`` passed.
        """
        deadline = time.monotonic() + timeout
        info = self.wait(timeout)
        if info.status not in _DONE:  # still queued or running when the time was up
            raise ResultNotReady(f"run {self.id} is still {info.status} after {timeout:g} s; call "
                                 "result() again (or wait()) to keep waiting")
        if info.status != "succeeded":
            raise RunFailed(f"run {self.id} ended {info.status} (reason: {info.reason})")
        state = self.info.release_state
        if state != "released":  # released is for good: only another state may have moved since
            state = self.refresh().info.release_state
        while True:
            if state == "released":
                body = self.client._t.call("GET", f"/runs/{self.id}/result").content
                header, tensors = decode_message(body)
                self.result_bytes = len(body)
                return Update(weights=decompress(tensors, header), metrics=header.get("metrics") or {},
                              num_examples=header.get("num_examples"))
            if state == "withheld":
                raise RunFailed(f"the owner withheld the result of run {self.id}")
            if time.monotonic() >= deadline:
                raise ResultNotReady(f"run {self.id} succeeded; its result is {state} for the "
                                     "owner's release")
            time.sleep(poll)
            state = self.refresh().info.release_state

    def held_result(self) -> Update:
        """(Owner) the result exactly as releasing it would hand it over, while it is held
        (or once released): look before you :meth:`release`.

        Raises
        ------
        ResultNotReady
            The run has no result to read: still running, failed, or withheld.
        """
        body = self.client._t.call("GET", f"/runs/{self.id}/result").content
        self.result_bytes = len(body)
        return decode_result(body)

    def release(self) -> RemoteRun:
        """(Owner) release this run's held result."""
        self.info = RunInfo.model_validate(self.client._t.json("POST", f"/runs/{self.id}/release"))
        return self

    def withhold(self) -> RemoteRun:
        """(Owner) withhold this run's held result for good."""
        self.info = RunInfo.model_validate(self.client._t.json("POST", f"/runs/{self.id}/withhold"))
        return self

    def _repr_html_(self) -> str:
        return run_html(self.info)

    def __repr__(self) -> str:
        i = self.info
        return (f"RemoteRun({i.id!r}, status={i.status!r}, reason={i.reason!r}, "
                f"release={i.release_state!r})")
