"""One validated training spec, shared by ``Federation`` and ``simulate``.

Every check of a training's settings lives in :meth:`TrainingSpec.build`, so the HTTP
federation and the in-process simulation refuse the same things with the same messages,
before any request is filed or any hospital runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fednb.errors import InvalidInput
from fednb.protocol import ClientDP, Compression
from fednb.scientist._remote import RemoteFunction
from fednb.strategies import FedAvg, FedBuff, FedProx, Strategy, compose_check, flatten
from fednb.typing import Weights

__all__ = ["TrainingSpec", "default_secure_bound"]

_COMPRESSIONS = ("none", "fp16", "int8")


def default_secure_bound(dp: ClientDP | None) -> float:
    """Where secure aggregation clips coordinates unless told: past the DP noise, or 1000."""
    return 1000.0 if dp is None else dp.clip * (1 + 6 * dp.noise_multiplier)


@dataclass(frozen=True)
class TrainingSpec:
    """What to train and how, checked once (:meth:`build`); the round driver reads it.

    Attributes
    ----------
    strategy
        The aggregation strategy.
    initial
        The initial global weights.
    params
        The client function's parameters (the strategy may add some per round).
    rounds
        Rounds to run (asynchronous: aggregations), >= 1.
    dp
        Client-level DP of every update, or None.
    asynchronous
        Buffered asynchronous rounds (FedBuff, or a robust rule over the buffer).
    secure_bound
        With secure aggregation: coordinates are clipped into ``[-bound, bound]`` before
        quantisation; None: plain summing.
    secure_noise
        With secure aggregation and distributed noise: the client-level noise ``z C`` each
        round asks for; None: none.
    compression
        How updates travel: ``"none"``, ``"fp16"`` or ``"int8"``.
    min_domains
        The fewest answers a round (or a buffer) needs.
    timeout
        Seconds one run may take before its domain is dropped from the round.
    checkpoint
        The directory to checkpoint into after every round and resume from; None: none.
    progress
        Show a progress bar.
    """

    strategy: Strategy
    initial: Weights
    params: dict[str, Any]
    rounds: int
    dp: ClientDP | None
    asynchronous: bool
    secure_bound: float | None
    secure_noise: float | None
    compression: Compression
    min_domains: int
    timeout: float
    checkpoint: Path | None
    progress: bool
    domains: tuple[str, ...] = field(default=())

    @property
    def secure(self) -> bool:
        """True under secure aggregation."""
        return self.secure_bound is not None

    @property
    def buffer_size(self) -> int:
        """Updates per asynchronous aggregation: FedBuff's ``buffer_size``, else ``min_domains``."""
        return self.strategy.buffer_size if isinstance(self.strategy, FedBuff) else self.min_domains

    @classmethod
    def build(cls, fn: RemoteFunction, domains: Sequence[str], *, initial: Weights,
              params: Mapping[str, Any] | None = None, strategy: Strategy | None = None, rounds: int = 10,
              dp: ClientDP | None = None, asynchronous: bool | None = None, min_domains: int | None = None,
              secure_aggregation: bool = False, secure_bound: float | None = None,
              distributed_noise: bool = False, compression: Compression = "none",
              timeout: float = 600.0, checkpoint: str | Path | None = None,
              progress: bool = True) -> TrainingSpec:
        """Check every setting against the others and the domains; see ``fednb.Federation``
        for their meaning.

        Raises
        ------
        InvalidInput
            Naming the setting at fault and what to use instead.
        """
        strategy = FedAvg() if strategy is None else strategy
        if not isinstance(strategy, Strategy):
            raise InvalidInput(f"strategy must be a fednb.strategies.Strategy, got {type(strategy).__name__}")
        is_async = strategy.asynchronous if asynchronous is None else bool(asynchronous)
        compose_check(strategy, secure_aggregation=secure_aggregation, asynchronous=is_async,
                      dp=dp is not None)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise InvalidInput(f"rounds must be a whole number >= 1, not {rounds!r}")
        if compression not in _COMPRESSIONS:
            raise InvalidInput(f"compression must be one of {_COMPRESSIONS}, not {compression!r}")
        if secure_aggregation and compression != "none":
            raise InvalidInput("secure aggregation runs without compression (it quantises the updates "
                               "itself)")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InvalidInput(f"timeout must be a positive number of seconds, not {timeout!r}")
        flatten(initial)  # a non-empty dict of real arrays, or a clear error
        params = dict(params or {})
        _check_params(fn, strategy, params)
        names = tuple(sorted(domains))
        low = 1 if min_domains is None else min_domains
        if isinstance(low, bool) or not isinstance(low, int) or not 1 <= low <= len(names):
            raise InvalidInput(f"min_domains must be between 1 and {len(names)} (the domains), not {low!r}")
        if len(names) < strategy.min_updates:
            raise InvalidInput(f"{strategy!r} needs at least {strategy.min_updates} updates a round; there "
                               f"are only {len(names)} domains")
        bound = None
        if secure_aggregation:
            bound = default_secure_bound(dp) if secure_bound is None else float(secure_bound)
            if not (math.isfinite(bound) and bound > 0):
                raise InvalidInput(f"secure_bound must be a positive number, not {secure_bound!r}")
        spec = cls(strategy=strategy, initial=initial, params=params, rounds=rounds, dp=dp,
                   asynchronous=is_async, secure_bound=bound,
                   secure_noise=_secure_noise(distributed_noise, secure_aggregation, dp),
                   compression=compression, min_domains=low, timeout=float(timeout),
                   checkpoint=None if checkpoint is None else Path(checkpoint), progress=progress,
                   domains=names)
        k = spec.buffer_size
        if spec.secure and is_async and not 2 <= k <= len(names):
            raise InvalidInput(f"asynchronous secure aggregation sums buffers of distinct domains: "
                               f"buffer_size must be between 2 and {len(names)} (the domains), not {k}")
        return spec


def _check_params(fn: RemoteFunction, strategy: Strategy, params: Mapping[str, Any]) -> None:
    """Every parameter a run sends, the strategy's own included (FedProx's ``mu``), must be
    declared by the function, so that the owners approve its bounds. (Not by calling
    ``configure_round``: a strategy may count its calls.)"""
    sent = set(params) | ({"mu"} if isinstance(strategy, FedProx) else set())
    missing = sorted(sent - set(fn.params))
    if missing:
        raise InvalidInput(f"{fn.name} must declare the parameters {missing} in @fednb.remote(params=...)"
                           " so the hospitals can approve their bounds")


def _secure_noise(distributed_noise: bool, secure_aggregation: bool, dp: ClientDP | None) -> float | None:
    """The client-level noise z C that distributed noise is sized to, or None without it."""
    if not distributed_noise:
        return None
    if not secure_aggregation or dp is None:
        raise InvalidInput("distributed_noise needs secure_aggregation=True and dp=ClientDP(...): it "
                           "is the secure sum that carries the noise")
    return dp.noise_multiplier * dp.clip
