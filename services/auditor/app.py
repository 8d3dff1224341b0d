"""The auditor's composition root: ``create_app(settings)`` → a FastStream app.

The lifespan opens the Postgres pool (schema checked), makes sure the audit streams'
consumer groups exist (at id 0), and runs three things beside the stream consumers:
the notifier (due failure mails), retention (old audit rows), and the health/metrics
listener. SIGTERM: FastStream stops reading, waits for the batch in flight
(``graceful_timeout_s``), then the lifespan stops the notifier and closes the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from faststream import FastStream

from provisio_lib import observability as obs
from provisio_lib.delivery import ReliableConsumer, app_logger, make_broker
from provisio_lib.logging import get_logger
from provisio_lib.redis_client import connect_redis
from provisio_lib.runtime import worker_runtime
from provisio_lib.settings import load_settings
from provisio_lib.topology import AUDITOR_GROUP, MAX_OUTCOMES_PER_ENTRY, Topology

from .handler import AuditHandler
from .notifier import Notifier
from .settings import AuditorSettings
from .store import purge_expired

log = get_logger(__name__)


class Auditor:
    """What the lifespan opens, reachable from the handler and the tests."""

    def __init__(self, settings: AuditorSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.notifier: Notifier | None = None
        self.health: obs.HealthServer | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def wake_notifier(self) -> None:
        if self.notifier is not None:
            self.notifier.wake.set()

    async def retention_loop(self) -> None:
        while True:
            if self.pool is not None and self.settings.retention_days > 0:
                try:
                    async with self.pool.acquire() as conn:
                        n = await purge_expired(conn, self.settings.retention_days)
                    if n:
                        log.info("audit_rows_purged", rows=n, retention_days=self.settings.retention_days)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                    log.warning("retention_failed", error=str(err))
            await asyncio.sleep(self.settings.retention_interval_s)


def create_app(settings: AuditorSettings | None = None) -> FastStream:
    settings = settings or load_settings(AuditorSettings)
    topology = Topology(prefix=settings.redis_prefix, partitions=settings.partitions, maxlen=settings.stream_maxlen)
    redis_url = settings.redis_url.get_secret_value()
    broker = make_broker(redis_url, settings.graceful_timeout_s)
    redis = connect_redis(redis_url)
    auditor = Auditor(settings)
    handler = AuditHandler(lambda: auditor.pool, settings.notify_window_s, on_first_mail=auditor.wake_notifier)
    consumer = ReliableConsumer(
        broker=broker,
        redis=redis,
        streams=topology.audit_streams(),
        group=AUDITOR_GROUP,
        handler=handler,
        # Entries, each of up to MAX_OUTCOMES_PER_ENTRY outcomes: at most batch_size outcomes.
        batch_size=max(1, settings.batch_size // MAX_OUTCOMES_PER_ENTRY),
        claim_idle_ms=settings.claim_idle_ms,
        max_deliveries=settings.max_deliveries,
        min_batch_interval_ms=settings.audit_batch_wait_ms,
    )
    consumer.register()

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            async with worker_runtime(
                settings,
                service="auditor",
                redis=redis,
                topology=topology,
                consumer=consumer,
                stream_kinds=("audit", "audit_dlq"),
            ) as runtime:
                auditor.pool, auditor.health = runtime.pool, runtime.health
                auditor.notifier = Notifier(auditor.pool, settings)
                auditor.tasks = [
                    asyncio.create_task(auditor.notifier.run(), name="auditor-notifier"),
                    asyncio.create_task(auditor.retention_loop(), name="auditor-retention"),
                ]
                log.info(
                    "auditor_started",
                    consumer=consumer.consumer,
                    partitions=topology.partitions,
                    health_port=runtime.health.port,
                )
                try:
                    yield
                finally:
                    for task in auditor.tasks:
                        task.cancel()
                    for task in auditor.tasks:
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
        finally:
            log.info("auditor_stopped", **consumer.counters, **handler.counters)

    def begin_shutdown() -> None:
        consumer.stopping.set()
        if auditor.health is not None:
            auditor.health.mark_draining()

    app = FastStream(broker, lifespan=lifespan, on_shutdown=[begin_shutdown], logger=app_logger())
    app.context.set_global("auditor", auditor)
    app.context.set_global("consumer", consumer)
    app.context.set_global("audit_handler", handler)
    return app
