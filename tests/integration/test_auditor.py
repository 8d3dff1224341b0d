import asyncio

import pytest

from provisio_lib import db
from provisio_lib.contract import Change, Source
from provisio_lib.topology import AUDITOR_GROUP, DATA_FIELD
from tests.conftest import eventually, make_tenant

from .audit_support import make_outcome, publish, running_auditor

pytestmark = pytest.mark.integration


async def count(pool, sql="SELECT count(*) FROM audit_log", *args):
    async with pool.acquire() as conn:
        return await conn.fetchval(sql, *args)


async def pending(redis, topology):
    total = 0
    for s in topology.audit_streams():
        info = await redis.xpending(s, AUDITOR_GROUP)
        total += info["pending"]
    return total


async def test_outcomes_become_rows_once(service_env, pool, redis, topology):
    a = await make_tenant(pool)
    b = await make_tenant(pool)
    outcomes = [make_outcome(a.id, user=f"u{i}@a.example") for i in range(20)]
    outcomes += [make_outcome(b.id, result="failed", code="uniqueness", user=f"v{i}@b.example") for i in range(10)]
    detailed = make_outcome(
        a.id,
        op="jit.login",
        source=Source(kind="saml", id="conn-1", label="okta-sso"),
        changes={"given_name": Change(before=None, after="Alice"), "password": Change(before=None, after="pw!")},
        notes=("groups_overage",),
        correlation_id="corr-detailed",
    )
    outcomes.append(detailed)
    async with running_auditor() as app:
        await publish(redis, topology, *outcomes)
        # A redelivery (same event id and result, e.g. answered from the provisioner's
        # inbox) and a message that is not an Outcome at all.
        await publish(redis, topology, *outcomes[:5], outcomes[25].model_copy(update={"redelivered": True}))
        stream = topology.audit_stream_for(a.id)
        await redis.xadd(stream, {DATA_FIELD: b'{"not": "an outcome"}'})
        await eventually(lambda: count(pool, "SELECT count(*) FROM audit_log"), timeout=10)
        await eventually(lambda: _settled(redis, topology, stream, pool, len(outcomes)), timeout=10)
        handler = app.context.get("audit_handler")
        assert handler.counters["rows"] == len(outcomes)
        assert handler.counters["undecodable"] == 1

    assert await count(pool) == len(outcomes)
    assert await count(pool, "SELECT count(*) FROM audit_log WHERE result = 'failed' AND tenant_id = $1", b.id) == 10
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM audit_log WHERE event_id = $1", detailed.event_id)
    assert row["operation"] == "jit.login" and row["source_kind"] == "saml" and row["source_label"] == "okta-sso"
    assert row["changes"]["given_name"] == {"before": None, "after": "Alice"}
    assert "pw!" not in str(row["changes"])
    assert row["notes"] == ["groups_overage"] and row["correlation_id"] == "corr-detailed"
    assert row["latency_ms"] == 1.5 and row["user_name"] == "alice@acme.example"
    # The undecodable entry went to the audit stream's dead letters, with the reason.
    dead = await redis.xrange(stream + ":dlq")
    assert len(dead) == 1 and b"undecodable outcome" in dead[0][1][b"error"]
    assert await pending(redis, topology) == 0


async def _settled(redis, topology, stream, pool, expected):
    return await count(pool) == expected and await redis.exists(stream + ":dlq") and await pending(redis, topology) == 0


async def test_failures_queue_notifications_in_the_same_transaction(service_env, pool, redis, topology):
    t = await make_tenant(pool, notify_emails=["ops@acme.example"])
    async with running_auditor(notify_window_s=60):
        await publish(redis, topology, make_outcome(t.id, result="failed", code="policy"))
        await eventually(lambda: count(pool, "SELECT count(*) FROM notification_items"))
        await publish(redis, topology, *(make_outcome(t.id, result="failed", code="policy") for _ in range(3)))
        await publish(redis, topology, *(make_outcome(t.id) for _ in range(3)))  # successes: no mail
        await eventually(lambda: _items_are(pool, 4))
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT n.kind, n.status, count(i.audit_id) AS items FROM notifications n
               JOIN notification_items i ON i.notification_id = n.id GROUP BY n.id ORDER BY n.id"""
        )
    # The first failure opened the window (mail due at once; no SMTP here, so still
    # pending); the others wait in one digest due when the window ends.
    assert [(r["kind"], r["items"]) for r in rows] == [("first", 1), ("digest", 3)]
    assert all(r["status"] == "pending" for r in rows)


async def _items_are(pool, n):
    return await count(pool, "SELECT count(*) FROM notification_items") == n


async def test_database_down_keeps_outcomes_pending_then_writes_them(service_env, pool, redis, topology):
    t = await make_tenant(pool)
    async with running_auditor() as app:
        auditor = app.context.get("auditor")
        good_pool = auditor.pool
        # Postgres unreachable, as the handler sees it: a pool that cannot give a connection.
        dead = await db.create_pool(service_env["PROVISIO_DATABASE_URL"], min_size=1, max_size=1)
        await dead.close()
        auditor.pool = dead
        await publish(redis, topology, *(make_outcome(t.id) for _ in range(5)))
        consumer = app.context.get("consumer")
        await eventually(lambda: _async(consumer.counters["transient"] >= 2))
        assert await count(pool) == 0
        # The batch in hand is retried in place (delivered, not acknowledged, not dead);
        # the rest waits in the stream behind it.
        assert 1 <= await pending(redis, topology) <= 5
        auditor.pool = good_pool  # Postgres is back
        await eventually(lambda: _zero_pending(redis, topology))
        assert await count(pool) == 5
        assert consumer.counters["dead_lettered"] == 0


async def _async(value):
    return value


async def _zero_pending(redis, topology):
    return await pending(redis, topology) == 0


async def test_restart_resumes_without_duplicates(service_env, pool, redis, topology):
    t = await make_tenant(pool)
    first = [make_outcome(t.id) for _ in range(50)]
    async with running_auditor(batch_size=10):
        await publish(redis, topology, *first)
        await eventually(lambda: _rows_at_least(pool, 10))
    # Stopped (SIGTERM path) part-way or after: the rest is read by the next process,
    # and the same outcomes written again by a second publisher are not duplicated.
    second = [make_outcome(t.id) for _ in range(20)]
    await publish(redis, topology, *second, *first[:10])
    async with running_auditor(batch_size=10):
        await eventually(lambda: _rows_exactly(pool, 70))
        await asyncio.sleep(0.3)
    assert await count(pool) == 70
    assert await count(pool, "SELECT count(DISTINCT event_id) FROM audit_log") == 70


async def _rows_at_least(pool, n):
    return await count(pool) >= n


async def _rows_exactly(pool, n):
    return await count(pool) == n


async def test_health_listener_answers(service_env, pool, redis, topology):
    import aiohttp

    async with running_auditor() as app:
        port = app.context.get("auditor").health.port
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                body = await resp.text()
    assert "provisio_audit_records_written" in body
    assert f'provisio_stream_group_pending{{group="auditor",stream="{topology.audit_streams()[0]}"}}' in body


async def test_retention_deletes_only_expired_rows(service_env, pool):
    from datetime import UTC, datetime, timedelta

    from auditor.records import audit_row
    from auditor.store import purge_expired, write_batch

    t = await make_tenant(pool, notify_emails=["ops@example.test"])
    now = datetime.now(UTC)
    old = [
        make_outcome(t.id, result="failed", code="internal").model_copy(
            update={"completed_at": now - timedelta(days=40)}
        )
        for _ in range(5)
    ]
    fresh = [make_outcome(t.id) for _ in range(3)]
    async with pool.acquire() as conn:
        await write_batch(conn, [audit_row(o) for o in old + fresh], 60)
        assert await purge_expired(conn, 0) == 0  # 0 keeps everything
        assert await purge_expired(conn, 30, chunk=2) == 5
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 3
        # The purged failures leave their (pending) notification with nothing to report.
        assert await conn.fetchval("SELECT count(*) FROM notification_items") == 0


def _run_auditor_process(env, **extra):
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "auditor"],
        env={**os.environ, **env, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_process_bad_settings_one_line(service_env):
    proc = _run_auditor_process(service_env, PROVISIO_SMTP_PORT="0")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: PROVISIO_SMTP_PORT is invalid")


async def test_process_stops_gracefully_on_sigterm(service_env, pool, redis, topology):
    import signal

    from .audit_support import free_port

    t = await make_tenant(pool)
    port = free_port()
    proc = _run_auditor_process(service_env, PROVISIO_HEALTH_PORT=str(port), PROVISIO_SMTP_PORT=str(free_port()))
    try:
        await publish(redis, topology, *(make_outcome(t.id) for _ in range(10)))
        await eventually(lambda: _rows_exactly(pool, 10), timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "auditor_stopped" in out and "Traceback" not in out + err


async def test_entries_of_a_dead_worker_are_claimed(service_env, pool, redis, topology):
    t = await make_tenant(pool)
    await publish(redis, topology, *(make_outcome(t.id) for _ in range(4)))
    stream = topology.audit_stream_for(t.id)
    # A worker read them and died before writing or acknowledging.
    got = await redis.xreadgroup(AUDITOR_GROUP, "dead-worker", {stream: ">"}, count=10)
    assert len(got[0][1]) == 4
    async with running_auditor(claim_idle_ms=500) as app:
        await eventually(lambda: _rows_exactly(pool, 4), timeout=15)
        await eventually(lambda: _zero_pending(redis, topology))
        assert app.context.get("consumer").counters["dead_lettered"] == 0


async def test_a_batch_entry_of_several_outcomes_becomes_one_row_each(service_env, pool, redis, topology):
    from provisio_lib.contract import encode
    from provisio_lib.outcomes import outcome_fields

    t = await make_tenant(pool)
    outcomes = [make_outcome(t.id, user=f"b{i}@t.example") for i in range(3)]
    outcomes.append(make_outcome(t.id, result="failed", code="uniqueness", user="dup@t.example"))
    stream = topology.audit_stream_for(t.id)
    async with running_auditor():
        await redis.xadd(stream, outcome_fields([encode(o) for o in outcomes]))
        await redis.xadd(stream, outcome_fields([encode(outcomes[0])]))  # one, as __data__ (a redelivery)
        await redis.xadd(stream, {"__outcomes__": b'[{"not": "an outcome"}]'})
        await eventually(lambda: _settled(redis, topology, stream, pool, 4), timeout=10)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_id, result, user_name FROM audit_log WHERE tenant_id = $1 ORDER BY id", t.id
        )
    assert [(r["event_id"], r["result"]) for r in rows] == [(o.event_id, o.result) for o in outcomes]
    # The undecodable batch entry is dead-lettered as it was (its field kept, not a repr).
    [(_, dead)] = await redis.xrange(stream + ":dlq")
    assert dead[b"__outcomes__"] == b'[{"not": "an outcome"}]' and b"undecodable outcome" in dead[b"error"]
