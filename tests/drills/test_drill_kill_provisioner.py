"""Drill 1: SIGKILL a provisioner in the middle of a load of N distinct creates.

Two provisioner processes share the consumer group. When the load is under way, one is
frozen (SIGSTOP) at a moment it holds unacknowledged entries, and killed (SIGKILL): a crash
with work in flight. Afterwards: exactly N users, every command applied once (one inbox row
each, one non-redelivered outcome each), none lost, and the entries the dead worker held
were claimed by the survivor (XPENDING per consumer before and after).
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from typing import Any

import pytest

from provisio_lib.contract import Command, CreateUser, Source, UserData
from provisio_lib.outcomes import entry_outcomes, publish_command
from provisio_lib.topology import DATA_FIELD, PROVISIONER_GROUP, Topology
from tests.conftest import make_tenant

from .support import Clock, pending_by_consumer, pending_total, wait_for

pytestmark = [pytest.mark.drills, pytest.mark.integration]

N = 4000
TENANTS = 8
SOURCE = Source(kind="scim", id="drill", label="drill-1")


def creates(tenants: list[Any], n: int) -> list[Command]:
    return [
        Command(
            tenant_id=tenants[i % len(tenants)].id,
            source=SOURCE,
            correlation_id=f"drill1-{i}",
            payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=f"user{i}@drill.test")),
        )
        for i in range(n)
    ]


async def publish_all(redis: Any, topology: Topology, commands: list[Command], chunk: int = 100) -> None:
    for i in range(0, len(commands), chunk):
        await asyncio.gather(*(publish_command(redis, topology, c) for c in commands[i : i + chunk]))
        await asyncio.sleep(0.01)  # a steady load, not one burst


async def victim_entries(redis: Any, topology: Topology, consumer: str) -> dict[str, list[str]]:
    """Stream → entry ids the consumer holds unacknowledged."""
    held: dict[str, list[str]] = {}
    for stream in topology.command_streams():
        rows = await redis.xpending_range(
            stream, PROVISIONER_GROUP, min="-", max="+", count=10_000, consumername=consumer
        )
        if rows:
            held[stream] = [
                r["message_id"].decode() if isinstance(r["message_id"], bytes) else r["message_id"] for r in rows
            ]
    return held


async def test_sigkill_a_provisioner_mid_load_loses_and_doubles_nothing(procs, pool, redis, topology):
    clock = Clock()
    tenants = [await make_tenant(pool) for _ in range(TENANTS)]
    commands = creates(tenants, N)
    # Small batches: each worker always has a batch in flight, so a kill catches one.
    victim = await procs.provisioner(batch_size=50, claim_idle_ms=1000)
    survivor = await procs.provisioner(batch_size=50, claim_idle_ms=1000)
    clock.mark("workers ready")

    async def inbox_count() -> int:
        async with pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM inbox"))

    load = asyncio.create_task(publish_all(redis, topology, commands))
    await wait_for(lambda: _at_least(inbox_count, N // 5), 30, "a fifth of the load applied")

    # Freeze the victim at a moment it holds entries, then kill it: a crash mid-batch.
    held: dict[str, list[str]] = {}
    for _ in range(200):
        victim.send(signal.SIGSTOP)
        await asyncio.sleep(0.05)
        held = await victim_entries(redis, topology, victim.consumer)
        if held:
            break
        victim.send(signal.SIGCONT)
        await asyncio.sleep(0.01)
    assert held, "the victim never held unacknowledged entries (load too light to test a crash)"
    before = await pending_by_consumer(redis, topology)
    applied_at_kill = await inbox_count()
    victim.kill()
    clock.mark(f"victim SIGKILLed holding {sum(map(len, held.values()))} entries, {applied_at_kill}/{N} applied")
    assert before[victim.consumer] == sum(map(len, held.values()))

    await load
    clock.mark("load published")

    async def drained() -> bool:
        return await inbox_count() == N and await pending_total(redis, topology) == 0

    await wait_for(drained, 45, f"all {N} commands applied and acknowledged", diagnostics=procs.logs)
    clock.mark("drained")
    assert survivor.alive()

    after = await pending_by_consumer(redis, topology)
    assert after.get(victim.consumer, 0) == 0, "the dead worker's entries were never claimed"
    assert sum(after.values()) == 0

    # The entries the victim held at its death are applied, once.
    held_events: list[str] = []
    for stream, ids in held.items():
        for entry_id in ids:
            ((_, fields),) = await redis.xrange(stream, min=entry_id, max=entry_id)
            held_events.append(json.loads(fields[DATA_FIELD.encode()])["event_id"])

    async with pool.acquire() as conn:
        users = await conn.fetchval("SELECT count(*) FROM users")
        distinct = await conn.fetchval("SELECT count(DISTINCT (tenant_id, lower(user_name))) FROM users")
        names = {r["user_name"] for r in await conn.fetch("SELECT user_name FROM users")}
        inbox = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM inbox")}
        failed = await conn.fetchval("SELECT count(*) FROM inbox WHERE outcome->>'result' <> 'applied'")
    assert users == N and distinct == N and failed == 0
    assert names == {c.payload.data.user_name for c in commands}  # type: ignore[union-attr]
    assert inbox == {str(c.event_id) for c in commands}
    assert set(held_events) <= inbox

    # Outcomes: every command announced; applied (not redelivered) exactly once.
    firsts: dict[str, int] = {}
    announced: set[str] = set()
    redelivered = 0
    for stream in topology.audit_streams():
        for o in [o for _, fields in await redis.xrange(stream) for o in entry_outcomes(fields)]:
            announced.add(str(o.event_id))
            if o.redelivered:
                redelivered += 1
            else:
                firsts[str(o.event_id)] = firsts.get(str(o.event_id), 0) + 1
    # (A worker killed between commit and publish leaves only the redelivered outcome.)
    assert announced == inbox and set(firsts.values()) == {1}
    print(f"drill 1: {clock}; {redelivered} redelivered outcomes (answered from the inbox)")


async def _at_least(count: Any, n: int) -> bool:
    return await count() >= n


async def test_sigkill_a_provisioner_under_scim_load_every_create_answered_and_applied_once(
    procs, pool, redis, topology
):
    """The same crash with the load coming through the SCIM gateway (a process): the
    clients whose creates the dead worker held still get their 201 (claimed and applied by
    the survivor within the gateway's wait), or at worst 503 "queued"; afterwards every
    create is applied once and every 201's id is the stored user's."""
    pytest.importorskip("scim_gateway")
    from .support import ScimLoad, backlog, summarize

    clock = Clock()
    acme = await make_tenant(pool)
    victim = await procs.provisioner(batch_size=50, claim_idle_ms=1000)
    await procs.provisioner(batch_size=50, claim_idle_ms=1000)
    # The drill is about a kill under load, not the per-tenant rate limit (200/s by default).
    gateway, base = await procs.scim_gateway(scim_outcome_timeout_s=10, scim_rate_limit_per_s=0)
    load = ScimLoad(base, acme.token, clients=32, tag="kill", pause_s=0).start()
    await asyncio.sleep(1.5)
    held: dict[str, list[str]] = {}
    for _ in range(200):
        victim.send(signal.SIGSTOP)
        await asyncio.sleep(0.05)
        held = await victim_entries(redis, topology, victim.consumer)
        if held:
            break
        victim.send(signal.SIGCONT)
        await asyncio.sleep(0.01)
    assert held, "the victim never held unacknowledged entries"
    victim.kill()
    clock.mark(f"victim SIGKILLed holding {sum(map(len, held.values()))} entries")
    await asyncio.sleep(3)
    answers = await load.stop()
    clock.mark("load stopped")
    await wait_for(lambda: _zero(backlog(redis, topology)), 30, "backlog drained", diagnostics=procs.logs)
    clock.mark("drained")

    posts = [a for a in answers if a.method == "POST"]
    summary = summarize(answers)
    assert {a.status for a in answers} <= {200, 201, 503}, summary
    queued = [a for a in posts if a.status == 503]
    assert all("queued" in a.detail for a in queued), summary
    async with pool.acquire() as conn:
        users = {r["user_name"]: str(r["id"]) for r in await conn.fetch("SELECT id, user_name FROM users")}
        inbox = await conn.fetchval("SELECT count(*) FROM inbox")
    assert all(users.get(a.user_name) == a.id for a in posts if a.status == 201)
    assert all(a.user_name in users for a in queued)
    assert len(users) == len(posts) == inbox  # every create applied, once
    assert (await pending_by_consumer(redis, topology)).get(victim.consumer, 0) == 0
    assert gateway.alive()
    print(f"drill 1 (SCIM): {clock}; {summary}")


async def _zero(value: Any) -> bool:
    return await value == 0


async def test_sigterm_a_provisioner_mid_load_exits_cleanly_and_loses_nothing(procs, pool, redis, topology):
    """Graceful shutdown (PRODUCT: "finish or hand back in-flight work"): SIGTERM in the
    middle of the same load. The worker exits 0 within its graceful timeout; what it leaves
    pending (read, not acknowledged: "handed back") is claimed by the survivor once idle
    ``claim_idle_ms`` and applied once; exactly N users, each command applied once."""
    clock = Clock()
    tenants = [await make_tenant(pool) for _ in range(TENANTS)]
    commands = creates(tenants, N)
    leaving = await procs.provisioner(batch_size=50, claim_idle_ms=1000, graceful_timeout_s=10)
    await procs.provisioner(batch_size=50, claim_idle_ms=1000)

    async def inbox_count() -> int:
        async with pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM inbox"))

    load = asyncio.create_task(publish_all(redis, topology, commands))
    await wait_for(lambda: _at_least(inbox_count, N // 5), 30, "a fifth of the load applied")
    leaving.send(signal.SIGTERM)
    assert leaving.proc is not None
    code = await asyncio.to_thread(leaving.proc.wait, 20)
    clock.mark(f"SIGTERM: exited {code} at {await inbox_count()}/{N} applied")
    assert code == 0, leaving.tail()
    held = await victim_entries(redis, topology, leaving.consumer)
    clock.mark(f"left {sum(map(len, held.values()))} entries pending")
    await load

    async def drained() -> bool:
        return await inbox_count() == N and await pending_total(redis, topology) == 0

    await wait_for(drained, 45, f"all {N} commands applied and acknowledged", diagnostics=procs.logs)
    clock.mark("drained")
    assert (await pending_by_consumer(redis, topology)).get(leaving.consumer, 0) == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == N
        assert await conn.fetchval("SELECT count(*) FROM inbox WHERE outcome->>'result' <> 'applied'") == 0
    print(f"drill 1 (SIGTERM): {clock}")
