"""What both workers open around their FastStream app, in one place: the Postgres pool
(schema checked), the stream groups, the health/metrics listener; and, on the way out,
finishing their own pending entries before the pool and Redis close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from . import db
from .delivery import ReliableConsumer
from .observability import HealthServer, StreamStats, postgres_check, redis_check, set_service_info, start_health_server
from .settings import CommonSettings
from .streamtrim import stop_task, trim_forever
from .topology import Topology, ensure_groups


@dataclass
class WorkerRuntime:
    pool: asyncpg.Pool
    health: HealthServer


@asynccontextmanager
async def worker_runtime(
    settings: CommonSettings,
    *,
    service: str,
    redis: Any,
    topology: Topology,
    consumer: ReliableConsumer,
    stream_kinds: Iterable[str],
) -> AsyncIterator[WorkerRuntime]:
    """Open, yield, then finish own pending work and close. ``settings`` must carry
    ``health_host``, ``health_port`` (0: any free port) and ``graceful_timeout_s``."""
    s: Any = settings
    pool = await db.create_pool(s.database_url.get_secret_value(), min_size=s.db_pool_min, max_size=s.db_pool_max)
    try:
        async with pool.acquire() as conn:
            await db.check_schema(conn)
        await ensure_groups(redis, topology)
        set_service_info(service)
        health = await start_health_server(
            s.health_host,
            s.health_port,
            {"postgres": postgres_check(pool), "redis": redis_check(redis)},
            streams=StreamStats.for_topology(redis, topology, kinds=tuple(stream_kinds)),
        ).start()
        # Processed entries of the streams this worker's group reads are trimmed by age
        # (streamtrim.py): Redis memory follows the write rate, not MAXLEN × entry size.
        trimmer = (
            asyncio.create_task(trim_forever(redis, list(consumer.streams), s.stream_max_age_s), name="stream-trim")
            if s.stream_max_age_s > 0
            else None
        )
        try:
            yield WorkerRuntime(pool=pool, health=health)
            await consumer.finish_own_pending_quietly(s.graceful_timeout_s)
        finally:
            await stop_task(trimmer)
            await health.stop()
    finally:
        await pool.close()
        await redis.aclose()
