"""Wire messages of secure aggregation (SecAgg+), relayed by the orchestrator.

Keys, signatures and ciphertexts travel as hex; the masked vectors themselves travel as
safetensors (uint32), outside these models. See :mod:`fednb.secagg` for the protocol.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MIN_STALENESS_FACTOR", "SecAggAdvert", "SecAggConfig", "SecAggJoin", "SecAggReveal",
           "SecAggShare", "SecAggSignature", "SecAggSurvivors"]

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
Hex = Annotated[str, Field(max_length=1 << 16, pattern=r"^[0-9a-f]*$")]
RoundId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]

MIN_STALENESS_FACTOR = 2.0**-10
"""The smallest staleness factor a round may give a member. Without a floor an orchestrator
could weight every member but one near zero and read that one's update from the sum."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecAggConfig(_Frozen):
    """One secure round, as the orchestrator proposes it; every domain checks it itself.

    ``num_examples`` are the members' public example counts (from their dataset cards):
    each domain scales its update by its share of the total, so the sum is the weighted
    mean. ``bound`` clips every coordinate into [-bound, bound] before quantisation.
    ``noise_sigma`` (integer units), when set, is the scale of the discrete Gaussian share
    every member adds to its quantised update, so that the sum of any ``threshold`` of them
    carries the round's distributed noise; it is signed with the rest, so members cannot be
    shown different shares. ``staleness`` (asynchronous FedBuff rounds) gives each member a
    factor in [``MIN_STALENESS_FACTOR``, 1] that multiplies its example count in its weight
    (:meth:`weight`); signed with the rest too. None: every factor is 1.
    """

    round_id: RoundId
    members: list[Name] = Field(min_length=2, max_length=10_000)
    threshold: int = Field(ge=1)
    degree: int = Field(ge=1)
    bound: float = Field(ge=1e-9, le=1e12)
    num_examples: dict[str, int]
    size: int = Field(ge=1, le=1 << 31)
    noise_sigma: float | None = Field(default=None, gt=0, le=2.0**31)
    staleness: dict[str, float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SecAggConfig:
        if sorted(set(self.members)) != self.members:
            raise ValueError("members must be sorted and distinct")
        if self.degree > len(self.members) - 1:
            raise ValueError(f"degree {self.degree} exceeds the {len(self.members) - 1} other members")
        if self.threshold > self.degree:
            raise ValueError(f"threshold {self.threshold} exceeds the degree {self.degree}")
        if set(self.num_examples) != set(self.members) or min(self.num_examples.values()) < 1:
            raise ValueError("num_examples must give every member a positive count")
        if self.staleness is not None:
            if set(self.staleness) != set(self.members):
                raise ValueError("staleness must give every member a factor")
            bad = {m: f for m, f in self.staleness.items() if not MIN_STALENESS_FACTOR <= f <= 1.0}
            if bad:
                raise ValueError(f"staleness factors must lie in [{MIN_STALENESS_FACTOR}, 1], not {bad}")
        return self

    def weight(self, name: str) -> float:
        """``name``'s weight in the sum: its example count times its staleness factor."""
        factor = 1.0 if self.staleness is None else self.staleness[name]
        return self.num_examples[name] * factor

    def weight_share(self, name: str) -> float:
        """``name``'s weight over the weights of all members: what it multiplies its update by."""
        return self.weight(name) / math.fsum(self.weight(m) for m in self.members)


class SecAggAdvert(_Frozen):
    """A member's per-round X25519 keys, signed with its long-term Ed25519 identity."""

    round_id: RoundId
    name: Name
    enc_key: Hex = Field(min_length=64, max_length=64)
    mask_key: Hex = Field(min_length=64, max_length=64)
    signature: Hex = Field(min_length=128, max_length=128)


class SecAggShare(_Frozen):
    """Shares of ``sender``'s secrets for ``receiver``, encrypted to the receiver."""

    round_id: RoundId
    sender: Name
    receiver: Name
    nonce: Hex = Field(min_length=24, max_length=24)
    ciphertext: Hex


class SecAggSurvivors(_Frozen):
    """The members whose masked input arrived, with their signatures on that very list."""

    round_id: RoundId
    survivors: list[Name]
    signatures: dict[str, Hex] = Field(default_factory=dict)


class SecAggReveal(_Frozen):
    """One member's shares for unmasking: self-mask shares of survivors, mask-key shares
    of members that dropped after sharing; never both for the same member."""

    round_id: RoundId
    name: Name
    self_shares: dict[str, Hex]
    key_shares: dict[str, Hex]


class SecAggJoin(_Frozen):
    """Ask a domain to join a secure round with the result of one of the caller's runs."""

    config: SecAggConfig
    run_id: Annotated[str, Field(min_length=8, max_length=64)]


class SecAggSignature(_Frozen):
    """A member's signature on the list of survivors."""

    signature: Hex = Field(min_length=128, max_length=128)
