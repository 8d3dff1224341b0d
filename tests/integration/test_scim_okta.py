"""Replay of Okta's SCIM 2.0 traffic: the Runscope "Okta SCIM 2.0 Spec Test" sequence
and the request bodies of Okta's SCIM 2.0 protocol reference (create, full-replace PUT,
path-less deactivation, Push Groups)."""

from __future__ import annotations

import pytest

from tests.integration.scim_helpers import scim_client

pytestmark = pytest.mark.integration

OKTA_HEADERS = {
    "Accept-Charset": "utf-8",
    "Content-Type": "application/scim+json; charset=utf-8",
    "Accept": "application/scim+json",
    "User-Agent": "OKTA SCIM Integration",
}


def okta(token: str) -> dict[str, str]:
    return {**OKTA_HEADERS, "Authorization": f"Bearer {token}"}


async def test_okta_spec_test_sequence(service_env, tenant, provisioner):
    invalid_user_email = "abcdefgh@example.com"
    random_email = "Runscope300Hfluaklab151@example.com"
    random_family_name = "Hfluaklab151"
    random_given_name = "Runscope300"
    random_user_name = "Runscope300Hfluaklab151@example.com"
    random_user_name_caps = "RUNSCOPE300HFLUAKLAB151@example.com"
    user_id_that_does_not_exist = "010101001010101011001010101011"
    async with scim_client() as c:
        h = okta(tenant.token)
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "bjensen@example.com",
                "name": {"givenName": "Barbara", "familyName": "Jensen"},
                "emails": [{"primary": True, "value": "bjensen@example.com", "type": "work"}],
                "displayName": "Barbara Jensen",
                "active": True,
            },
        )
        assert r.status == 201

        # Required Test: Test Users endpoint
        r = await c.get("/scim/v2/Users", params={"count": "1", "startIndex": "1"}, headers=h)
        assert r.status == 200
        j = await r.json()
        assert j["Resources"]
        assert "urn:ietf:params:scim:api:messages:2.0:ListResponse" in j["schemas"]
        assert all(isinstance(j[k], int) for k in ("itemsPerPage", "startIndex", "totalResults"))
        first = j["Resources"][0]
        assert first["id"] and first["name"]["familyName"] and first["name"]["givenName"] and first["userName"]
        assert first["active"] is not None and first["emails"][0]["value"] is not None
        isv_user_id = first["id"]

        # Required Test: Get Users/{{id}}
        r = await c.get(f"/scim/v2/Users/{isv_user_id}", headers=h)
        assert r.status == 200 and (await r.json())["id"] == isv_user_id

        # Required Test: Test invalid User by username
        r = await c.get("/scim/v2/Users", params={"filter": f'userName eq "{invalid_user_email}"'}, headers=h)
        assert r.status == 200 and (await r.json())["totalResults"] == 0

        # Required Test: Test invalid User by ID
        r = await c.get(f"/scim/v2/Users/{user_id_that_does_not_exist}", headers=h)
        assert r.status == 404
        j = await r.json()
        assert "detail" in j and "urn:ietf:params:scim:api:messages:2.0:Error" in j["schemas"]

        # Required Test: Make sure random user doesn't exist
        r = await c.get("/scim/v2/Users", params={"filter": f'userName eq "{random_email}"'}, headers=h)
        assert (await r.json())["totalResults"] == 0

        # Required Test: Create Okta user with realistic values
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": random_user_name,
                "name": {"givenName": random_given_name, "familyName": random_family_name},
                "emails": [{"primary": True, "value": random_email, "type": "work"}],
                "displayName": f"{random_given_name} {random_family_name}",
                "active": True,
            },
        )
        assert r.status == 201
        j = await r.json()
        assert (
            j["active"]
            and j["name"]["familyName"] == random_family_name
            and j["name"]["givenName"] == random_given_name
        )
        assert "urn:ietf:params:scim:schemas:core:2.0:User" in j["schemas"]
        assert j["userName"] == random_user_name and j["emails"][0]["value"] == random_email
        id_user_one = j["id"]

        # Required Test: Verify that user was created
        r = await c.get(f"/scim/v2/Users/{id_user_one}", headers=h)
        j = await r.json()
        assert (j["userName"], j["name"]["familyName"], j["name"]["givenName"]) == (
            random_user_name,
            random_family_name,
            random_given_name,
        )

        # Required Test: Expect failure when recreating user with same values
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": random_user_name,
                "name": {"givenName": random_given_name, "familyName": random_family_name},
                "emails": [{"primary": True, "value": random_user_name, "type": "work"}],
                "displayName": f"{random_given_name} {random_family_name}",
                "active": True,
            },
        )
        assert r.status == 409

        # Required Test: Username Case Sensitivity Check
        r = await c.get("/scim/v2/Users", params={"filter": f'userName eq "{random_user_name_caps}"'}, headers=h)
        assert r.status == 200 and (await r.json())["totalResults"] == 1

        # Optional Test: Verify Groups endpoint
        r = await c.get("/scim/v2/Groups", headers=h)
        j = await r.json()
        assert r.status == 200 and isinstance(j["totalResults"], int) and isinstance(j["Resources"], list)

        # Required Test: Check status 404
        r = await c.get(f"/scim/v2/Users/{user_id_that_does_not_exist}", headers=h)
        j = await r.json()
        assert r.status == 404 and j["status"] == "404" and "detail" in j


async def test_okta_user_lifecycle_and_push_groups(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = okta(tenant.token)
        # Create the user (with Okta's password, which is never stored)
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "test.user@okta.local",
                "name": {"givenName": "Test", "familyName": "User"},
                "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
                "displayName": "Test User",
                "locale": "en-US",
                "externalId": "00ujl29u0le5T6Aj10h7",
                "groups": [],
                "password": "1mz050nq",
                "active": True,
            },
        )
        assert r.status == 201, await r.text()
        uid = (await r.json())["id"]

        r = await c.get(
            "/scim/v2/Users",
            params={"filter": 'userName eq "test.user@okta.local"', "startIndex": "1", "count": "100"},
            headers=h,
        )
        assert [u["id"] for u in (await r.json())["Resources"]] == [uid]

        # Update: Okta sends the whole user with PUT
        r = await c.put(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "id": uid,
                "userName": "test.user@okta.local",
                "name": {"givenName": "Another", "familyName": "User"},
                "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
                "displayName": "Another User",
                "locale": "en-US",
                "groups": [],
                "password": "1mz050nq",
                "active": True,
            },
        )
        assert r.status == 200
        j = await r.json()
        assert (j["name"]["givenName"], j["displayName"], j["locale"]) == ("Another", "Another User", "en-US")
        assert "externalId" not in j  # a full replace: what is not sent is gone
        assert j["meta"]["version"] == 'W/"2"'

        # Deactivate
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "value": {"active": False}}],
            },
        )
        assert r.status == 200 and (await r.json())["active"] is False
        # Reactivate
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "value": {"active": True}}],
            },
        )
        assert (await r.json())["active"] is True

        # Push Groups
        r = await c.post(
            "/scim/v2/Groups",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Test SCIMv2",
                "members": [],
            },
        )
        assert r.status == 201
        gid = (await r.json())["id"]
        r = await c.get(
            "/scim/v2/Groups",
            params={"filter": 'displayName eq "Test SCIMv2"', "startIndex": "1", "count": "100"},
            headers=h,
        )
        assert [g["id"] for g in (await r.json())["Resources"]] == [gid]

        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "value": {"id": gid, "displayName": "Test SCIMv2 renamed"}}],
            },
        )
        assert r.status == 200 and (await r.json())["displayName"] == "Test SCIMv2 renamed"

        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    {"op": "add", "path": "members", "value": [{"value": uid, "display": "test.user@okta.local"}]}
                ],
            },
        )
        assert [m["value"] for m in (await r.json())["members"]] == [uid]

        # Okta replaces a group's members with PUT too
        r = await c.put(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "id": gid,
                "displayName": "Test SCIMv2 renamed",
                "members": [],
            },
        )
        assert r.status == 200 and (await r.json())["members"] == []
        await c.patch(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    {"op": "add", "path": "members", "value": [{"value": uid, "display": "test.user@okta.local"}]}
                ],
            },
        )

        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "remove", "path": f'members[value eq "{uid}"]'}],
            },
        )
        assert r.status == 200 and (await r.json())["members"] == []

        assert (await c.delete(f"/scim/v2/Groups/{gid}", headers=h)).status == 204
        r = await c.get("/scim/v2/Groups", params={"filter": 'displayName eq "Test SCIMv2 renamed"'}, headers=h)
        assert (await r.json())["totalResults"] == 0
