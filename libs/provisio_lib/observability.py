"""Health, readiness and Prometheus metrics for every Provisio process.

Every metric Provisio exports is defined here, once, on this module's ``REGISTRY``, so
an operator finds the whole list in one file (and in docs/operations.md). Services
record through the objects below (``COMMANDS_PROCESSED.labels(type=..., result=...).inc()``)
or the small helpers; they never define metrics of their own.

Gateways (aiohttp apps) call :func:`add_health_routes`; workers run
:func:`start_health_server` next to their FastStream app. Both serve:

- ``GET /healthz`` — alive: 200 as long as the event loop answers (liveness probe);
- ``GET /readyz`` — the checks (Postgres ``SELECT 1`` and schema current, Redis PING)
  run concurrently with a timeout; 200, or 503 with a JSON body naming what failed
  (readiness probe). A process shutting down answers 503 ``draining``;
- ``GET /metrics`` — Prometheus text format.

Stream length, pending and lag per consumer group are read from Redis ``XINFO GROUPS``
when ``/metrics`` is scraped (:class:`StreamStats`), not by a background task, so an
idle process makes no Redis calls and a scrape always sees fresh numbers (cached for a
second against scrape storms). ``lag`` is the Redis 7 field of ``XINFO GROUPS``: entries
in the stream not yet delivered to the group — the number KEDA's redis-streams scaler
scales on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .logging import get_logger, redact_url
from .topology import Topology

log = get_logger(__name__)

__all__ = [
    "AUDIT_RECORDS_WRITTEN",
    "COMMANDS_DEAD_LETTERED",
    "COMMANDS_FAILED",
    "COMMANDS_PROCESSED",
    "COMMANDS_RETRIED",
    "COMMAND_DURATION",
    "COMMAND_LATENCY",
    "EMAILS_FAILED",
    "EMAILS_PENDING",
    "EMAILS_SENT",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_DURATION",
    "OUTCOME_WAIT",
    "REGISTRY",
    "SAML_LOGINS_ACCEPTED",
    "SAML_LOGINS_REFUSED",
    "SERVICE_INFO",
    "STREAM_METRIC_NAMES",
    "WEBHOOK_BACKLOG",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_ENDPOINTS",
    "WEBHOOK_EVENT_AGE",
    "WEBHOOK_LAG",
    "WEBHOOK_REQUEST_DURATION",
    "Check",
    "HealthServer",
    "StreamStats",
    "add_health_routes",
    "metrics_middleware",
    "postgres_check",
    "redis_check",
    "render_metrics",
    "run_checks",
    "set_service_info",
    "start_health_server",
]

# One registry for Provisio, not prometheus-client's global one: importing a library
# that registers metrics globally can then never clash with ours, and tests can read
# exactly what Provisio exports.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, resident memory, fds
PlatformCollector(registry=REGISTRY)  # python_info
GCCollector(registry=REGISTRY)

# Latency buckets (seconds): SCIM answers in milliseconds when idle and must stay under
# the IdPs' timeouts (Entra ~ seconds) when busy, so resolution sits between 1 ms and 10 s.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --------------------------------------------------------------------------- all metrics

SERVICE_INFO = Gauge(
    "provisio_service_info",
    "Always 1; labels say which Provisio service and version this process runs",
    ["service", "version"],
    registry=REGISTRY,
)

# HTTP (gateways and health listeners). route is the resource's canonical path
# ("/scim/v2/Users/{id}"), never the raw URL, so cardinality stays bounded.
HTTP_REQUESTS = Counter(
    "provisio_http_requests",
    "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_DURATION = Histogram(
    "provisio_http_request_duration_seconds",
    "Time from request received to response prepared, by route template and method",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# Commands (provisioner). type is the contract's CommandType ("user.create", ...).
COMMANDS_PROCESSED = Counter(
    "provisio_commands_processed",
    "Commands the provisioner finished, by type and result (applied, unchanged, failed); "
    "redelivered duplicates answered from the inbox count as their recorded result",
    ["type", "result"],
    registry=REGISTRY,
)
COMMANDS_FAILED = Counter(
    "provisio_commands_failed",
    "Commands that produced a failure outcome, by type and contract ErrorCode",
    ["type", "code"],
    registry=REGISTRY,
)
COMMANDS_RETRIED = Counter(
    "provisio_commands_retried",
    "Transient failures (database or Redis down) left pending for another attempt, by type",
    ["type"],
    registry=REGISTRY,
)
COMMANDS_DEAD_LETTERED = Counter(
    "provisio_commands_dead_lettered",
    "Commands moved to a dead-letter stream after failing too often, by type",
    ["type"],
    registry=REGISTRY,
)
COMMAND_DURATION = Histogram(
    "provisio_command_duration_seconds",
    "Provisioner time spent on one command (transaction + outcome publish), by type",
    ["type"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMMAND_LATENCY = Histogram(
    "provisio_command_latency_seconds",
    "Gateway accepted the command (occurred_at) -> provisioner committed it, by type",
    ["type"],
    buckets=(*_LATENCY_BUCKETS, 30.0, 60.0, 300.0),
    registry=REGISTRY,
)

# How the provisioner applied its batches (provisioner.planner): path is one_statement,
# one_transaction or careful; reason is a short fixed code (planner.FALLBACK_REASONS).
PROVISIONER_BATCHES = Counter(
    "provisio_provisioner_batches",
    "Batches the provisioner applied, by the path that committed them",
    ["path"],
    registry=REGISTRY,
)
PROVISIONER_FAST_PATH_FALLBACKS = Counter(
    "provisio_provisioner_fast_path_fallbacks",
    "Batches redone command by command (the careful path) after a fast path gave up, by reason",
    ["reason"],
    registry=REGISTRY,
)

# Gateways waiting for the provisioner's outcome.
OUTCOME_WAIT = Histogram(
    "provisio_outcome_wait_seconds",
    "Gateway time from publishing a command to its outcome, by command type and how the "
    "wait ended (outcome, timeout, unavailable)",
    ["type", "result"],
    buckets=(*_LATENCY_BUCKETS, 30.0),
    registry=REGISTRY,
)

# SAML gateway. reason is a short fixed code ("signature", "audience", "replay",
# "expired", "missing_claim", ...), never free text, to keep cardinality bounded.
SAML_LOGINS_ACCEPTED = Counter(
    "provisio_saml_logins_accepted",
    "SAML responses that passed every check and were provisioned, by JIT mode",
    ["mode"],
    registry=REGISTRY,
)
SAML_LOGINS_REFUSED = Counter(
    "provisio_saml_logins_refused",
    "SAML logins refused, by reason code",
    ["reason"],
    registry=REGISTRY,
)

# Auditor.
AUDIT_RECORDS_WRITTEN = Counter(
    "provisio_audit_records_written",
    "Outcomes written to audit_log, by result (applied, unchanged, failed)",
    ["result"],
    registry=REGISTRY,
)
EMAILS_SENT = Counter(
    "provisio_emails_sent",
    "Notification emails accepted by the SMTP server, by kind (first, digest, webhook_disabled)",
    ["kind"],
    registry=REGISTRY,
)
EMAILS_FAILED = Counter(
    "provisio_emails_failed",
    "SMTP send attempts that failed (the mail stays pending and is retried)",
    registry=REGISTRY,
)
EMAILS_PENDING = Gauge(
    "provisio_emails_pending",
    "Failure notifications waiting to be mailed (digest window or SMTP down)",
    registry=REGISTRY,
)

# Webhook dispatcher. endpoint is the operator-given endpoint name (bounded: one per
# `provisio webhook add`).
WEBHOOK_DELIVERIES = Counter(
    "provisio_webhook_deliveries",
    "Webhook delivery attempts, by result: delivered (2xx), failed (will be retried), "
    "dead (dead-lettered: past the retry horizon)",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_REQUEST_DURATION = Histogram(
    "provisio_webhook_request_duration_seconds",
    "Time of one webhook request, from sending to the receiver's answer (or the failure)",
    buckets=(*_LATENCY_BUCKETS, 30.0),
    registry=REGISTRY,
)
WEBHOOK_EVENT_AGE = Histogram(
    "provisio_webhook_event_age_seconds",
    "Event committed -> delivered (2xx) to a webhook endpoint: the change-to-webhook latency",
    buckets=(*_LATENCY_BUCKETS, 30.0, 60.0, 300.0, 3600.0),
    registry=REGISTRY,
)
WEBHOOK_BACKLOG = Gauge(
    "provisio_webhook_backlog",
    "Deliveries not yet delivered or dead-lettered, by endpoint",
    ["endpoint"],
    registry=REGISTRY,
)
WEBHOOK_LAG = Gauge(
    "provisio_webhook_lag_seconds",
    "Age of the oldest undelivered event, by endpoint (0 when none waits)",
    ["endpoint"],
    registry=REGISTRY,
)
WEBHOOK_ENDPOINTS = Gauge(
    "provisio_webhook_endpoints",
    "Webhook endpoints, by status (active, disabled)",
    ["status"],
    registry=REGISTRY,
)


def set_service_info(service: str, version: str | None = None) -> None:
    """Record which service this process runs (call once from the composition root)."""
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as pkg_version

        try:
            version = pkg_version("provisio")
        except PackageNotFoundError:
            version = "unknown"
    SERVICE_INFO.labels(service=service, version=version).set(1)


# --------------------------------------------------------------------------- streams

# Gauges StreamStats builds on each scrape (not registered: they follow the topology).
STREAM_METRIC_NAMES = (
    "provisio_stream_length",
    "provisio_stream_group_pending",
    "provisio_stream_group_lag",
    "provisio_stream_group_consumers",
    "provisio_stream_stats_up",
    "provisio_redis_memory_used_bytes",
    "provisio_redis_memory_max_bytes",
)


@dataclass
class StreamStats:
    """Stream length, pending and lag per consumer group, read from Redis on scrape.

    ``redis`` is a redis.asyncio client (or ``Redis | RedisCluster``), or a zero-argument
    callable returning one (for apps that open Redis in ``cleanup_ctx`` after wiring).
    Export from the workers (provisioner: commands + their dead letters, auditor: audit +
    its dead letters); in a
    scaled deployment each replica reports the same series, so alert on ``max``.
    """

    redis: Any
    streams: list[str]
    max_age_s: float = 1.0
    timeout_s: float = 2.0
    _cache: tuple[float, list[Any]] | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_topology(
        cls, redis: Any, topology: Topology, kinds: Iterable[str] = ("commands", "dlq", "audit", "audit_dlq")
    ) -> StreamStats:
        streams: list[str] = []
        kinds = set(kinds)
        if "commands" in kinds:
            streams += topology.command_streams()
        if "dlq" in kinds:
            streams += topology.dead_letter_streams()
        if "audit" in kinds:
            streams += topology.audit_streams()
        if "audit_dlq" in kinds:
            streams += topology.audit_dead_letter_streams()
        return cls(redis=redis, streams=streams)

    def _client(self) -> Any:
        return self.redis() if callable(self.redis) and not hasattr(self.redis, "xinfo_groups") else self.redis

    async def refresh(self) -> None:
        """Read XLEN and XINFO GROUPS for every stream (cached for ``max_age_s``)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = time.monotonic()
            if self._cache and now - self._cache[0] < self.max_age_s:
                return
            try:
                families = await asyncio.wait_for(self._read(), self.timeout_s)
            except Exception as err:  # Redis down: /metrics still answers, without stream series
                log.warning("stream_stats_unavailable", error=redact_url(str(err)))
                up = GaugeMetricFamily(
                    "provisio_stream_stats_up", "1 if the last read of stream stats from Redis worked"
                )
                up.add_metric([], 0)
                families = [up]
            self._cache = (now, families)

    async def _read(self) -> list[Any]:
        from redis.exceptions import ResponseError

        client = self._client()

        # One call per stream, concurrently: works the same on one Redis and on a cluster
        # (each partition's streams share a hash tag, so each call goes to one node).
        async def one(stream: str) -> tuple[str, int, list[dict[Any, Any]]]:
            try:
                length = await client.xlen(stream)
                groups = await client.xinfo_groups(stream)
            except ResponseError as err:  # "no such key": the stream does not exist yet
                if "no such key" not in str(err).lower():
                    raise
                return stream, 0, []
            return stream, int(length), groups

        results = await asyncio.gather(*(one(s) for s in self.streams))
        length = GaugeMetricFamily(
            "provisio_stream_length", "Entries in the stream (XLEN; bounded by MAXLEN)", labels=["stream"]
        )
        pending = GaugeMetricFamily(
            "provisio_stream_group_pending",
            "Entries delivered to the group's consumers and not yet acknowledged (XINFO GROUPS pending)",
            labels=["stream", "group"],
        )
        lag = GaugeMetricFamily(
            "provisio_stream_group_lag",
            "Entries not yet delivered to the group (XINFO GROUPS lag, Redis >= 7)",
            labels=["stream", "group"],
        )
        consumers = GaugeMetricFamily(
            "provisio_stream_group_consumers", "Consumers known to the group", labels=["stream", "group"]
        )
        for stream, n, groups in results:
            length.add_metric([stream], n)
            for g in groups:
                name = _text(g.get("name"))
                pending.add_metric([stream, name], int(g.get("pending") or 0))
                consumers.add_metric([stream, name], int(g.get("consumers") or 0))
                # lag is nil when Redis cannot compute it (entries deleted mid-stream);
                # omitting the sample is more honest than reporting 0.
                if g.get("lag") is not None:
                    lag.add_metric([stream, name], int(g["lag"]))
        up = GaugeMetricFamily("provisio_stream_stats_up", "1 if the last read of stream stats from Redis worked")
        up.add_metric([], 1)
        return [length, pending, lag, consumers, up, *await _memory_families(client)]

    def collect(self) -> Iterable[Any]:
        """prometheus-client collector protocol: yield what the last refresh read."""
        if self._cache:
            yield from self._cache[1]

    def describe(self) -> Iterable[Any]:
        return ()  # metrics vary with the topology: don't let the registry pre-describe them


async def _memory_families(client: Any) -> list[Any]:
    """Redis used_memory and maxmemory (INFO memory), for the ProvisioRedisMemoryHigh alert."""
    from .streamtrim import redis_memory

    try:
        used, limit = await redis_memory(client)
    except Exception as err:  # an INFO shape this client does not give: the stream series still count
        log.warning("redis_memory_unavailable", error=redact_url(str(err)))
        return []
    used_f = GaugeMetricFamily("provisio_redis_memory_used_bytes", "Redis used_memory (INFO memory)")
    used_f.add_metric([], used)
    max_f = GaugeMetricFamily("provisio_redis_memory_max_bytes", "Redis maxmemory (0: no limit set)")
    max_f.add_metric([], limit)
    return [used_f, max_f]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- checks

Check = Callable[[], Awaitable[object]]
"""A readiness check: returns when healthy, raises (with a readable message) when not."""


def _resolve(thing: Any, attr: str) -> Any:
    return thing() if callable(thing) and not hasattr(thing, attr) else thing


def postgres_check(pool: Any) -> Check:
    """Postgres answers ``SELECT 1`` and its schema is exactly this code's (migrations current).

    ``pool`` is an asyncpg pool or a zero-argument callable returning one.
    """
    from . import db

    async def check() -> None:
        p = _resolve(pool, "acquire")
        async with p.acquire() as conn:
            await conn.fetchval("SELECT 1")
            await db.check_schema(conn)

    return check


def redis_check(redis: Any) -> Check:
    """Redis answers PING. ``redis`` is a client or a zero-argument callable returning one."""

    async def check() -> None:
        await _resolve(redis, "ping").ping()

    return check


async def run_checks(checks: Mapping[str, Check], timeout_s: float = 2.0) -> dict[str, str]:
    """Run every check concurrently; return name -> "ok" or the reason it failed."""

    async def one(check: Check) -> str:
        try:
            await asyncio.wait_for(check(), timeout_s)
        except TimeoutError:
            return f"timed out after {timeout_s:g}s"
        except Exception as err:
            return redact_url(f"{type(err).__name__}: {err}") or type(err).__name__
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(one(checks[n]) for n in names))
    return dict(zip(names, results, strict=True))


# --------------------------------------------------------------------------- HTTP

_CHECKS: web.AppKey[Mapping[str, Check]] = web.AppKey("provisio_health_checks", Mapping)
_STREAMS: web.AppKey[StreamStats | None] = web.AppKey("provisio_stream_stats")
_STATE: web.AppKey[dict[str, bool]] = web.AppKey("provisio_health_state", dict)
_OWN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "<unmatched>"

# (route, method, status) -> bound children: labels() takes a lock and builds a tuple on
# every call; the gateways' hot path does one dict lookup instead.
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _bound(route: str, method: str, status: int) -> tuple[Any, Any]:
    key = (route, method, status)
    found = _children.get(key)
    if found is None:
        found = (
            HTTP_REQUESTS.labels(route=route, method=method, status=str(status)),
            HTTP_REQUEST_DURATION.labels(route=route, method=method),
        )
        _children[key] = found
    return found


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    # No resource: the URL matched nothing (404/405 from the router). One label for all
    # of them, or a scanner walking random URLs would create a series per URL.
    return resource.canonical if resource is not None else _UNMATCHED


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count and time every request by route template, method and status.

    Must be the outermost middleware (``add_health_routes`` puts it first) so it sees
    the status the client gets, after error middlewares have rendered exceptions.
    """
    route = _route_of(request)
    if route in _OWN_PATHS:
        return await handler(request)
    method = request.method if request.method in _METHODS else "other"
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        counter, histogram = _bound(route, method, status)
        counter.inc()
        histogram.observe(time.perf_counter() - start)


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[_STATE]["draining"]:
        return web.json_response({"status": "draining", "failed": {"process": "shutting down"}}, status=503)
    results = await run_checks(request.app[_CHECKS])
    failed = {name: why for name, why in results.items() if why != "ok"}
    if failed:
        return web.json_response({"status": "unready", "failed": failed, "checks": results}, status=503)
    return web.json_response({"status": "ready", "checks": results})


async def render_metrics(streams: StreamStats | None = None) -> bytes:
    """The Prometheus text exposition of everything in ``REGISTRY`` (+ stream stats)."""
    if streams is not None:
        await streams.refresh()
    return generate_latest(REGISTRY) + (generate_latest(_Only(streams)) if streams else b"")


class _Only:
    """A registry-like wrapper so stream stats (per app) are rendered without being
    registered globally: two apps in one process (tests) never clash."""

    def __init__(self, collector: StreamStats) -> None:
        self._collector = collector

    def collect(self) -> Iterable[Any]:
        return self._collector.collect()


async def _metrics(request: web.Request) -> web.Response:
    body = await render_metrics(request.app[_STREAMS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(
    app: web.Application,
    checks: Mapping[str, Check],
    *,
    streams: StreamStats | None = None,
    http_metrics: bool = True,
    metrics_route: bool = True,
) -> None:
    """Add ``/healthz``, ``/readyz`` and ``/metrics`` to ``app`` (before it starts).

    ``metrics_route=False`` leaves ``/metrics`` out: the gateways serve it on their
    operator listener (``metrics_listener``), never on the public port.

    ``checks`` maps a name to an async check, e.g.
    ``{"postgres": postgres_check(lambda: app[POOL]), "redis": redis_check(lambda: app[REDIS])}``.
    With ``http_metrics`` the request-metrics middleware is inserted first.
    """
    app[_CHECKS] = dict(checks)
    app[_STREAMS] = streams
    app[_STATE] = {"draining": False}
    app.router.add_get("/healthz", _healthz, allow_head=True)
    app.router.add_get("/readyz", _readyz, allow_head=True)
    if metrics_route:
        app.router.add_get("/metrics", _metrics)
    if http_metrics:
        app.middlewares.insert(0, metrics_middleware)

    async def drain(app: web.Application) -> None:
        # SIGTERM: readiness fails at once so load balancers stop routing here while
        # in-flight requests finish (aiohttp's shutdown_timeout).
        app[_STATE]["draining"] = True

    app.on_shutdown.append(drain)


# --------------------------------------------------------------------------- workers


_LISTENER: web.AppKey[Any] = web.AppKey("provisio_metrics_listener", object)


class HealthServer:
    """A small HTTP listener for the workers, serving the same three routes.

    ``async with start_health_server(host, port, checks):`` or ``await s.start()`` /
    ``await s.stop()``. ``port=0`` picks a free port (read ``.port`` after start).
    """

    def __init__(
        self, host: str, port: int, checks: Mapping[str, Check], *, streams: StreamStats | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.app = web.Application()
        add_health_routes(self.app, checks, streams=streams, http_metrics=False)
        self._runner: web.AppRunner | None = None

    async def start(self) -> HealthServer:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:  # the port the OS chose
            self.port = int(self._runner.addresses[0][1])
        log.info("health_server_started", host=self.host, port=self.port)
        return self

    def mark_draining(self) -> None:
        """Readiness answers 503 from now on (call on SIGTERM, before finishing work)."""
        self.app[_STATE]["draining"] = True

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HealthServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def metrics_listener(host: str, port: int, checks: Mapping[str, Check]) -> Callable[[web.Application], Any]:
    """A gateway's operator listener (``/metrics``, ``/healthz``, ``/readyz`` on ``port``),
    run for the life of ``app`` as a cleanup context: ``app.cleanup_ctx.append(...)``.

    The public port (SCIM 8081, SAML 8082) answers IdPs and browsers from anywhere; the
    metrics name tenants' routes and rates, so they are served only here, on a port the
    Service/Ingress does not publish (as the workers' 9101/9102)."""

    async def run(app: web.Application) -> Any:
        server = HealthServer(host, port, checks)
        await server.start()
        app[_LISTENER] = server

        async def drain(_app: web.Application) -> None:
            server.mark_draining()

        app.on_shutdown.append(drain)
        try:
            yield
        finally:
            await server.stop()

    return run


def start_health_server(
    host: str, port: int, checks: Mapping[str, Check], *, streams: StreamStats | None = None
) -> HealthServer:
    """A worker's health/metrics listener; use as ``async with`` or ``await .start()``."""
    return HealthServer(host, port, checks, streams=streams)


def operator_port(app: web.Application) -> int:
    """The port a running gateway's operator listener (``metrics_listener``) bound."""
    server: HealthServer = app[_LISTENER]
    return server.port
