"""Filters on the real database: every operator, injection attempts as data, and the
userName index actually used."""

from __future__ import annotations

import json
import uuid

import pytest

from scim_gateway.repository import search_sql
from scim_gateway.schema import user_kind
from tests.integration.scim_helpers import ENTERPRISE, GROUP, PROVISIO, bearer, scim_client

pytestmark = pytest.mark.integration

USERS = [
    {
        "userName": "alice@example.com",
        "displayName": "Alice Smith",
        "title": "Engineer",
        "active": True,
        "emails": [
            {"value": "alice@work.example", "type": "work", "primary": True},
            {"value": "alice@home.example", "type": "home"},
        ],
        ENTERPRISE: {"department": "R&D"},
        PROVISIO: {"ssoName": "entra", "custom": {"region": "EU"}},
    },
    {
        "userName": "bob@example.com",
        "displayName": "Bob 100% Jones",
        "active": False,
        "emails": [{"value": "bob@work.example", "type": "work"}],
        ENTERPRISE: {"department": "Sales"},
    },
    {
        "userName": "o'brien_x@example.com",
        "displayName": "Dan O'Brien",
        "title": "a\\b",
        "emails": [{"value": "dan@home.example", "type": "home", "primary": True}],
    },
]


@pytest.fixture
async def users(service_env, tenant, provisioner):
    ids = {}
    async with scim_client() as c:
        for u in USERS:
            r = await c.post("/scim/v2/Users", json=u, headers=bearer(tenant.token))
            assert r.status == 201, await r.text()
            ids[u["userName"]] = (await r.json())["id"]
    return ids


CASES = [
    ('userName eq "ALICE@example.com"', ["alice@example.com"]),
    ('userName ne "alice@example.com"', ["bob@example.com", "o'brien_x@example.com"]),
    ('userName co "EXAMPLE"', ["alice@example.com", "bob@example.com", "o'brien_x@example.com"]),
    ('userName sw "B"', ["bob@example.com"]),
    ('userName ew ".COM"', ["alice@example.com", "bob@example.com", "o'brien_x@example.com"]),
    ('userName gt "b"', ["bob@example.com", "o'brien_x@example.com"]),
    ('userName ge "bob@example.com"', ["bob@example.com", "o'brien_x@example.com"]),
    ('userName lt "b"', ["alice@example.com"]),
    ('userName le "bob@example.com"', ["alice@example.com", "bob@example.com"]),
    ("title pr", ["alice@example.com", "o'brien_x@example.com"]),
    ("not (title pr)", ["bob@example.com"]),
    ('not (title eq "Engineer")', ["bob@example.com", "o'brien_x@example.com"]),
    ("active eq false", ["bob@example.com"]),
    (
        'active eq true and (displayName co "smith" or displayName co "brien")',
        ["alice@example.com", "o'brien_x@example.com"],
    ),
    ('emails[type eq "work" and primary eq true]', ["alice@example.com"]),
    ('emails[type eq "work"].value eq "BOB@work.example"', ["bob@example.com"]),
    ('emails.value eq "alice@home.example"', ["alice@example.com"]),
    ('emails.type eq "home"', ["alice@example.com", "o'brien_x@example.com"]),
    ('emails co "home"', ["alice@example.com", "o'brien_x@example.com"]),
    (f'{ENTERPRISE}:department eq "r&d"', ["alice@example.com"]),
    (f'{PROVISIO}:ssoName eq "entra"', ["alice@example.com"]),
    (f'{PROVISIO}:custom.region eq "eu"', ["alice@example.com"]),
    (
        'meta.created gt "2000-01-01T00:00:00Z" and meta.resourceType eq "User"',
        ["alice@example.com", "bob@example.com", "o'brien_x@example.com"],
    ),
    ('meta.lastModified lt "2000-01-01T00:00:00Z"', []),
    ("externalId pr", []),
    # injection attempts are data
    ('displayName co "100%"', ["bob@example.com"]),
    ('displayName co "%"', ["bob@example.com"]),
    ('userName co "_x@"', ["o'brien_x@example.com"]),
    ('userName co "_"', ["o'brien_x@example.com"]),
    ('displayName eq "Dan O\'Brien"', ["o'brien_x@example.com"]),
    ('title eq "a\\\\b"', ["o'brien_x@example.com"]),
    ('userName eq "x\\" or \\"1\\"=\\"1"', []),
    ('userName eq "\' OR 1=1 --"', []),
    ('userName eq "alice@example.com\'; DROP TABLE users; --"', []),
    ('displayName co "--"', []),
]


async def test_filter_operators(users, tenant):
    # one data set for every case (a database and a provisioner per case would be slow)
    async with scim_client() as c:
        for filter_text, expected in CASES:
            r = await c.get(
                "/scim/v2/Users", params={"filter": filter_text, "sortBy": "userName"}, headers=bearer(tenant.token)
            )
            assert r.status == 200, (filter_text, await r.text())
            body = await r.json()
            assert [u["userName"] for u in body["Resources"]] == expected, filter_text
            assert body["totalResults"] == len(expected), filter_text


async def test_entra_test_connection_random_guid_is_empty_200(service_env, tenant):
    async with scim_client() as c:
        for attr in ("userName", "externalId", "id"):
            r = await c.get(
                "/scim/v2/Users", params={"filter": f'{attr} eq "{uuid.uuid4()}"'}, headers=bearer(tenant.token)
            )
            assert r.status == 200
            assert (await r.json())["totalResults"] == 0


async def test_group_filters(users, tenant):
    alice = users["alice@example.com"]
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.post(
            "/scim/v2/Groups",
            json={"schemas": [GROUP], "displayName": "Engineering", "members": [{"value": alice}]},
            headers=h,
        )
        gid = (await r.json())["id"]
        await c.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Sales"}, headers=h)
        for f, want in [
            ('displayName eq "engineering"', ["Engineering"]),
            (f'members[value eq "{alice}"]', ["Engineering"]),
            (f'members.value eq "{alice}"', ["Engineering"]),
            ("members pr", ["Engineering"]),
            ("not (members pr)", ["Sales"]),
            (f'id eq "{gid}"', ["Engineering"]),
        ]:
            r = await c.get("/scim/v2/Groups", params={"filter": f, "excludedAttributes": "members"}, headers=h)
            res = (await r.json())["Resources"]
            assert [g["displayName"] for g in res] == want, f
            assert all("members" not in g for g in res)
        r = await c.get("/scim/v2/Users", params={"filter": f'groups[value eq "{gid}"]'}, headers=h)
        assert [u["id"] for u in (await r.json())["Resources"]] == [alice]


async def test_user_name_eq_uses_the_unique_index(tenant, pool):
    # enough rows that a sequential scan would be the planner's choice if the index
    # could not serve lower(user_name) = lower($n)
    await pool.execute(
        """INSERT INTO users (id, tenant_id, user_name, emails)
           SELECT gen_random_uuid(), $1, 'user' || g || '@example.com', '[]'::jsonb
           FROM generate_series(1, 5000) g""",
        tenant.id,
    )
    await pool.execute("ANALYZE users")
    sql, params, _, _ = search_sql(
        user_kind(),
        tenant.id,
        filter_text='userName eq "User42@Example.com"',
        start_index=1,
        count=100,
        sort_by=None,
        descending=False,
    )
    async with pool.acquire() as conn:
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params)
        rows = await conn.fetch(sql, *params)
    assert [r["user_name"] for r in rows] == ["user42@example.com"]
    text = json.dumps(plan)
    assert "users_user_name_key" in text, text


async def test_one_row_lookups_answer_like_the_general_query(users, tenant, pool):
    """userName eq / id eq take a plain indexed lookup (repository.unique_sql): same rows
    as the general query (window count, ORDER BY, OFFSET), case-insensitive userName,
    injection attempts as data, every startIndex/count."""
    from scim_gateway.repository import unique_sql

    alice = users["alice@example.com"]
    cases = [
        'userName eq "ALICE@example.com"',
        'USERNAME EQ "Bob@Example.COM"',
        'userName eq "o\'brien_x@example.com"',
        'userName eq "x\\" or \\"1\\"=\\"1"',
        'userName eq "\' OR 1=1 --"',
        'userName eq "%"',
        'userName eq "_"',
        'userName eq "alice@example.com\'; DROP TABLE users; --"',
        'userName eq ""',
        f'id eq "{alice}"',
        f'id eq "{alice.upper()}"',
        f'id eq "{uuid.uuid4()}"',
        'id eq "not-a-uuid"',
    ]
    for text in cases:
        lookup = unique_sql(user_kind(), tenant.id, text)
        assert lookup is not None, text
        general, params, _, _ = search_sql(
            user_kind(), tenant.id, filter_text=text, start_index=1, count=100, sort_by=None, descending=False
        )
        direct_rows = await pool.fetch(lookup[0], *lookup[1])
        general_rows = await pool.fetch(general, *params)
        assert len(direct_rows) <= 1
        assert [dict(r) for r in direct_rows] == [{k: v for k, v in r.items() if k != "total"} for r in general_rows], (
            text
        )
    assert unique_sql(user_kind(), tenant.id, 'externalId eq "x"') is None  # not unique
    assert unique_sql(user_kind(), tenant.id, 'userName co "x"') is None
    async with scim_client() as c:
        h = bearer(tenant.token)
        for text in cases:
            for extra in (
                {},
                {"count": "0"},
                {"startIndex": "2"},
                {"count": "1"},
                {"attributes": "userName"},
                {"excludedAttributes": "groups"},
            ):
                fast = await c.get("/scim/v2/Users", params={"filter": text, **extra}, headers=h)
                # sortBy takes the general query (ORDER BY): the reference answer
                slow = await c.get("/scim/v2/Users", params={"filter": text, "sortBy": "userName", **extra}, headers=h)
                assert fast.status == slow.status == 200, (text, extra)
                assert await fast.json() == await slow.json(), (text, extra)
    # the lookup uses the unique index
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO users (id, tenant_id, user_name, emails)
               SELECT gen_random_uuid(), $1, 'user' || g || '@example.com', '[]'::jsonb
               FROM generate_series(1, 5000) g""",
            tenant.id,
        )
        await conn.execute("ANALYZE users")
        sql, params = unique_sql(user_kind(), tenant.id, 'userName eq "User42@Example.com"')  # type: ignore[misc]
        plan = json.dumps(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *params))
        assert "users_user_name_key" in plan, plan
        assert [r["user_name"] for r in await conn.fetch(sql, *params)] == ["user42@example.com"]
