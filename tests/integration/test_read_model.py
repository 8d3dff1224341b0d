"""The directory read model's queries on a real database, with two tenants that hold
the same userName and group name: a query that lost its tenant condition answers with
the other tenant's row and fails here. Two memberships written under the wrong tenant
(the foreign keys are on ids alone, so the schema allows them) check the subqueries'
own tenant conditions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from provisio_lib import directory
from scim_gateway import repository
from scim_gateway.schema import group_kind, user_kind
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Side:
    tenant: uuid.UUID
    alice: uuid.UUID
    bob: uuid.UUID
    carol: uuid.UUID
    ops: uuid.UUID
    empty: uuid.UUID


async def _side(conn, tenant: uuid.UUID, offset: int) -> Side:
    ids = [uuid.uuid4() for _ in range(5)]
    for i, (uid, name) in enumerate(zip(ids[:3], ("alice", "bob", "carol"), strict=True)):
        await conn.execute(
            """INSERT INTO users (id, tenant_id, user_name, display_name, email, emails, created_at, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $7)""",
            uid,
            tenant,
            f"{name}@example.com",
            name.title() if name != "carol" else None,
            f"{name}@example.com",
            [{"value": f"{name}@example.com", "primary": True}],
            T0 + timedelta(seconds=offset + i),
        )
    for gid, name in ((ids[3], "Ops"), (ids[4], "Empty")):
        await conn.execute(
            "INSERT INTO groups (id, tenant_id, display_name, created_at) VALUES ($1, $2, $3, $4)",
            gid,
            tenant,
            name,
            T0 + timedelta(seconds=offset),
        )
    side = Side(tenant, *ids)
    # alice is in Ops twice (SCIM and a JIT login), carol once
    await conn.executemany(
        "INSERT INTO memberships (tenant_id, group_id, user_id, source) VALUES ($1, $2, $3, $4)",
        [
            (tenant, side.ops, side.alice, "scim"),
            (tenant, side.ops, side.alice, "jit"),
            (tenant, side.ops, side.carol, "scim"),
        ],
    )
    return side


@pytest.fixture
async def sides(pool):
    a = await make_tenant(pool)
    b = await make_tenant(pool)
    async with pool.acquire() as conn:
        sa = await _side(conn, a.id, 0)
        sb = await _side(conn, b.id, 100)
        # Written under the wrong tenant: A's alice in B's Ops (under A), and B's alice
        # in A's Ops (under B). No read of either tenant may show them.
        await conn.executemany(
            "INSERT INTO memberships (tenant_id, group_id, user_id, source) VALUES ($1, $2, $3, 'scim')",
            [(a.id, sb.ops, sa.alice), (b.id, sa.ops, sb.alice)],
        )
    return sa, sb


async def test_one_user_is_read_in_its_tenant_only(pool, sides):
    a, b = sides
    for me, other in ((a, b), (b, a)):
        row = await directory.get_user(pool, me.tenant, me.alice)
        assert row["user_name"] == "alice@example.com"
        assert row["groups"] == [{"id": str(me.ops), "display_name": "Ops"}]  # once, own tenant's
        assert await directory.get_user(pool, me.tenant, other.alice) is None
        assert (await directory.get_user(pool, me.tenant, me.alice, groups=False))["groups"] == []
        found = await directory.find_user(pool, me.tenant, "ALICE@Example.com")
        assert found["id"] == me.alice
        assert await directory.user_groups(pool, me.tenant, me.alice) == row["groups"]
        assert await directory.user_groups(pool, me.tenant, other.alice) == []
        ms = [
            (r["display_name"], r["id"], r["source"])
            for r in await directory.user_memberships(pool, me.tenant, me.alice)
        ]
        assert ms == [("Ops", me.ops, "jit"), ("Ops", me.ops, "scim")]
        assert await directory.user_memberships(pool, me.tenant, other.alice) == []
        state = directory.user_state(row, row["groups"])
        assert (state.id, state.emails[0].value, state.groups[0].id) == (me.alice, "alice@example.com", me.ops)


async def test_groups_and_members_are_read_in_their_tenant_only(pool, sides):
    a, b = sides
    for me, other in ((a, b), (b, a)):
        g = await directory.get_group(pool, me.tenant, me.ops, member_count=True)
        assert (g["display_name"], g["member_count"]) == ("Ops", 2)  # alice once, carol
        assert await directory.get_group(pool, me.tenant, other.ops) is None
        members = await directory.group_members(pool, me.tenant, [me.ops, me.empty, other.ops])
        assert {k: [(r["id"], r["display"]) for r in v] for k, v in members.items()} == {
            me.ops: sorted([(me.alice, "Alice"), (me.carol, "carol@example.com")]),
            me.empty: [],
            other.ops: [],
        }
        page = await directory.members_page(pool, me.tenant, me.ops)
        assert [r["id"] for r in page.rows] == [me.alice, me.carol]
        assert (await directory.members_page(pool, me.tenant, other.ops)).rows == []


async def test_keyset_pages_walk_one_tenant(pool, sides):
    a, b = sides
    for me in (a, b):
        seen, cursor = [], None
        while True:
            page = await directory.users_page(pool, me.tenant, limit=2, cursor=cursor)
            seen += [r["id"] for r in page.rows]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [me.alice, me.bob, me.carol]
        groups = await directory.groups_page(pool, me.tenant)
        assert {r["id"]: r["member_count"] for r in groups.rows} == {me.ops: 2, me.empty: 0}
        assert groups.next_cursor is None
        later = await directory.users_page(pool, me.tenant, updated_after=T0 + timedelta(seconds=500))
        assert later.rows == []


async def test_scim_reads_see_one_tenant(pool, sides):
    """The gateway's filtered reads (the one-row lookup and the general query) over the
    read model: the same userName in both tenants, filters over memberships."""
    a, b = sides
    users, groups = user_kind(), group_kind()

    async def ids(kind, tenant, text, **kw):
        total, rows = await repository.search(
            pool, kind, tenant, filter_text=text, start_index=1, count=50, sort_by=kw.get("sort_by"), descending=False
        )
        assert total == len(rows)
        return [r["id"] for r in rows]

    for me, other in ((a, b), (b, a)):
        assert await ids(users, me.tenant, 'userName eq "alice@example.com"') == [me.alice]
        assert await ids(users, me.tenant, 'userName eq "alice@example.com"', sort_by="userName") == [me.alice]
        assert await ids(users, me.tenant, f'id eq "{other.alice}"') == []
        assert await ids(groups, me.tenant, 'displayName eq "Ops"') == [me.ops]
        assert await ids(users, me.tenant, None) == [me.alice, me.bob, me.carol]
        # memberships written under the wrong tenant match no filter
        assert await ids(users, me.tenant, f'groups.value eq "{other.ops}"') == []
        assert await ids(users, me.tenant, f'groups[value eq "{other.ops}"]') == []
        assert await ids(groups, me.tenant, f'members.value eq "{other.alice}"') == []
        assert await ids(groups, me.tenant, f'members[value eq "{other.alice}"]') == []
        assert await ids(users, me.tenant, 'groups[display eq "Ops"]') == [me.alice, me.carol]
        assert await ids(users, me.tenant, "groups pr") == [me.alice, me.carol]
        assert await ids(groups, me.tenant, "members pr") == [me.ops]
        assert await ids(groups, me.tenant, 'members.display eq "Alice"') == [me.ops]
