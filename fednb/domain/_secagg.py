"""The domain's side of secure aggregation: its identity, the roster, the round desk.

The SecAgg+ member lives here, in the trusted parent (never in a sandboxed worker): a
run made with ``secure=True`` keeps its (clipped, noised) result as ``secagg``, never
downloadable; the scientist who made it may then take the domain through one round
(:mod:`fednb.secagg`), in which the result leaves only quantised and masked, once, after
which it is deleted (``masked``). Members are named by their identity's public key, so
the roster is the set of keys the owner trusts (with the owner's labels for them).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from fednb.domain._lifecycle import Release, check_move
from fednb.domain._store import RunRow, SettingRow, UserRow
from fednb.errors import InvalidInput, NotFound
from fednb.privacy import Event
from fednb.protocol import (
    ClientDP,
    SecAggAdvert,
    SecAggConfig,
    SecAggJoin,
    SecAggReveal,
    SecAggShare,
    SecAggSurvivors,
    decode_message,
    decompress,
    encode_message,
)
from fednb.runtime import SecAggInput, secagg_input
from fednb.secagg import Identity, Roster, SecAggMember, SecAggRefused
from fednb.secagg import public_key as secagg_public_key
from fednb.strategies import flatten
from fednb.typing import FloatArray

if TYPE_CHECKING:
    from fednb.domain._domain import Domain

__all__ = ["PeerBook", "SecAggDesk"]


class PeerBook:
    """``dom.peers``: the peer domains this owner will aggregate with (label -> public key)."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain

    def list(self) -> dict[str, str]:
        with self._d.store.session() as s:
            row = s.get(SettingRow, "peers")
        return dict(row.value) if row is not None else {}

    def _save(self, peers: dict[str, str], actor: str, action: str, label: str, key: str) -> None:
        with self._d.transaction() as tx:
            row = tx.s.get(SettingRow, "peers")
            if row is None:
                tx.s.add(SettingRow(key="peers", value=peers))
            else:
                row.value = peers
            tx.log(actor, action, peer=label, key=key)

    def trust(self, label: str, public_key: str | Identity, *, actor: str = "owner") -> None:
        """Put a peer domain's identity (its ``/info`` ``identity``, or its :class:`Identity`)
        on the roster."""
        key = secagg_public_key(public_key.strip() if isinstance(public_key, str) else public_key)
        if key == self._d.identity.public:
            raise InvalidInput("that is this domain's own identity")
        if not label.strip():
            raise InvalidInput("a peer needs a non-empty label")
        self._save({**self.list(), label.strip(): key}, actor, "peer.trusted", label.strip(), key)

    def forget(self, label: str, *, actor: str = "owner") -> None:
        peers = self.list()
        if label not in peers:
            raise NotFound(f"no peer called {label!r}")
        key = peers.pop(label)
        self._save(peers, actor, "peer.forgotten", label, key)

    def roster(self) -> Roster:
        return Roster({k: k for k in self.list().values()})


class SecAggDesk:
    """Secure rounds on this domain: who started each, with which run."""

    def __init__(self, domain: Domain) -> None:
        self._d = domain
        self._member: SecAggMember | None = None
        self._rounds: dict[str, tuple[str, str]] = {}  # round id -> (scientist, run id)
        self._lock = threading.Lock()
        self._masking = threading.Lock()  # one result is masked at most once, for one round
        self._joining = threading.Lock()  # one scientist and run per round id

    def member(self) -> SecAggMember:
        with self._lock:
            if self._member is None:
                ident = self._d.identity
                self._member = SecAggMember(ident.public, ident, Roster())
            # the owner's latest roster and minimum, at every round
            self._member.roster = self._d.peers.roster()
            self._member.min_members = self._d.policy.get().secagg_min_members
            return self._member

    def _run(self, user: UserRow, run_id: str) -> RunRow:
        with self._d.store.session() as s:
            row = s.get(RunRow, run_id)
        if row is None or row.scientist != user.name:
            raise NotFound(f"no run {run_id!r}")
        # as its scientist may see it: a DP run shows nothing before its scheduled release
        seen = self._d.runs.info(row, owner=False)
        if seen.release_state != Release.SECAGG.value or row.result is None:
            raise SecAggRefused(f"run {run_id!r} has no result kept for secure aggregation "
                                f"(state: {seen.release_state or seen.status})")
        return row

    def _round(self, user: UserRow, round_id: str) -> str:
        got = self._rounds.get(round_id)
        if got is None or got[0] != user.name:
            raise NotFound(f"no secure round {round_id!r} of yours on this domain")
        return got[1]

    def join(self, user: UserRow, body: SecAggJoin) -> SecAggAdvert:
        row = self._run(user, body.run_id)
        with self._joining:
            got = self._rounds.get(body.config.round_id)
            if got is not None and got != (user.name, body.run_id):
                raise SecAggRefused(f"round {body.config.round_id!r} is taken")
            advert = self.member().advertise(body.config, int(row.num_examples or 0))
            self._rounds[body.config.round_id] = (user.name, body.run_id)
        return advert

    def share(self, user: UserRow, round_id: str, adverts: list[SecAggAdvert]) -> list[SecAggShare]:
        self._round(user, round_id)
        return self.member().share(round_id, adverts)

    def masked(self, user: UserRow, round_id: str, shares: list[SecAggShare]) -> bytes:
        """The run's result, quantised and masked, as a safetensors message (once)."""
        run_id = self._round(user, round_id)
        with self._masking:
            row = self._run(user, run_id)
            assert row.result is not None  # checked by _run
            header, tensors = decode_message(row.result)
            vector, _ = flatten(decompress(tensors, header))
            member = self.member()
            config = member.config(round_id)
            me = self._d.identity.public
            # the weight it entered the sum with; asynchronous rounds: the factor the
            # orchestrator claimed for its staleness (signed, but not checkable here)
            weight = {"weight": config.weight_share(me)} | (
                {} if config.staleness is None else {"staleness_factor": config.staleness[me]})
            # One write transaction from the ledger's check to the rebooking: no reservation
            # can change the ledger between "the distributed charge lowers it" and the swap.
            with self._d.transaction() as tx:
                entry = self._input(tx.s, row, config, vector, bool(header.get("noise_deferred")))
                masked = member.masked(round_id, shares, entry.vector, entry.noise)
                run = tx.s.get(RunRow, run_id)
                assert run is not None
                run.release_state = check_move("release", run.release_state, Release.MASKED)
                run.result = None
                tx.log(user.name, "result.masked", run=run_id, request=run.request_id, round=round_id,
                       **weight)
                if entry.event is not None:
                    run.epsilon = self._d.ledger.rebook(tx.s, run_id, entry.event)
                    tx.log("domain", "charge.rebooked", run=run_id, request=run.request_id,
                           scientist=run.scientist, dataset=run.dataset, charge=entry.event.to_json(),
                           epsilon_after=run.epsilon)
        return encode_message({"round_id": round_id}, {"masked": masked})

    def _input(self, s: Session, row: RunRow, config: SecAggConfig, vector: FloatArray,
               deferred: bool) -> SecAggInput:
        """The run's input to the round: distributed noise where the policy allows it and it
        charges less on the ledger as ``s`` (the caller's write transaction) sees it, else the
        domain's full noise (see :mod:`fednb.runtime._secagg_noise`)."""
        req = self._d.requests.row(row.request_id)
        dp = None if req.dp is None else ClientDP.model_validate(req.dp)

        def accept(event: Event) -> bool:
            if not self._d.policy.get().secagg_distributed_noise:
                return False
            return self._d.ledger.lowers(s, row.id, event)

        return secagg_input(config, self._d.identity.public, vector, dp=dp, deferred=deferred,
                            metrics=bool(req.metrics), noise=self._d.noise, accept=accept)

    def consistency(self, user: UserRow, round_id: str, survivors: list[str]) -> str:
        self._round(user, round_id)
        return self.member().consistency(round_id, survivors)

    def unmask(self, user: UserRow, msg: SecAggSurvivors) -> SecAggReveal:
        self._round(user, msg.round_id)
        reveal = self.member().unmask(msg)
        with self._d.transaction() as tx:
            tx.log(user.name, "secagg.unmasked", round=msg.round_id, survivors=len(msg.survivors))
        return reveal

