"""One tenant must not stall the others (issue 13 §2): statement timeout, per-tenant read
slots, request limits and failed-authentication limits, against the real gateway,
Postgres and Redis.

Slow queries are made slow deterministically: the test holds an ACCESS EXCLUSIVE lock on
the ``groups`` table, so a read of groups waits (holding its pooled connection) until the
lock is released or its statement times out, while reads of users without their groups
(``excludedAttributes=groups``) do not touch that table."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager

import pytest

from tests.conftest import eventually, make_tenant
from tests.integration.scim_helpers import bearer, patch_body, scim_client

pytestmark = pytest.mark.integration

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SLOW_GROUPS = '/scim/v2/Groups?filter=displayName co "x"'


async def error_of(r, status, scim_type=None):
    assert r.status == status, await r.text()
    assert r.content_type == "application/scim+json"
    body = await r.json()
    assert body["schemas"] == [ERROR]
    assert body["status"] == str(status)
    if scim_type:
        assert body.get("scimType") == scim_type
    return body


@asynccontextmanager
async def groups_locked(pool):
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE groups IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await tx.rollback()


async def lock_waiters(pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%FROM groups g%'"
        )
    )


# --------------------------------------------------------------------------- statement timeout


async def test_a_slow_filtered_search_times_out_with_400_too_many(service_env, tenant, pool):
    async with scim_client(scim_statement_timeout_s=0.3) as c, groups_locked(pool):
        r = await c.get(SLOW_GROUPS, headers=bearer(tenant.token))
        body = await error_of(r, 400, "tooMany")
        assert "0.3 s" in body["detail"]
        r = await c.post(
            "/scim/v2/Groups/.search",
            headers=bearer(tenant.token),
            json={"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": 'displayName co "x"'},
        )
        await error_of(r, 400, "tooMany")


async def test_a_slow_read_by_id_times_out_with_503_and_retry_after(service_env, tenant, pool):
    async with scim_client(scim_statement_timeout_s=0.3) as c, groups_locked(pool):
        r = await c.get(f"/scim/v2/Groups/{uuid.uuid4()}", headers=bearer(tenant.token))
        await error_of(r, 503)
        assert r.headers["Retry-After"] == "2"


async def test_the_statement_timeout_is_set_on_every_pooled_connection(service_env, tenant):
    from scim_gateway.keys import POOL

    async with scim_client(scim_statement_timeout_s=1.5, db_pool_min=3, db_pool_max=3) as c:
        conns = [await c.app[POOL].acquire() for _ in range(3)]
        try:
            assert [await x.fetchval("SHOW statement_timeout") for x in conns] == ["1500ms"] * 3
        finally:
            for x in conns:
                await c.app[POOL].release(x)


# --------------------------------------------------------------------------- per-tenant read slots


async def test_one_tenant_holding_its_reads_does_not_block_another_tenant(service_env, tenant, pool):
    """Tenant A fires more slow reads than the pool has connections; tenant B's
    ``userName eq`` still completes. Before: A's reads took every pooled connection and
    B waited until A's queries ended."""
    other = await make_tenant(pool)
    async with scim_client(
        db_pool_min=1, db_pool_max=4, scim_statement_timeout_s=120, scim_tenant_read_wait_s=0.2
    ) as c:
        async with groups_locked(pool):
            a = [asyncio.create_task(c.get(SLOW_GROUPS, headers=bearer(tenant.token))) for _ in range(6)]
            # A's two slots (half the pool) are stuck on the lock ...
            await eventually(lambda: _at_least(pool, 2))
            # ... and its other four reads are refused once their bounded wait is over.
            await eventually(lambda: _done(a, 4), timeout=30)
            refused = [t.result() for t in a if t.done()]
            for r in refused:
                await error_of(r, 429)
                assert int(r.headers["Retry-After"]) >= 1
            assert await lock_waiters(pool) == 2
            b = await asyncio.wait_for(
                c.get(
                    '/scim/v2/Users?filter=userName eq "nobody@b.example"&excludedAttributes=groups',
                    headers=bearer(other.token),
                ),
                timeout=60,  # a hang guard only: before the fix B waited for A's lock
            )
            assert b.status == 200, await b.text()
            assert (await b.json())["totalResults"] == 0
            assert sum(t.done() for t in a) == 4  # A's two slow reads are still running
        results = await asyncio.gather(*a)
        assert sorted(r.status for r in results) == [200, 200, 429, 429, 429, 429]


async def _at_least(pool, n):
    return await lock_waiters(pool) >= n


async def _done(tasks, n):
    return sum(t.done() for t in tasks) >= n


# --------------------------------------------------------------------------- failed authentication


async def test_failed_tokens_are_limited_per_address_across_replicas(service_env, tenant, pool):
    other = await make_tenant(pool)
    # no token cache: a client verified earlier must keep working after its cache entry is gone
    async with (
        scim_client(scim_failed_auth_per_min=3, scim_token_cache_s=0) as c,
        scim_client(scim_failed_auth_per_min=3) as replica,
    ):
        ok = await c.get("/scim/v2/Users", headers=bearer(tenant.token))
        assert ok.status == 200
        for i in range(3):
            await error_of(await c.get("/scim/v2/Users", headers=bearer(f"prv_wrong{i}")), 401)
        r = await c.get("/scim/v2/Users", headers=bearer("prv_wrong-again"))
        await error_of(r, 429)
        assert 1 <= int(r.headers["Retry-After"]) <= 61
        # the address is now refused without a lookup, for tokens this process has not verified ...
        await error_of(await c.get("/scim/v2/Users", headers=bearer(other.token)), 429)
        # ... while a client already verified here keeps working (looked up again: revocation holds)
        assert (await c.get("/scim/v2/Users", headers=bearer(tenant.token))).status == 200
        await pool.execute("UPDATE scim_tokens SET revoked_at = now() WHERE tenant_id = $1", tenant.id)
        await error_of(await c.get("/scim/v2/Users", headers=bearer(tenant.token)), 429)
        # another replica shares the counter (Redis): its first failure is already over the limit
        await error_of(await replica.get("/scim/v2/Users", headers=bearer("prv_wrong-there")), 429)


async def test_forwarded_for_is_read_only_from_trusted_proxies(service_env, tenant):
    def via(addr, token="prv_wrong"):
        return {**bearer(token), "X-Forwarded-For": f"198.51.100.7, {addr}"}

    async with scim_client(scim_failed_auth_per_min=2, trusted_proxies="127.0.0.1/32, ::1") as c:
        for _ in range(2):
            await error_of(await c.get("/scim/v2/Users", headers=via("203.0.113.5")), 401)
        await error_of(await c.get("/scim/v2/Users", headers=via("203.0.113.5")), 429)
        # another client behind the same proxy is counted on its own
        await error_of(await c.get("/scim/v2/Users", headers=via("203.0.113.6")), 401)
    async with scim_client(scim_failed_auth_per_min=2) as c:
        # no trusted proxy configured: the header is the client's word and is ignored
        for addr in ("192.0.2.1", "192.0.2.2"):
            await error_of(await c.get("/scim/v2/Users", headers=via(addr)), 401)
        await error_of(await c.get("/scim/v2/Users", headers=via("192.0.2.3")), 429)


# --------------------------------------------------------------------------- per-tenant rate


def test_the_default_rate_limit_is_a_real_limit():
    """Before: 10,000 requests/s per tenant and process, i.e. no limit at all."""
    from scim_gateway.auth import RateLimiter, TenantAuth
    from scim_gateway.settings import ScimSettings

    rate = ScimSettings.model_fields["scim_rate_limit_per_s"].default
    assert 0 < rate <= 1000
    limiter = RateLimiter(rate, None)
    auth = TenantAuth(uuid.uuid4(), uuid.uuid4(), "t", False, None)
    waits = [limiter.check(auth) for _ in range(int(rate * 2) + 100)]
    assert waits[: int(rate)] == [None] * int(rate)  # a burst of the rate always passes
    refused = [w for w in waits if w is not None]
    assert refused and min(refused) >= 1  # (the old default's bucket held 20,000)


# --------------------------------------------------------------------------- the requests, over HTTP


def ors(n, template):
    return " or ".join(template.format(i=i) for i in range(n))


async def test_the_reported_filters_are_refused_at_once(service_env, tenant):
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.get("/scim/v2/Users", params={"filter": ors(150, 'emails co "x{i}"')}, headers=h)
        body = await error_of(r, 400, "invalidFilter")
        assert "150 comparisons" in body["detail"]
        r = await c.post(
            "/scim/v2/Users/.search",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "filter": ors(2000, 'userName co "x{i}"'),
            },
        )
        await error_of(r, 400, "invalidFilter")
        r = await c.post(
            "/scim/v2/.search",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "filter": ors(51, 'displayName co "x{i}"'),
            },
        )
        await error_of(r, 400, "invalidFilter")


async def test_the_reported_patch_is_refused(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        many = [{"value": f"e{i}@example.com", "type": "work"} for i in range(20_000)]
        r = await c.post("/scim/v2/Users", json={"userName": "many@example.com", "emails": many}, headers=h)
        await error_of(r, 400, "invalidValue")
        r = await c.post("/scim/v2/Users", json={"userName": "few@example.com", "emails": many[:3]}, headers=h)
        assert r.status == 201, await r.text()
        uid = (await r.json())["id"]
        path = "emails[" + ors(500, 'value eq "e{i}@example.com"') + "].type"
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": path, "value": "home"}],
            },
        )
        await error_of(r, 400, "invalidPath")


# --------------------------------------------------------------------------- string values

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
OVER = "x" * 5000


async def stored(pool, tenant) -> list[tuple]:
    """Everything a write leaves behind: users, groups, the commands applied and events."""
    return [
        tuple(r)
        for r in await pool.fetch(
            "SELECT 'u', id::text, version, user_name, display_name, given_name, attributes::text "
            "FROM users WHERE tenant_id = $1 "
            "UNION ALL SELECT 'g', id::text, version, display_name, external_id, NULL, attributes::text "
            "FROM groups WHERE tenant_id = $1 "
            "UNION ALL SELECT 'i', count(*)::text, 0, NULL, NULL, NULL, NULL FROM inbox WHERE tenant_id = $1 "
            "UNION ALL SELECT 'e', count(*)::text, 0, NULL, NULL, NULL, NULL FROM events WHERE tenant_id = $1 "
            "ORDER BY 1, 2",
            tenant.id,
        )
    ]


async def refused_long(r, where: str, n: int = 5000, limit: int = 1024) -> None:
    body = await error_of(r, 400, "invalidValue")
    assert body["detail"] == f"{where} is {n} characters; the limit is {limit}"


async def test_an_overlong_string_is_refused_on_every_user_write(service_env, tenant, pool, provisioner):
    """A 5,000-character value in any string attribute, by POST, PUT or PATCH (with a path,
    without one, with a value-filtered path): 400 invalidValue naming the attribute and
    the limit, and nothing stored, applied or announced."""
    async with scim_client() as c:
        h = bearer(tenant.token)
        user = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
            "userName": "u" * 250 + "@x.com",  # Entra ID's longest userName and displayName pass
            "displayName": "D" * 256,
            "name": {"givenName": "Ada", "familyName": "Lovelace"},
            "emails": [{"value": "ada@example.com", "type": "work", "primary": True}],
            ENTERPRISE: {"department": "Engineering"},
        }
        r = await c.post("/scim/v2/Users", json=user, headers=h)
        assert r.status == 201, await r.text()
        uid = (await r.json())["id"]
        before = await stored(pool, tenant)

        posts = [
            ({"name": {"givenName": OVER}}, "name.givenName"),
            ({"title": OVER}, "title"),
            ({"emails": [{"value": "b@example.com", "display": OVER}]}, "emails[0].display"),
            ({ENTERPRISE: {"department": OVER}}, f"{ENTERPRISE}:department"),
        ]
        for extra, where in posts:
            r = await c.post("/scim/v2/Users", json={**user, "userName": "other@example.com", **extra}, headers=h)
            await refused_long(r, where)
            r = await c.put(f"/scim/v2/Users/{uid}", json={**user, **extra}, headers=h)
            await refused_long(r, where)
        r = await c.post(
            "/scim/v2/Users", json={**user, "userName": "other@example.com", "externalId": OVER}, headers=h
        )
        await refused_long(r, "externalId", limit=512)  # indexed: its own, lower limit

        patches = [
            ({"op": "replace", "path": "name.givenName", "value": OVER}, "name.givenName"),
            ({"op": "add", "path": "title", "value": OVER}, "title"),
            ({"op": "replace", "value": {"name": {"givenName": OVER}}}, "name.givenName"),
            ({"op": "Replace", "value": {"name.givenName": OVER}}, "name.givenName"),  # Entra's path-less form
            ({"op": "replace", "value": {f"{ENTERPRISE}:department": OVER}}, f"{ENTERPRISE}:department"),
            ({"op": "replace", "path": 'emails[type eq "work"].value', "value": OVER}, "emails[0].value"),
            ({"op": "add", "path": 'emails[type eq "home"].value', "value": OVER}, "emails[1].value"),
            ({"op": "replace", "path": f"{ENTERPRISE}:manager", "value": OVER}, f"{ENTERPRISE}:manager.value"),
        ]
        for op, where in patches:
            r = await c.patch(f"/scim/v2/Users/{uid}", json=patch_body(op), headers=h)
            await refused_long(r, where)

        assert await stored(pool, tenant) == before
        r = await c.get(f"/scim/v2/Users/{uid}", headers=h)
        got = await r.json()
        assert got["name"]["givenName"] == "Ada" and "title" not in got and got["meta"]["version"] == 'W/"1"'

        # at the limit, the same requests apply
        at = "y" * 1024
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            json=patch_body(
                {"op": "replace", "path": "name.givenName", "value": at},
                {"op": "replace", "path": 'emails[type eq "work"].display', "value": at},
            ),
            headers=h,
        )
        assert r.status == 200, await r.text()
        assert (await r.json())["name"]["givenName"] == at


async def test_an_overlong_string_is_refused_on_every_group_write(service_env, tenant, pool, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.post("/scim/v2/Users", json={"userName": "m@example.com"}, headers=h)
        assert r.status == 201, await r.text()
        member = (await r.json())["id"]
        r = await c.post("/scim/v2/Groups", json={"displayName": "G" * 256, "members": [{"value": member}]}, headers=h)
        assert r.status == 201, await r.text()
        gid = (await r.json())["id"]
        before = await stored(pool, tenant)

        r = await c.post("/scim/v2/Groups", json={"displayName": OVER}, headers=h)
        await refused_long(r, "displayName")
        r = await c.post("/scim/v2/Groups", json={"displayName": "g" * 600}, headers=h)
        await refused_long(r, "displayName", 600, 512)  # the unique name index's limit
        r = await c.put(f"/scim/v2/Groups/{gid}", json={"displayName": OVER}, headers=h)
        await refused_long(r, "displayName")
        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            json=patch_body({"op": "replace", "path": "displayName", "value": OVER}),
            headers=h,
        )
        await refused_long(r, "displayName")
        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            json=patch_body({"op": "replace", "value": {"id": gid, "displayName": OVER}}),  # Okta's rename
            headers=h,
        )
        await refused_long(r, "displayName")
        # member values are ids: a long one is refused as no id, and never echoed back
        for body in (
            patch_body({"op": "add", "path": "members", "value": [{"value": OVER}]}),
            patch_body({"op": "replace", "path": "members", "value": [{"value": OVER}]}),
        ):
            r = await c.patch(f"/scim/v2/Groups/{gid}", json=body, headers=h)
            detail = (await error_of(r, 400, "invalidValue"))["detail"]
            assert OVER not in detail and "members" in detail
        r = await c.post("/scim/v2/Groups", json={"displayName": "n", "members": [{"value": OVER}]}, headers=h)
        await refused_long(r, "members[0].value")
        assert await stored(pool, tenant) == before


async def test_the_string_limit_is_a_setting(service_env, tenant, provisioner):
    async with scim_client(scim_max_string_chars=2048) as c:
        h = bearer(tenant.token)
        r = await c.post("/scim/v2/Users", json={"userName": "a@example.com", "title": "t" * 2000}, headers=h)
        assert r.status == 201, await r.text()
        r = await c.post("/scim/v2/Users", json={"userName": "b@example.com", "title": "t" * 2049}, headers=h)
        await refused_long(r, "title", 2049, 2048)
    async with scim_client(scim_max_string_chars=300) as c:
        r = await c.post(
            "/scim/v2/Users", json={"userName": "c@example.com", "title": "t" * 301}, headers=bearer(tenant.token)
        )
        await refused_long(r, "title", 301, 300)


def test_the_string_limit_cannot_be_switched_off():
    from provisio_lib.settings import SettingsError, load_settings
    from scim_gateway.settings import ScimSettings

    assert (
        load_settings(ScimSettings, database_url="postgresql://x/y", redis_url="redis://x").scim_max_string_chars
        == 1024
    )
    for bad in (0, 255):
        with pytest.raises(SettingsError):
            load_settings(
                ScimSettings, database_url="postgresql://x/y", redis_url="redis://x", scim_max_string_chars=bad
            )


async def test_a_patch_is_judged_by_what_it_changes_when_a_long_value_was_stored_before(
    service_env, tenant, provisioner
):
    """A user stored while the cap was higher (or before it existed) keeps a 2,000-character
    title. Entra's deactivation PATCH ("Replace", "active", "False") must still reach
    them; a PATCH bringing a new over-long value is refused as always; one that replaces
    the long value with a short one applies."""
    h = bearer(tenant.token)
    async with scim_client(scim_max_string_chars=2048) as c:
        r = await c.post("/scim/v2/Users", json={"userName": "old@example.com", "title": "t" * 2000}, headers=h)
        assert r.status == 201, await r.text()
        uid = (await r.json())["id"]
    async with scim_client() as c:  # the default cap, 1024
        deactivate = {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
        }
        r = await c.patch(f"/scim/v2/Users/{uid}", json=deactivate, headers=h)
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["active"] is False and len(body["title"]) == 2000
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            json=patch_body({"op": "replace", "path": "name.givenName", "value": "g" * 1025}),
            headers=h,
        )
        await refused_long(r, "name.givenName", 1025, 1024)
        r = await c.patch(
            f"/scim/v2/Users/{uid}", json=patch_body({"op": "replace", "path": "title", "value": "Engineer"}), headers=h
        )
        assert r.status == 200 and (await r.json())["title"] == "Engineer", await r.text()
