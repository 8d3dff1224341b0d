"""Drill 4: a poison command (fails every time) in the middle of a tenant's stream.

The poison is a create whose userName holds a NUL character: Postgres refuses it on every
try, and it is neither a transient failure nor a permanent error the provisioner knows.
With the provisioner and the auditor as processes and a real SMTP server: it is
dead-lettered after ``max_deliveries`` tries, the waiting client gets a ``dead_letter``
failure outcome, the audit trail records it, the tenant's operators get a mail (a second
poison in the same window comes in the digest), and the commands behind it in the same
partition are applied without waiting for it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from provisio_lib.contract import Command, CreateUser, Source, UserData
from provisio_lib.outcomes import publish_command
from provisio_lib.topology import DATA_FIELD
from tests.conftest import make_tenant
from tests.integration.audit_support import SmtpServer

from .support import Clock, pending_total, wait_for

pytestmark = [pytest.mark.drills, pytest.mark.integration]

MAX_DELIVERIES = 3
SOURCE = Source(kind="scim", id="drill", label="drill-4")


def create(tenant_id: uuid.UUID, name: str) -> Command:
    return Command(
        tenant_id=tenant_id,
        source=SOURCE,
        correlation_id=f"drill4-{uuid.uuid4().hex[:8]}",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=name)),
    )


async def test_poison_is_dead_lettered_reported_and_mailed_and_the_stream_flows(procs, pool, redis, topology, waiter):
    clock = Clock()
    smtp = SmtpServer().start()
    procs.servers.append(smtp.stop)
    acme = await make_tenant(pool, notify_emails=["ops@acme.example"])
    await procs.provisioner(claim_idle_ms=1000, max_deliveries=MAX_DELIVERIES)
    await procs.auditor(notify_window_s=2, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_from="provisio@drill.test")
    clock.mark("services ready")

    before = [create(acme.id, f"before{i}@acme.example") for i in range(50)]
    poison = create(acme.id, "poison\x00@acme.example")
    poison2 = create(acme.id, "second\x00poison@acme.example")  # within the same mail window
    behind = [create(acme.id, f"behind{i}@acme.example") for i in range(50)]
    for c in before:
        await publish_command(redis, topology, c)
    poisoned = asyncio.create_task(waiter.submit(poison, timeout=30))
    poisoned2 = asyncio.create_task(waiter.submit(poison2, timeout=30))
    await asyncio.sleep(0.05)
    for c in behind:
        await publish_command(redis, topology, c)
    good = {str(c.event_id) for c in before + behind}
    dlq = topology.dead_letter_stream_for(acme.id)

    async def good_applied() -> bool:
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT event_id FROM inbox WHERE outcome->>'result' = 'applied'")
        return {str(r["event_id"]) for r in rows} >= good

    await wait_for(good_applied, 10, "the 100 good commands applied")
    clock.mark("good commands applied")
    assert await redis.xlen(dlq) == 0, "the commands behind the poison waited for it to be dead-lettered"

    for outcome in await asyncio.gather(poisoned, poisoned2):
        assert outcome.result == "failed" and outcome.error is not None and outcome.error.code == "dead_letter"
        assert f"failed {MAX_DELIVERIES} times" in outcome.error.message and "0x00" in outcome.error.message
    clock.mark("dead_letter outcomes to the waiting clients")

    # (The outcome is published just before the DLQ entry is written.)
    entries = await wait_for(lambda: _n_entries(redis, dlq, 2), 5, "the dead-letter entries")
    assert sorted(json.loads(f[DATA_FIELD.encode()])["event_id"] for _, f in entries) == sorted(
        [str(poison.event_id), str(poison2.event_id)]
    )
    for _, fields in entries:
        assert int(fields[b"deliveries"]) == MAX_DELIVERIES
        assert fields[b"stream"].decode() == topology.command_stream_for(acme.id)
    assert await pending_total(redis, topology) == 0

    async def audited() -> bool:
        async with pool.acquire() as conn:
            return (
                await conn.fetchval(
                    "SELECT count(*) FROM audit_log WHERE event_id = ANY($1::uuid[]) AND result = 'failed' "
                    "AND error_code = 'dead_letter'",
                    [poison.event_id, poison2.event_id],
                )
                == 2
            )

    await wait_for(audited, 10, "the dead_letter outcomes in audit_log")
    # The first failure is mailed at once, the second waits for the window's digest.
    await wait_for(lambda: _has_mail(smtp, 1), 10, "a failure mail to the tenant's operators")
    clock.mark("first mail received")
    await wait_for(lambda: _has_mail(smtp, 2), 10, "the digest")
    clock.mark("digest received")
    await asyncio.sleep(2.5)  # one more window: nothing more is owed
    assert len(smtp.inbox.messages) == 2
    first, digest = smtp.inbox.messages
    assert first["X-Envelope-To"] == digest["X-Envelope-To"] == "ops@acme.example"
    assert "dead_letter" in first["Subject"] and "1 more provisioning failure" in digest["Subject"]
    bodies = [m.get_payload(decode=True).decode() for m in (first, digest)]
    assert "dead_letter" in bodies[1]
    for cid in (poison.correlation_id, poison2.correlation_id):
        assert sum(cid in b for b in bodies) == 1  # each poison reported once

    async with pool.acquire() as conn:
        users = await conn.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id)
        inbox_poison = await conn.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = ANY($1::uuid[])", [poison.event_id, poison2.event_id]
        )
    assert users == 100 and inbox_poison == 0  # nothing of the poison was stored
    print(f"drill 4: {clock}")


async def _has_mail(smtp: SmtpServer, n: int) -> bool:
    return len(smtp.inbox.messages) >= n


async def _n_entries(redis: Any, stream: str, n: int) -> Any:
    entries = await redis.xrange(stream)
    return entries if len(entries) >= n else None
