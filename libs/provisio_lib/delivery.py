"""Reliable consumption of Redis streams by a consumer group, on FastStream.

FastStream reads a consumer group's entries and claims idle ones (XAUTOCLAIM); it does
not retry or dead-letter (a failed message just stays pending). This module adds the delivery discipline both workers need:

- each stream gets a **batch subscriber** (XREADGROUP ``>``, up to ``batch_size`` entries)
  and a **claim subscriber** (XAUTOCLAIM of entries idle longer than ``claim_idle_ms``),
  so the pending messages of a worker that died are finished by the others;
- the handler gets the batch and returns a :class:`Verdicts`: everything not named is
  acknowledged; ``retry`` entries stay pending (claimed again later, their delivery count
  growing); ``dead`` entries go to the dead-letter stream at once;
- an entry claimed with ``max_deliveries`` deliveries that fails again is moved to the
  dead-letter stream, with its error, so the stream keeps flowing;
- :class:`TransientError` (Postgres or Redis down) retries the same batch in place with
  backoff, indefinitely, and never counts towards dead-lettering: nothing is dropped;
- on shutdown FastStream stops the subscribers and waits for the handler in flight
  (``graceful_timeout``); a batch interrupted mid-retry stays pending for another worker.

Delivery is at least once; handlers make applying idempotent (the provisioner's inbox,
the auditor's unique event id).

Only FastStream's public API is used (``faststream``, ``faststream.redis``,
``faststream.middlewares``): ``StreamSub`` (batch reads; ``min_idle_time`` for XAUTOCLAIM),
custom ``parser``/``decoder``, ``AckPolicy.MANUAL``, ``RedisStreamMessage.get_delivery_count``
and the raw message's documented keys (``BatchStreamMessage``: ``channel``, ``message_ids``,
``data``). What FastStream has no API for is done beside it with redis-py, on the same
server: XACK pipelined with the outcomes, dead-lettering (XADD + XACK in MULTI), and
finishing this consumer's own pending entries on shutdown (docs/events.md, "Workers:
FastStream and redis-py"). tests/unit/test_faststream_api.py keeps it that way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from faststream.middlewares import AckPolicy
from faststream.redis import RedisBatchStreamMessage, RedisBroker, RedisStreamMessage, StreamSub
from redis.exceptions import RedisError

from .logging import get_logger
from .redis_client import is_cluster_url
from .topology import DATA_FIELD, OUTCOMES_FIELD

log = get_logger(__name__)


class TransientError(Exception):
    """Infrastructure is down or busy (connection lost, deadlock, serialization failure):
    the batch is retried with backoff, never dropped and never dead-lettered."""


@dataclass(frozen=True, slots=True)
class Delivery:
    stream: str
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1

    @property
    def data(self) -> bytes | None:
        return self.fields.get(DATA_FIELD.encode())


@dataclass
class Verdicts:
    """Per-entry decisions; entries not named are acknowledged."""

    retry: dict[str, str] = field(default_factory=dict)  # entry id → error (stays pending)
    dead: dict[str, str] = field(default_factory=dict)  # entry id → error (dead-letter now)
    # Redis commands to send before the XACK, in the same pipeline (the provisioner's
    # outcomes): one round trip instead of two, and the ack never precedes them.
    publish: Callable[[Any], None] | None = None
    # Called once the outcomes are out and the entries acknowledged: what the handler counts
    # as done (metrics) is counted there, so a batch handled again because announcing
    # failed is counted once.
    announced: Callable[[], None] | None = None


BatchHandler = Callable[[list[Delivery]], Awaitable[Verdicts]]
DeadLetterHook = Callable[[Delivery, str], Awaitable[None]]


def make_broker(url: str, graceful_timeout: float) -> RedisBroker:
    """A FastStream broker for a worker: one server or a cluster (``redis+cluster://``).

    FastStream logs through loggers of ours, so its lines come out in our JSON format;
    its per-message lines are at DEBUG (at thousands a second they would be the load)."""
    logger = logging.getLogger("provisio.faststream.broker")
    logger.setLevel(logging.WARNING)  # FastStream's per-task INFO chatter on shutdown
    # apply_types=False: our handlers take the message itself (see _message_itself), so
    # FastStream's dependency injection — which resolved Context("message") through a
    # thread-pool hop per batch — is not needed.
    kw: dict[str, Any] = dict(
        graceful_timeout=graceful_timeout, log_level=logging.DEBUG, logger=logger, apply_types=False
    )
    if is_cluster_url(url):
        from faststream.redis import RedisClusterBroker

        return RedisClusterBroker("redis://" + url.removeprefix("redis+cluster://"), **kw)
    return RedisBroker(url, **kw)


def app_logger() -> logging.Logger:
    """The logger for ``FastStream(..., logger=app_logger())``: start/stop lines in our format."""
    return logging.getLogger("provisio.faststream")


def consumer_name() -> str:
    """Unique per process, stable for its life: host name + pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ReliableConsumer:
    broker: RedisBroker
    redis: Any  # redis.asyncio client for XACK / XADD to the DLQ
    streams: list[str]
    group: str
    handler: BatchHandler
    dead_letter_stream: Callable[[str], str] = field(default=lambda stream: f"{stream}:dlq")
    on_dead_letter: DeadLetterHook | None = None
    consumer: str = field(default_factory=consumer_name)
    batch_size: int = 200
    block_ms: int = 100
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    # After a short batch, wait this long before reading again, so that a consumer that
    # is not latency-critical (the auditor) handles fewer, larger batches under load.
    min_batch_interval_ms: int = 0
    dlq_maxlen: int = 100_000
    max_backoff_s: float = 5.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    counters: dict[str, int] = field(
        default_factory=lambda: {"acked": 0, "retried": 0, "dead_lettered": 0, "transient": 0}
    )

    def register(self) -> None:
        for stream in self.streams:
            self._register_stream(stream)

    def _register_stream(self, stream: str) -> None:
        reader = self.broker.subscriber(
            stream=StreamSub(
                stream,
                group=self.group,
                consumer=self.consumer,
                batch=True,
                max_records=self.batch_size,
                polling_interval=self.block_ms,
            ),
            ack_policy=AckPolicy.MANUAL,
            parser=_raw_batch_parser,
            decoder=_message_itself,
        )
        claimer = self.broker.subscriber(
            stream=StreamSub(
                stream,
                group=self.group,
                consumer=self.consumer,
                min_idle_time=self.claim_idle_ms,
                polling_interval=max(self.claim_idle_ms // 4, 100),
            ),
            ack_policy=AckPolicy.MANUAL,
            decoder=_message_itself,
        )

        async def on_batch(message: RedisBatchStreamMessage) -> None:
            started = asyncio.get_running_loop().time()
            raw = message.raw_message
            ids = [_s(i) for i in raw["message_ids"]]
            deliveries = [Delivery(stream, i, f) for i, f in zip(ids, raw["data"], strict=True)]
            await self._process(deliveries)
            if self.min_batch_interval_ms and len(deliveries) < self.batch_size and not self.stopping.is_set():
                rest = self.min_batch_interval_ms / 1000 - (asyncio.get_running_loop().time() - started)
                if rest > 0:
                    await asyncio.sleep(rest)

        async def on_claim(message: RedisStreamMessage) -> None:
            raw = message.raw_message
            ids = [_s(i) for i in raw["message_ids"]]
            if not ids:
                return
            count = await message.get_delivery_count()
            await self._process([Delivery(stream, ids[0], raw["data"], count)], claimed=True)

        reader(on_batch)
        claimer(on_claim)

    async def _process(self, batch: list[Delivery], *, claimed: bool = False) -> None:
        backoff = 0.05
        while True:
            try:
                verdicts = await self._verdicts(batch)
                dead = dict(verdicts.dead)
                retry = dict(verdicts.retry)
                for d in batch:
                    if d.entry_id in retry and claimed and d.deliveries >= self.max_deliveries:
                        dead[d.entry_id] = f"failed {d.deliveries} times: {retry.pop(d.entry_id)}"
                ack = [d.entry_id for d in batch if d.entry_id not in retry and d.entry_id not in dead]
                await self._publish_and_ack(batch[0].stream, ack, verdicts.publish)
                if verdicts.announced is not None:
                    verdicts.announced()
                break
            except TransientError as err:
                self.counters["transient"] += 1
                if self.stopping.is_set():
                    log.warning("batch_left_pending_on_shutdown", size=len(batch), error=str(err))
                    return
                log.warning("transient_failure_retrying", size=len(batch), error=str(err), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        for d in batch:
            if d.entry_id in dead:
                await self._dead_letter(d, dead[d.entry_id])
        self.counters["acked"] += len(ack)
        self.counters["retried"] += len(retry)
        for entry_id, error in retry.items():
            log.warning("delivery_failed_will_retry", stream=batch[0].stream, entry_id=entry_id, error=error)

    async def _verdicts(self, batch: list[Delivery]) -> Verdicts:
        """The handler's verdicts; a handler bug makes every entry count a failed delivery."""
        try:
            return await self.handler(batch)
        except TransientError:
            raise
        except Exception as err:
            log.exception("batch_handler_failed", size=len(batch))
            return Verdicts(retry={d.entry_id: f"{type(err).__name__}: {err}"[:1000] for d in batch})

    async def _publish_and_ack(self, stream: str, ack: list[str], publish: Callable[[Any], None] | None) -> None:
        """The handler's outcomes, then the XACK, in one pipeline. Redis going away here is
        transient: the batch is handled again (the provisioner answers it from its inbox)."""
        if not ack and publish is None:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if publish is not None:
                    publish(pipe)
                if ack:
                    pipe.xack(stream, self.group, *ack)
                await pipe.execute()
        except (RedisError, OSError) as err:
            # Any Redis failure here (down, timed out, out of memory) is retried in place:
            # what the handler did is committed, and must be announced, never dead-lettered.
            raise TransientError(f"redis: {err}") from err

    async def finish_own_pending(self, limit: int = 1000) -> int:
        """On shutdown, after the subscribers stopped: handle what this consumer read but
        did not finish (FastStream may stop between XREADGROUP and the handler), so a
        rolling restart does not leave it waiting ``claim_idle_ms`` for another worker.
        Whatever still fails stays pending and is claimed as usual. Returns the count."""
        done = 0
        for stream in self.streams:
            pending = await self.redis.xpending_range(
                stream, self.group, min="-", max="+", count=limit, consumername=self.consumer
            )
            batch = []
            for p in pending:
                entry_id = _s(p["message_id"])
                entries = await self.redis.xrange(stream, min=entry_id, max=entry_id)
                if entries:
                    batch.append(Delivery(stream, entry_id, entries[0][1], int(p["times_delivered"])))
            if batch:
                await self._process(batch, claimed=True)
                done += len(batch)
        if done:
            log.info("finished_own_pending_on_shutdown", count=done, consumer=self.consumer)
        return done

    async def finish_own_pending_quietly(self, timeout_s: float = 10.0) -> None:
        """``finish_own_pending`` for a lifespan's exit: bounded, and never raising (what is
        not finished is claimed by another worker as usual)."""
        try:
            await asyncio.wait_for(self.finish_own_pending(), timeout_s)
        except Exception as err:
            log.warning("own_pending_left_for_others", error=str(err) or type(err).__name__)

    async def _dead_letter(self, d: Delivery, error: str) -> None:
        fields: dict[Any, Any] = {
            **_message_fields(d),
            "error": error[:2000],
            "deliveries": str(d.deliveries),
            "failed_at": datetime.now(UTC).isoformat(),
            "stream": d.stream,
            "entry_id": d.entry_id,
            "group": self.group,
        }
        if self.on_dead_letter is not None:
            try:
                await self.on_dead_letter(d, error)
            except Exception as err:  # the hook must not keep the message from the DLQ
                log.error("dead_letter_hook_failed", entry_id=d.entry_id, error=str(err))
        # Same hash tag as the source stream, so MULTI works on Redis Cluster too.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_letter_stream(d.stream), fields, maxlen=self.dlq_maxlen, approximate=True)
            pipe.xack(d.stream, self.group, d.entry_id)
            await pipe.execute()
        self.counters["dead_lettered"] += 1
        log.error("dead_lettered", stream=d.stream, entry_id=d.entry_id, deliveries=d.deliveries, error=error)


def _message_fields(d: Delivery) -> dict[str, Any]:
    """The entry's message as it was: a command or outcome in ``__data__``, a batch of
    outcomes in ``__outcomes__``; anything else, readably, in ``__data__``."""
    if d.data is not None:
        return {DATA_FIELD: d.data}
    many = d.fields.get(OUTCOMES_FIELD.encode())
    return {OUTCOMES_FIELD: many} if many is not None else {DATA_FIELD: repr(d.fields)}


async def _raw_batch_parser(raw: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """Skip FastStream's decoding of the batch body (it parses every entry's JSON and
    dumps the list again, a large share of the worker's time): the handler reads the raw entries
    and decodes each once, against the contract. FastStream's custom-parser hook: the
    original parser builds the message (ids, channel, the message's consumer and group)
    from the raw message without its entries, and ``raw_message`` gets them back."""
    message = await original({**raw, "data": []})
    message.raw_message = raw
    return message


async def _message_itself(message: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """The handler's argument is the FastStream message (raw entries, ids, delivery
    count), not a decoded body: handlers decode each entry once, against the contract."""
    return message


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
