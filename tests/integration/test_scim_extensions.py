"""Tenant-declared SCIM schema extensions (issue 13 §4), against the real gateway, the
provisioner and the ``provisio scim-schema`` CLI.

The request shapes are Entra ID's: a create carrying the enterprise extension and an
admin's custom extension (Microsoft's "Develop and plan provisioning for a SCIM
endpoint": ``urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User``),
PATCH ops whose path is the attribute's full URN, and Splashtop's Entra mapping of
``urn:ietf:params:scim:schemas:extension:Splashtop:2.0:User:ssoName``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import make_tenant
from tests.integration.scim_helpers import ENTERPRISE, PROVISIO, USER, bearer, patch_body, scim_client

pytestmark = pytest.mark.integration

CUSTOM = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User"
SPLASHTOP = "urn:ietf:params:scim:schemas:extension:Splashtop:2.0:User"
ACME = "urn:ietf:params:scim:schemas:extension:Acme:2.0:User"

CUSTOM_DOC = {
    "id": CUSTOM,
    "name": "CustomExtensionName",
    "description": "Attributes an Entra admin mapped",
    "attributes": [
        {"name": "CustomAttribute", "type": "string", "multiValued": False, "required": False},
        {"name": "badgeNumber", "type": "integer", "multiValued": False, "required": False},
        {"name": "contractor", "type": "boolean", "multiValued": False, "required": False},
        {"name": "hiredOn", "type": "dateTime", "multiValued": False, "required": False},
        {"name": "skills", "type": "string", "multiValued": True, "required": False},
        {"name": "costCenter", "type": "string", "multiValued": False, "required": True},
    ],
}


def cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


async def acli(env, *args):
    return await asyncio.to_thread(cli, env, *args)


async def declare(env, tenant, tmp_path, doc):
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(doc))
    r = await acli(env, "scim-schema", "add", tenant.name, "--file", str(f))
    assert r.returncode == 0, r.stderr
    return r


async def test_entra_create_with_enterprise_and_custom_extension(service_env, pool, provisioner, tmp_path):
    tenant = await make_tenant(pool)
    r = await declare(service_env, tenant, tmp_path, CUSTOM_DOC)
    assert CUSTOM in r.stdout
    async with scim_client() as c:
        h = bearer(tenant.token)
        body = {
            "schemas": [USER, ENTERPRISE, CUSTOM],
            "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
            "userName": "Test_User_ab6490ee@testuser.com",
            "active": True,
            "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
            ENTERPRISE: {"department": "Sales", "employeeNumber": "701984"},
            CUSTOM: {
                "CustomAttribute": "blue",
                "badgeNumber": "1234",
                "contractor": "True",
                "hiredOn": "2024-03-01T09:00:00Z",
                "skills": ["scim", "saml"],
                "costCenter": "CC-9",
            },
        }
        r = await c.post("/scim/v2/Users", headers=h, json=body)
        assert r.status == 201, await r.text()
        user = await r.json()
        # typed as declared: Entra's string booleans and numbers become JSON ones
        assert user[CUSTOM] == {
            "CustomAttribute": "blue",
            "badgeNumber": 1234,
            "contractor": True,
            "hiredOn": "2024-03-01T09:00:00Z",
            "skills": ["scim", "saml"],
            "costCenter": "CC-9",
        }
        assert user[ENTERPRISE]["department"] == "Sales"
        assert CUSTOM in user["schemas"] and ENTERPRISE in user["schemas"]
        uid = user["id"]

        r = await c.get(f"/scim/v2/Users/{uid}", headers=h)
        assert (await r.json())[CUSTOM]["CustomAttribute"] == "blue"

        # filterable by the full URN path, case-insensitively like the rest of SCIM
        for flt in (
            f'{CUSTOM}:CustomAttribute eq "BLUE"',
            f"{CUSTOM}:contractor eq true",
            f'{CUSTOM}:skills eq "saml"',
            f'{CUSTOM.lower()}:costcenter sw "CC"',
        ):
            r = await c.get("/scim/v2/Users", params={"filter": flt}, headers=h)
            assert r.status == 200, (flt, await r.text())
            assert [u["id"] for u in (await r.json())["Resources"]] == [uid], flt
        r = await c.get("/scim/v2/Users", params={"filter": f'{CUSTOM}:CustomAttribute eq "red"'}, headers=h)
        assert (await r.json())["totalResults"] == 0

        # Entra's PATCH: the attribute's URN as path, "Add"/"Replace", string values
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body(
                {"op": "Add", "path": f"{CUSTOM}:CustomAttribute", "value": "green"},
                {"op": "Replace", "path": f"{CUSTOM}:badgeNumber", "value": "77"},
                {"op": "Remove", "path": f"{CUSTOM}:skills"},
            ),
        )
        assert r.status == 200, await r.text()
        ext = (await r.json())[CUSTOM]
        assert ext["CustomAttribute"] == "green" and ext["badgeNumber"] == 77 and "skills" not in ext
        # path-less form with the extension object (Entra and Okta both send it)
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "replace", "value": {CUSTOM: {"contractor": "False"}}}),
        )
        assert (await r.json())[CUSTOM]["contractor"] is False

        # type checks: SCIM 400 invalidValue naming the attribute
        for bad in (
            {"badgeNumber": "twelve"},
            {"contractor": "maybe"},
            {"hiredOn": "yesterday"},
            {"CustomAttribute": ["a", "b"]},
            {"skills": "x", "badgeNumber": 1.5},
        ):
            r = await c.post(
                "/scim/v2/Users",
                headers=h,
                json={"schemas": [USER, CUSTOM], "userName": "bad@testuser.com", CUSTOM: {"costCenter": "1", **bad}},
            )
            assert r.status == 400, (bad, await r.text())
            err = await r.json()
            assert err["scimType"] == "invalidValue" and err["status"] == "400", err
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "replace", "path": f"{CUSTOM}:badgeNumber", "value": "many"}),
        )
        assert r.status == 400 and (await r.json())["scimType"] == "invalidValue"
        # required inside the extension once the extension is sent
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={"schemas": [USER, CUSTOM], "userName": "noreq@testuser.com", CUSTOM: {"CustomAttribute": "x"}},
        )
        assert r.status == 400 and "costCenter" in (await r.json())["detail"]
        r = await c.patch(
            f"/scim/v2/Users/{uid}", headers=h, json=patch_body({"op": "remove", "path": f"{CUSTOM}:costCenter"})
        )
        assert r.status == 400 and (await r.json())["scimType"] == "invalidValue"
        # an attribute the declared schema lacks
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "add", "path": f"{CUSTOM}:shoeSize", "value": "44"}),
        )
        assert r.status == 400 and (await r.json())["scimType"] == "invalidPath"

        # discovery with the tenant's token lists the declared schema
        r = await c.get(f"/scim/v2/Schemas/{CUSTOM}", headers=h)
        assert r.status == 200
        names = {a["name"]: a for a in (await r.json())["attributes"]}
        assert names["badgeNumber"]["type"] == "integer" and names["costCenter"]["required"] is True
        r = await c.get("/scim/v2/ResourceTypes/User", headers=h)
        assert {"schema": CUSTOM, "required": False} in (await r.json())["schemaExtensions"]


async def test_splashtop_preset_maps_sso_name(service_env, pool, provisioner):
    tenant = await make_tenant(pool)
    r = await acli(service_env, "scim-schema", "add", tenant.name, "--preset", "splashtop")
    assert r.returncode == 0, r.stderr
    async with scim_client() as c:
        h = bearer(tenant.token)
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": [USER, SPLASHTOP],
                "userName": "ann@splashtop.example",
                SPLASHTOP: {"ssoName": "entra-sso"},
            },
        )
        assert r.status == 201, await r.text()
        user = await r.json()
        uid = user["id"]
        assert user[SPLASHTOP] == {"ssoName": "entra-sso"} and user[PROVISIO]["ssoName"] == "entra-sso"
        assert await pool.fetchval("SELECT sso_name FROM users WHERE id = $1", user["id"]) == "entra-sso"
        assert await pool.fetchval("SELECT attributes FROM users WHERE id = $1", user["id"]) == {}

        # Entra's PATCH with the URN path
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "Replace", "path": f"{SPLASHTOP}:ssoName", "value": "okta-sso"}),
        )
        assert r.status == 200, await r.text()
        assert (await r.json())[SPLASHTOP] == {"ssoName": "okta-sso"}
        assert await pool.fetchval("SELECT sso_name FROM users WHERE id = $1", user["id"]) == "okta-sso"
        # and through Provisio's own ssoName: both names show the one value
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "replace", "path": f"{PROVISIO}:ssoName", "value": "third"}),
        )
        body = await r.json()
        assert body[SPLASHTOP] == {"ssoName": "third"} and body[PROVISIO]["ssoName"] == "third"

        # filter by the Splashtop URN (an index-free column compare on sso_name)
        r = await c.get("/scim/v2/Users", params={"filter": f'{SPLASHTOP}:ssoName eq "third"'}, headers=h)
        assert r.status == 200, await r.text()
        assert [u["id"] for u in (await r.json())["Resources"]] == [uid]
        r = await c.get("/scim/v2/Users", params={"filter": f'{SPLASHTOP}:ssoName eq "THIRD"'}, headers=h)
        assert (await r.json())["totalResults"] == 0  # caseExact, as Provisio's ssoName

        r = await c.patch(
            f"/scim/v2/Users/{uid}", headers=h, json=patch_body({"op": "remove", "path": f"{SPLASHTOP}:ssoName"})
        )
        body = await r.json()
        assert SPLASHTOP not in body and PROVISIO not in body
        assert await pool.fetchval("SELECT sso_name FROM users WHERE id = $1", user["id"]) is None


async def test_undeclared_extension_store_then_reject(service_env, pool, provisioner):
    tenant = await make_tenant(pool)
    shown = await acli(service_env, "scim-schema", "undeclared", tenant.name)
    assert shown.stdout.strip().endswith(": store")  # the default
    async with scim_client(scim_token_cache_s=0) as c:
        h = bearer(tenant.token)
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={
                "schemas": [USER, ACME],
                "userName": "kept@example.com",
                ACME: {"costCenter": "42", "tags": ["a", {"b": 1}]},
            },
        )
        assert r.status == 201, await r.text()
        user = await r.json()
        uid = user["id"]
        assert user[ACME] == {"costCenter": "42", "tags": ["a", {"b": 1}]} and ACME in user["schemas"]
        r = await c.get(f"/scim/v2/Users/{uid}", headers=h)
        assert (await r.json())[ACME]["costCenter"] == "42"
        # Entra PATCH with the undeclared attribute's URN path
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body(
                {"op": "Replace", "path": f"{ACME}:costCenter", "value": "43"}, {"op": "Remove", "path": f"{ACME}:tags"}
            ),
        )
        assert r.status == 200, await r.text()
        assert (await r.json())[ACME] == {"costCenter": "43"}
        # not declared, so not filterable: a clear 400
        r = await c.get("/scim/v2/Users", params={"filter": f'{ACME}:costCenter eq "43"'}, headers=h)
        assert r.status == 400 and (await r.json())["scimType"] == "invalidFilter"

        set_ = await acli(service_env, "scim-schema", "undeclared", tenant.name, "reject")
        assert set_.returncode == 0 and set_.stdout.strip().endswith(": reject"), set_.stderr
        r = await c.post(
            "/scim/v2/Users",
            headers=h,
            json={"schemas": [USER, ACME], "userName": "refused@example.com", ACME: {"costCenter": "1"}},
        )
        assert r.status == 400
        err = await r.json()
        assert ACME in err["detail"] and err["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "replace", "path": f"{ACME}:costCenter", "value": "44"}),
        )
        assert r.status == 400 and ACME in (await r.json())["detail"]
        # what was stored before stays, and other changes to that user still work
        r = await c.patch(
            f"/scim/v2/Users/{uid}",
            headers=h,
            json=patch_body({"op": "replace", "path": "displayName", "value": "Kept"}),
        )
        assert r.status == 200, await r.text()
        assert (await r.json())[ACME] == {"costCenter": "43"}
        # a PUT without the extension removes it (RFC 7644 §3.5.1)
        r = await c.put(f"/scim/v2/Users/{uid}", headers=h, json={"schemas": [USER], "userName": "kept@example.com"})
        assert r.status == 200 and ACME not in await r.json()
    bad = await acli(service_env, "scim-schema", "undeclared", tenant.name, "ignore")
    assert bad.returncode == 1 and "store, reject" in bad.stderr


async def test_one_tenants_schema_is_not_visible_to_another(service_env, pool, provisioner, tmp_path):
    a = await make_tenant(pool)
    b = await make_tenant(pool, scim_undeclared_extensions="reject")
    await declare(service_env, a, tmp_path, CUSTOM_DOC)
    async with scim_client() as c:
        r = await c.get("/scim/v2/Schemas", headers=bearer(a.token))
        assert CUSTOM in [s["id"] for s in (await r.json())["Resources"]]
        for headers in (bearer(b.token), {}):
            r = await c.get("/scim/v2/Schemas", headers=headers)
            assert CUSTOM not in [s["id"] for s in (await r.json())["Resources"]]
            r = await c.get(f"/scim/v2/Schemas/{CUSTOM}", headers=headers)
            assert r.status == 404
            r = await c.get("/scim/v2/ResourceTypes/User", headers=headers)
            assert CUSTOM not in json.dumps(await r.json())
        r = await c.get("/scim/v2/Schemas", headers=bearer("prv_not-a-token"))
        assert r.status == 401
        hb = bearer(b.token)
        r = await c.get("/scim/v2/Users", params={"filter": f'{CUSTOM}:costCenter eq "x"'}, headers=hb)
        assert r.status == 400 and (await r.json())["scimType"] == "invalidFilter"
        r = await c.post(
            "/scim/v2/Users",
            headers=hb,
            json={"schemas": [USER, CUSTOM], "userName": "b@example.com", CUSTOM: {"costCenter": "x"}},
        )
        assert r.status == 400 and CUSTOM in (await r.json())["detail"]


async def test_cli_validates_schema_documents(service_env, pool, tmp_path):
    tenant = await make_tenant(pool)
    cases = [
        ("{not json", "is not valid JSON"),
        (json.dumps({"attributes": []}), "id must be the schema's URN"),
        (json.dumps({"id": USER, "attributes": [{"name": "x", "type": "string"}]}), "is built in"),
        (json.dumps({"id": CUSTOM, "attributes": []}), "attributes must be a non-empty list"),
        (json.dumps({"id": CUSTOM, "attributes": [{"name": "x", "type": "text"}]}), "type must be one of"),
        (
            json.dumps(
                {"id": CUSTOM, "attributes": [{"name": "x", "type": "string"}, {"name": "X", "type": "string"}]}
            ),
            "declared twice",
        ),
        (json.dumps({"id": CUSTOM, "attributes": [{"name": "1x", "type": "string"}]}), "must be an attribute name"),
        (json.dumps({"id": CUSTOM, "attributes": [{"name": "x", "type": "complex"}]}), "needs subAttributes"),
        (
            json.dumps({"id": CUSTOM, "attributes": [{"name": "x", "type": "string", "multiValued": "yes"}]}),
            "multiValued must be true or false",
        ),
        (
            json.dumps({"id": CUSTOM, "attributes": [{"name": "x", "type": "string", "uniqueness": "server"}]}),
            "uniqueness",
        ),
    ]
    f = tmp_path / "s.json"
    for text, message in cases:
        f.write_text(text)
        r = await acli(service_env, "scim-schema", "add", tenant.name, "--file", str(f))
        assert r.returncode == 1 and message in r.stderr, (text, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: ")
    r = await acli(service_env, "scim-schema", "add", tenant.name, "--preset", "nope")
    assert r.returncode == 1 and "unknown preset 'nope'; choose one of: splashtop" in r.stderr
    r = await acli(service_env, "scim-schema", "add", tenant.name)
    assert r.returncode == 1 and "exactly one of --file" in r.stderr
    r = await acli(service_env, "scim-schema", "add", tenant.name, "--file", str(tmp_path / "missing.json"))
    assert r.returncode == 1 and "cannot read" in r.stderr

    assert (await acli(service_env, "scim-schema", "add", tenant.name, "--preset", "splashtop")).returncode == 0
    dup = await acli(service_env, "scim-schema", "add", tenant.name, "--preset", "splashtop")
    assert dup.returncode == 1 and "already declares" in dup.stderr
    listed = await acli(service_env, "scim-schema", "list", tenant.name, "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert rows and rows[0]["urn"] == SPLASHTOP and rows[0]["preset"] == "splashtop"
    assert rows[0]["attributes"] == "ssoName:string"
    gone = await acli(service_env, "scim-schema", "remove", tenant.name, SPLASHTOP.lower())
    assert gone.returncode == 0, gone.stderr
    again = await acli(service_env, "scim-schema", "remove", tenant.name, SPLASHTOP)
    assert again.returncode == 1 and "declares no extension" in again.stderr
