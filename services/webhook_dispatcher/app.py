"""The dispatcher's composition root: :class:`Dispatcher` (``async with d.running():``).

One task per active endpoint fans new feed events out into deliveries and claims what
may be sent (``provisio_lib.webhook_store``); each claimed chain (one resource's
deliveries in feed order) is sent by its own task, one request after the other, with at
most ``webhook_max_in_flight`` chains of an endpoint at once. Endpoints never wait for
each other: a slow or dead receiver holds its own chains and its own connection slots
(``limit_per_host``), nothing shared but the database. Results are written in batches
by one recorder. The tasks wake on the provisioner's ``PUBLISH`` after it commits
events (the tenant id on ``{prefix}:events``), and at least every ``webhook_poll_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from provisio_lib import db, event_signals, webhook_store, webhooks
from provisio_lib import observability as obs
from provisio_lib.logging import get_logger
from provisio_lib.redis_client import connect_redis
from provisio_lib.topology import Topology
from provisio_lib.webhook_http import make_session, post_event
from provisio_lib.webhook_store import Claimed, Endpoint, Outcome

from .settings import DispatcherSettings

log = get_logger(__name__)

DB_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
FAN_OUT_BATCH = 1000


class EndpointWorker:
    """Fan-out, claim and send for one endpoint, in this process."""

    def __init__(self, dispatcher: Dispatcher, endpoint: Endpoint) -> None:
        self.d = dispatcher
        self.endpoint = endpoint
        self.wake = asyncio.Event()
        self.need_fan_out = True
        self.last_fan_out = 0.0
        self.rows_in_flight = 0
        self.slots = asyncio.Semaphore(dispatcher.settings.webhook_max_in_flight)
        self.chains: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"webhook-{self.endpoint.name}")

    def poke(self, fan_out: bool = False) -> None:
        if fan_out:
            self.need_fan_out = True
        self.wake.set()

    async def stop(self, timeout: float) -> None:
        """Stop claiming; let the chains in flight finish their current request."""
        self.stopped = True
        self.wake.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.chains:
            _done, pending = await asyncio.wait(self.chains, timeout=timeout)
            for t in pending:
                t.cancel()

    async def run(self) -> None:
        s = self.d.settings
        backoff = 0.1
        while not self.stopped:
            self.wake.clear()
            try:
                await self.cycle()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as err:
                log.warning("webhook_database_error", endpoint=self.endpoint.name, error=str(err), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, s.webhook_poll_s * 5)
                continue
            except Exception:
                log.exception("webhook_worker_error", endpoint=self.endpoint.name)
                await asyncio.sleep(1.0)
                continue
            if self.stopped:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), s.webhook_poll_s)

    async def cycle(self) -> None:
        s = self.d.settings
        pool = self.d.pool
        now = asyncio.get_running_loop().time()
        # The poll: events whose signal was lost (Redis restarting), or that became
        # visible only when an older transaction ended; due retries are claimed below.
        if self.need_fan_out or now - self.last_fan_out >= s.webhook_poll_s:
            self.need_fan_out = False
            self.last_fan_out = now
            scanned, _inserted = await webhook_store.fan_out(
                pool, self.endpoint.id, FAN_OUT_BATCH, tenant_id=self.endpoint.tenant_id
            )
            if scanned == FAN_OUT_BATCH:
                # More to fan out: next cycle, after this one's claim, so a large backlog
                # (an initial sync) is sent while it is still being fanned out.
                self.poke(fan_out=True)
        room = s.webhook_claim_batch - self.rows_in_flight
        if room < max(1, s.webhook_claim_batch // 4) or self.stopped:
            return
        claimed = await webhook_store.claim(
            pool, self.endpoint.id, room, timeout_s=s.webhook_timeout_s, max_chain=s.webhook_max_chain
        )
        for chain in webhook_store.chains(claimed):
            self.rows_in_flight += len(chain)
            task = asyncio.create_task(self.send_chain(chain))
            self.chains.add(task)
            task.add_done_callback(self.chains.discard)

    async def send_chain(self, chain: list[Claimed]) -> None:
        """Send one resource's deliveries in order; stop at the first that will be
        retried (the rest wait for it) and give the rest back."""
        s = self.d.settings
        recorder = self.d.recorder
        sent = 0
        try:
            async with self.slots:
                for i, d in enumerate(chain):
                    now = datetime.now(UTC)
                    if self.stopped or (d.lease_until - now).total_seconds() < s.webhook_timeout_s + 1:
                        recorder.release(c.id for c in chain[i:])
                        return
                    sent = i + 1
                    if d.event is None:  # pruned from the feed while it waited: nothing to send
                        recorder.add(
                            Outcome(d, False, None, 0.0, None, "the event is no longer retained", now, None, False)
                        )
                        obs.WEBHOOK_DELIVERIES.labels(result="dead").inc()
                        continue
                    endpoint = self.endpoint  # the latest settings (URL, secrets)
                    assert self.d.session is not None
                    answer = await post_event(self.d.session, endpoint.url, d.event, endpoint.secrets(now), s)
                    obs.WEBHOOK_REQUEST_DURATION.observe(answer.latency_ms / 1000)
                    if answer.ok:
                        recorder.add(
                            Outcome(
                                d,
                                True,
                                answer.status,
                                answer.latency_ms,
                                answer.excerpt,
                                None,
                                answer.attempted_at,
                                None,
                            )
                        )
                        obs.WEBHOOK_DELIVERIES.labels(result="delivered").inc()
                        _observe_age(d.event)
                        continue
                    next_at = webhooks.retry_or_dead(
                        d.attempts + 1,
                        d.created_at,
                        answer.attempted_at,
                        horizon_s=s.webhook_retry_horizon,
                        base_s=s.webhook_backoff_base_s,
                        cap_s=s.webhook_backoff_max_s,
                    )
                    recorder.add(
                        Outcome(
                            d,
                            False,
                            answer.status,
                            answer.latency_ms,
                            answer.excerpt,
                            answer.error,
                            answer.attempted_at,
                            next_at,
                        )
                    )
                    obs.WEBHOOK_DELIVERIES.labels(result="failed" if next_at else "dead").inc()
                    log.info(
                        "webhook_attempt_failed",
                        endpoint=endpoint.name,
                        event_id=str(d.event_id),
                        status=answer.status,
                        error=answer.error,
                        attempts=d.attempts + 1,
                        retry_at=next_at.isoformat() if next_at else None,
                    )
                    if next_at is not None:
                        recorder.release(c.id for c in chain[i + 1 :])
                        return
        except asyncio.CancelledError:
            recorder.release(c.id for c in chain[sent:])
            raise
        finally:
            self.rows_in_flight -= len(chain)
            self.wake.set()


def _observe_age(event: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        occurred = datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00"))
        obs.WEBHOOK_EVENT_AGE.observe(max(0.0, (datetime.now(UTC) - occurred).total_seconds()))


class Recorder:
    """Writes the outcomes of every chain in batches (one transaction per batch), then
    wakes the endpoints concerned: a resource's next event may go once its previous
    one is recorded."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.outcomes: list[Outcome] = []
        self.released: list[int] = []
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.idle.clear()
        self.wake.set()

    def release(self, ids: Any) -> None:
        ids = list(ids)
        if ids:
            self.released.extend(ids)
            self.idle.clear()
            self.wake.set()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(0.002)  # let the other chains' answers join this batch
            try:
                await self.flush()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as err:
                log.warning("webhook_record_failed", error=str(err), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self.wake.set()
            except Exception:
                # A batch Postgres refuses for good would block every later one: drop it.
                # Its deliveries are sent again when their leases run out (at least once).
                log.exception("webhook_record_dropped", outcomes=len(self.outcomes), released=len(self.released))
                self.outcomes, self.released = [], []
                self.idle.set()

    async def flush(self) -> None:
        outcomes, self.outcomes = self.outcomes, []
        released, self.released = self.released, []
        if not outcomes and not released:
            self.idle.set()
            return
        try:
            try:
                disabled = await webhook_store.record(
                    self.d.pool, outcomes, released, disable_after_s=self.d.settings.webhook_disable_after
                )
            except asyncpg.ForeignKeyViolationError:
                # An endpoint was removed between the check and the insert: drop its outcomes.
                async with self.d.pool.acquire() as conn:
                    alive = {r["id"] for r in await conn.fetch("SELECT id FROM webhook_endpoints")}
                outcomes = [o for o in outcomes if o.delivery.endpoint_id in alive]
                disabled = await webhook_store.record(
                    self.d.pool, outcomes, released, disable_after_s=self.d.settings.webhook_disable_after
                )
        except BaseException:
            self.outcomes[:0] = outcomes
            self.released[:0] = released
            raise
        for e in disabled:
            log.warning(
                "webhook_endpoint_disabled",
                endpoint=e.name,
                tenant=e.tenant_name,
                failing_since=e.failing_since.isoformat(),
                last_error=e.last_error,
                mailed=e.tenant_id is not None,
            )
            self.d.drop_worker(e.endpoint_id)
        for endpoint_id in {o.delivery.endpoint_id for o in outcomes}:
            worker = self.d.workers.get(endpoint_id)
            if worker is not None:
                worker.poke()
        if not self.outcomes and not self.released:
            self.idle.set()


class Dispatcher:
    """What runs in one dispatcher process; ``async with dispatcher.running():``."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self.topology = Topology(
            prefix=settings.redis_prefix, partitions=settings.partitions, maxlen=settings.stream_maxlen
        )
        self.pool: Any = None
        self.redis: Any = None
        self.session: aiohttp.ClientSession | None = None
        self.health: obs.HealthServer | None = None
        self.workers: dict[uuid.UUID, EndpointWorker] = {}
        self.recorder = Recorder(self)
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._metric_names: set[str] = set()

    def request_stop(self) -> None:
        self.stopping.set()
        if self.health is not None:
            self.health.mark_draining()

    async def run(self) -> None:
        async with self.running():
            await self.stopping.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Dispatcher]:
        s = self.settings
        self.pool = await db.create_pool(
            s.database_url.get_secret_value(), min_size=s.db_pool_min, max_size=s.db_pool_max
        )
        try:
            async with self.pool.acquire() as conn:
                await db.check_schema(conn)
            self.redis = connect_redis(s.redis_url.get_secret_value())
            self.session = make_session(s, per_host=s.webhook_max_in_flight)
            obs.set_service_info("webhook-dispatcher")
            self.health = await obs.start_health_server(
                s.health_host,
                s.health_port,
                {"postgres": obs.postgres_check(self.pool), "redis": obs.redis_check(self.redis)},
            ).start()
            self._tasks = [
                asyncio.create_task(self.recorder.run(), name="webhook-recorder"),
                asyncio.create_task(self._supervise(), name="webhook-endpoints"),
                asyncio.create_task(self._listen(), name="webhook-signal"),
                asyncio.create_task(self._housekeeping(), name="webhook-housekeeping"),
            ]
            log.info("webhook_dispatcher_started", health_port=self.health.port)
            try:
                yield self
            finally:
                await self._shutdown()
        finally:
            await self.pool.close()

    async def _shutdown(self) -> None:
        s = self.settings
        if self.health is not None:
            self.health.mark_draining()
        supervisor = self._tasks[1] if len(self._tasks) > 1 else None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        await asyncio.gather(*(w.stop(s.graceful_timeout_s) for w in self.workers.values()))
        self.workers.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.recorder.idle.wait(), s.graceful_timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.recorder.flush()
        if self.session is not None:
            await self.session.close()
        if self.health is not None:
            await self.health.stop()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
        log.info("webhook_dispatcher_stopped")

    def drop_worker(self, endpoint_id: uuid.UUID) -> None:
        worker = self.workers.pop(endpoint_id, None)
        if worker is not None:
            worker.stopped = True
            worker.wake.set()

    async def refresh_endpoints(self) -> None:
        async with self.pool.acquire() as conn:
            endpoints = {e.id: e for e in await webhook_store.load_endpoints(conn)}
        for eid in [eid for eid in self.workers if eid not in endpoints]:
            self.drop_worker(eid)
        for eid, e in endpoints.items():
            worker = self.workers.get(eid)
            if worker is None:
                worker = EndpointWorker(self, e)
                self.workers[eid] = worker
                worker.start()
            else:
                worker.endpoint = e

    async def _supervise(self) -> None:
        """Follow `webhook add/remove/enable`: start and stop endpoint workers."""
        while True:
            try:
                await self.refresh_endpoints()
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as err:
                log.warning("webhook_endpoints_unavailable", error=str(err))
            except Exception:
                log.exception("webhook_endpoints_error")
            await asyncio.sleep(self.settings.webhook_poll_s)

    def _wake_tenant(self, tenant: str | None) -> None:
        for w in list(self.workers.values()):
            if tenant is None or w.endpoint.tenant_id is None or str(w.endpoint.tenant_id) == tenant:
                w.poke(fan_out=True)

    async def _listen(self) -> None:
        """The provisioner's PUBLISH of a tenant id after it committed events; the
        endpoints poll on their own (``webhook_poll_s``), so no tick here."""
        await event_signals.follow(
            self.redis, self.topology.events_channel(), self._wake_tenant, error_event="webhook_signal_error"
        )

    async def _housekeeping(self) -> None:
        """Backlog and lag gauges; pruning finished deliveries past the events' retention."""
        s = self.settings
        loop = asyncio.get_running_loop()
        next_prune = loop.time() + random.uniform(0, min(60.0, s.webhook_prune_interval_s))
        while True:
            try:
                await self.measure()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + s.webhook_prune_interval_s
                    cutoff = datetime.now(UTC) - timedelta(days=s.events_retention_days)
                    n = await webhook_store.prune(self.pool, cutoff)
                    if n:
                        log.info("webhook_deliveries_pruned", deleted=n, older_than=cutoff.isoformat())
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("webhook_housekeeping_failed", error=str(err))
            await asyncio.sleep(s.webhook_metrics_interval_s)

    async def measure(self) -> None:
        async with self.pool.acquire() as conn:
            rows = await webhook_store.backlog(conn)
        names = set()
        status_counts = {"active": 0, "disabled": 0}
        for r in rows:
            names.add(r["name"])
            status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
            obs.WEBHOOK_BACKLOG.labels(endpoint=r["name"]).set(r["pending"])
            obs.WEBHOOK_LAG.labels(endpoint=r["name"]).set(float(r["oldest_pending_s"] or 0.0))
        for gone in self._metric_names - names:
            with contextlib.suppress(KeyError):
                obs.WEBHOOK_BACKLOG.remove(gone)
                obs.WEBHOOK_LAG.remove(gone)
        self._metric_names = names
        for status, n in status_counts.items():
            obs.WEBHOOK_ENDPOINTS.labels(status=status).set(n)
