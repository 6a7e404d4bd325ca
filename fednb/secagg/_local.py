"""A member reached in-process: what ``simulate`` and the tests use instead of HTTP."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fednb.protocol import SecAggAdvert, SecAggConfig, SecAggReveal, SecAggShare, SecAggSurvivors
from fednb.secagg._member import SecAggMember
from fednb.typing import FloatArray

__all__ = ["LocalPeer"]


Prepare = Callable[[SecAggConfig, FloatArray], tuple[FloatArray, Callable[[int, float], np.ndarray] | None]]


class LocalPeer:
    """``member`` with its example count and the update it contributes (called when masking).

    ``prepare(config, update)``, when given, turns the update into what enters the round
    and gives the source of the round's distributed noise share (see ``SecAggMember.masked``).
    """

    def __init__(self, member: SecAggMember, num_examples: int, update: Callable[[], FloatArray],
                 prepare: Prepare | None = None) -> None:
        self.member, self.num_examples, self.update, self.prepare = member, num_examples, update, prepare

    def advertise(self, config: SecAggConfig) -> SecAggAdvert:
        return self.member.advertise(config, self.num_examples)

    def share(self, round_id: str, adverts: list[SecAggAdvert]) -> list[SecAggShare]:
        return self.member.share(round_id, adverts)

    def masked(self, round_id: str, shares: list[SecAggShare]) -> np.ndarray:
        vector, noise = self.update(), None
        if self.prepare is not None:
            vector, noise = self.prepare(self.member.config(round_id), vector)
        return self.member.masked(round_id, shares, vector, noise)

    def consistency(self, round_id: str, survivors: list[str]) -> str:
        return self.member.consistency(round_id, survivors)

    def unmask(self, msg: SecAggSurvivors) -> SecAggReveal:
        return self.member.unmask(msg)

    def forget(self, round_id: str) -> None:
        """Drop the round's keys and seeds (after the round, unmasked or abandoned)."""
        self.member.forget(round_id)
