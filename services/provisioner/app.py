"""The provisioner's composition root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from faststream import FastStream

from provisio_lib.delivery import ReliableConsumer, app_logger, make_broker
from provisio_lib.logging import get_logger
from provisio_lib.redis_client import connect_redis
from provisio_lib.runtime import worker_runtime
from provisio_lib.settings import load_settings
from provisio_lib.topology import PROVISIONER_GROUP, Topology

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
        try:
            async with worker_runtime(
                settings,
                service="provisioner",
                redis=redis,
                topology=topology,
                consumer=consumer,
                stream_kinds=("commands", "dlq"),
            ) as runtime:
                worker.pool, worker.health = runtime.pool, runtime.health
                log.info(
                    "provisioner_started",
                    consumer=consumer.consumer,
                    partitions=topology.partitions,
                    health_port=runtime.health.port,
                )
                yield
        finally:
            log.info("provisioner_stopped", **consumer.counters, **worker.counters, batches=worker.paths)

    def begin_shutdown() -> None:
        consumer.stopping.set()
        if worker.health is not None:
            worker.health.mark_draining()

    app = FastStream(broker, lifespan=lifespan, on_shutdown=[begin_shutdown], logger=app_logger())
    app.context.set_global("provisioner", worker)
    app.context.set_global("consumer", consumer)
    return app
