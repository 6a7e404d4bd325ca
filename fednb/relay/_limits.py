"""The relay's limits and counters: connections and bytes per second, per domain and per client."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Limits", "Metrics", "RateLimiter"]


@dataclass(frozen=True)
class Limits:
    """What one domain and one client address may hold of a relay.

    Parameters
    ----------
    domain_connections
        Open data connections per domain (default 256).
    client_connections
        Open connections per client address (default 64).
    domain_bytes_per_s, client_bytes_per_s
        Bytes per second (both directions together) per domain and per client address;
        None (default): unlimited.
    open_timeout_s
        Seconds a domain has to answer a client's connection before the client is told
        the domain is unreachable (default 10).
    """

    domain_connections: int = 256
    client_connections: int = 64
    domain_bytes_per_s: float | None = None
    client_bytes_per_s: float | None = None
    open_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.domain_connections < 1 or self.client_connections < 1:
            raise ValueError("connection limits must be at least 1")
        for rate in (self.domain_bytes_per_s, self.client_bytes_per_s):
            if rate is not None and rate <= 0:
                raise ValueError(f"a byte rate must be positive, not {rate}")
        if self.open_timeout_s <= 0:
            raise ValueError(f"open_timeout_s must be positive, not {self.open_timeout_s}")


class RateLimiter:
    """A token bucket holding one second of ``rate`` bytes; ``take`` waits for tokens."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:  # one waiter at a time keeps the order of a splice's chunks
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            if self._tokens < 0:  # a chunk larger than the bucket waits for its whole debt
                await asyncio.sleep(-self._tokens / self.rate)


@dataclass
class Metrics:
    """Counters the relay exports at ``/metrics`` (Prometheus text format)."""

    domains: int = 0
    open_connections: int = 0
    connections_total: int = 0
    bytes_total: Counter[str] = field(default_factory=Counter)
    refused_total: Counter[str] = field(default_factory=Counter)

    def render(self) -> str:
        lines = [
            "# TYPE fednb_relay_domains gauge", f"fednb_relay_domains {self.domains}",
            "# TYPE fednb_relay_open_connections gauge",
            f"fednb_relay_open_connections {self.open_connections}",
            "# TYPE fednb_relay_connections_total counter",
            f"fednb_relay_connections_total {self.connections_total}",
            "# TYPE fednb_relay_bytes_total counter",
        ]
        for direction in ("to_domain", "to_client"):
            lines.append(f'fednb_relay_bytes_total{{direction="{direction}"}} '
                         f"{self.bytes_total[direction]}")
        lines.append("# TYPE fednb_relay_refused_total counter")
        for reason, n in sorted(self.refused_total.items()):
            lines.append(f'fednb_relay_refused_total{{reason="{reason}"}} {n}')
        return "\n".join(lines) + "\n"
