"""Bearer tokens → tenant, and the per-tenant rate limit.

Tokens are looked up by their SHA-256 (``provisio_lib.tokens.hash_token``) through the
unique index ``scim_tokens_hash_key`` and the stored hash is compared again with
``hmac.compare_digest``. A lookup is reused for ``scim_token_cache_s`` seconds (default
5) so the request path makes no query for auth; a revoked token therefore stops working
within that time. ``last_used_at`` is written in batches every ``_FLUSH_S`` seconds, not
per request.

The rate limit is an in-process token bucket per tenant: with several gateway replicas
each one allows the configured rate (so the cluster-wide limit is rate × replicas). It
keeps the request path free of Redis round trips; a Redis-backed limiter is the
alternative if exact cluster-wide limits are ever needed. Failed token attempts, on the
other hand, are counted per source address in Redis (``provisio_lib.ratelimit``), so
the limit holds across replicas; only failures make that round trip.

``ReadGate`` bounds the reads one tenant runs at once in this process, so one tenant's
slow searches cannot hold every pooled connection (issue 13 §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from provisio_lib.logging import get_logger
from provisio_lib.tokens import hash_token

from .schema import ResourceKind, tenant_user_kind

log = get_logger(__name__)

_FLUSH_S = 30.0
_NEGATIVE_TTL_S = 1.0
_MAX_ENTRIES = 10_000
_KNOWN_S = 3600.0


@dataclass(frozen=True)
class TenantAuth:
    tenant_id: uuid.UUID
    token_id: uuid.UUID
    token_label: str
    immutable_user_name: bool
    rate_limit_per_s: float | None
    # str(tenant_id), made once per cached lookup (the log context of every request).
    tenant_label: str = field(default="", compare=False)
    # The tenant's User kind: built-in + declared extension schemas and its undeclared-
    # extension setting (issue 13 §4); read with the token, so it costs no query.
    user_kind: ResourceKind | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.tenant_label:
            object.__setattr__(self, "tenant_label", str(self.tenant_id))


_SQL = """
SELECT t.id, t.label, t.token_hash, t.tenant_id, n.immutable_user_name, n.rate_limit_per_s,
       n.scim_undeclared_extensions,
       (SELECT json_agg(json_build_object('preset', e.preset, 'document', e.document) ORDER BY e.urn)::text
        FROM scim_schema_extensions e WHERE e.tenant_id = n.id) AS scim_extensions
FROM scim_tokens t JOIN tenants n ON n.id = t.tenant_id
WHERE t.token_hash = $1 AND t.revoked_at IS NULL
"""


class TokenCache:
    def __init__(self, pool: Any, ttl_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        # Least recently used out when full (a spray of unknown tokens must not evict the
        # ones in use); each entry carries its own expiry, positive and negative TTLs
        # differ. Not TLRUCache: its timer costs far more than a dict get, on every request.
        self._cache: LRUCache[bytes, tuple[float, TenantAuth | None]] = LRUCache(_MAX_ENTRIES)
        self._used: set[uuid.UUID] = set()
        self._known: LRUCache[bytes, float] = LRUCache(_MAX_ENTRIES)  # digest -> last verified (monotonic)
        self._task: asyncio.Task[None] | None = None

    async def lookup(self, token: str) -> TenantAuth | None:
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            auth = hit[1]
        else:
            auth = await self._fetch(digest)
            if auth is not None:
                self._remember(digest)  # once per cache refresh, not per request
            ttl = self.ttl_s if auth is not None else min(self.ttl_s, _NEGATIVE_TTL_S)
            if ttl > 0:
                self._cache[digest] = (now + ttl, auth)
        if auth is not None:
            self._used.add(auth.token_id)
        return auth

    def _remember(self, digest: bytes) -> None:
        self._known[digest] = time.monotonic()

    def known(self, token: str) -> bool:
        """Whether this process verified ``token`` within the last ``_KNOWN_S`` seconds
        (no query). An address over its failed-authentication limit is still served for
        such tokens (looked up as usual, so revocation holds); unknown ones are refused
        without a lookup."""
        seen = self._known.get(hash_token(token))
        return seen is not None and time.monotonic() - seen < _KNOWN_S

    async def _fetch(self, digest: bytes) -> TenantAuth | None:
        row = await self.pool.fetchrow(_SQL, digest)
        if row is None or not hmac.compare_digest(bytes(row["token_hash"]), digest):
            return None
        rate = row["rate_limit_per_s"]
        return TenantAuth(
            tenant_id=row["tenant_id"],
            token_id=row["id"],
            token_label=row["label"],
            immutable_user_name=row["immutable_user_name"],
            rate_limit_per_s=float(rate) if rate is not None else None,
            user_kind=tenant_user_kind(row["scim_extensions"] or "[]", row["scim_undeclared_extensions"]),
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop(), name="scim-token-last-used")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> None:
        if not self._used:
            return
        ids, self._used = list(self._used), set()
        await self.pool.execute("UPDATE scim_tokens SET last_used_at = now() WHERE id = ANY($1::uuid[])", ids)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_S)
            try:
                await self.flush()
            except Exception as err:  # Postgres down: try again next round
                log.warning("token_last_used_flush_failed", error=str(err))


class RateLimiter:
    """Token bucket per tenant: ``rate`` tokens per second, at most ``burst`` stored."""

    def __init__(self, rate: float, burst: float | None) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def check(self, tenant: TenantAuth) -> float | None:
        """None when allowed, else the seconds to wait (for Retry-After)."""
        rate = tenant.rate_limit_per_s if tenant.rate_limit_per_s is not None else self.rate
        if rate <= 0:
            return None
        burst = self.burst or max(rate * 2, 1.0)
        now = time.monotonic()
        tokens, last = self._buckets.get(tenant.tenant_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[tenant.tenant_id] = (tokens - 1.0, now)
            return None
        self._buckets[tenant.tenant_id] = (tokens, now)
        return max(1.0, math.ceil((1.0 - tokens) / rate))


class ReadGate:
    """At most ``slots`` concurrent reads per tenant; a read waits at most ``wait_s`` for
    a slot. One ``asyncio.Semaphore`` per tenant seen (a few hundred bytes each)."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self._sems: dict[uuid.UUID, asyncio.Semaphore] = {}

    def semaphore(self, tenant_id: uuid.UUID) -> asyncio.Semaphore:
        sem = self._sems.get(tenant_id)
        if sem is None:
            sem = self._sems[tenant_id] = asyncio.Semaphore(self.slots)
        return sem

    async def acquire(self, tenant_id: uuid.UUID) -> asyncio.Semaphore | None:
        """The tenant's semaphore, acquired; None when no slot freed up in time."""
        sem = self.semaphore(tenant_id)
        if not sem.locked():
            await sem.acquire()  # free: returns at once
            return sem
        try:
            await asyncio.wait_for(sem.acquire(), self.wait_s)
        except TimeoutError:
            return None
        return sem
