"""Redis memory stays bounded under large writes (issue 13 §2: each write kept its
command and full outcome on streams trimmed only by count; five 1 MB PATCHes grew
Redis by 35 MB)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from provisio_lib.streamtrim import redis_memory, trim_stream
from provisio_lib.topology import PROVISIONER_GROUP
from tests.conftest import eventually, running_provisioner
from tests.integration.audit_support import running_auditor
from tests.integration.scim_helpers import bearer, patch_body, scim_client

pytestmark = pytest.mark.integration


async def stream_bytes(redis: Any, topology: Any) -> int:
    keys = [*topology.command_streams(), *topology.audit_streams()]
    keys += [k async for k in redis.scan_iter(match=f"{topology.prefix}:{{r:*}}:replies")]
    total = 0
    for k in keys:
        total += int(await redis.memory_usage(k, samples=0) or 0)
    return total


async def test_large_patches_leave_no_large_streams_behind(service_env, tenant, redis, topology):
    # Bounded well below pytest's 300 s: this hung once (embedded servers, late in a full
    # run), and the traceback of a timeout shows where.
    async with asyncio.timeout(120):
        await _large_patches_leave_no_large_streams_behind(tenant, redis, topology)


async def _large_patches_leave_no_large_streams_behind(tenant, redis, topology):
    big = 600 * 1024
    # An operator may raise the per-string cap (PROVISIO_SCIM_MAX_STRING_CHARS, 1024 by
    # default): these writes are as large as the body limit lets one string be.
    async with (
        running_provisioner(stream_max_age_s=0.2),
        running_auditor(stream_max_age_s=0.2),
        scim_client(scim_max_string_chars=big) as c,
    ):
        h = bearer(tenant.token)
        r = await c.post("/scim/v2/Users", json={"userName": "big@example.com"}, headers=h)
        assert r.status == 201, await r.text()
        uid = (await r.json())["id"]
        for i in range(5):
            body = patch_body({"op": "replace", "path": "title", "value": str(i) * big})
            r = await c.patch(f"/scim/v2/Users/{uid}", json=body, headers=h)
            assert r.status == 200, await r.text()
            assert len((await r.json())["title"]) == big  # the gateway still answers the whole resource

        async def small() -> int | None:
            n = await stream_bytes(redis, topology)
            return n if n < 256 * 1024 else None

        # Before: about 5 × (command + audit outcome with before/after + reply) ≈ 5 × 4.2 MB.
        assert await eventually(small, timeout=30)


async def test_age_trimming_keeps_unread_and_unacknowledged_entries(redis, topology):
    stream = topology.command_stream(0)
    old = int(time.time() * 1000) - 3_600_000
    ids = [await redis.xadd(stream, {"n": str(i)}, id=f"{old + i}-0") for i in range(6)]
    await redis.xgroup_create(stream, "g2", id="0")  # a second group besides the provisioner's
    # the provisioner's group reads and acknowledges the first four; g2 reads two, acks one
    got = await redis.xreadgroup(PROVISIONER_GROUP, "c", {stream: ">"}, count=4)
    await redis.xack(stream, PROVISIONER_GROUP, *[e for e, _ in got[0][1]])
    got = await redis.xreadgroup("g2", "c", {stream: ">"}, count=2)
    await redis.xack(stream, "g2", got[0][1][0][0])

    removed = await trim_stream(redis, stream, max_age_s=300)
    assert removed == 1  # only the entry both groups have acknowledged
    left = [e for e, _ in await redis.xrange(stream)]
    assert left == ids[1:]


async def test_redis_memory_is_exported_for_the_alert(redis, topology):
    from provisio_lib.observability import StreamStats, render_metrics
    from tests.integration.test_observability import value

    used, limit = await redis_memory(redis)
    assert used > 0
    info = await redis.info("memory")
    assert limit == int(info["maxmemory"])
    text = (await render_metrics(StreamStats.for_topology(redis, topology))).decode()
    assert value(text, "provisio_redis_memory_used_bytes") > 0
    assert value(text, "provisio_redis_memory_max_bytes") == limit
