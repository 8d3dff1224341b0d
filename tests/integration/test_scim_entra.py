"""Replay of what Microsoft Entra ID's provisioning service sends, with the request
bodies of Microsoft's "Develop and plan provisioning for a SCIM endpoint" tutorial
(section "User operations" / "Group operations") and of the Entra SCIM validator's
Postman collection (capitalised attribute names, "Primary")."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import make_tenant
from tests.integration.scim_helpers import bearer, scim_client

pytestmark = pytest.mark.integration

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


async def test_entra_user_and_group_sequence(service_env, pool, provisioner):
    tenant = await make_tenant(pool, deprovision="delete")
    async with scim_client() as c:
        h = bearer(tenant.token)

        # Test Connection: a filter for a random GUID must answer 200 with an empty list
        r = await c.get("/scim/v2/Users", params={"filter": f'userName eq "{uuid.uuid4()}"'}, headers=h)
        assert r.status == 200
        assert (await r.json())["totalResults"] == 0

        # Create User
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": [
                    "urn:ietf:params:scim:schemas:core:2.0:User",
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                ],
                "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
                "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1",
                "active": True,
                "emails": [
                    {
                        "primary": True,
                        "type": "work",
                        "value": "Test_User_fd0ea19b-0777-472c-9f96-4f70d2226f2e@testuser.com",
                    }
                ],
                "meta": {"resourceType": "User"},
                "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
                "roles": [],
            },
        )
        assert r.status == 201, await r.text()
        user = await r.json()
        uid = user["id"]
        assert user["externalId"] == "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"
        assert user["meta"]["resourceType"] == "User"
        assert "roles" not in user

        # Get User by query
        r = await c.get(
            "/scim/v2/Users",
            params={"filter": 'userName eq "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1"'},
            headers=h,
        )
        body = await r.json()
        assert body["totalResults"] == 1 and body["Resources"][0]["id"] == uid
        # Entra also matches on the work email and on externalId
        r = await c.get(
            "/scim/v2/Users",
            params={
                "filter": 'emails[type eq "work"].value eq "test_user_fd0ea19b-0777-472c-9f96-4f70d2226f2e@testuser.com"'
            },
            headers=h,
        )
        assert [u["id"] for u in (await r.json())["Resources"]] == [uid]
        r = await c.get(
            "/scim/v2/Users", params={"filter": 'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"'}, headers=h
        )
        assert (await r.json())["totalResults"] == 1

        # Get User by query - Zero results
        r = await c.get("/scim/v2/Users", params={"filter": 'userName eq "non-existent user"'}, headers=h)
        assert (await r.json())["totalResults"] == 0

        # Update User [Multi-valued properties]
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "updatedEmail@microsoft.com"},
                    {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
                ],
            },
        )
        assert r.status == 200, await r.text()
        body = await r.json()
        assert body["emails"] == [{"value": "updatedEmail@microsoft.com", "type": "work", "primary": True}]
        assert body["name"]["familyName"] == "updatedFamilyName"
        assert body["name"]["givenName"] == "givenName"

        # Update User [Single-valued properties]
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    {"op": "Replace", "path": "userName", "value": "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"}
                ],
            },
        )
        assert (await r.json())["userName"] == "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"

        # A manager (another user), sent as a bare id; department by URN path
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "Test_User_manager@testuser.com",
                "active": True,
            },
        )
        manager = (await r.json())["id"]
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": [PATCH],
                "Operations": [
                    {
                        "op": "Add",
                        "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
                        "value": manager,
                    },
                    {
                        "op": "Add",
                        "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
                        "value": "Human Resources US",
                    },
                    {"op": "Add", "path": 'emails[type eq "other"].value', "value": "other@testuser.com"},
                ],
            },
        )
        ent = (await r.json())["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]
        assert ent["manager"]["value"] == manager and ent["department"] == "Human Resources US"
        r = await c.get(
            "/scim/v2/Users",
            params={
                "filter": f'urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq "{manager}"'
            },
            headers=h,
        )
        assert [u["id"] for u in (await r.json())["Resources"]] == [uid]

        # Path-less replace with string booleans (Entra before the SCIM 2.0 compliance flag)
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "schemas": [PATCH],
                "Operations": [
                    {
                        "op": "Replace",
                        "value": {"active": "False", "name.givenName": "Ellen", "displayName": "Ellen Reckert"},
                    }
                ],
            },
        )
        body = await r.json()
        assert (body["active"], body["name"]["givenName"], body["displayName"]) == (False, "Ellen", "Ellen Reckert")

        # Disable User
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json={
                "Operations": [{"op": "Replace", "path": "active", "value": False}],
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            },
        )
        assert r.status == 200 and (await r.json())["active"] is False

        # Create Group
        r = await c.post(
            "/scim/v2/Groups",
            headers=h,
            json={
                "schemas": [
                    "urn:ietf:params:scim:schemas:core:2.0:Group",
                    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/Group",
                ],
                "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                "displayName": "displayName",
                "meta": {"resourceType": "Group"},
            },
        )
        assert r.status == 201, await r.text()
        group = await r.json()
        gid = group["id"]
        assert group["members"] == []

        # Get Group
        r = await c.get(f"/scim/v2/Groups/{gid}", params={"excludedAttributes": "members"}, headers=h)
        body = await r.json()
        assert body["displayName"] == "displayName" and "members" not in body

        # Get Group by displayName
        r = await c.get(
            "/scim/v2/Groups",
            params={"excludedAttributes": "members", "filter": 'displayName eq "displayName"'},
            headers=h,
        )
        assert [g["id"] for g in (await r.json())["Resources"]] == [gid]

        # Update Group [Non-member attributes]
        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    {
                        "op": "Replace",
                        "path": "displayName",
                        "value": "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName",
                    }
                ],
            },
        )
        assert r.status == 200 and (await r.json())["displayName"].endswith("updatedDisplayName")

        # Update Group [Add Members]
        for member in (uid, manager):
            r = await c.patch(
                f"/scim/v2/Groups/{gid}",
                headers=h,
                json={
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "Add", "path": "members", "value": [{"$ref": None, "value": member}]}],
                },
            )
            assert r.status == 200, await r.text()
        assert {m["value"] for m in (await r.json())["members"]} == {uid, manager}
        r = await c.get("/scim/v2/Users", params={"filter": 'userName eq "Test_User_manager@testuser.com"'}, headers=h)
        assert [g["value"] for g in (await r.json())["Resources"][0]["groups"]] == [gid]

        # Update Group [Remove Members]: only the listed member goes
        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "Remove", "path": "members", "value": [{"$ref": None, "value": manager}]}],
            },
        )
        assert [m["value"] for m in (await r.json())["members"]] == [uid]
        r = await c.patch(
            f"/scim/v2/Groups/{gid}",
            headers=h,
            json={"schemas": [PATCH], "Operations": [{"op": "Remove", "path": f'members[value eq "{uid}"]'}]},
        )
        assert (await r.json())["members"] == []

        # Delete User, Delete Group
        assert (await c.delete(f"/scim/v2/Users/{uid}", headers=h)).status == 204
        assert (await c.get(f"/scim/v2/Users/{uid}", headers=h)).status == 404
        assert (await c.delete(f"/scim/v2/Groups/{gid}", headers=h)).status == 204
        assert (await c.get(f"/scim/v2/Groups/{gid}", headers=h)).status == 404


async def test_entra_validator_capitalised_attribute_names(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "UserName": "UserName222",
                "Active": True,
                "DisplayName": "lennay",
                "schemas": [
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                    "urn:ietf:params:scim:schemas:core:2.0:User",
                ],
                "externalId": "d0e2b7a5b3a84b1bb0c4f7b0a3c0e1d2",
                "name": {"formatted": "Adrew Ryan", "familyName": "Ryan", "givenName": "Andrew"},
                "emails": [
                    {"Primary": True, "type": "work", "value": "testing@bob2.com"},
                    {"Primary": False, "type": "home", "value": "testinghome@bob3.com"},
                ],
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                    "Department": "bob",
                    "Manager": {"Value": "SuzzyQ"},
                },
            },
        )
        assert r.status == 201, await r.text()
        body = await r.json()
        assert (body["userName"], body["displayName"], body["active"]) == ("UserName222", "lennay", True)
        assert body["emails"][0]["primary"] is True and body["emails"][1]["primary"] is False
        ent = body["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]
        assert ent["department"] == "bob" and ent["manager"]["value"] == "SuzzyQ"
        r = await c.get(
            "/scim/v2/Users", params={"filter": 'DisplayName eq "LENNAY"', "attributes": "userName,emails"}, headers=h
        )
        res = (await r.json())["Resources"]
        assert [u["userName"] for u in res] == ["UserName222"] and "displayName" not in res[0]
