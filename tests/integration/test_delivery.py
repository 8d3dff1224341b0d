"""ReliableConsumer on a real Redis: acks, retries, claims, dead letters, transient errors."""

import pytest

from provisio_lib.delivery import Delivery, ReliableConsumer, TransientError, Verdicts, make_broker
from tests.conftest import eventually

pytestmark = pytest.mark.integration


async def run_consumer(redis_url, redis, stream, handler, **kw):
    broker = make_broker(redis_url, 5.0)
    consumer = ReliableConsumer(broker=broker, redis=redis, streams=[stream], group="g", handler=handler, **kw)
    consumer.register()
    await broker.start()
    return broker, consumer


@pytest.fixture
async def stream(redis, redis_prefix):
    name = f"{redis_prefix}:{{p0}}:commands"
    await redis.xgroup_create(name, "g", id="0", mkstream=True)
    return name


async def test_a_handler_that_raises_is_retried_then_dead_lettered(redis_url, redis, stream):
    calls = []

    async def broken(batch: list[Delivery]) -> Verdicts:
        calls.append([d.deliveries for d in batch])
        raise RuntimeError("handler bug")

    await redis.xadd(stream, {"__data__": b"{}"})
    broker, _consumer = await run_consumer(redis_url, redis, stream, broken, claim_idle_ms=150, max_deliveries=3)
    try:
        entries = await eventually(lambda: redis.xrange(f"{stream}:dlq"), timeout=15)
    finally:
        await broker.stop()
    assert len(entries) == 1
    fields = entries[0][1]
    assert b"handler bug" in fields[b"error"] and fields[b"deliveries"] == b"3"
    assert (await redis.xpending(stream, "g"))["pending"] == 0
    assert calls[-1] == [3]


async def test_transient_errors_are_retried_in_place_and_never_dead_lettered(redis_url, redis, stream):
    attempts = 0

    async def flaky(batch: list[Delivery]) -> Verdicts:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise TransientError("database down")
        return Verdicts()

    await redis.xadd(stream, {"__data__": b"{}"})
    broker, consumer = await run_consumer(redis_url, redis, stream, flaky, max_deliveries=2)
    try:
        await eventually(lambda: _acked(redis, stream), timeout=15)
    finally:
        await broker.stop()
    assert attempts == 4 and consumer.counters["transient"] == 3
    assert await redis.xlen(f"{stream}:dlq") == 0


async def _acked(redis, stream):
    info = await redis.xinfo_groups(stream)
    return info[0]["pending"] == 0 and info[0]["entries-read"] == 1


async def test_verdicts_ack_retry_and_dead_letter_per_entry(redis_url, redis, stream):
    seen: dict[str, int] = {}

    async def picky(batch: list[Delivery]) -> Verdicts:
        v = Verdicts()
        for d in batch:
            body = d.data
            seen[body.decode()] = seen.get(body.decode(), 0) + 1
            if body == b"dead":
                v.dead[d.entry_id] = "refused"
            elif body == b"later" and seen["later"] < 2:
                v.retry[d.entry_id] = "not yet"
        return v

    for body in (b"ok", b"dead", b"later"):
        await redis.xadd(stream, {"__data__": body})
    broker, _ = await run_consumer(redis_url, redis, stream, picky, claim_idle_ms=150)
    try:
        await eventually(lambda: _all_done(redis, stream), timeout=15)
    finally:
        await broker.stop()
    assert seen == {"ok": 1, "dead": 1, "later": 2}
    [(_, dead)] = await redis.xrange(f"{stream}:dlq")
    assert dead[b"__data__"] == b"dead" and dead[b"error"] == b"refused"


async def _all_done(redis, stream):
    return (await redis.xpending(stream, "g"))["pending"] == 0 and await redis.xlen(f"{stream}:dlq") == 1


async def test_on_shutdown_a_consumer_finishes_what_it_read_but_did_not_handle(redis_url, redis, stream):
    handled = []

    async def record(batch: list[Delivery]) -> Verdicts:
        handled.extend(d.data for d in batch)
        return Verdicts()

    for body in (b"a", b"b", b"c"):
        await redis.xadd(stream, {"__data__": body})
    # What FastStream may leave behind when it stops between XREADGROUP and the handler.
    await redis.xreadgroup("g", "worker-1", {stream: ">"}, count=10)
    consumer = ReliableConsumer(
        broker=make_broker(redis_url, 5.0),
        redis=redis,
        streams=[stream],
        group="g",
        handler=record,
        consumer="worker-1",
    )
    await consumer.finish_own_pending_quietly()
    assert handled == [b"a", b"b", b"c"]
    assert (await redis.xpending(stream, "g"))["pending"] == 0


async def test_what_a_handler_publishes_goes_out_with_the_ack_and_redis_failing_there_retries_the_batch(
    redis_url, redis, stream
):
    from redis.exceptions import ConnectionError as RedisConnectionError

    out = stream.replace("commands", "replies")
    handled: list[list[bytes | None]] = []

    async def answer(batch: list[Delivery]) -> Verdicts:
        handled.append([d.data for d in batch])
        first = len(handled) == 1

        def publish(pipe) -> None:
            if first:  # Redis went away after the handler committed its work
                raise RedisConnectionError("connection reset")
            for d in batch:
                pipe.xadd(out, {"__data__": b"answer-" + (d.data or b"")})

        return Verdicts(publish=publish)

    for body in (b"a", b"b"):
        await redis.xadd(stream, {"__data__": body})
    await redis.xreadgroup("g", "worker-1", {stream: ">"}, count=10)
    consumer = ReliableConsumer(
        broker=make_broker(redis_url, 5.0),
        redis=redis,
        streams=[stream],
        group="g",
        handler=answer,
        consumer="worker-1",
    )
    await consumer.finish_own_pending()
    assert handled == [[b"a", b"b"], [b"a", b"b"]]  # the same batch, handled again
    assert [f[b"__data__"] for _, f in await redis.xrange(out)] == [b"answer-a", b"answer-b"]
    assert (await redis.xpending(stream, "g"))["pending"] == 0
    assert consumer.counters["transient"] == 1 and consumer.counters["acked"] == 2


async def test_a_redis_refusal_while_announcing_is_retried_not_dead_lettered(redis_url, redis, stream):
    """E.g. Redis out of memory when the outcomes go out: the work is committed, so the
    batch is retried in place (answered again), never counted towards dead-lettering."""
    from redis.exceptions import ResponseError

    calls = 0

    async def answer(batch: list[Delivery]) -> Verdicts:
        nonlocal calls
        calls += 1
        refuse = calls == 1

        def publish(pipe) -> None:
            if refuse:
                raise ResponseError("OOM command not allowed when used memory > 'maxmemory'")

        return Verdicts(publish=publish)

    await redis.xadd(stream, {"__data__": b"a"})
    await redis.xreadgroup("g", "worker-1", {stream: ">"}, count=10)
    consumer = ReliableConsumer(
        broker=make_broker(redis_url, 5.0),
        redis=redis,
        streams=[stream],
        group="g",
        handler=answer,
        consumer="worker-1",
        max_deliveries=1,
    )
    await consumer.finish_own_pending()
    assert calls == 2 and consumer.counters["transient"] == 1 and consumer.counters["dead_lettered"] == 0
    assert (await redis.xpending(stream, "g"))["pending"] == 0
    assert await redis.xlen(f"{stream}:dlq") == 0
