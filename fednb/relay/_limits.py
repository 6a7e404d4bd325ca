"""The relay's limits and counters: connections and bytes per second, per domain and per client."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
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
    """A token bucket of ``rate`` bytes per second holding at most one second's worth.

    A chunk larger than what the bucket holds is let through after a wait for its whole
    debt (``debit`` says how long), so traffic waits rather than fails.

    Parameters
    ----------
    rate
        Bytes per second.
    clock
        Seconds on a monotonic clock (default ``time.monotonic``; tests pass their own).
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def debit(self, n: int) -> float:
        """Take ``n`` bytes from the bucket; return the seconds the caller must wait before
        sending them (0.0 when the bucket held them)."""
        now = self._clock()
        self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= n
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    def idle(self) -> bool:
        """True once the bucket is full again: forgetting it then forgives no debt."""
        return self._tokens + (self._clock() - self._stamp) * self.rate >= self.rate

    async def take(self, n: int) -> float:
        """Wait until ``n`` bytes may pass; returns the seconds waited (the computed delay)."""
        async with self._lock:  # one waiter at a time keeps the order of a splice's chunks
            delay = self.debit(n)
            if delay > 0:
                await asyncio.sleep(delay)
            return delay


@dataclass
class Metrics:
    """Counters the relay exports at ``/metrics`` (Prometheus text format)."""

    domains: int = 0
    open_connections: int = 0
    connections_total: int = 0
    bytes_total: Counter[str] = field(default_factory=Counter)
    refused_total: Counter[str] = field(default_factory=Counter)
    throttled_seconds_total: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float))

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
        lines.append("# TYPE fednb_relay_throttled_seconds_total counter")
        for scope in ("domain", "client"):
            lines.append(f'fednb_relay_throttled_seconds_total{{scope="{scope}"}} '
                         f"{self.throttled_seconds_total[scope]:.6f}")
        return "\n".join(lines) + "\n"
