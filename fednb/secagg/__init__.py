"""Secure aggregation: SecAgg+ (Bell et al. 2020) on Bonawitz et al. (2017).

The orchestrator learns only the sum of the members' quantised updates, even when
members drop out mid-round and even if it lies about who takes part:

- each domain has a long-term Ed25519 :class:`Identity`; its owner keeps a
  :class:`Roster` of the peers it will aggregate with, and a domain refuses a round with
  members off its roster or fewer than its minimum;
- per-round X25519 keys are signed by the identity, so the relaying orchestrator cannot
  substitute keys; Shamir shares of the self-mask seed and the mask key travel encrypted
  (ChaCha20-Poly1305) to each neighbour, on a graph of logarithmic degree (everyone for
  small rounds) fixed by the round id;
- updates are clipped, weighted by example counts, stochastically quantised into 32-bit
  integers and masked with AES-256-CTR keystreams; the sum is taken mod 2^32;
- survivors sign the list of survivors, and a domain reveals shares only for that list
  signed by a quorum, once: for each neighbour either its self-mask share or its mask-key
  share, never both. Fewer than ``threshold`` survivors abandon the round.

:class:`SecAggMember` is the domain's side (the trusted parent; ``simulate`` uses the
same class in-process); :func:`secure_sum` is the orchestrator's, in the round driver.
"""

from fednb.secagg._identity import Identity, Roster, public_key
from fednb.secagg._local import LocalPeer
from fednb.secagg._masks import MaskStream, default_degree, dequantise, neighbours, quantise, scale_for
from fednb.secagg._member import SecAggMember, SecAggRefused, encode
from fednb.secagg._orchestrator import RoundAbandoned, SecAggPeer, SecureSum, propose, round_id, secure_sum
from fednb.secagg._shamir import combine, split

__all__ = [
    "Identity",
    "LocalPeer",
    "MaskStream",
    "Roster",
    "RoundAbandoned",
    "SecAggMember",
    "SecAggPeer",
    "SecAggRefused",
    "SecureSum",
    "combine",
    "default_degree",
    "dequantise",
    "encode",
    "neighbours",
    "propose",
    "public_key",
    "quantise",
    "round_id",
    "scale_for",
    "secure_sum",
    "split",
]
