"""Users end to end: gateway → command stream → provisioner → Postgres → answer."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import make_tenant
from tests.integration.scim_helpers import ENTERPRISE, GROUP, PROVISIO, USER, bearer, patch_body, scim_client

pytestmark = pytest.mark.integration


def new_user(name: str = "bjensen@example.com", **extra):
    return {
        "schemas": [USER, ENTERPRISE],
        "userName": name,
        "externalId": "ext-" + name,
        "name": {"givenName": "Barbara", "familyName": "Jensen", "formatted": "Ms. Barbara J Jensen III"},
        "displayName": "Babs Jensen",
        "title": "Tour Guide",
        "emails": [{"value": name, "type": "work", "primary": True}],
        "phoneNumbers": [{"value": "555-555-8377", "type": "work"}],
        ENTERPRISE: {
            "employeeNumber": "701984",
            "department": "Tour Operations",
            "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"},
        },
        PROVISIO: {"ssoName": "entra-main", "custom": {"costCode": "CC-7", "region": "EU"}},
        **extra,
    }


async def test_create_get_round_trip_keeps_every_attribute(service_env, tenant, provisioner, pool):
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.post("/scim/v2/Users", json=new_user(password="t1meMa$heen"), headers=h)
        assert r.status == 201, await r.text()
        assert r.content_type == "application/scim+json"
        created = await r.json()
        uid = created["id"]
        assert r.headers["Location"] == created["meta"]["location"]
        assert r.headers["Location"].endswith(f"/scim/v2/Users/{uid}")
        assert r.headers["ETag"] == 'W/"1"' == created["meta"]["version"]
        assert "password" not in created
        r = await c.get(f"/scim/v2/Users/{uid}", headers=h)
        got = await r.json()
        assert got == created
        assert got["name"]["formatted"] == "Ms. Barbara J Jensen III"
        assert got["phoneNumbers"] == [{"value": "555-555-8377", "type": "work"}]
        assert got[ENTERPRISE]["department"] == "Tour Operations"
        assert got[ENTERPRISE]["manager"]["value"] == "26118915-6090-4610-87e4-49d8ca9f808d"
        assert got[PROVISIO] == {"custom": {"costCode": "CC-7", "region": "EU"}, "ssoName": "entra-main"}
        assert set(got["schemas"]) == {USER, ENTERPRISE, PROVISIO}
    row = await pool.fetchrow("SELECT * FROM users WHERE id = $1", uuid.UUID(uid))
    # neutral columns hold the neutral fields; the rest sits in attributes keyed as SCIM keys it
    assert (row["user_name"], row["given_name"], row["sso_name"], row["email"]) == (
        "bjensen@example.com",
        "Barbara",
        "entra-main",
        "bjensen@example.com",
    )
    assert row["attributes"][ENTERPRISE]["employeeNumber"] == "701984"
    assert row["attributes"]["custom"] == {"costCode": "CC-7", "region": "EU"}
    assert "password" not in str(row["attributes"])


async def test_duplicate_user_name_any_case_is_409_uniqueness(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        assert (await c.post("/scim/v2/Users", json=new_user("dup@x.com"), headers=h)).status == 201
        r = await c.post("/scim/v2/Users", json=new_user("DUP@X.COM"), headers=h)
        assert r.status == 409
        body = await r.json()
        assert body["scimType"] == "uniqueness" and body["status"] == "409"


async def test_patch_put_etag_and_if_match(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        uid = (await (await c.post("/scim/v2/Users", json=new_user(), headers=h)).json())["id"]
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            json=patch_body({"op": "replace", "path": "title", "value": "Boss"}),
            headers={**h, "If-Match": 'W/"7"'},
        )
        assert r.status == 412
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            json=patch_body({"op": "replace", "path": "title", "value": "Boss"}),
            headers={**h, "If-Match": 'W/"1"'},
        )
        assert r.status == 200, await r.text()
        assert r.headers["ETag"] == 'W/"2"'
        assert (await r.json())["title"] == "Boss"
        # a PATCH that changes nothing is answered without a new version
        r = await c.patch(
            f"/scim/v2/Users/{uid}", json=patch_body({"op": "replace", "path": "title", "value": "Boss"}), headers=h
        )
        assert r.headers["ETag"] == 'W/"2"'
        # PUT is a full replace (Okta): attributes not sent are gone
        r = await c.put(
            f"/scim/v2/Users/{uid}",
            json={"schemas": [USER], "userName": "bjensen@example.com", "active": True},
            headers=h,
        )
        assert r.status == 200
        body = await r.json()
        assert "title" not in body and ENTERPRISE not in body and body["meta"]["version"] == 'W/"3"'
        r = await c.get(f"/scim/v2/Users/{uid}", headers={**h, "If-None-Match": 'W/"3"'})
        assert r.status == 304


async def test_deactivated_users_are_still_returned(service_env, pool, provisioner):
    tenant = await make_tenant(pool, deprovision="deactivate")
    async with scim_client() as c:
        h = bearer(tenant.token)
        uid = (await (await c.post("/scim/v2/Users", json=new_user(), headers=h)).json())["id"]
        r = await c.patch(
            f"/scim/v2/Users/{uid}", json=patch_body({"op": "Replace", "path": "active", "value": "False"}), headers=h
        )
        assert (await r.json())["active"] is False
        r = await c.get("/scim/v2/Users", params={"filter": "active eq false"}, headers=h)
        assert [u["id"] for u in (await r.json())["Resources"]] == [uid]
        # tenant policy deprovision=deactivate: DELETE deactivates, the user stays readable
        assert (await c.delete(f"/scim/v2/Users/{uid}", headers=h)).status == 204
        assert (await c.get(f"/scim/v2/Users/{uid}", headers=h)).status == 200


async def test_delete_policy_removes_user_and_memberships(service_env, pool, provisioner):
    t = await make_tenant(pool, deprovision="delete")
    async with scim_client() as c:
        h = bearer(t.token)
        uid = (await (await c.post("/scim/v2/Users", json=new_user(), headers=h)).json())["id"]
        r = await c.post(
            "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Ops", "members": [{"value": uid}]}, headers=h
        )
        gid = (await r.json())["id"]
        r = await c.get(f"/scim/v2/Users/{uid}", headers=h)
        assert [g["value"] for g in (await r.json())["groups"]] == [gid]
        assert (await c.delete(f"/scim/v2/Users/{uid}", headers=h)).status == 204
        assert (await c.get(f"/scim/v2/Users/{uid}", headers=h)).status == 404
        r = await c.get(f"/scim/v2/Groups/{gid}", headers=h)
        assert (await r.json())["members"] == []
        assert (await c.delete(f"/scim/v2/Users/{uid}", headers=h)).status == 404


async def test_immutable_user_name_policy(service_env, pool, provisioner):
    t = await make_tenant(pool, immutable_user_name=True)
    async with scim_client() as c:
        h = bearer(t.token)
        uid = (await (await c.post("/scim/v2/Users", json=new_user(), headers=h)).json())["id"]
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            json=patch_body({"op": "replace", "path": "userName", "value": "other@x.com"}),
            headers=h,
        )
        assert r.status == 400 and (await r.json())["scimType"] == "mutability"
        # a change of letter case only is the same userName
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            json=patch_body({"op": "replace", "path": "userName", "value": "BJensen@example.com"}),
            headers=h,
        )
        assert r.status == 200


async def test_list_paging_sorting_and_projection(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        for n in ("carol", "alice", "bob"):
            assert (await c.post("/scim/v2/Users", json=new_user(f"{n}@x.com"), headers=h)).status == 201
        r = await c.get("/scim/v2/Users", params={"sortBy": "userName", "startIndex": "2", "count": "1"}, headers=h)
        body = await r.json()
        assert (body["totalResults"], body["startIndex"], body["itemsPerPage"]) == (3, 2, 1)
        assert body["Resources"][0]["userName"] == "bob@x.com"
        r = await c.get(
            "/scim/v2/Users",
            params={"sortBy": "userName", "sortOrder": "descending", "attributes": "userName,name.givenName"},
            headers=h,
        )
        res = (await r.json())["Resources"]
        assert [u["userName"] for u in res] == ["carol@x.com", "bob@x.com", "alice@x.com"]
        assert set(res[0]) == {"schemas", "id", "userName", "name"} and res[0]["name"] == {"givenName": "Barbara"}
        r = await c.get(
            "/scim/v2/Users", params={"excludedAttributes": f"emails,{ENTERPRISE}:department", "count": "1"}, headers=h
        )
        u = (await r.json())["Resources"][0]
        assert "emails" not in u and "department" not in u[ENTERPRISE] and "employeeNumber" in u[ENTERPRISE]
        r = await c.get("/scim/v2/Users", params={"count": "0"}, headers=h)
        assert (await r.json())["totalResults"] == 3
        r = await c.get("/scim/v2/Users", params={"startIndex": "10"}, headers=h)
        body = await r.json()
        assert body["totalResults"] == 3 and body["Resources"] == []
        r = await c.post(
            "/scim/v2/Users/.search",
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "filter": 'userName sw "A"',
                "attributes": ["userName"],
            },
            headers=h,
        )
        assert [u["userName"] for u in (await r.json())["Resources"]] == ["alice@x.com"]


async def test_a_token_never_sees_another_tenant(service_env, tenant, pool, provisioner):
    other = await make_tenant(pool)
    async with scim_client() as c:
        mine = (
            await (await c.post("/scim/v2/Users", json=new_user("shared@x.com"), headers=bearer(tenant.token))).json()
        )["id"]
        # the same userName in another tenant is not a duplicate
        r = await c.post("/scim/v2/Users", json=new_user("shared@x.com"), headers=bearer(other.token))
        assert r.status == 201
        h = bearer(other.token)
        assert (await c.get(f"/scim/v2/Users/{mine}", headers=h)).status == 404
        assert (
            await c.patch(
                f"/scim/v2/Users/{mine}", json=patch_body({"op": "replace", "path": "title", "value": "x"}), headers=h
            )
        ).status == 404
        assert (await c.put(f"/scim/v2/Users/{mine}", json={"userName": "x"}, headers=h)).status == 404
        assert (await c.delete(f"/scim/v2/Users/{mine}", headers=h)).status == 404
        r = await c.get("/scim/v2/Users", params={"filter": 'userName eq "shared@x.com"'}, headers=h)
        ids = [u["id"] for u in (await r.json())["Resources"]]
        assert mine not in ids and len(ids) == 1
        # nor can it put the other tenant's user in its groups
        r = await c.post(
            "/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "G", "members": [{"value": mine}]}, headers=h
        )
        assert r.status in (400, 404), await r.text()


async def test_attributes_scim_does_not_describe_are_kept_not_shown(service_env, tenant, provisioner, pool):
    async with scim_client() as c:
        h = bearer(tenant.token)
        uid = (await (await c.post("/scim/v2/Users", json=new_user(), headers=h)).json())["id"]
        # written by another path (e.g. a JIT mapping): not a SCIM attribute
        await pool.execute(
            "UPDATE users SET attributes = attributes || '{\"legacyField\": 42}' WHERE id = $1", uuid.UUID(uid)
        )
        body = await (await c.get(f"/scim/v2/Users/{uid}", headers=h)).json()
        assert "legacyField" not in body
        r = await c.patch(
            f"/scim/v2/Users/{uid}", json=patch_body({"op": "replace", "path": "title", "value": "CTO"}), headers=h
        )
        assert r.status == 200 and "legacyField" not in await r.json()
        r = await c.put(f"/scim/v2/Users/{uid}", json={"userName": "bjensen@example.com"}, headers=h)
        assert r.status == 200
    assert (await pool.fetchval("SELECT attributes FROM users WHERE id = $1", uuid.UUID(uid)))["legacyField"] == 42
