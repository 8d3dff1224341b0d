"""Per-source-address limits shared by every gateway replica (Redis), and the source
address itself.

What is limited here is what an unauthenticated caller can make Provisio do: guess SCIM
bearer tokens (each wrong token is a Postgres lookup), guess ``/saml/token`` codes and
app secrets, and call the SAML login URL (each call signs an AuthnRequest and stores a
Redis key). The per-tenant request rate of an *authenticated* SCIM client is not here:
it is an in-process token bucket (``scim_gateway.auth.RateLimiter``) so a successful
SCIM request makes no Redis round trip.

The algorithm is a **fixed window**: one counter per (scope, address, window) —
``{prefix}:rl:{scope}:{address}:{window number}`` — made by ``INCR`` and given the
window's length as TTL by ``EXPIRE … NX`` in the same pipeline. It costs one round trip,
holds one small key per active address and needs no script (Redis Cluster: one key per
command). Its known weakness, up to twice the limit across a window boundary, does not
matter for refusing guessers. Once an address is over its limit, the process remembers
that until the window ends (``local_wait``), so a blocked guesser costs no Redis round
trip either; another replica learns it at the address's next counted attempt.

Redis unreachable: the limiter lets the request through (logged) — a sign-in or a SCIM
call should not fail because a counter could not be kept.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Iterable
from typing import Any

from .logging import get_logger

log = get_logger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAX_LOCAL = 100_000  # remembered blocked addresses per limiter (cleared when full)


def parse_trusted_proxies(raw: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """``"10.0.0.0/8, 192.168.1.10"`` → networks. Raises ValueError on a bad entry."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return tuple(ipaddress.ip_network(i.strip(), strict=False) for i in items if i.strip())


def _trusted(addr: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def source_address(peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy — then the
    right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy (entries
    left of it were written by the client and prove nothing). Without trusted proxies
    configured the header is ignored, so a client cannot pick its own address."""
    addr = peer or "unknown"
    if not trusted or not forwarded_for or not _trusted(addr, trusted):
        return addr
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return addr  # garbage in the header: fall back to the proxy itself
    return hops[0] if hops else addr


class WindowLimiter:
    """At most ``limit`` counted events per ``window_s`` per address (``limit`` 0: off)."""

    def __init__(self, redis: Any, key_prefix: str, limit: int, window_s: int = 60) -> None:
        self.redis = redis
        self.key_prefix = key_prefix  # e.g. topology.key("rl", "scim-auth")
        self.limit = limit
        self.window_s = window_s
        self._blocked: dict[str, float] = {}  # address -> monotonic time its window ends

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    @property
    def blocking(self) -> bool:
        """Some address is (or was recently) over its limit in this process."""
        return bool(self._blocked)

    def local_wait(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, if this process knows it is over its
        limit; None otherwise. No I/O."""
        if not self._blocked:
            return None
        until = self._blocked.get(address)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[address]
            return None
        return max(1, math.ceil(left))

    async def hit(self, address: str) -> int | None:
        """Count one event for ``address``; the seconds to wait (for Retry-After) when
        that puts it over the limit, else None."""
        if not self.enabled:
            return None
        now = time.time()
        window = int(now // self.window_s)
        key = f"{self.key_prefix}:{address}:{window}"
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, self.window_s + 1, nx=True)
            count, _ = await pipe.execute()
        except Exception as err:  # Redis down: do not refuse because a counter failed
            log.warning("rate_limit_unavailable", error=str(err), scope=self.key_prefix)
            return None
        if int(count) <= self.limit:
            return None
        left = (window + 1) * self.window_s - now
        if len(self._blocked) >= _MAX_LOCAL:
            self._blocked.clear()
        self._blocked[address] = time.monotonic() + left
        return max(1, math.ceil(left))

    async def over(self, address: str) -> int | None:
        """Seconds to wait if ``address`` is already over the limit (one GET), else None;
        counts nothing."""
        if not self.enabled:
            return None
        wait = self.local_wait(address)
        if wait is not None:
            return wait
        now = time.time()
        window = int(now // self.window_s)
        try:
            raw = await self.redis.get(f"{self.key_prefix}:{address}:{window}")
        except Exception as err:
            log.warning("rate_limit_unavailable", error=str(err), scope=self.key_prefix)
            return None
        if raw is None or int(raw) < self.limit:
            return None
        left = (window + 1) * self.window_s - now
        self._blocked[address] = time.monotonic() + left
        return max(1, math.ceil(left))


__all__ = ["WindowLimiter", "parse_trusted_proxies", "source_address"]
