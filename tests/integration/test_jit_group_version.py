"""A JIT login's group memberships move the group's version and lastModified exactly as a
SCIM member PATCH does (RFC 7644 §3.14: a group's ETag covers its members), against real
Postgres, Redis, the provisioner and the SCIM gateway."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from provisio_lib.contract import Command, JitLogin, Source
from tests.conftest import eventually
from tests.integration.scim_helpers import GROUP, USER, bearer, patch_body, scim_client

pytestmark = pytest.mark.integration


async def _connection(pool: Any, tenant: Any) -> uuid.UUID:
    """The tenant's only SSO connection (so a login may adopt a user SCIM made)."""
    conn_id = uuid.uuid4()
    await pool.execute(
        """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata)
           VALUES ($1, $2, 'okta-prod', 'okta', 'https://idp.test/', '<md/>')""",
        conn_id,
        tenant.id,
    )
    return conn_id


def _login(tenant: Any, conn_id: uuid.UUID, **kw: Any) -> Command:
    return Command(
        tenant_id=tenant.id,
        source=Source(kind="saml", id=str(conn_id), label="okta-prod"),
        correlation_id="c-" + uuid.uuid4().hex[:6],
        payload=JitLogin(
            connection_id=conn_id, connection_name="okta-prod", mode="sync", name_id="jo", user_name="jo@x.test", **kw
        ),
    )


async def _group_events(pool: Any, group_id: str, command_id: uuid.UUID | None = None) -> list[Any]:
    return await pool.fetch(
        """SELECT type, data, command_id FROM events
           WHERE resource_id = $1 AND ($2::uuid IS NULL OR command_id = $2) ORDER BY xid, id""",
        uuid.UUID(group_id),
        command_id,
    )


async def test_a_jit_login_moves_the_groups_version_as_a_scim_member_patch_does(
    service_env, pool, tenant, provisioner, waiter
):
    conn_id = await _connection(pool, tenant)
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.post("/scim/v2/Users", json={"schemas": [USER], "userName": "al@x.test"}, headers=h)
        al = (await r.json())["id"]
        r = await c.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Eng"}, headers=h)
        assert r.status == 201, await r.text()
        gid = (await r.json())["id"]
        r = await c.get(f"/scim/v2/Groups/{gid}", headers=h)
        v1, meta1 = r.headers["ETag"], (await r.json())["meta"]
        assert v1 == meta1["version"] == 'W/"1"'

        # The first login makes the user; no groups claim: memberships are left alone.
        first = await waiter.submit(_login(tenant, conn_id), 10)
        assert first.result == "applied" and "created" in first.notes
        assert (await c.get(f"/scim/v2/Groups/{gid}", headers=h)).headers["ETag"] == v1

        # A login whose claim names the existing group "Eng" (any letter case) joins it.
        join = _login(tenant, conn_id, groups=("eng",))
        joined = await waiter.submit(join, 10)
        assert joined.result == "applied" and joined.changes["groups.jit"].after == ["Eng"]
        r = await c.get(f"/scim/v2/Groups/{gid}", headers={**h, "If-None-Match": v1})
        assert r.status == 200, "the old ETag must not answer 304 with the old member list"
        body = await r.json()
        v2 = r.headers["ETag"]
        assert v2 == body["meta"]["version"] == 'W/"2"'
        assert body["meta"]["lastModified"] > meta1["lastModified"]
        assert [m["value"] for m in body["members"]] == [str(joined.resource_id)]
        # A write made against the old ETag is refused (RFC 7644 §3.14: 412 preconditionFailed).
        stale = patch_body({"op": "add", "path": "members", "value": [{"value": al}]})
        r = await c.patch(f"/scim/v2/Groups/{gid}", json=stale, headers={**h, "If-Match": v1})
        assert r.status == 412, await r.text()
        r = await c.put(
            f"/scim/v2/Groups/{gid}", json={"schemas": [GROUP], "displayName": "Eng"}, headers={**h, "If-Match": v1}
        )
        assert r.status == 412, await r.text()

        # The login's events for the group are those a SCIM member PATCH makes: one
        # group.member_added carrying the group at its new version, no group.updated.
        [ev] = await _group_events(pool, gid, join.event_id)
        assert ev["type"] == "group.member_added"
        assert ev["data"]["source"] == "jit" and ev["data"]["user"] == {"id": str(joined.resource_id)}
        assert ev["data"]["group"]["version"] == 2 and ev["data"]["group"]["display_name"] == "Eng"

        # The SCIM member PATCH, with the current ETag: the same kind of event, one version on.
        r = await c.patch(f"/scim/v2/Groups/{gid}", json=stale, headers={**h, "If-Match": v2})
        assert r.status == 200, await r.text()
        v3 = r.headers["ETag"]
        assert v3 == 'W/"3"'
        scim_events = [e for e in await _group_events(pool, gid) if e["command_id"] not in (join.event_id, None)]
        assert [(e["type"], e["data"]["source"], e["data"]["group"]["version"]) for e in scim_events[-1:]] == [
            ("group.member_added", "scim", 3)
        ]

        # The same claim again changes no membership: the group is not written.
        same = await waiter.submit(_login(tenant, conn_id, groups=("Eng",)), 10)
        assert same.result == "unchanged"
        r = await c.get(f"/scim/v2/Groups/{gid}", headers={**h, "If-None-Match": v3})
        assert r.status == 304
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT version FROM groups WHERE id = $1", uuid.UUID(gid)) == 3

        # A later claim without the group (sync) removes the JIT membership: a new version too.
        leave = _login(tenant, conn_id, groups=())
        left = await waiter.submit(leave, 10)
        assert left.changes["groups.jit"].before == ["Eng"] and left.changes["groups.jit"].after == []
        r = await c.get(f"/scim/v2/Groups/{gid}", headers={**h, "If-None-Match": v3})
        assert r.status == 200 and r.headers["ETag"] == 'W/"4"'
        assert [m["value"] for m in (await r.json())["members"]] == [al]  # SCIM's membership stays
        r = await c.patch(f"/scim/v2/Groups/{gid}", json=stale, headers={**h, "If-Match": v3})
        assert r.status == 412
        [ev] = await _group_events(pool, gid, leave.event_id)
        assert ev["type"] == "group.member_removed" and ev["data"]["source"] == "jit"
        assert ev["data"]["group"]["version"] == 4 and ev["data"]["group"]["display_name"] == "Eng"


async def test_a_group_a_login_makes_is_made_with_its_member(service_env, pool, tenant, provisioner, waiter):
    """As a SCIM POST with members: version 1, its member_added event carries version 1."""
    conn_id = await _connection(pool, tenant)
    login = _login(tenant, conn_id, groups=("Ops",))
    out = await waiter.submit(login, 10)
    assert out.result == "applied"
    gid = str(out.resource["groups"][0]["id"])
    events = await _group_events(pool, gid, login.event_id)
    assert [(e["type"], e["data"].get("version") or e["data"]["group"]["version"]) for e in events] == [
        ("group.created", 1),
        ("group.member_added", 1),
    ]
    async with scim_client() as c:
        r = await c.get(f"/scim/v2/Groups/{gid}", headers=bearer(tenant.token))
        assert r.headers["ETag"] == 'W/"1"' and len((await r.json())["members"]) == 1


async def test_a_login_waiting_for_a_group_another_batch_changes_sorts_after_it(
    service_env, pool, tenant, provisioner, waiter
):
    """docs/events.md: the feed's order is each resource's commit order. A login that
    joins a group another transaction is changing waits for it *without a transaction
    id* (the group's advisory lock is taken with the batch's, before any write), so its
    group event sorts after the other's — the member_added carrying version 3 comes
    after the change that made version 2, as a receiver keeping the newest state needs."""
    from provisioner import store

    conn_id = await _connection(pool, tenant)
    gid = uuid.uuid4()
    await pool.execute(
        "INSERT INTO groups (id, tenant_id, display_name, created_by) VALUES ($1, $2, 'Eng', 'scim')", gid, tenant.id
    )
    await waiter.submit(_login(tenant, conn_id), 10)  # the user exists; no group yet

    other = await pool.acquire()
    try:
        tr = other.transaction()
        await tr.start()
        await store.lock_in_order(other, [], [gid])  # advisory + row lock: it has an xid now
        login = _login(tenant, conn_id, groups=("Eng",))
        submitted = asyncio.create_task(waiter.submit(login, 30))

        async def queued():
            return await pool.fetchrow(
                """SELECT backend_xid FROM pg_stat_activity
                   WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> $1
                     AND wait_event_type = 'Lock' AND wait_event = 'advisory'""",
                await other.fetchval("SELECT pg_backend_pid()"),
            )

        row = await eventually(queued, timeout=30)
        assert row["backend_xid"] is None  # waiting, and no xid: it cannot sort before `other`
        await other.execute("UPDATE groups SET version = version + 1 WHERE id = $1", gid)
        await other.execute(
            """INSERT INTO events (tenant_id, type, occurred_at, source, correlation_id, command_id,
                                   resource_type, resource_id, data)
               VALUES ($1, 'group.updated', now(), '{}', 'other', gen_random_uuid(), 'Group', $2, '{"version": 2}')""",
            tenant.id,
            gid,
        )
        await tr.commit()
        out = await submitted
    finally:
        await pool.release(other)
    assert out.result == "applied"
    events = await _group_events(pool, str(gid))
    assert [(e["type"], e["data"].get("version") or e["data"]["group"]["version"]) for e in events] == [
        ("group.updated", 2),
        ("group.member_added", 3),
    ]
