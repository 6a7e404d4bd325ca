"""The orchestrator's side of SecAgg+: relay the members' messages, then unmask the sum.

The orchestrator learns the masked vectors (uniformly random on their own), the members'
public keys and, at the end, the sum of the survivors' quantised updates: nothing else.
Domains never talk to each other; every message goes through here, signed or encrypted
end to end.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from fednb.errors import FednbError, InvalidInput, RoundAbandoned
from fednb.protocol import SecAggAdvert, SecAggConfig, SecAggReveal, SecAggShare, SecAggSurvivors
from fednb.secagg._masks import MaskStream, default_degree, dequantise, derive_key, neighbours, scale_for
from fednb.secagg._member import mask_key_info, self_mask_info, share_points
from fednb.secagg._shamir import combine
from fednb.typing import FloatArray

__all__ = ["RoundAbandoned", "SecAggPeer", "SecureSum", "propose", "secure_sum"]

T = TypeVar("T")


class SecAggPeer(Protocol):
    """A member as the orchestrator reaches it (in-process or over HTTP)."""

    def advertise(self, config: SecAggConfig) -> SecAggAdvert: ...
    def share(self, round_id: str, adverts: list[SecAggAdvert]) -> list[SecAggShare]: ...
    def masked(self, round_id: str, shares: list[SecAggShare]) -> np.ndarray: ...
    def consistency(self, round_id: str, survivors: list[str]) -> str: ...
    def unmask(self, msg: SecAggSurvivors) -> SecAggReveal: ...


@dataclass
class SecureSum:
    """What a secure round reveals: the survivors' weighted mean, and who took part.

    ``mean`` is ``sum_i w_i x_i / sum_i w_i`` over the survivors, w_i their weights
    (:meth:`SecAggConfig.weight`), x_i their clipped updates."""

    mean: FloatArray
    total: np.ndarray  # the survivors' quantised, weighted updates summed mod 2^32
    survivors: list[str]
    dropped: dict[str, str] = field(default_factory=dict)  # left before its masked update: name -> why
    late: dict[str, str] = field(default_factory=dict)  # failed after it (still in the sum): name -> why
    num_examples: int = 0
    bytes_up: int = 0
    total_weight: float = 0.0  # the survivors' weights summed (examples times staleness factors)


def propose(round_id: str, num_examples: dict[str, int], size: int, bound: float,
            degree: int | None = None, threshold: int | None = None,
            noise_std: float | None = None, staleness: dict[str, float] | None = None) -> SecAggConfig:
    """A round's settings: neighbours of logarithmic degree (everyone for small rounds) and a
    threshold of a majority of each neighbourhood plus one.

    ``staleness`` (asynchronous rounds): each member's staleness factor in
    [``MIN_STALENESS_FACTOR``, 1], multiplying its example count in its weight; every
    member signs the factors with the rest of the settings. None: all 1.

    ``noise_std`` (the members' client-level noise, z C, in the units of the update) asks for
    distributed noise: each member's discrete Gaussian share is sized so that the sum of any
    ``threshold`` shares carries the noise that every member adding z C would put into the
    weighted sum, ``z C sqrt(sum_i w_i^2)`` (w_i: example weights), in quantised units.
    """
    members = sorted(num_examples)
    if len(members) < 2:
        raise InvalidInput("secure aggregation needs at least 2 members")
    k = default_degree(len(members)) if degree is None else degree
    nbrs = neighbours(round_id, members, k)
    smallest = min(len(v) for v in nbrs.values())
    t = threshold if threshold is not None else min(smallest, max(len(v) for v in nbrs.values()) // 2 + 1)
    config = SecAggConfig(round_id=round_id, members=members, threshold=t, degree=k, bound=bound,
                          num_examples=dict(num_examples), size=size,
                          staleness=None if staleness is None else dict(staleness))
    if noise_std is None:
        return config
    spread = math.sqrt(math.fsum(config.weight_share(m) ** 2 for m in members))
    sigma = noise_std * scale_for(bound, len(members)) * spread / math.sqrt(t)
    return SecAggConfig.model_validate({**config.model_dump(), "noise_sigma": sigma})


def _gather(call: Callable[[str], T], names: Iterable[str], executor: Executor | None,
            dropped: dict[str, str], stage: str) -> dict[str, T]:
    def attempt(n: str) -> T | Exception:
        try:
            return call(n)
        except Exception as exc:  # a member that fails or refuses drops out here
            return exc

    names = list(names)
    results = list(map(attempt, names) if executor is None else executor.map(attempt, names))
    out: dict[str, T] = {}
    for n, res in zip(names, results, strict=True):
        if isinstance(res, Exception):
            why = str(res) if isinstance(res, FednbError) else type(res).__name__
            dropped[n] = f"{stage}: {why}"
        else:
            out[n] = res
    return out


def secure_sum(config: SecAggConfig, peers: dict[str, SecAggPeer], *,
               executor: Executor | None = None) -> SecureSum:
    """Run one SecAgg+ round over ``peers`` (the members of ``config``).

    Raises :class:`RoundAbandoned` when too few members are left at any stage to unmask;
    nothing about any member's update is revealed then.
    """
    rid, members = config.round_id, config.members
    if sorted(peers) != members:
        raise InvalidInput("the peers must be exactly the round's members")
    dropped: dict[str, str] = {}
    nbrs = neighbours(rid, members, config.degree)

    adverts = _gather(lambda n: peers[n].advertise(config), members, executor, dropped, "advertise")
    u1 = sorted(adverts)
    shares = _gather(lambda n: peers[n].share(rid, [adverts[m] for m in u1]), u1, executor, dropped, "share")
    u2 = sorted(shares)
    inbox: dict[str, list[SecAggShare]] = {n: [] for n in u2}
    for batch in shares.values():
        for s in batch:
            if s.receiver in inbox:
                inbox[s.receiver].append(s)
    masked = _gather(lambda n: peers[n].masked(rid, inbox[n]), u2, executor, dropped, "masked")
    u3 = sorted(masked)
    if len(u3) < max(2, config.threshold):
        raise RoundAbandoned(f"round {rid}: {len(u3)} members sent masked updates, fewer than the "
                             f"threshold {config.threshold}; nothing was unmasked ({dropped})")
    late: dict[str, str] = {}
    sigs = _gather(lambda n: peers[n].consistency(rid, u3), u3, executor, late, "consistency")
    msg = SecAggSurvivors(round_id=rid, survivors=u3, signatures=sigs)
    reveals = _gather(lambda n: peers[n].unmask(msg), sorted(sigs), executor, late, "unmask")

    pts = share_points(members)
    size = config.size
    total = np.zeros(size, dtype=np.uint32)
    for n in u3:
        y = masked[n]
        if y.dtype != np.uint32 or y.shape != (size,):
            raise RoundAbandoned(f"round {rid}: {n!r} sent a masked update of the wrong shape or type")
        np.add(total, y, out=total)
    stream = MaskStream(size)

    def recover(owner: str, kind: str) -> bytes:
        got = {pts[r.name]: int(getattr(r, kind)[owner], 16) for r in reveals.values()
               if owner in getattr(r, kind)}
        if len(got) < config.threshold:
            raise RoundAbandoned(f"round {rid}: {len(got)} shares of {owner!r}'s secret came back, fewer "
                                 f"than the threshold {config.threshold}; the sum stays masked")
        try:
            return combine(dict(list(got.items())[:config.threshold]))
        except InvalidInput:
            raise RoundAbandoned(f"round {rid}: the shares of {owner!r} do not combine") from None

    for n in u3:  # survivors' self masks
        stream.add(total, derive_key(recover(n, "self_shares"), self_mask_info(rid, n)), -1)
    for v in sorted(set(u2) - set(u3)):  # pairwise masks survivors share with the dropped
        key = X25519PrivateKey.from_private_bytes(recover(v, "key_shares"))
        for u in nbrs[v]:
            if u in u3:
                shared = key.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(adverts[u].mask_key)))
                stream.add(total, derive_key(shared, mask_key_info(rid, u, v)), -1 if u < v else 1)
    w_all = math.fsum(config.weight(n) for n in members)
    w_alive = math.fsum(config.weight(n) for n in u3)
    mean = dequantise(total, scale_for(config.bound, len(members))) * (w_all / w_alive)
    n_alive = sum(config.num_examples[n] for n in u3)
    return SecureSum(mean, total, u3, dropped, late, n_alive, bytes_up=4 * size * len(u3),
                     total_weight=w_alive)


def round_id(prefix: str) -> str:
    """A fresh round id under ``prefix`` (round ids must never repeat: keys derive from them)."""
    return f"{prefix}-{secrets.token_hex(8)}"
