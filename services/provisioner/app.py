"""The provisioner's composition root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream

from provisio_lib import db
from provisio_lib.delivery import ReliableConsumer, app_logger, make_broker
from provisio_lib.logging import get_logger
from provisio_lib.observability import StreamStats, postgres_check, redis_check, set_service_info, start_health_server
from provisio_lib.redis_client import connect_redis
from provisio_lib.settings import load_settings
from provisio_lib.topology import PROVISIONER_GROUP, Topology, ensure_groups

from .settings import ProvisionerSettings
from .worker import Provisioner

log = get_logger(__name__)


def create_app(settings: ProvisionerSettings | None = None) -> FastStream:
    settings = settings or load_settings(ProvisionerSettings)
    topology = Topology(prefix=settings.redis_prefix, partitions=settings.partitions, maxlen=settings.stream_maxlen)
    redis_url = settings.redis_url.get_secret_value()
    broker = make_broker(redis_url, settings.graceful_timeout_s)
    redis = connect_redis(redis_url)
    worker = Provisioner(topology, redis=redis)
    consumer = ReliableConsumer(
        broker=broker,
        redis=redis,
        streams=topology.command_streams(),
        group=PROVISIONER_GROUP,
        handler=worker.handle,
        on_dead_letter=worker.on_dead_letter,
        batch_size=settings.batch_size,
        claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
    )
    consumer.register()

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        worker.pool = await db.create_pool(
            settings.database_url.get_secret_value(), min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        try:
            async with worker.pool.acquire() as conn:
                await db.check_schema(conn)
            await ensure_groups(redis, topology)
            set_service_info("provisioner")
            if settings.health_port:
                worker.health = await start_health_server(
                    settings.health_host,
                    settings.health_port,
                    {"postgres": postgres_check(lambda: worker.pool), "redis": redis_check(redis)},
                    streams=StreamStats.for_topology(redis, topology, kinds=("commands", "dlq")),
                ).start()
            log.info("provisioner_started", consumer=consumer.consumer, partitions=topology.partitions)
            try:
                yield
                await consumer.finish_own_pending_quietly(settings.graceful_timeout_s)
            finally:
                if worker.health is not None:
                    await worker.health.stop()
        finally:
            await worker.pool.close()
            await redis.aclose()
            log.info("provisioner_stopped", **consumer.counters, **worker.counters)

    def begin_shutdown() -> None:
        consumer.stopping.set()
        if worker.health is not None:
            worker.health.mark_draining()

    app = FastStream(broker, lifespan=lifespan, on_shutdown=[begin_shutdown], logger=app_logger())
    app.context.set_global("provisioner", worker)
    app.context.set_global("consumer", consumer)
    return app
