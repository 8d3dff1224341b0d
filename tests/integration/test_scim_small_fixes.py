"""Issue 13 §5: inputs that reached the catch-all 500 handler, the group ETag after a
member's deletion, meta.location under a forged Host, and name.formatted after PATCH."""

from __future__ import annotations

import pytest

from tests.conftest import make_tenant
from tests.integration.scim_helpers import USER, bearer, patch_body, scim_client

pytestmark = pytest.mark.integration

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


async def _user(c, h, user_name="alice@example.com", **extra):
    r = await c.post("/scim/v2/Users", headers=h, json={"schemas": [USER], "userName": user_name, **extra})
    assert r.status == 201, await r.text()
    return await r.json()


@pytest.mark.parametrize(
    "flt",
    [
        'emails ne "x@example.com"',
        'emails.value ne "x@example.com"',
        'meta.created gt "0001-01-01T00:00:00+14:00"',
        'meta.lastModified lt "9999-12-31T23:59:59-14:00"',
    ],
)
async def test_filters_that_crashed_are_answered(service_env, pool, provisioner, flt):
    tenant = await make_tenant(pool)
    async with scim_client() as c:
        h = bearer(tenant.token)
        await _user(c, h, emails=[{"value": "a@example.com", "primary": True}])
        r = await c.get("/scim/v2/Users", params={"filter": flt}, headers=h)
        assert r.status < 500, await r.text()
        if r.status >= 400:
            body = await r.json()
            assert body["schemas"] == [ERROR] and body["status"] == str(r.status)


async def test_emails_ne_means_no_email_equals(service_env, pool, provisioner):
    tenant = await make_tenant(pool)
    async with scim_client() as c:
        h = bearer(tenant.token)
        u = await _user(c, h, emails=[{"value": "a@example.com", "primary": True}])
        r = await c.get("/scim/v2/Users", params={"filter": 'emails ne "b@example.com"'}, headers=h)
        assert r.status == 200, await r.text()
        assert [x["id"] for x in (await r.json())["Resources"]] == [u["id"]]
        r = await c.get("/scim/v2/Users", params={"filter": 'emails ne "A@example.com"'}, headers=h)
        assert (await r.json())["totalResults"] == 0


async def test_deeply_nested_body_is_400(service_env, pool, provisioner):
    tenant = await make_tenant(pool)
    async with scim_client() as c:
        h = bearer(tenant.token)
        deep = b'{"userName": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = await c.post("/scim/v2/Users", headers=h, data=deep)
        assert r.status == 400, await r.text()
        assert (await r.json())["scimType"] == "invalidSyntax"


@pytest.mark.parametrize("tag", ['W/"²"', '"١٢"', 'W/"99999999999999999999999999"'])
async def test_odd_if_match_is_412_not_500(service_env, pool, provisioner, tag):
    tenant = await make_tenant(pool)
    async with scim_client() as c:
        h = bearer(tenant.token)
        u = await _user(c, h)
        r = await c.patch(
            f"/scim/v2/Users/{u['id']}",
            headers={**h, "If-Match": tag},
            json=patch_body({"op": "replace", "path": "displayName", "value": "A"}),
        )
        assert r.status == 412, await r.text()
        assert (await r.json())["schemas"] == [ERROR]


async def test_location_ignores_a_forged_host(service_env, pool, provisioner):
    tenant = await make_tenant(pool)
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.post(
            "/scim/v2/Users",
            headers={**h, "Host": "evil.example"},
            json={"schemas": [USER], "userName": "host@example.com"},
        )
        assert r.status == 201
        body = await r.json()
        assert "evil.example" not in r.headers["Location"]
        assert r.headers["Location"] == body["meta"]["location"]
        assert r.headers["Location"].startswith("http://127.0.0.1:8081/scim/v2/Users/")
    async with scim_client(scim_public_url="https://scim.example.com") as c:
        r = await c.get(f"/scim/v2/Users/{body['id']}", headers={**h, "Host": "evil.example"})
        assert (await r.json())["meta"]["location"] == f"https://scim.example.com/scim/v2/Users/{body['id']}"


async def test_patch_of_given_name_recomputes_formatted(service_env, pool, provisioner):
    tenant = await make_tenant(pool)
    async with scim_client() as c:
        h = bearer(tenant.token)
        u = await _user(c, h, name={"formatted": "Ada Lovelace", "givenName": "Ada", "familyName": "Lovelace"})
        r = await c.patch(
            f"/scim/v2/Users/{u['id']}",
            headers=h,
            json=patch_body({"op": "Replace", "path": "name.givenName", "value": "Augusta"}),
        )
        assert r.status == 200, await r.text()
        assert (await r.json())["name"]["formatted"] == "Augusta Lovelace"
        # Entra's path-less form, with the family name only
        r = await c.patch(
            f"/scim/v2/Users/{u['id']}",
            headers=h,
            json=patch_body({"op": "replace", "value": {"name.familyName": "King"}}),
        )
        assert (await r.json())["name"]["formatted"] == "Augusta King"
        # formatted sent in the same request wins
        r = await c.patch(
            f"/scim/v2/Users/{u['id']}",
            headers=h,
            json=patch_body(
                {"op": "replace", "path": "name.givenName", "value": "Ada"},
                {"op": "replace", "path": "name.formatted", "value": "Ada, Countess of Lovelace"},
            ),
        )
        assert (await r.json())["name"]["formatted"] == "Ada, Countess of Lovelace"
        r = await c.get(f"/scim/v2/Users/{u['id']}", headers=h)
        assert (await r.json())["name"] == {
            "formatted": "Ada, Countess of Lovelace",
            "givenName": "Ada",
            "familyName": "King",
        }


async def test_group_etag_changes_when_a_member_user_is_deleted(service_env, pool, provisioner):
    tenant = await make_tenant(pool, deprovision="delete")
    async with scim_client() as c:
        h = bearer(tenant.token)
        a = await _user(c, h, "a@example.com")
        b = await _user(c, h, "b@example.com")
        r = await c.post(
            "/scim/v2/Groups",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Team",
                "members": [{"value": a["id"]}, {"value": b["id"]}],
            },
        )
        assert r.status == 201, await r.text()
        group = await r.json()
        tag = r.headers["ETag"]
        r = await c.get(f"/scim/v2/Groups/{group['id']}", headers={**h, "If-None-Match": tag})
        assert r.status == 304
        assert (await c.delete(f"/scim/v2/Users/{a['id']}", headers=h)).status == 204
        r = await c.get(f"/scim/v2/Groups/{group['id']}", headers={**h, "If-None-Match": tag})
        assert r.status == 200, "the member list changed: If-None-Match must not answer 304"
        body = await r.json()
        assert [m["value"] for m in body["members"]] == [b["id"]]
        assert r.headers["ETag"] != tag and body["meta"]["version"] == r.headers["ETag"]
        assert body["meta"]["lastModified"] >= group["meta"]["lastModified"]
        # an If-Match with the old version is refused (412), the new one accepted
        r = await c.patch(
            f"/scim/v2/Groups/{group['id']}",
            headers={**h, "If-Match": tag},
            json=patch_body({"op": "replace", "path": "displayName", "value": "Team 2"}),
        )
        assert r.status == 412
