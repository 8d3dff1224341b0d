"""Health, readiness and metrics against the real Postgres and Redis."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from provisio_lib import db
from provisio_lib.contract import Command, CreateUser, Source, UserData
from provisio_lib.observability import (
    COMMANDS_PROCESSED,
    StreamStats,
    add_health_routes,
    postgres_check,
    redis_check,
    render_metrics,
    start_health_server,
)
from provisio_lib.outcomes import publish_command
from provisio_lib.redis_client import connect_redis
from provisio_lib.topology import AUDITOR_GROUP, DATA_FIELD, PROVISIONER_GROUP

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_app(checks: dict[str, Any], streams: StreamStats | None = None) -> web.Application:
    async def user(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"]})

    async def conflict(_request: web.Request) -> web.Response:
        raise web.HTTPConflict(text="taken")

    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app = web.Application()
    app.router.add_get("/scim/v2/Users/{id}", user)
    app.router.add_post("/scim/v2/Users", conflict)
    app.router.add_get("/boom", broken)
    add_health_routes(app, checks, streams=streams)
    return app


async def test_http_metrics_use_the_route_template_and_final_status(pool, redis):
    app = demo_app({"postgres": postgres_check(pool), "redis": redis_check(redis)})
    route = "/scim/v2/Users/{id}"
    async with TestClient(TestServer(app)) as client:
        before = await (await client.get("/metrics")).text()
        n0 = value(before, "provisio_http_requests_total", route=route, method="GET", status="200") or 0
        for _ in range(3):
            assert (await client.get(f"/scim/v2/Users/{uuid.uuid4()}")).status == 200
        assert (await client.post("/scim/v2/Users", json={})).status == 409
        assert (await client.get("/boom")).status == 500
        assert (await client.get(f"/no/such/{uuid.uuid4()}")).status == 404
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()

    assert value(text, "provisio_http_requests_total", route=route, method="GET", status="200") == n0 + 3
    assert value(text, "provisio_http_requests_total", route="/scim/v2/Users", method="POST", status="409") >= 1
    assert value(text, "provisio_http_requests_total", route="/boom", method="GET", status="500") >= 1
    assert value(text, "provisio_http_requests_total", route="<unmatched>", method="GET", status="404") >= 1
    # The raw URL never becomes a label value (bounded cardinality).
    assert "/scim/v2/Users/" + "{id}" in text and "/no/such" not in text
    assert value(text, "provisio_http_request_duration_seconds_count", route=route, method="GET") >= 3
    # The observability routes themselves are not counted.
    assert 'route="/metrics"' not in text
    # Every metric family Provisio defines is exported (with or without samples).
    for name in (
        "provisio_commands_processed",
        "provisio_outcome_wait_seconds",
        "provisio_saml_logins_refused",
        "provisio_emails_pending",
        "process_cpu_seconds",
    ):
        assert f"# TYPE {name}" in text


async def test_readyz_is_200_when_postgres_and_redis_are_ready(pool, redis):
    app = demo_app({"postgres": postgres_check(pool), "redis": redis_check(redis)})
    async with TestClient(TestServer(app)) as client:
        alive = await client.get("/healthz")
        ready = await client.get("/readyz")
        assert alive.status == 200 and (await alive.json())["status"] == "alive"
        assert ready.status == 200
        assert await ready.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_readyz_names_a_database_that_is_not_migrated(empty_database_url, redis):
    conn = await db.connect(empty_database_url)
    await conn.close()
    p = await db.create_pool(empty_database_url, min_size=1, max_size=2)
    try:
        # Getter form: apps open their pool in cleanup_ctx, after wiring the checks.
        app = demo_app({"postgres": postgres_check(lambda: p), "redis": redis_check(lambda: redis)})
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/readyz")
            body = await resp.json()
    finally:
        await p.close()
    assert resp.status == 503
    assert body["status"] == "unready"
    assert set(body["failed"]) == {"postgres"}
    assert "provisio migrate" in body["failed"]["postgres"]
    assert body["checks"]["redis"] == "ok"


async def test_readyz_names_redis_when_it_is_unreachable(pool):
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        app = demo_app({"postgres": postgres_check(pool), "redis": redis_check(dead)})
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/readyz")
            body = await resp.json()
            alive = await client.get("/healthz")
    finally:
        await dead.aclose()
    assert resp.status == 503
    assert list(body["failed"]) == ["redis"]
    assert "ConnectionError" in body["failed"]["redis"]
    assert alive.status == 200  # liveness does not depend on dependencies


async def test_readyz_fails_while_draining(pool, redis):
    app = demo_app({"postgres": postgres_check(pool), "redis": redis_check(redis)})
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        assert (await client.get("/readyz")).status == 200
        for hook in app.on_shutdown:  # what aiohttp runs on SIGTERM
            await hook(app)
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["status"] == "draining"
    finally:
        await client.close()


def _command(tenant_id: uuid.UUID) -> Command:
    return Command(
        tenant_id=tenant_id,
        source=Source(kind="cli", id="t", label="t"),
        correlation_id="c",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=f"{uuid.uuid4().hex}@x.test")),
    )


async def test_stream_stats_report_length_pending_and_lag(redis, topology):
    tenant_id = uuid.uuid4()
    for _ in range(5):
        await publish_command(redis, topology, _command(tenant_id))
    stream = topology.command_stream_for(tenant_id)
    # A worker takes two and acknowledges one: 1 pending, 3 never delivered (lag).
    [(_, entries)] = await redis.xreadgroup(PROVISIONER_GROUP, "w1", {stream: ">"}, count=2)
    await redis.xack(stream, PROVISIONER_GROUP, entries[0][0])
    dlq = topology.dead_letter_streams()[0]
    await redis.xadd(dlq, {DATA_FIELD: b"{}", "error": "x"})
    audit_dlq = topology.audit_dead_letter_streams()[1]
    await redis.xadd(audit_dlq, {DATA_FIELD: b"{}", "error": "y"})

    stats = StreamStats.for_topology(redis, topology)
    text = (await render_metrics(stats)).decode()
    assert value(text, "provisio_stream_length", stream=stream) == 5
    assert value(text, "provisio_stream_group_pending", stream=stream, group=PROVISIONER_GROUP) == 1
    assert value(text, "provisio_stream_group_lag", stream=stream, group=PROVISIONER_GROUP) == 3
    assert value(text, "provisio_stream_group_consumers", stream=stream, group=PROVISIONER_GROUP) == 1
    assert value(text, "provisio_stream_length", stream=dlq) == 1
    # The auditor's dead letters too: the ProvisioDeadLetters alert matches any ":dlq" stream.
    assert value(text, "provisio_stream_length", stream=audit_dlq) == 1
    assert value(text, "provisio_stream_length", stream=topology.audit_dead_letter_streams()[0]) == 0
    audit = topology.audit_stream_for(tenant_id)
    assert value(text, "provisio_stream_group_lag", stream=audit, group=AUDITOR_GROUP) == 0
    assert value(text, "provisio_stream_stats_up") == 1
    other = topology.command_streams()
    assert len([s for s in other if value(text, "provisio_stream_length", stream=s) is not None]) == len(other)

    # Cached for max_age_s, then read again on the next scrape.
    await publish_command(redis, topology, _command(tenant_id))
    assert value((await render_metrics(stats)).decode(), "provisio_stream_length", stream=stream) == 5
    stats.max_age_s = 0
    assert value((await render_metrics(stats)).decode(), "provisio_stream_length", stream=stream) == 6


async def test_stream_stats_survive_redis_down(topology):
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        text = (await render_metrics(StreamStats.for_topology(dead, topology))).decode()
    finally:
        await dead.aclose()
    assert value(text, "provisio_stream_stats_up") == 0
    assert "provisio_stream_length{" not in text
    assert "provisio_http_requests_total" in text or "# TYPE provisio_http_requests" in text


async def test_worker_health_server_serves_the_three_routes(pool, redis, topology):
    COMMANDS_PROCESSED.labels(type="user.create", result="applied").inc()
    checks = {"postgres": postgres_check(pool), "redis": redis_check(redis)}
    stats = StreamStats.for_topology(redis, topology, kinds=("commands",))
    async with start_health_server("127.0.0.1", 0, checks, streams=stats) as server:
        assert server.port != 0
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/healthz") as r:
                assert r.status == 200
            async with http.get(base + "/readyz") as r:
                assert r.status == 200, await r.text()
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            server.mark_draining()
            async with http.get(base + "/readyz") as r:
                assert r.status == 503
    assert value(text, "provisio_commands_processed_total", type="user.create", result="applied") >= 1
    assert value(text, "provisio_stream_length", stream=topology.command_streams()[0]) == 0
    assert 'provisio_stream_length{stream="' + topology.audit_streams()[0] not in text
    # Stopped: the port is closed again.
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http:
            await http.get(base + "/healthz")


async def test_start_stop_pair_on_a_fixed_port(redis):
    port = free_port()
    server = start_health_server("127.0.0.1", port, {"redis": redis_check(redis)})
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
            assert r.status == 200
            assert (await r.json())["checks"] == {"redis": "ok"}
    finally:
        await server.stop()
