"""Composition root of the App API: ``create_app(settings)``.

What an application's backend needs from Provisio (docs/app-integration.md): the
directory (users, groups, members) for its backfill and reconciliation, the ordered
event feed (``GET /api/v1/events``, long-polling), and the SAML code exchange. Every
error is JSON ``{"error": {"code", "message"}}``; nothing internal leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from provisio_lib import api_keys, db, directory, event_signals, events_feed
from provisio_lib.code_exchange import ExchangeError, exchange_code, secret_hash_from_db
from provisio_lib.logging import get_logger
from provisio_lib.observability import (
    REGISTRY,
    add_health_routes,
    metrics_listener,
    postgres_check,
    redis_check,
    set_service_info,
)
from provisio_lib.redis_client import connect_redis
from provisio_lib.tokens import hash_token
from provisio_lib.topology import Topology

from .openapi import build_openapi
from .settings import AppApiSettings

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SETTINGS = web.AppKey("settings", AppApiSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS: web.AppKey[Any] = web.AppKey("redis")
TOPOLOGY = web.AppKey("topology", Topology)
KEYS: web.AppKey[KeyCache] = web.AppKey("keys")
SIGNAL: web.AppKey[FeedSignal] = web.AppKey("signal")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
KEY: web.RequestKey[Auth] = web.RequestKey("api_key")  # the caller's Auth

EVENTS_SERVED = Counter("provisio_app_api_events_served", "Events returned by GET /api/v1/events", registry=REGISTRY)
LONG_POLLS_WAITING = Gauge(
    "provisio_app_api_long_polls_waiting", "Events requests waiting for a new event now", registry=REGISTRY
)
EVENTS_PRUNED = Counter(
    "provisio_events_pruned", "Events deleted past PROVISIO_EVENTS_RETENTION_DAYS", registry=REGISTRY
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.code, err.message, err.headers)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        message = {
            404: "no such endpoint",
            405: f"method {request.method} not allowed here",
            413: "the request body is too large",
        }.get(err.status, err.reason)
        headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
        return error_response(err.status, _HTTP_CODES.get(err.status, "error"), message, headers)
    except asyncio.CancelledError:
        raise
    except (*db.UNAVAILABLE_ERRORS, RedisError) as err:  # type: ignore[misc]  # a tuple of exception types
        log.warning("dependency_unavailable", error=str(err), path=request.path)
        return error_response(
            503, "unavailable", "the database or Redis is unavailable; retry later", {"Retry-After": "2"}
        )
    except Exception:
        ref = uuid.uuid4().hex
        log.exception("unhandled_error", method=request.method, path=request.path, reference=ref)
        return error_response(500, "internal", f"internal error; it has been logged (reference {ref})")


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True)
class Auth:
    key: api_keys.ApiKey
    tenant_name: str | None  # the key's tenant (None: every tenant)


class KeyCache:
    """API key → Auth, reused for ``ttl_s`` (a revoked key stops working within it);
    ``last_used_at`` written in batches, not per request."""

    def __init__(self, pool: Any, ttl_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        # By the key's SHA-256: the process never keeps keys in clear.
        self._cache: dict[bytes, tuple[float, Auth | None]] = {}
        self._used: set[uuid.UUID] = set()

    async def lookup(self, key: str) -> Auth | None:
        now = time.monotonic()
        digest = hash_token(key)
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            auth = hit[1]
        else:
            async with self.pool.acquire() as conn:
                found = await api_keys.lookup_key(conn, key)
                name = None
                if found is not None and found.tenant_id is not None:
                    name = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", found.tenant_id)
            auth = Auth(found, name) if found is not None else None
            if len(self._cache) > 10_000:
                self._cache.clear()
            ttl = self.ttl_s if auth is not None else min(self.ttl_s, 1.0)
            if ttl > 0:
                self._cache[digest] = (now + ttl, auth)
        if auth is not None:
            self._used.add(auth.key.id)
        return auth

    async def flush(self) -> None:
        used, self._used = list(self._used), set()
        if used:
            await api_keys.touch_keys(self.pool, used)


class RateLimiter:
    """A token bucket per API key in this process (like the SCIM gateway's per tenant)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(rate * 2, 1.0)
        self._buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def check(self, key_id: uuid.UUID) -> float | None:
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, last = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key_id] = (tokens - 1, now)
        return None


def protected(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        key = key.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="provisio-app-api"'}
        if scheme.lower() != "bearer" or not key or len(key) > 512:
            raise ApiError(401, "unauthorized", "an API key is required (Authorization: Bearer <api key>)", challenge)
        auth = await request.app[KEYS].lookup(key)
        if auth is None:
            raise ApiError(401, "unauthorized", "the API key is not valid (unknown or revoked)", challenge)
        wait = request.app[LIMITER].check(auth.key.id)
        if wait is not None:
            raise ApiError(
                429,
                "rate_limited",
                "too many requests for this API key; slow down",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        request[KEY] = auth
        return await handler(request)

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped


_TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


async def _tenant(request: web.Request, given: str) -> uuid.UUID:
    """The tenant named (or id'd) ``given``, if the caller's key may read it. A key for
    one tenant gets 403 for any other, whether or not it exists (no existence oracle)."""
    auth: Auth = request[KEY]
    given = given.strip().lower()
    if auth.key.tenant_id is not None:
        if given not in (str(auth.key.tenant_id), auth.tenant_name):
            raise ApiError(403, "forbidden", "this API key is not for that tenant")
        return auth.key.tenant_id
    if not _TENANT_RE.match(given):  # names are [a-z0-9-] (tenants_name_format) or a uuid
        raise ApiError(404, "not_found", "no such tenant")
    row = await request.app[POOL].fetchval("SELECT id FROM tenants WHERE name = $1 OR id::text = $1", given)
    if row is None:
        raise ApiError(404, "not_found", f"no tenant {given!r}")
    return row


# --------------------------------------------------------------------------- parameters


def _limit(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", "limit must be an integer") from None
    if not 1 <= value <= maximum:
        raise ApiError(400, "invalid_parameter", f"limit must be between 1 and {maximum}")
    return value


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, "not_found", f"no {what} {value!r}") from None


def _timestamp(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"{name} must be an ISO 8601 timestamp (2026-01-31T12:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _page(data: list[dict[str, Any]], next_cursor: str | None) -> web.Response:
    return web.json_response({"data": data, "next_cursor": next_cursor})


async def _directory_call(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return await fn(*args, **kw)
    except directory.CursorError as err:
        raise ApiError(400, "invalid_cursor", str(err)) from None


# --------------------------------------------------------------------------- directory


async def _list(request: web.Request, fn: Any, to_json: Any) -> web.Response:
    """A page of a tenant's users or groups (``directory.users_page``/``groups_page``)."""
    tid = await _tenant(request, request.match_info["tenant"])
    page = await _directory_call(
        fn,
        request.app[POOL],
        tid,
        limit=_limit(request, directory.DEFAULT_LIMIT, directory.MAX_LIMIT),
        cursor=request.query.get("cursor") or None,
        updated_after=_timestamp(request, "updated_after"),
    )
    return _page([to_json(r) for r in page.rows], page.next_cursor)


async def list_users(request: web.Request) -> web.Response:
    return await _list(request, directory.users_page, directory.user_json)


async def get_user(request: web.Request) -> web.Response:
    tid = await _tenant(request, request.match_info["tenant"])
    row = await directory.get_user(request.app[POOL], tid, _uuid(request.match_info["id"], "user"))
    if row is None:
        raise ApiError(404, "not_found", f"no user {request.match_info['id']} in this tenant")
    return web.json_response(directory.user_json(row))


async def list_groups(request: web.Request) -> web.Response:
    return await _list(request, directory.groups_page, directory.group_json)


async def get_group(request: web.Request) -> web.Response:
    tid = await _tenant(request, request.match_info["tenant"])
    gid = _uuid(request.match_info["id"], "group")
    row = await directory.get_group(request.app[POOL], tid, gid, member_count=True)
    if row is None:
        raise ApiError(404, "not_found", f"no group {request.match_info['id']} in this tenant")
    return web.json_response(directory.group_json(row))


async def list_members(request: web.Request) -> web.Response:
    tid = await _tenant(request, request.match_info["tenant"])
    gid = _uuid(request.match_info["id"], "group")
    pool = request.app[POOL]
    if await directory.get_group(pool, tid, gid) is None:
        raise ApiError(404, "not_found", f"no group {gid} in this tenant")
    page = await _directory_call(
        directory.members_page,
        pool,
        tid,
        gid,
        limit=_limit(request, directory.DEFAULT_LIMIT, directory.MAX_LIMIT),
        cursor=request.query.get("cursor") or None,
    )
    return _page(
        [{**directory.user_json(r), "membership_sources": list(r["membership_sources"] or ())} for r in page.rows],
        page.next_cursor,
    )


# --------------------------------------------------------------------------- events


class FeedSignal:
    """Wakes this process's long-polls when the provisioner publishes that it committed
    events (Redis pub/sub, one subscription per process, not per request). The message is
    the tenant's id: only that tenant's waiters, and those following every tenant, wake
    and re-query — another tenant's writes cost a waiter nothing. A signal is followed by
    re-checks shortly after (an event is visible only once every older transaction has
    ended, which may be just after the signal), and a tick every second wakes everyone,
    so an event whose signal was lost (Redis restarting) is still delivered within a
    second."""

    TICK_S = 1.0

    def __init__(self, redis: Any, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self._any = asyncio.Event()
        self._tenants: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    def current(self, tenants: list[uuid.UUID] | None = None) -> asyncio.Event:
        """Take this before querying, wait on it after: no wake-up is lost in between.
        ``tenants``: the waiter's tenants (None: every tenant)."""
        if tenants is None or len(tenants) != 1:
            return self._any
        key = str(tenants[0])
        ev = self._tenants.get(key)
        if ev is None:
            ev = self._tenants[key] = asyncio.Event()
        return ev

    def fire(self, tenant: str | None = None) -> None:
        """Wake ``tenant``'s waiters and those of every tenant (None: everyone)."""
        if tenant is None:
            woken, self._tenants = list(self._tenants.values()), {}
        else:
            one = self._tenants.pop(tenant, None)
            woken = [one] if one is not None else []
        woken.append(self._any)
        self._any = asyncio.Event()
        for ev in woken:
            ev.set()

    def start(self) -> None:
        self._task = asyncio.create_task(
            event_signals.follow(
                self.redis,
                self.channel,
                self.fire,
                tick_s=self.TICK_S,
                max_backoff_s=self.TICK_S,
                error_event="feed_signal_error",
            ),
            name="feed-signal",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def list_events(request: web.Request) -> web.Response:
    auth: Auth = request[KEY]
    settings = request.app[SETTINGS]
    q = request.query
    tenant = q.get("tenant")
    if tenant:
        tenants: list[uuid.UUID] | None = [await _tenant(request, tenant)]
    elif auth.key.tenant_id is not None:
        tenants = [auth.key.tenant_id]  # a key for one tenant only ever sees its own
    else:
        tenants = None
    after_raw = q.get("after", "")
    try:
        types = events_feed.type_patterns(q.get("types"))
        if after_raw == "latest":
            # "From now on": where an application starts following before it backfills
            # from the directory (docs/app-integration.md). Empty feed: from the start.
            after = await events_feed.head(request.app[POOL], tenants)
            after_raw = events_feed.sequence(*after) if after is not None else ""
        else:
            after = events_feed.parse_sequence(after_raw) if after_raw else None
    except ValueError as err:
        raise ApiError(400, "invalid_parameter", str(err)) from None
    limit = _limit(request, 100, events_feed.MAX_LIMIT)
    wait_raw = q.get("wait", "0") or "0"
    try:
        wait = float(wait_raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", "wait must be a number of seconds") from None
    if not math.isfinite(wait) or wait < 0:
        raise ApiError(400, "invalid_parameter", "wait must be a number of seconds >= 0")
    wait = min(wait, settings.app_api_max_wait_s)
    pool, signal = request.app[POOL], request.app[SIGNAL]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        woken = signal.current(tenants)
        data, last = await events_feed.read_events_text(pool, tenants, after, limit, types)
        remaining = deadline - loop.time()
        if data or remaining <= 0:
            break
        LONG_POLLS_WAITING.inc()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), remaining)
        finally:
            LONG_POLLS_WAITING.dec()
    EVENTS_SERVED.inc(len(data))
    # The events arrive as JSON text rendered by Postgres (events_feed.read_events_text):
    # the page is spliced, not decoded and encoded again.
    body = '{"data":[' + ",".join(data) + '],"next_cursor":' + json.dumps(last or after_raw) + "}"
    return web.Response(text=body, content_type="application/json")


# --------------------------------------------------------------------------- SAML code exchange


async def saml_token(request: web.Request) -> web.Response:
    """The SAML gateway's ``POST /saml/token``, here too: ``Authorization: Bearer <app
    secret>`` (the SSO connection's, not an API key) and a form or JSON ``code``."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    secret = secret.strip() if scheme.lower() == "bearer" else ""
    try:
        if request.content_type == "application/json":
            body = await request.json()
            code = body.get("code") if isinstance(body, dict) else None
        else:
            code = (await request.post()).get("code")
    except web.HTTPException:
        raise
    except Exception:
        raise ApiError(400, "invalid_request", "the body must be a form or JSON object with a code") from None
    pool = request.app[POOL]
    try:
        profile = await exchange_code(
            request.app[REDIS], request.app[TOPOLOGY], code, secret, lambda cid: secret_hash_from_db(pool, cid)
        )
    except ExchangeError as err:
        headers = {"Cache-Control": "no-store"}
        if err.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="provisio-saml"'
        raise ApiError(err.status, err.error, err.description, headers) from None
    return web.json_response(profile, headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------- app

BASE = "/api/v1"
# (method, path, handler, needs an API key, summary): the routes and the OpenAPI document.
ROUTES: list[tuple[str, str, Handler, bool, str]] = [
    ("GET", "/tenants/{tenant}/users", list_users, True, "List a tenant's users"),
    ("GET", "/tenants/{tenant}/users/{id}", get_user, True, "One user"),
    ("GET", "/tenants/{tenant}/groups", list_groups, True, "List a tenant's groups"),
    ("GET", "/tenants/{tenant}/groups/{id}", get_group, True, "One group"),
    ("GET", "/tenants/{tenant}/groups/{id}/members", list_members, True, "A group's members"),
    ("GET", "/events", list_events, True, "The event feed, oldest first, after a cursor"),
    ("POST", "/saml/token", saml_token, False, "Exchange a SAML one-time code for the user's profile"),
]


async def openapi_view(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(f"{request.scheme}://{request.host}"))


def create_app(settings: AppApiSettings) -> web.Application:
    app = web.Application(client_max_size=settings.app_api_max_body, middlewares=[json_errors])
    app[SETTINGS] = settings
    app[LIMITER] = RateLimiter(settings.app_api_rate_limit_per_s)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(
            settings.database_url.get_secret_value(), min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        try:
            async with pool.acquire() as conn:
                await db.check_schema(conn)
            redis = connect_redis(settings.redis_url.get_secret_value())
            topology = Topology(
                prefix=settings.redis_prefix, partitions=settings.partitions, maxlen=settings.stream_maxlen
            )
            app[POOL] = pool
            app[REDIS] = redis
            app[TOPOLOGY] = topology
            app[KEYS] = KeyCache(pool, settings.app_api_key_cache_s)
            signal = FeedSignal(redis, topology.events_channel())
            app[SIGNAL] = signal
            signal.start()
            background = asyncio.create_task(_housekeeping(app), name="app-api-housekeeping")
            log.info("app_api_ready")
            yield
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await background
            await signal.stop()
            with contextlib.suppress(Exception):
                await app[KEYS].flush()
            await redis.aclose()
        finally:
            await pool.close()

    app.cleanup_ctx.append(resources)
    for method, path, handler, needs_key, _summary in ROUTES:
        app.router.add_route(method, BASE + path, protected(handler) if needs_key else handler)
    app.router.add_get(BASE + "/openapi.json", openapi_view)
    checks = {"postgres": postgres_check(lambda: app[POOL]), "redis": redis_check(lambda: app[REDIS])}
    # Like the gateways: /healthz and /readyz on the public port (probes, compose);
    # /metrics (it names tenants' routes and rates) only on the operator listener.
    add_health_routes(app, checks, metrics_route=False)
    app.cleanup_ctx.append(metrics_listener(settings.app_api_host, settings.app_api_metrics_port, checks))
    set_service_info("app-api")
    return app


async def _housekeeping(app: web.Application) -> None:
    """Key last-use times every 30 s, and the events' retention (``prune_events``)."""
    settings = app[SETTINGS]
    next_prune = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            await app[KEYS].flush()
            if loop.time() >= next_prune:
                next_prune = loop.time() + settings.events_prune_interval_s
                await prune_events(app[POOL], settings.events_retention_days)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("housekeeping_failed", error=str(err))
        await asyncio.sleep(min(30.0, settings.events_prune_interval_s))


async def prune_events(pool: Any, retention_days: float) -> int:
    """Drop events past retention (batched, never blocking the provisioner's inserts)."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    deleted = await events_feed.prune(pool, cutoff)
    if deleted:
        EVENTS_PRUNED.inc(deleted)
        log.info("events_pruned", deleted=deleted, older_than=cutoff.isoformat())
    return deleted


__all__ = ["create_app", "prune_events"]
