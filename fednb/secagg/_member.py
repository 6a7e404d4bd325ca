"""The domain's side of SecAgg+: one state machine per round, in the trusted parent.

Stages, each answered at most once per round (a repeat of ``advertise``, ``share``,
``consistency`` or ``unmask`` with the same input gets the same answer; anything else is
refused, and ``masked`` is never answered twice: masking again would leak a difference):

1. ``advertise``: check the proposed round (every member on the owner's roster, enough
   members, a threshold of a majority of neighbours, our own example count) and answer
   fresh X25519 keys signed by the domain's Ed25519 identity.
2. ``share``: check every advert's signature against the roster (a substituted key is
   caught here), then Shamir-share a fresh self-mask seed and the mask key among our
   neighbours, each share encrypted to its holder (X25519 + ChaCha20-Poly1305).
3. ``masked``: decrypt the shares sent to us, quantise our update and add the self mask
   and one pairwise mask per neighbour that shared (mod 2^32).
4. ``consistency``: sign the list of survivors, once.
5. ``unmask``: given that very list signed by a quorum, reveal for each neighbour either
   its self-mask share (it survived) or its mask-key share (it dropped), never both.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fednb.errors import SecAggRefused
from fednb.protocol import (
    MIN_STALENESS_FACTOR,
    SecAggAdvert,
    SecAggConfig,
    SecAggReveal,
    SecAggShare,
    SecAggSurvivors,
)
from fednb.secagg._identity import Identity, Roster, canonical, verify
from fednb.secagg._masks import MaskStream, derive_key, neighbours, quantise, random_bits, scale_for
from fednb.secagg._shamir import split
from fednb.typing import FloatArray

__all__ = ["SecAggMember", "SecAggRefused", "advert_message", "config_digest", "encode", "mask_key_info",
           "public_bytes", "self_mask_info", "share_points", "survivors_message"]


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def config_digest(config: SecAggConfig) -> str:
    """SHA-256 of the round's settings: adverts sign it, so every member sees the same round."""
    return hashlib.sha256(canonical(config.model_dump(mode="json"))).hexdigest()


def advert_message(round_id: str, name: str, enc_key: str, mask_key: str, digest: str) -> bytes:
    return canonical("fednb-secagg-advert", round_id, name, enc_key, mask_key, digest)


def survivors_message(round_id: str, survivors: list[str]) -> bytes:
    return canonical("fednb-secagg-survivors", round_id, sorted(survivors))


def mask_key_info(round_id: str, a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    return f"fednb-secagg-mask|{round_id}|{lo}|{hi}"


def self_mask_info(round_id: str, name: str) -> str:
    return f"fednb-secagg-self|{round_id}|{name}"


def share_points(members: list[str]) -> dict[str, int]:
    """Each member's x coordinate for Shamir shares (its place in the sorted list, from 1)."""
    return {m: i + 1 for i, m in enumerate(members)}


def encode(update: FloatArray, config: SecAggConfig, name: str,
           bits: Callable[[int], np.ndarray] = random_bits) -> np.ndarray:
    """``name``'s update as it enters the sum, before masks: clipped into [-bound, bound],
    weighted by its share of the round's weights (example counts, times staleness factors in
    asynchronous rounds), quantised into uint32."""
    weight = config.weight_share(name)
    weighted = np.clip(update, -config.bound, config.bound) * weight
    return quantise(weighted, scale_for(config.bound, len(config.members)), config.bound, bits)


def _share_key(enc: X25519PrivateKey, peer_public: str, round_id: str, sender: str, receiver: str) -> bytes:
    shared = enc.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public)))
    return derive_key(shared, f"fednb-secagg-share|{round_id}|{sender}|{receiver}")


@dataclass
class _Round:
    config: SecAggConfig
    enc: X25519PrivateKey
    mask: X25519PrivateKey
    advert: SecAggAdvert
    nbrs: list[str]
    stage: str = "advertised"
    adverts: dict[str, SecAggAdvert] = field(default_factory=dict)
    seed: bytes = b""
    shares_out: list[SecAggShare] = field(default_factory=list)
    received: dict[str, tuple[int, int]] = field(default_factory=dict)  # sender -> (self, key)
    signed: list[str] | None = None
    signature: str = ""
    reveal: SecAggReveal | None = None


class SecAggMember:
    """One domain's secure-aggregation endpoint.

    Parameters
    ----------
    name
        The domain's name as its peers' rosters know it.
    identity
        Its long-term Ed25519 identity.
    roster
        The peers its owner will aggregate with.
    min_members
        The fewest members a round may have (the owner's policy).
    rounding
        The source of stochastic-rounding bits (default: a fresh AES-CTR stream); tests
        pass a fixed one to check sums bit for bit.
    """

    def __init__(self, name: str, identity: Identity, roster: Roster, *, min_members: int = 3,
                 rounding: Callable[[int], np.ndarray] = random_bits) -> None:
        self.name, self.identity, self.roster, self.min_members = name, identity, roster, min_members
        self.rounding = rounding
        self._rounds: dict[str, _Round] = {}
        self._lock = threading.Lock()

    def _public(self, name: str) -> str | None:
        return self.identity.public if name == self.name else self.roster.key(name)

    def _round(self, round_id: str, stage: str) -> _Round:
        r = self._rounds.get(round_id)
        if r is None:
            raise SecAggRefused(f"round {round_id!r} is unknown here: it must start with advertise")
        if r.stage != stage:
            raise SecAggRefused(f"round {round_id!r} is past {stage!r} (now {r.stage!r}); each step "
                                "is answered once")
        return r

    # -- 1 -----------------------------------------------------------------------------
    def advertise(self, config: SecAggConfig, num_examples: int) -> SecAggAdvert:
        with self._lock:
            old = self._rounds.get(config.round_id)
            if old is not None:
                if old.config != config:
                    raise SecAggRefused(f"round {config.round_id!r} was proposed before with other settings")
                return old.advert
            if self.name not in config.members:
                raise SecAggRefused(f"{self.name!r} is not a member of round {config.round_id!r}")
            strangers = [m for m in config.members if m != self.name and m not in self.roster]
            if strangers:
                raise SecAggRefused(f"members off this domain's roster: {strangers}; the owner trusts "
                                    f"{sorted(self.roster.as_dict())}")
            if len(config.members) < self.min_members:
                raise SecAggRefused(f"{len(config.members)} members is fewer than this domain's minimum "
                                    f"of {self.min_members}")
            if config.num_examples[self.name] != num_examples:
                raise SecAggRefused(f"the round gives {self.name!r} {config.num_examples[self.name]} "
                                    f"examples; it has {num_examples}")
            factors = (config.staleness or {}).values()
            if any(not MIN_STALENESS_FACTOR <= f <= 1.0 for f in factors):
                raise SecAggRefused(f"the round's staleness factors {config.staleness} leave "
                                    f"[{MIN_STALENESS_FACTOR}, 1]: members weighted near zero would "
                                    "expose the others' updates")
            nbrs = neighbours(config.round_id, config.members, config.degree)[self.name]
            if config.threshold < len(nbrs) // 2 + 1:
                raise SecAggRefused(f"threshold {config.threshold} is below a majority of this domain's "
                                    f"{len(nbrs)} neighbours")
            enc, mask = X25519PrivateKey.generate(), X25519PrivateKey.generate()
            ek, mk = public_bytes(enc).hex(), public_bytes(mask).hex()
            digest = config_digest(config)
            sig = self.identity.sign(advert_message(config.round_id, self.name, ek, mk, digest))
            advert = SecAggAdvert(round_id=config.round_id, name=self.name, enc_key=ek, mask_key=mk,
                                  signature=sig)
            self._rounds[config.round_id] = _Round(config, enc, mask, advert, nbrs)
            return advert

    # -- 2 -----------------------------------------------------------------------------
    def share(self, round_id: str, adverts: list[SecAggAdvert]) -> list[SecAggShare]:
        with self._lock:
            r = self._rounds.get(round_id)
            if r is not None and r.stage != "advertised" and {a.name: a for a in adverts} == r.adverts:
                return r.shares_out
            r = self._round(round_id, "advertised")
            cfg = r.config
            seen: dict[str, SecAggAdvert] = {}
            for a in adverts:
                if a.round_id != round_id or a.name not in cfg.members or a.name in seen:
                    raise SecAggRefused(f"an advert for {a.name!r} does not belong to round {round_id!r}")
                key = self._public(a.name)
                text = advert_message(round_id, a.name, a.enc_key, a.mask_key, config_digest(cfg))
                if key is None or not verify(key, text, a.signature):
                    raise SecAggRefused(f"the keys of {a.name!r} are not signed by its identity on this "
                                        "domain's roster for this round's settings: key substitution "
                                        "or another view of the round detected")
                seen[a.name] = a
            if seen.get(self.name) != r.advert:
                raise SecAggRefused("this domain's own advert was altered or left out: key substitution "
                                    "detected")
            if len(seen) < self.min_members:
                raise SecAggRefused(f"only {len(seen)} members advertised keys, fewer than this domain's "
                                    f"minimum of {self.min_members}")
            holders = [v for v in r.nbrs if v in seen]
            if len(holders) < cfg.threshold:
                raise SecAggRefused(f"only {len(holders)} neighbours advertised keys, fewer than the "
                                    f"threshold {cfg.threshold}")
            r.adverts, r.seed = seen, os.urandom(32)
            pts = share_points(cfg.members)
            xs = [pts[v] for v in holders]
            self_sh = split(r.seed, cfg.threshold, xs)
            key_sh = split(private_bytes(r.mask), cfg.threshold, xs)
            out = []
            for v in holders:
                aead = ChaCha20Poly1305(_share_key(r.enc, seen[v].enc_key, round_id, self.name, v))
                nonce = os.urandom(12)
                body = json.dumps({"self": format(self_sh[pts[v]], "x"), "key": format(key_sh[pts[v]], "x")})
                ct = aead.encrypt(nonce, body.encode(), f"{round_id}|{self.name}|{v}".encode())
                out.append(SecAggShare(round_id=round_id, sender=self.name, receiver=v, nonce=nonce.hex(),
                                       ciphertext=ct.hex()))
            r.shares_out, r.stage = out, "shared"
            return out

    # -- 3 -----------------------------------------------------------------------------
    def config(self, round_id: str) -> SecAggConfig:
        """The settings of a round this domain advertised keys for (signed with its advert)."""
        with self._lock:
            r = self._rounds.get(round_id)
            if r is None:
                raise SecAggRefused(f"round {round_id!r} is unknown here: it must start with advertise")
            return r.config

    def masked(self, round_id: str, shares: list[SecAggShare], update: FloatArray,
               noise: Callable[[int, float], np.ndarray] | None = None) -> np.ndarray:
        """Our quantised, masked update (uint32) for the round.

        When the round carries distributed noise (``config.noise_sigma``), ``noise(n, sigma)``
        must give n integer samples of N_Z(0, sigma^2) from a CSPRNG; the share is added to
        the quantised update before the masks.
        """
        with self._lock:
            r = self._round(round_id, "shared")
            cfg = r.config
            if cfg.noise_sigma is not None and noise is None:
                raise SecAggRefused(f"round {round_id!r} adds distributed noise and this member was "
                                    "given no noise source")
            if update.ndim != 1 or update.size != cfg.size:
                raise SecAggRefused(f"the update has {update.size} values; the round sums {cfg.size}")
            received: dict[str, tuple[int, int]] = {}
            for s in shares:
                if s.receiver != self.name or s.sender not in r.nbrs or s.sender not in r.adverts:
                    raise SecAggRefused(f"a share from {s.sender!r} to {s.receiver!r} is not for this domain")
                aead = ChaCha20Poly1305(_share_key(r.enc, r.adverts[s.sender].enc_key, round_id,
                                                   s.sender, self.name))
                try:
                    body = json.loads(aead.decrypt(bytes.fromhex(s.nonce), bytes.fromhex(s.ciphertext),
                                                   f"{round_id}|{s.sender}|{self.name}".encode()))
                except (InvalidTag, ValueError):
                    raise SecAggRefused(f"the share from {s.sender!r} fails authentication") from None
                received[s.sender] = (int(body["self"], 16), int(body["key"], 16))
            if len(received) < cfg.threshold:
                # with fewer pairwise masks than t, an orchestrator that withheld shares could
                # strip them and the self mask (revealed for a survivor) and read our update
                raise SecAggRefused(f"shares arrived from {len(received)} neighbours, fewer than the "
                                    f"threshold {cfg.threshold}: this domain does not send its update")
            acc = encode(update, cfg, self.name, self.rounding)
            if cfg.noise_sigma is not None and noise is not None:
                share = np.asarray(noise(cfg.size, cfg.noise_sigma))
                if share.shape != (cfg.size,) or share.dtype.kind != "i":
                    raise SecAggRefused("the noise source gave no integer vector of the round's size")
                np.add(acc, share.astype(np.uint32), out=acc)  # two's complement: mod 2^32
            stream = MaskStream(cfg.size)
            stream.add(acc, derive_key(r.seed, self_mask_info(round_id, self.name)))
            for v in sorted(received):
                peer = X25519PublicKey.from_public_bytes(bytes.fromhex(r.adverts[v].mask_key))
                shared = r.mask.exchange(peer)
                stream.add(acc, derive_key(shared, mask_key_info(round_id, self.name, v)),
                           1 if self.name < v else -1)
            r.received, r.stage = received, "masked"
            return acc

    # -- 4 -----------------------------------------------------------------------------
    def consistency(self, round_id: str, survivors: list[str]) -> str:
        with self._lock:
            r = self._rounds.get(round_id)
            if r is not None and r.signed is not None:
                if sorted(survivors) != r.signed:
                    raise SecAggRefused("this domain signed another list of survivors for this round")
                return r.signature
            r = self._round(round_id, "masked")
            if self.name not in survivors or not set(survivors) <= set(r.adverts):
                raise SecAggRefused("the survivors must include this domain and only members that advertised")
            r.signed = sorted(survivors)
            r.signature = self.identity.sign(survivors_message(round_id, r.signed))
            r.stage = "signed"
            return r.signature

    # -- 5 -----------------------------------------------------------------------------
    def unmask(self, msg: SecAggSurvivors) -> SecAggReveal:
        with self._lock:
            r = self._rounds.get(msg.round_id)
            if r is not None and r.reveal is not None:
                if sorted(msg.survivors) != r.signed:
                    raise SecAggRefused("this domain already revealed its shares for another list of "
                                        "survivors: it reveals once per round")
                return r.reveal
            r = self._round(msg.round_id, "signed")
            if sorted(msg.survivors) != r.signed:
                raise SecAggRefused("the survivors differ from the list this domain signed")
            text = survivors_message(msg.round_id, r.signed)
            valid = [n for n, sig in msg.signatures.items()
                     if n in r.signed and (key := self._public(n)) is not None and verify(key, text, sig)]
            quorum = max(r.config.threshold, len(r.adverts) // 2 + 1)
            if len(valid) < quorum:
                raise SecAggRefused(f"the survivors are signed by {len(valid)} members, fewer than the "
                                    f"quorum of {quorum}")
            reveal = SecAggReveal(
                round_id=msg.round_id, name=self.name,
                self_shares={v: format(sh[0], "x") for v, sh in r.received.items() if v in r.signed},
                key_shares={v: format(sh[1], "x") for v, sh in r.received.items() if v not in r.signed})
            r.reveal, r.stage = reveal, "revealed"
            r.seed, r.received = b"", {}  # nothing left to reveal
            return reveal

    def forget(self, round_id: str) -> None:
        with self._lock:
            self._rounds.pop(round_id, None)
