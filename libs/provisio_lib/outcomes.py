"""Publishing commands and waiting for their outcomes, for the gateways.

Each gateway process owns one reply stream (``Topology.reply_stream(instance)``) and
one reader task over it, shared by every request: a request registers a future under
its command's event id, the reader resolves it when the provisioner's outcome arrives.
A stream (not pub/sub) so an outcome published while the reader reconnects is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .contract import Command, Outcome, decode_outcome, decode_outcomes, encode, encode_outcomes
from .logging import get_logger
from .redis_client import dedicated
from .topology import DATA_FIELD, OUTCOMES_FIELD, Topology

log = get_logger(__name__)


class BrokerUnavailable(Exception):
    """Redis did not accept the command: the caller answers 503 + Retry-After."""


class OutcomeTimeout(Exception):
    """No outcome within the wait: the command is still applied exactly once later."""


async def publish_command(redis: Any, topology: Topology, command: Command) -> str:
    """XADD the command to its tenant's partition; return the stream entry id."""
    stream = topology.command_stream_for(command.tenant_id)
    try:
        entry_id = await redis.xadd(stream, {DATA_FIELD: encode(command)}, maxlen=topology.maxlen, approximate=True)
    except (RedisConnectionError, RedisTimeoutError, OSError) as err:
        raise BrokerUnavailable(str(err)) from err
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


class CommandPublisher:
    """XADDs commands, coalescing those that arrive while a send is in flight into one
    pipeline: under load, one socket write carries many commands (each write is a
    syscall, and syscalls were the gateway's largest cost). No timer, so an idle
    gateway adds no latency: the first command goes out at once."""

    def __init__(self, redis: Any, topology: Topology) -> None:
        self.redis = redis
        self.topology = topology
        self._queue: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._sending = False

    async def publish(self, command: Command) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((self.topology.command_stream_for(command.tenant_id), encode(command), fut))
        if not self._sending:
            self._sending = True
            asyncio.get_running_loop().create_task(self._send_all())
        await fut

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._sending = False

    async def _send(self, batch: list[tuple[str, bytes, asyncio.Future[None]]]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, data, _ in batch:
                    pipe.xadd(stream, {DATA_FIELD: data}, maxlen=self.topology.maxlen, approximate=True)
                results = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, OSError) as err:
            results = [err] * len(batch)
        except Exception as err:  # never leave a request waiting on a future nobody resolves
            results = [err] * len(batch)
        for (_, _, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, Exception):
                fut.set_exception(BrokerUnavailable(str(result)))
            else:
                fut.set_result(None)


class OutcomeWaiter:
    """One reader of this process's reply stream, resolving futures by event id."""

    def __init__(self, redis: Any, topology: Topology, instance: str | None = None) -> None:
        self.redis = redis
        self.topology = topology
        self.instance = instance or uuid.uuid4().hex[:12]
        self.stream = topology.reply_stream(self.instance)
        self._pending: dict[uuid.UUID, asyncio.Future[Outcome]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_id = "$"
        self._stopping = False
        # The reader holds its own connection (one blocking XREAD at a time, no pool
        # checkout per read); the publisher's pipelines come from the pool as usual.
        self._reader = dedicated(redis)
        self.publisher = CommandPublisher(redis, topology)

    async def start(self) -> None:
        # Read from the current end: outcomes only ever answer requests made after start.
        self._last_id = "$"
        self._task = asyncio.create_task(self._run(), name=f"outcome-waiter-{self.instance}")

    async def stop(self) -> None:
        if self._task:
            # Let the reader leave its blocking XREAD by itself (block is 250 ms): cancelling
            # redis-py mid-read can leave the connection, and the task, stuck.
            self._stopping = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 3)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        if self._reader is not self.redis:  # a cluster client is shared, not dedicated
            with contextlib.suppress(Exception):
                await self._reader.aclose()
        with contextlib.suppress(Exception):
            await self.redis.delete(self.stream)

    async def submit(self, command: Command, timeout: float) -> Outcome:
        """Publish ``command`` (which must reply to this waiter) and wait for its outcome."""
        if command.reply_to != self.stream:
            command = command.model_copy(update={"reply_to": self.stream})
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        self._pending[command.event_id] = fut
        try:
            await self.publisher.publish(command)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError as err:
            raise OutcomeTimeout(str(command.event_id)) from err
        finally:
            self._pending.pop(command.event_id, None)

    def reply_to(self) -> str:
        return self.stream

    async def _run(self) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        next_refresh = 0.0
        next_trim = 0.0
        trimmed = ""
        while not self._stopping:
            try:
                if loop.time() >= next_refresh:
                    # The TTL removes the stream of a gateway that died; a live one keeps it.
                    await self._reader.expire(self.stream, self.topology.reply_ttl_s)
                    next_refresh = loop.time() + self.topology.reply_ttl_s / 3
                if self._last_id == "$":
                    # Resolve "$" to a concrete id once, so nothing is skipped between reads.
                    info = await self._reader.xadd(self.stream, {"hello": "1"}, maxlen=self.topology.reply_maxlen)
                    await self._reader.expire(self.stream, self.topology.reply_ttl_s)
                    self._last_id = info.decode() if isinstance(info, bytes) else str(info)
                resp = await self._reader.xread({self.stream: self._last_id}, block=250, count=500)
                backoff = 0.1
                for _stream, entries in resp or ():
                    for entry_id, fields in entries:
                        self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        self._deliver(fields)
                if self._last_id != trimmed and loop.time() >= next_trim:
                    # What this reader has read is of no further use: trim all of it, at most
                    # once a second, so the reply stream holds about a second of outcomes
                    # instead of reply_maxlen of them (issue 13 §2: Redis memory).
                    await self._reader.xtrim(self.stream, minid=_after(self._last_id), approximate=False)
                    trimmed = self._last_id
                    next_trim = loop.time() + 1.0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Redis down: keep the futures, reconnect with backoff
                log.warning("outcome_reader_error", error=str(err), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                # At most 1 s: requests are waiting (outcome timeout), so the reader must be
                # back soon after Redis is; a failed XREAD a second costs nothing.
                backoff = min(backoff * 2, 1.0)

    def _deliver(self, fields: dict[Any, Any]) -> None:
        try:
            outcomes = entry_outcomes(fields)
        except Exception as err:
            log.error("outcome_undecodable", error=str(err))
            return
        for outcome in outcomes:
            fut = self._pending.get(outcome.event_id)
            if fut is not None and not fut.done():
                fut.set_result(outcome)


def _after(entry_id: str) -> str:
    """The stream id right after ``entry_id`` (XTRIM MINID keeps ids >= it)."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


_DATA = DATA_FIELD.encode()
_OUTCOMES = OUTCOMES_FIELD.encode()


def entry_outcomes(fields: dict[Any, Any]) -> list[Outcome]:
    """The Outcomes of a reply or audit stream entry: one in ``__data__`` or several in
    ``__outcomes__`` (a batch's, written with one XADD); none for other entries (a
    reply stream's "hello"). Raises if the entry's JSON is not Outcomes."""
    one = fields.get(_DATA) or fields.get(DATA_FIELD)
    if one is not None:
        return [decode_outcome(one)]
    many = fields.get(_OUTCOMES) or fields.get(OUTCOMES_FIELD)
    return decode_outcomes(many) if many is not None else []


def outcome_fields(encoded: list[bytes]) -> dict[str, bytes]:
    """The fields of one entry carrying ``encoded`` outcomes (see ``entry_outcomes``)."""
    return {DATA_FIELD: encoded[0]} if len(encoded) == 1 else {OUTCOMES_FIELD: encode_outcomes(encoded)}


async def publish_reply(redis: Any, topology: Topology, outcome: Outcome, reply_to: str) -> None:
    """Send an outcome to the gateway waiting on ``reply_to`` (bounded, expiring)."""
    data = encode(outcome)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(reply_to, {DATA_FIELD: data}, maxlen=topology.reply_maxlen, approximate=True)
        pipe.expire(reply_to, topology.reply_ttl_s)
        await pipe.execute()
