"""SecAgg+: exact sums, dropouts, abandonment, and a lying orchestrator."""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest

from fednb.errors import InvalidInput
from fednb.privacy import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    SecureNoise,
    _noise,
    accountant_for,
)
from fednb.protocol import ClientDP, SecAggAdvert, SecAggConfig, SecAggShare, SecAggSurvivors
from fednb.runtime import distributed_event, secagg_input, update_event
from fednb.secagg import (
    Identity,
    LocalPeer,
    MaskStream,
    Roster,
    RoundAbandoned,
    SecAggMember,
    SecAggRefused,
    combine,
    encode,
    neighbours,
    propose,
    scale_for,
    secure_sum,
    split,
)


def zero_bits(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.uint32)  # rounding down: the expected sum is computable bit for bit


@dataclass
class World:
    names: list[str]
    ids: dict[str, Identity]
    members: dict[str, SecAggMember]
    updates: dict[str, np.ndarray]
    examples: dict[str, int]

    def peers(self, names: list[str] | None = None) -> dict[str, LocalPeer]:
        return {n: LocalPeer(self.members[n], self.examples[n], lambda n=n: self.updates[n])
                for n in (names or self.names)}

    def shared(self, cfg: SecAggConfig) -> tuple[dict[str, LocalPeer], dict[str, list[SecAggShare]]]:
        """Every member advertised and shared, honestly relayed: the peers and their inboxes."""
        peers = self.peers()
        adverts = [peers[n].advertise(cfg) for n in self.names]
        shares = [s for n in self.names for s in peers[n].share(cfg.round_id, adverts)]
        return peers, {n: [s for s in shares if s.receiver == n] for n in self.names}

    def expected_total(self, cfg: SecAggConfig, survivors: list[str]) -> np.ndarray:
        total = np.zeros(cfg.size, dtype=np.uint32)
        for n in survivors:
            total += encode(self.updates[n], cfg, n, zero_bits)
        return total


def world(n: int, size: int = 257, *, seed: int = 0, min_members: int = 2) -> World:
    rng = np.random.default_rng(seed)
    names = [f"h{i:02d}" for i in range(n)]
    ids = {m: Identity.generate() for m in names}
    members = {m: SecAggMember(m, ids[m], Roster({o: ids[o].public for o in names if o != m}),
                               min_members=min_members, rounding=zero_bits) for m in names}
    updates = {m: rng.normal(0, 1, size) for m in names}
    examples = {m: int(rng.integers(20, 200)) for m in names}
    return World(names, ids, members, updates, examples)


class Drop:
    """A peer that vanishes at one stage (and at every later one)."""

    order = ("advertise", "share", "masked", "consistency", "unmask")

    def __init__(self, peer: LocalPeer, stage: str) -> None:
        self.peer, self.stage = peer, stage

    def _check(self, stage: str) -> None:
        if self.order.index(stage) >= self.order.index(self.stage):
            raise ConnectionError(f"gone at {stage}")

    def advertise(self, config):  # type: ignore[no-untyped-def]
        self._check("advertise")
        return self.peer.advertise(config)

    def share(self, rid, adverts):  # type: ignore[no-untyped-def]
        self._check("share")
        return self.peer.share(rid, adverts)

    def masked(self, rid, shares):  # type: ignore[no-untyped-def]
        self._check("masked")
        return self.peer.masked(rid, shares)

    def consistency(self, rid, survivors):  # type: ignore[no-untyped-def]
        self._check("consistency")
        return self.peer.consistency(rid, survivors)

    def unmask(self, msg):  # type: ignore[no-untyped-def]
        self._check("unmask")
        return self.peer.unmask(msg)


# -- exact sums ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 5, 20])
def test_the_unmasked_sum_is_the_sum_of_the_quantised_updates_exactly(n: int) -> None:
    w = world(n)
    cfg = propose(f"exact-{n}", w.examples, 257, bound=4.0)
    out = secure_sum(cfg, w.peers())
    assert out.survivors == w.names and out.dropped == {}
    assert np.array_equal(out.total, w.expected_total(cfg, w.names))
    plain = sum(w.examples[m] * np.clip(w.updates[m], -4, 4) for m in w.names) / sum(w.examples.values())
    assert np.abs(out.mean - plain).max() < n * 4.0 / 2**30  # within the quantisation step


def test_masked_updates_look_nothing_like_the_updates() -> None:
    w = world(3, size=4096)
    cfg = propose("look", w.examples, 4096, bound=4.0)
    peers, inbox = w.shared(cfg)
    y = peers["h00"].masked(cfg.round_id, inbox["h00"])
    plain = encode(w.updates["h00"], cfg, "h00", zero_bits)
    assert np.mean(y == plain) < 0.01
    assert abs(float(np.mean(y.astype(np.float64))) / 2**32 - 0.5) < 0.02  # uniform-looking


def test_dropping_one_of_five_before_masking_still_gives_the_survivors_exact_sum() -> None:
    w = world(5)
    cfg = propose("drop1", w.examples, 257, bound=4.0)
    peers: dict = w.peers()
    peers["h02"] = Drop(peers["h02"], "masked")  # shared its seeds, never sent its update
    out = secure_sum(cfg, peers)
    alive = [n for n in w.names if n != "h02"]
    assert out.survivors == alive and "h02" in out.dropped
    assert np.array_equal(out.total, w.expected_total(cfg, alive))


def test_dropping_one_of_five_after_masking_keeps_its_update_in_the_sum() -> None:
    w = world(5)
    cfg = propose("drop-late", w.examples, 257, bound=4.0)
    peers: dict = w.peers()
    peers["h04"] = Drop(peers["h04"], "unmask")  # sent its masked update, then vanished
    out = secure_sum(cfg, peers)
    assert out.survivors == w.names
    assert np.array_equal(out.total, w.expected_total(cfg, w.names))


@pytest.mark.parametrize(("n", "offsets"), [(20, (1, 4, 8)), (120, (3,))])
def test_dropouts_still_give_the_survivors_exact_sum(n: int, offsets: tuple[int, ...]) -> None:
    w = world(n, size=64)
    cfg = propose(f"drop-{n}", w.examples, 64, bound=4.0)
    assert n == 20 or cfg.degree < n - 1  # 120: a sparse SecAgg+ graph, not everyone to everyone
    peers: dict = w.peers()
    gone = [m for k in offsets for m in w.names[k::10]]  # 30% of 20, 10% of 120
    for i, n in enumerate(gone):
        peers[n] = Drop(peers[n], "share" if i % 2 else "masked")
    out = secure_sum(cfg, peers)
    alive = [n for n in w.names if n not in gone]
    assert out.survivors == sorted(alive) and sorted(out.dropped) == sorted(gone)
    assert np.array_equal(out.total, w.expected_total(cfg, alive))
    plain = (sum(w.examples[m] * np.clip(w.updates[m], -4, 4) for m in alive)
             / sum(w.examples[m] for m in alive))
    assert np.abs(out.mean - plain).max() < 1e-6


def test_below_the_threshold_the_round_is_abandoned_with_nothing_unmasked() -> None:
    w = world(5)
    cfg = propose("too-few", w.examples, 257, bound=4.0)
    peers: dict = w.peers()
    for n in ["h00", "h01", "h02"]:
        peers[n] = Drop(peers[n], "masked")
    with pytest.raises(RoundAbandoned, match="fewer than the threshold"):
        secure_sum(cfg, peers)
    # the next round goes on with fresh keys
    out = secure_sum(propose("next", w.examples, 257, bound=4.0), w.peers())
    assert out.survivors == w.names


# -- a lying orchestrator ------------------------------------------------------------
def masked_stage(w: World, cfg: SecAggConfig) -> dict[str, LocalPeer]:
    peers, inbox = w.shared(cfg)
    for n in w.names:
        peers[n].masked(cfg.round_id, inbox[n])
    return peers


def test_a_curious_orchestrator_cannot_get_both_shares_of_a_survivor() -> None:
    w = world(5)
    cfg = propose("curious", w.examples, 257, bound=4.0)
    peers = masked_stage(w, cfg)
    everyone, without = w.names, [n for n in w.names if n != "h03"]
    # it shows three domains that h03 survived and two that it dropped
    sigs_all = {n: peers[n].consistency(cfg.round_id, everyone) for n in ["h00", "h01", "h02"]}
    sigs_without = {n: peers[n].consistency(cfg.round_id, without) for n in ["h04"]}
    revealed = [peers[n].unmask(SecAggSurvivors(round_id=cfg.round_id, survivors=everyone,
                                                signatures=sigs_all)) for n in ["h00", "h01", "h02"]]
    assert all("h03" not in r.key_shares for r in revealed)  # only h03's self-mask shares
    # now it asks for h03's mask-key shares, claiming h03 dropped
    with pytest.raises(SecAggRefused, match="signed by 1 members, fewer than the quorum"):
        peers["h04"].unmask(SecAggSurvivors(round_id=cfg.round_id, survivors=without,
                                            signatures=sigs_without))
    for n in ["h00", "h01", "h02"]:  # and the domains that revealed once refuse the other list
        with pytest.raises(SecAggRefused, match=r"revealed its shares for another list|signed another"):
            peers[n].unmask(SecAggSurvivors(round_id=cfg.round_id, survivors=without,
                                            signatures={**sigs_all, **sigs_without}))
        with pytest.raises(SecAggRefused, match="signed another list"):
            peers[n].consistency(cfg.round_id, without)
    with pytest.raises(SecAggRefused, match="differ from the list this domain signed"):
        peers["h04"].unmask(SecAggSurvivors(round_id=cfg.round_id, survivors=everyone, signatures=sigs_all))


def test_a_reveal_never_holds_both_shares_of_one_member() -> None:
    w = world(6)
    cfg = propose("both", w.examples, 257, bound=4.0)
    peers: dict = w.peers()
    peers["h01"] = Drop(peers["h01"], "masked")
    reveals = []
    original = LocalPeer.unmask

    def spy(self, msg):  # type: ignore[no-untyped-def]
        r = original(self, msg)
        reveals.append(r)
        return r

    LocalPeer.unmask = spy  # type: ignore[method-assign]
    try:
        secure_sum(cfg, peers)
    finally:
        LocalPeer.unmask = original  # type: ignore[method-assign]
    assert reveals and all(not set(r.self_shares) & set(r.key_shares) for r in reveals)
    assert any("h01" in r.key_shares for r in reveals) and all("h01" not in r.self_shares for r in reveals)


def test_sybil_members_off_the_roster_make_the_honest_domains_refuse() -> None:
    w = world(3)
    fakes = {f"fake{i}": Identity.generate() for i in range(3)}
    for name, ident in fakes.items():  # the orchestrator runs the fakes itself
        roster = Roster({o: i.public for o, i in {**w.ids, **fakes}.items() if o != name})
        w.members[name] = SecAggMember(name, ident, roster, rounding=zero_bits)
        w.updates[name] = np.zeros(257)
        w.examples[name] = 100
        w.names.append(name)
    cfg = propose("sybil", w.examples, 257, bound=4.0)
    for honest in ["h00", "h01", "h02"]:
        with pytest.raises(SecAggRefused, match="off this domain's roster"):
            w.members[honest].advertise(cfg, w.examples[honest])
    with pytest.raises(RoundAbandoned):
        secure_sum(cfg, w.peers())


def test_a_substituted_public_key_is_detected() -> None:
    w = world(4)
    cfg = propose("swap", w.examples, 257, bound=4.0)
    adverts = [w.members[n].advertise(cfg, w.examples[n]) for n in w.names]
    evil = Identity.generate()
    swapped = list(adverts)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from fednb.secagg._member import advert_message, config_digest, public_bytes

    mine = public_bytes(X25519PrivateKey.generate()).hex()
    # the orchestrator swaps h01's mask key for its own, keeping h01's signature ...
    swapped[1] = adverts[1].model_copy(update={"mask_key": mine})
    with pytest.raises(SecAggRefused, match="key substitution"):
        w.members["h00"].share(cfg.round_id, swapped)
    # ... or re-signing with a key of its own
    sig = evil.sign(advert_message(cfg.round_id, "h01", adverts[1].enc_key, mine, config_digest(cfg)))
    swapped[1] = adverts[1].model_copy(update={"mask_key": mine, "signature": sig})
    with pytest.raises(SecAggRefused, match="key substitution"):
        w.members["h00"].share(cfg.round_id, swapped)
    # and the honest adverts still go through
    assert len(w.members["h00"].share(cfg.round_id, adverts)) == cfg.degree


def test_a_domain_refuses_a_round_below_its_minimum_or_with_a_tiny_threshold() -> None:
    w = world(4, min_members=4)
    three = {n: w.examples[n] for n in w.names[:3]}
    with pytest.raises(SecAggRefused, match="fewer than this domain's minimum"):
        w.members["h00"].advertise(propose("small", three, 257, bound=1.0), w.examples["h00"])
    low = propose("low", w.examples, 257, bound=1.0, threshold=1)
    with pytest.raises(SecAggRefused, match="below a majority"):
        w.members["h00"].advertise(low, w.examples["h00"])
    lie = propose("lie", {**w.examples, "h00": w.examples["h00"] + 1}, 257, bound=1.0)
    with pytest.raises(SecAggRefused, match="examples"):
        w.members["h00"].advertise(lie, w.examples["h00"])


def test_shares_are_encrypted_to_their_receiver() -> None:
    w = world(3)
    cfg = propose("aead", w.examples, 257, bound=4.0)
    peers, inbox = w.shared(cfg)
    to_h00 = inbox["h00"]
    flipped = bytearray(bytes.fromhex(to_h00[0].ciphertext))
    flipped[0] ^= 1
    bad = [to_h00[0].model_copy(update={"ciphertext": flipped.hex()}), *to_h00[1:]]
    with pytest.raises(SecAggRefused, match="fails authentication"):
        peers["h00"].masked(cfg.round_id, bad)
    misrouted = [SecAggShare(**{**s.model_dump(), "receiver": "h00"}) for s in inbox["h01"]]
    with pytest.raises(SecAggRefused, match="not for this domain"):
        peers["h01"].masked(cfg.round_id, misrouted)


# -- the pieces ----------------------------------------------------------------------
def test_shamir_recovers_from_any_t_shares_and_not_from_fewer() -> None:
    secret = bytes(range(32))
    shares = split(secret, 3, [1, 2, 3, 4, 5])
    for pick in itertools.combinations(shares, 3):
        assert combine({x: shares[x] for x in pick}) == secret
    with pytest.raises(InvalidInput, match="do not combine"):
        combine({x: shares[x] for x in (1, 2)})


@pytest.mark.parametrize("n", [3, 7, 20, 50, 200])
def test_the_neighbour_graph_is_symmetric_and_fixed_by_the_round_id(n: int) -> None:
    names = [f"d{i}" for i in range(n)]
    cfg = propose("g", dict.fromkeys(names, 1), 8, bound=1.0)
    g = neighbours("g", names, cfg.degree)
    assert all(a in g[b] for a in names for b in g[a])
    assert all(cfg.degree <= len(v) <= cfg.degree + 1 for v in g.values())
    assert g == neighbours("g", list(reversed(names)), cfg.degree)
    assert n <= 32 or g != neighbours("h", names, cfg.degree)


def test_masks_come_from_the_cipher_stream_and_cancel_mod_2_32() -> None:
    s = MaskStream(1000)
    m1, m2 = s.mask(b"k" * 32).copy(), s.mask(b"j" * 32).copy()
    assert not np.array_equal(m1, m2) and np.array_equal(m1, s.mask(b"k" * 32))
    acc = np.arange(1000, dtype=np.uint32)
    s.add(acc, b"k" * 32, 1)
    s.add(acc, b"k" * 32, -1)
    assert np.array_equal(acc, np.arange(1000, dtype=np.uint32))


def test_config_checks_its_own_consistency() -> None:
    with pytest.raises(ValueError, match="sorted and distinct"):
        SecAggConfig(round_id="r", members=["b", "a"], threshold=1, degree=1, bound=1.0,
                     num_examples={"a": 1, "b": 1}, size=3)
    with pytest.raises(ValueError, match="threshold"):
        SecAggConfig(round_id="r", members=["a", "b"], threshold=2, degree=1, bound=1.0,
                     num_examples={"a": 1, "b": 1}, size=3)
    assert SecAggAdvert.model_fields["signature"].metadata  # hex-constrained on the wire


def test_a_member_given_too_few_shares_refuses_to_send_its_update() -> None:
    # an orchestrator that withholds a member's incoming shares would otherwise get its update
    # masked only by the self mask, whose shares the normal unmask reveals
    w = world(5)
    cfg = propose("starve", w.examples, 257, bound=4.0)
    peers, shares = w.shared(cfg)
    inbox = shares["h02"]
    with pytest.raises(SecAggRefused, match="fewer than the threshold"):
        peers["h02"].masked(cfg.round_id, [])
    with pytest.raises(SecAggRefused, match="fewer than the threshold"):
        peers["h02"].masked(cfg.round_id, inbox[: cfg.threshold - 1])
    assert peers["h02"].masked(cfg.round_id, inbox).dtype == np.uint32  # all its shares: it sends
    with pytest.raises(SecAggRefused, match="past 'shared'"):  # and masks once at most
        peers["h02"].masked(cfg.round_id, inbox)


def test_members_shown_different_settings_detect_it() -> None:
    w = world(4)
    cfg = propose("views", w.examples, 257, bound=4.0)
    other = propose("views", w.examples, 257, bound=400.0)  # same id, another bound
    adverts = [w.members[n].advertise(cfg if n != "h01" else other, w.examples[n]) for n in w.names]
    with pytest.raises(SecAggRefused, match="another view of the round"):
        w.members["h00"].share(cfg.round_id, adverts)


def test_late_failures_stay_in_the_sum_and_are_reported_apart() -> None:
    w = world(5)
    cfg = propose("late", w.examples, 257, bound=4.0)
    peers: dict = w.peers()
    peers["h03"] = Drop(peers["h03"], "consistency")
    out = secure_sum(cfg, peers)
    assert out.survivors == w.names and out.dropped == {} and list(out.late) == ["h03"]
    assert np.array_equal(out.total, w.expected_total(cfg, w.names))


# -- distributed discrete noise ------------------------------------------------------
def fixed_key_noise(monkeypatch: pytest.MonkeyPatch) -> SecureNoise:
    """A SecureNoise keyed from a fixed counter instead of os.urandom: the test is deterministic."""
    counter = itertools.count()

    def urandom(n: int) -> bytes:
        return hashlib.shake_256(f"fednb-test-{next(counter)}".encode()).digest(n)

    monkeypatch.setattr(_noise.os, "urandom", urandom)
    return SecureNoise()


def noisy_peers(w: World, noise: SecureNoise) -> dict[str, LocalPeer]:
    size = next(iter(w.updates.values())).size
    return {n: LocalPeer(w.members[n], w.examples[n], lambda: np.zeros(size),
                         lambda cfg, v: (v, noise.discrete_gaussian)) for n in w.names}


@pytest.mark.parametrize("dropped", [0, 1, 2])
def test_distributed_noise_of_t_to_n_survivors_has_the_target_variance(
        dropped: int, monkeypatch: pytest.MonkeyPatch) -> None:
    noise = fixed_key_noise(monkeypatch)
    w = world(5, size=20_000)
    z_c = 0.5  # each member's client-level noise z C, in the units of the update
    cfg = propose(f"ddg-{dropped}", w.examples, 20_000, bound=4.0, noise_std=z_c)
    assert cfg.threshold == 3 and cfg.noise_sigma is not None
    peers: dict = noisy_peers(w, noise)
    for n in w.names[:dropped]:
        peers[n] = Drop(peers[n], "masked")
    if dropped == 2:  # t survivors hold only t - 1 shares of each other's self masks: here a sum
        with pytest.raises(RoundAbandoned):  # is never unmasked with fewer than t + 1, nor below t
            secure_sum(cfg, peers)
        return
    out = secure_sum(cfg, peers)
    k = 5 - dropped
    assert len(out.survivors) == k
    total = out.total.view(np.int32).astype(np.float64)  # zero updates: the survivors' shares alone
    assert abs(total.mean()) < 4 * math.sqrt(k) * cfg.noise_sigma / math.sqrt(total.size)
    assert total.var() == pytest.approx(k * cfg.noise_sigma**2, rel=0.05)  # +-5 standard errors
    # what every member adding z C would put into the weighted sum, in quantised units:
    # the fewest survivors the round can unmask (t) carry at least that
    weights = np.array(list(w.examples.values())) / sum(w.examples.values())
    target = z_c * scale_for(4.0, 5) * math.sqrt(float(np.sum(weights**2)))
    assert math.sqrt(cfg.threshold) * cfg.noise_sigma == pytest.approx(target, rel=1e-12)
    assert total.std() > 0.97 * target * math.sqrt(k / cfg.threshold)


def test_the_noise_share_is_signed_with_the_round_settings() -> None:
    w = world(4)
    cfg = propose("ddg-views", w.examples, 257, bound=4.0, noise_std=1.0)
    assert cfg.noise_sigma is not None
    less = cfg.model_copy(update={"noise_sigma": cfg.noise_sigma / 10})  # a lying orchestrator
    adverts = [w.members[n].advertise(cfg if n != "h01" else less, w.examples[n]) for n in w.names]
    with pytest.raises(SecAggRefused, match="another view of the round"):
        w.members["h00"].share(cfg.round_id, adverts)


def test_a_round_with_distributed_noise_refuses_a_member_without_a_noise_source() -> None:
    w = world(3)
    cfg = propose("ddg-none", w.examples, 257, bound=4.0, noise_std=1.0)
    peers, inbox = w.shared(cfg)
    with pytest.raises(SecAggRefused, match="no noise source"):
        peers["h00"].masked(cfg.round_id, inbox["h00"])


def test_a_member_off_the_roster_is_refused_even_with_distributed_noise() -> None:
    # the shares are only as good as the members adding them: a domain relies on them only
    # with every member on its owner's roster, and refuses a round with a stranger
    w = world(4)
    w.members["h00"].roster = Roster({o: w.ids[o].public for o in ("h01", "h02")})
    cfg = propose("ddg-sybil", w.examples, 257, bound=4.0, noise_std=1.0)
    with pytest.raises(SecAggRefused, match="off this domain's roster"):
        w.members["h00"].advertise(cfg, w.examples["h00"])


def test_the_distributed_charge_is_below_the_full_local_one_at_equal_sum_noise() -> None:
    # five hospitals of equal size; the round's three (t) shares carry exactly the noise that
    # five hospitals each adding z C would put in the mean: each is charged far less
    dp = ClientDP(clip=1.0, noise_multiplier=8.0)
    examples = {f"h{i}": 100 for i in range(5)}
    cfg = propose("ddg-charge", examples, 10_000, bound=50.0, noise_std=dp.noise_multiplier * dp.clip)
    local = accountant_for("pld").epsilon(update_event(dp, False), 1e-6)
    event = distributed_event(cfg, "h0", dp.clip)
    assert isinstance(event, DistributedDiscreteGaussianEvent) and event.shares == cfg.threshold == 3
    eps = accountant_for("pld").epsilon(event, 1e-6)
    assert local == pytest.approx(1.0618, abs=1e-3) and eps < 0.55 * local  # with the grid's slack
    # conservative: no less than an exact Gaussian of that noise would cost
    assert eps > accountant_for("pld").epsilon(GaussianEvent(event.noise_multiplier, 2.0), 1e-6)


def test_a_member_that_cannot_rely_on_the_shares_adds_its_full_noise_and_keeps_its_charge() -> None:
    dp = ClientDP(clip=1.0, noise_multiplier=2.0)
    examples = {f"h{i}": 100 for i in range(3)}
    vec = np.zeros(50_000)
    noise = SecureNoise()
    for cfg, accept in ((propose("fb1", examples, vec.size, 50.0), True),  # no noise in the round
                        (propose("fb2", examples, vec.size, 50.0, noise_std=2.0), False)):  # refused
        entry = secagg_input(cfg, "h0", vec, dp=dp, deferred=True, metrics=False, noise=noise,
                             accept=lambda e, a=accept: a)
        assert entry.event is None  # the run's full local charge stands
        assert entry.vector.std() == pytest.approx(2.0, rel=0.02)  # z C, as without distribution
    cfg = propose("fb3", examples, vec.size, 50.0, noise_std=2.0)
    entry = secagg_input(cfg, "h0", vec, dp=dp, deferred=True, metrics=True, noise=noise,
                         accept=lambda e: True)
    assert isinstance(entry.event, ComposedEvent) and np.array_equal(entry.vector, vec)  # noised in the round
    entry = secagg_input(cfg, "h0", vec + 1, dp=dp, deferred=False, metrics=False, noise=noise,
                         accept=lambda e: True)
    assert entry.event is None and np.array_equal(entry.vector, vec + 1)  # noised already: only the share


def test_a_deferred_vector_is_clipped_again_before_either_charge() -> None:
    # both the distributed and the fallback charge assume norm <= clip; a kept vector that
    # grew (e.g. through a lossy encoding) must not enter the round larger
    dp = ClientDP(clip=1.0, noise_multiplier=2.0)
    examples = {f"h{i}": 100 for i in range(3)}
    big = np.full(10_000, 0.05)  # norm 5 = 5 C
    cfg = propose("reclip", examples, big.size, 50.0, noise_std=2.0)
    entry = secagg_input(cfg, "h0", big, dp=dp, deferred=True, metrics=False, noise=SecureNoise(),
                         accept=lambda e: True)
    assert entry.event is not None and float(np.linalg.norm(entry.vector)) <= 1.0 + 1e-9


def test_shares_below_one_half_give_no_distributed_charge() -> None:
    # Kairouz et al.'s Proposition 14 holds for s >= 1/2: below it the member relies on
    # nothing and keeps its full local noise and charge
    examples = {f"h{i}": 100 for i in range(3)}
    cfg = propose("tiny", examples, 100, 50.0, noise_std=1e-8)  # in quantised units: about 0.18
    assert cfg.noise_sigma is not None and cfg.noise_sigma < 0.5
    assert distributed_event(cfg, "h0", 1.0) is None
    with pytest.raises(InvalidInput, match=r"0\.5"):
        DistributedDiscreteGaussianEvent(1.0, 3, 0.4, 10)
