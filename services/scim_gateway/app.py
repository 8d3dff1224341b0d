"""Composition root of the SCIM gateway: ``create_app(settings)``.

Resources (asyncpg pool, Redis client, the one ``OutcomeWaiter`` of this process, the
token cache) live in ``cleanup_ctx`` and are reached through typed keys (``keys.py``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
from aiohttp import web
from structlog.contextvars import bind_contextvars, reset_contextvars

from provisio_lib import db
from provisio_lib.contract import Source, encode
from provisio_lib.logging import get_logger
from provisio_lib.observability import (
    add_health_routes,
    metrics_listener,
    postgres_check,
    redis_check,
    set_service_info,
)
from provisio_lib.outcomes import OutcomeWaiter
from provisio_lib.ratelimit import WindowLimiter, parse_trusted_proxies, source_address
from provisio_lib.redis_client import connect_redis
from provisio_lib.topology import DATA_FIELD, Topology

from .auth import RateLimiter, ReadGate, TenantAuth, TokenCache
from .errors import SCIM_CONTENT_TYPE, ScimError
from .handlers import ROUTES, dumps, public_url
from .keys import (
    AUTH_FAILURES,
    BASE_PATH,
    BODY,
    CORRELATION_ID,
    LIMITER,
    POOL,
    READS,
    REDIS,
    REFUSALS,
    SETTINGS,
    TENANT,
    TOKENS,
    TOPOLOGY,
    TRUSTED_PROXIES,
    WAITER,
)
from .openapi import build_openapi
from .refusals import RECORDED_STATUSES, RefusalSampler, refusal_outcome, refused_operation
from .settings import ScimSettings

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Postgres unreachable or refusing connections: the client should retry (503).
_DB_DOWN = db.UNAVAILABLE_ERRORS


def error_response(err: ScimError) -> web.Response:
    return web.Response(
        status=err.status,
        body=dumps(err.body()),
        content_type=SCIM_CONTENT_TYPE,
        headers=err.headers,
    )


# Minted correlation ids: 32 hex digits like uuid4().hex, a random per-process prefix
# and a counter (unique without a getrandom syscall and a UUID object per request).
_CID_PREFIX = os.urandom(8).hex()
_cid_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _correlation_id(request: web.Request) -> str:
    headers = request.headers
    raw = headers.get("X-Correlation-Id") or headers.get("X-Request-Id")
    if raw:
        raw = raw.strip()
        if 0 < len(raw) <= 128 and raw.isprintable():
            return raw
    return f"{_CID_PREFIX}{next(_cid_counter) & 0xFFFFFFFFFFFFFFFF:016x}"


@web.middleware
async def scim_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a SCIM Error body; nothing internal leaks (RFC 7644 §3.12)."""
    cid = _correlation_id(request)
    request[CORRELATION_ID] = cid
    # bind/reset rather than bound_contextvars(): the latter copies the whole context
    # (copy_context) to save the previous values, on every request.
    tokens = bind_contextvars(correlation_id=cid)
    try:
        try:
            response = await handler(request)
        except ScimError as err:
            response = error_response(err)
            await audit_refusal(request, err)
        except web.HTTPRequestEntityTooLarge:
            settings = request.app[SETTINGS]
            too_large = ScimError(413, f"the request body is larger than {settings.scim_max_body} bytes")
            response = error_response(too_large)
            await audit_refusal(request, too_large)
        except web.HTTPException as err:
            if err.status < 400:
                raise
            headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
            detail = {404: "no such endpoint", 405: f"method {request.method} not allowed here"}.get(
                err.status, err.reason
            )
            response = error_response(ScimError(err.status, detail, headers=headers))
        except asyncpg.QueryCanceledError:
            response = error_response(_statement_timeout(request))
        except _DB_DOWN as err:
            log.warning("database_unavailable", error=str(err), path=request.path)
            settings = request.app[SETTINGS]
            response = error_response(
                ScimError(
                    503,
                    "the database is unavailable; retry later",
                    headers={"Retry-After": str(settings.scim_retry_after_s)},
                )
            )
        except Exception:
            log.exception("unhandled_error", method=request.method, path=request.path)
            response = error_response(ScimError(500, "internal error; it has been logged with the correlation id"))
    finally:
        reset_contextvars(**tokens)
    response.headers["X-Correlation-Id"] = cid
    return response


def _statement_timeout(request: web.Request) -> ScimError:
    """A query ran past PROVISIO_SCIM_STATEMENT_TIMEOUT_S and Postgres cancelled it. For a
    filtered search that is the filter's cost: 400 tooMany (RFC 7644 §3.12, "more results
    than the server is willing to calculate or process"); otherwise 503, worth a retry."""
    settings = request.app[SETTINGS]
    limit = f"{settings.scim_statement_timeout_s:g} s"
    searching = request.path.endswith(".search") or (request.method == "GET" and "filter" in request.query)
    if searching:
        return ScimError(400, f"the filter took longer than {limit} to evaluate; narrow it", "tooMany")
    return ScimError(
        503,
        f"the query took longer than {limit}; retry later",
        headers={"Retry-After": str(settings.scim_retry_after_s)},
    )


def _too_many(detail: str, wait: float) -> ScimError:
    return ScimError(429, detail, headers={"Retry-After": str(max(1, int(wait)))})


async def _authenticate(request: web.Request, token: str) -> TenantAuth:
    """The token's tenant, or 401. Failed attempts are counted per source address across
    replicas; an address over its limit gets 429 for tokens this process has not verified
    in the last hour, without a database lookup (issue 13 §2). Tokens it has verified
    are looked up as usual: an IdP sharing an egress address with a guesser keeps working."""
    app = request.app
    failures = app[AUTH_FAILURES]
    if failures.blocking:  # some address is over its limit: is it this one? (no I/O)
        wait = failures.local_wait(_address(request))
        if wait is not None and not app[TOKENS].known(token):
            raise _too_many("too many failed authentication attempts from this address; retry later", wait)
    auth = await app[TOKENS].lookup(token)
    if auth is None:
        if failures.enabled:
            address = _address(request)
            wait = await failures.hit(address)
            if wait is not None:
                log.warning("scim_auth_failures_limited", source=address)
                raise _too_many("too many failed authentication attempts from this address; retry later", wait)
        raise _unauthorized("the bearer token is not valid")
    return auth


def _address(request: web.Request) -> str:
    return source_address(request.remote, request.headers.get("X-Forwarded-For"), request.app[TRUSTED_PROXIES])


async def audit_refusal(request: web.Request, err: ScimError) -> None:
    """Put a refusal of a tenant's write on its audit stream (see ``refusals``): sampled,
    and never in the way of the answer."""
    if err.status not in RECORDED_STATUSES or err.audited or TENANT not in request:
        return
    operation = refused_operation(request.method, request.path.removeprefix(BASE_PATH))
    if operation is None:
        return
    auth = request[TENANT]
    app = request.app
    suppressed = app[REFUSALS].admit((auth.tenant_id, err.status))
    if suppressed is None:
        return
    outcome = refusal_outcome(
        tenant_id=auth.tenant_id,
        source=Source(kind="scim", id=str(auth.token_id), label=auth.token_label),
        correlation_id=request[CORRELATION_ID],
        occurred_at=datetime.now(UTC),
        operation=operation,
        status=err.status,
        detail=err.detail,
        scim_type=err.scim_type,
        body=request.get(BODY),
        suppressed=suppressed,
    )
    try:
        topology = app[TOPOLOGY]
        await app[REDIS].xadd(
            topology.audit_stream_for(auth.tenant_id),
            {DATA_FIELD: encode(outcome)},
            maxlen=topology.maxlen,
            approximate=True,
        )
    except Exception as err2:  # Redis down: the answer still goes out; the log keeps it
        log.warning("scim_refusal_audit_failed", error=str(err2), status=err.status)


def protected(handler: Handler) -> Handler:
    """Bearer token → tenant (RFC 6750), then the tenant's rate limit; reads also take
    one of the tenant's read slots (``ReadGate``)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 512:
            raise _unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        auth = await _authenticate(request, token)
        request[TENANT] = auth  # also for the audit record of a 429
        wait = request.app[LIMITER].check(auth)
        if wait is not None:
            raise ScimError(
                429, "too many requests for this tenant; slow down", headers={"Retry-After": str(int(wait))}
            )
        tokens = bind_contextvars(tenant=auth.tenant_label)
        slot = None
        try:
            if request.method == "GET" or request.path.endswith(".search"):
                # Reads run tenant-chosen queries (filters, sorts, pages); writes read by
                # primary key and wait on the provisioner, not on the pool.
                slot = await request.app[READS].acquire(auth.tenant_id)
                if slot is None:
                    raise _too_many(
                        "too many concurrent reads for this tenant; retry later",
                        request.app[SETTINGS].scim_retry_after_s,
                    )
            return await handler(request)
        finally:
            if slot is not None:
                slot.release()
            reset_contextvars(**tokens)

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped


def _unauthorized(detail: str) -> ScimError:
    return ScimError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="scim"'})


async def openapi_view(request: web.Request) -> web.Response:
    return web.json_response(build_openapi(ROUTES, public_url(request.app[SETTINGS])))


def create_app(settings: ScimSettings, *, instance: str | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.scim_max_body, middlewares=[scim_errors])
    app[SETTINGS] = settings
    app[LIMITER] = RateLimiter(settings.scim_rate_limit_per_s, settings.scim_rate_limit_burst)
    app[READS] = ReadGate(settings.tenant_reads(), settings.scim_tenant_read_wait_s)
    app[TRUSTED_PROXIES] = parse_trusted_proxies(settings.trusted_proxies)
    app[REFUSALS] = RefusalSampler()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        dsn = settings.database_url.get_secret_value()
        # statement_timeout on every connection of the pool (a startup parameter, sent at
        # connect; no round trip): no tenant's query holds a connection longer than this.
        timeout_ms = int(settings.scim_statement_timeout_s * 1000)
        server_settings = {"statement_timeout": str(timeout_ms)} if timeout_ms else {}
        pool = await db.create_pool(
            dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max, server_settings=server_settings
        )
        try:
            async with pool.acquire() as conn:
                await db.check_schema(conn)  # refuse to serve against the wrong schema
            redis = connect_redis(settings.redis_url.get_secret_value())
            topology = Topology(
                prefix=settings.redis_prefix, partitions=settings.partitions, maxlen=settings.stream_maxlen
            )
            waiter = OutcomeWaiter(redis, topology, instance)
            tokens = TokenCache(pool, settings.scim_token_cache_s)
            app[AUTH_FAILURES] = WindowLimiter(
                redis, topology.key("rl", "scim-auth"), settings.scim_failed_auth_per_min, 60
            )
            app[POOL] = pool
            app[REDIS] = redis
            app[WAITER] = waiter
            app[TOKENS] = tokens
            app[TOPOLOGY] = topology
            await waiter.start()
            tokens.start()
            log.info("scim_gateway_ready", reply_stream=waiter.stream)
            yield
            await tokens.stop()
            await waiter.stop()
            await redis.aclose()
        finally:
            await pool.close()

    app.cleanup_ctx.append(resources)
    for method, rel, handler, needs_auth, _summary in ROUTES:
        app.router.add_route(method, BASE_PATH + rel, protected(handler) if needs_auth else handler)
    app.router.add_get("/openapi.json", openapi_view)
    checks = {"postgres": postgres_check(lambda: app[POOL]), "redis": redis_check(lambda: app[REDIS])}
    # /healthz and /readyz stay on the public port (probes, compose); /metrics only on
    # the operator listener.
    add_health_routes(app, checks, metrics_route=False)
    app.cleanup_ctx.append(metrics_listener(settings.scim_host, settings.scim_metrics_port, checks))
    set_service_info("scim-gateway")
    return app


__all__ = ["create_app", "error_response"]
