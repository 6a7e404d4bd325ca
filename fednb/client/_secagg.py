"""A domain as the orchestrator of a secure round reaches it: the SecAgg+ steps over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fednb.errors import InvalidInput
from fednb.protocol import (
    SecAggAdvert,
    SecAggConfig,
    SecAggReveal,
    SecAggShare,
    SecAggSignature,
    SecAggSurvivors,
    decode_message,
)

if TYPE_CHECKING:
    from fednb.client._client import DomainClient

__all__ = ["RemoteSecAggPeer"]


class RemoteSecAggPeer:
    """One domain's side of one secure round, with the result of the run ``run_id``."""

    def __init__(self, client: DomainClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def _post(self, path: str, body: object) -> object:
        return self.client._t.json("POST", f"/secagg/{path}", json=body)

    def advertise(self, config: SecAggConfig) -> SecAggAdvert:
        body = {"config": config.model_dump(mode="json"), "run_id": self.run_id}
        return SecAggAdvert.model_validate(self._post("join", body))

    def share(self, round_id: str, adverts: list[SecAggAdvert]) -> list[SecAggShare]:
        got = self._post(f"{round_id}/share", [a.model_dump(mode="json") for a in adverts])
        return [SecAggShare.model_validate(s) for s in got]  # type: ignore[attr-defined]

    def masked(self, round_id: str, shares: list[SecAggShare]) -> np.ndarray:
        body = [s.model_dump(mode="json") for s in shares]
        data = self.client._t.call("POST", f"/secagg/{round_id}/masked", json=body).content
        _, tensors = decode_message(data)
        masked = tensors.get("masked")
        if masked is None or masked.dtype != np.uint32 or masked.ndim != 1:
            raise InvalidInput("the domain's masked update is not a uint32 vector")
        return masked

    def consistency(self, round_id: str, survivors: list[str]) -> str:
        body = {"round_id": round_id, "survivors": survivors}
        return SecAggSignature.model_validate(self._post(f"{round_id}/consistency", body)).signature

    def unmask(self, msg: SecAggSurvivors) -> SecAggReveal:
        return SecAggReveal.model_validate(self._post(f"{msg.round_id}/unmask", msg.model_dump(mode="json")))
