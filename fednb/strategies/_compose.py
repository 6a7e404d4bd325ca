"""Which strategies compose with secure aggregation, asynchronous rounds and DP.

DESIGN.md, "Federated training"::

    |                                        | DP  | secure aggregation | async  |
    | FedAvg, FedProx, FedAdam/Yogi/Adagrad  | yes | yes                | FedBuff|
    | median, trimmed mean, Krum             | yes | no                 | yes    |
"""

from __future__ import annotations

from fednb.errors import InvalidInput
from fednb.strategies._base import Strategy

__all__ = ["compose_check"]


def compose_check(strategy: Strategy, *, secure_aggregation: bool, asynchronous: bool, dp: bool) -> None:
    """Refuse a combination of strategy and run options that DESIGN.md's table rules out.

    - Secure aggregation needs a strategy that works on sums (``secure_aggregation``
      True): the FedAvg family and FedBuff. Robust rules need single updates.
    - Asynchronous rounds: FedBuff, or a robust rule, which then aggregates the driver's
      buffer of rebased updates (ignoring staleness). The synchronous FedAvg family
      runs asynchronously only as FedBuff; FedBuff runs only asynchronously.
    - DP composes with every strategy: the domain clips and noises each update before
      any strategy sees it. ``dp`` is taken so that callers state the whole combination.

    Raises
    ------
    InvalidInput
        Naming the strategy, the option and what to use instead.
    """
    if not isinstance(strategy, Strategy):
        raise InvalidInput(f"strategy must be a fednb.strategies.Strategy, got {type(strategy).__name__}")
    name = type(strategy).__name__
    if secure_aggregation and not strategy.secure_aggregation:
        raise InvalidInput(
            f"{name}: median/trimmed mean/Krum need single updates; under secure aggregation the "
            "domains' norm clipping is the defence — use FedAvg"
        )
    if asynchronous and not (strategy.asynchronous or strategy.robust):
        raise InvalidInput(
            f"{name} is synchronous; for asynchronous rounds use FedBuff (FedAvg with a buffer)"
        )
    if strategy.asynchronous and not asynchronous:
        raise InvalidInput(
            f"{name} is asynchronous; pass asynchronous=True, or use FedAvg for synchronous rounds"
        )
