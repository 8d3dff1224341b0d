"""Groups, concurrent PATCHes, the OpenAPI document and the process entry point."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest

from tests.integration.scim_helpers import GROUP, USER, bearer, patch_body, scim_client

pytestmark = pytest.mark.integration


async def _users(c, h, *names):
    ids = []
    for n in names:
        r = await c.post("/scim/v2/Users", json={"schemas": [USER], "userName": n}, headers=h)
        assert r.status == 201, await r.text()
        ids.append((await r.json())["id"])
    return ids


async def test_group_crud_members_and_uniqueness(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        a, b, d = await _users(c, h, "a@x.com", "b@x.com", "d@x.com")
        r = await c.post(
            "/scim/v2/Groups",
            json={
                "schemas": [GROUP],
                "displayName": "Sales",
                "externalId": "g-1",
                "members": [{"value": a}, {"value": b}],
            },
            headers=h,
        )
        assert r.status == 201
        g = await r.json()
        assert r.headers["Location"].endswith(f"/Groups/{g['id']}")
        assert {m["value"] for m in g["members"]} == {a, b}
        assert all(m["type"] == "User" and m["$ref"].endswith(m["value"]) for m in g["members"])
        r = await c.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "SALES"}, headers=h)
        assert r.status == 409 and (await r.json())["scimType"] == "uniqueness"
        # replace the whole member list (needs the current list: applied here, sent as ReplaceGroup)
        r = await c.patch(
            f"/scim/v2/Groups/{g['id']}",
            json=patch_body(
                {"op": "replace", "path": "members", "value": [{"value": d}]},
                {"op": "replace", "path": "externalId", "value": "g-2"},
            ),
            headers=h,
        )
        body = await r.json()
        assert [m["value"] for m in body["members"]] == [d] and body["externalId"] == "g-2"
        # a member filter that is not "value eq": evaluated on the member list
        r = await c.patch(
            f"/scim/v2/Groups/{g['id']}",
            json=patch_body({"op": "remove", "path": f'members[value eq "{d}" or value eq "{a}"]'}),
            headers=h,
        )
        assert (await r.json())["members"] == []
        r = await c.patch(
            f"/scim/v2/Groups/{g['id']}",
            json=patch_body({"op": "add", "path": "members", "value": [{"value": str(uuid.uuid4())}]}),
            headers=h,
        )
        assert r.status in (400, 404) and r.status != 500
        r = await c.get("/scim/v2/Groups", params={"attributes": "displayName"}, headers=h)
        assert (await r.json())["Resources"] == [{"schemas": [GROUP], "id": g["id"], "displayName": "Sales"}]
        r = await c.put(
            f"/scim/v2/Groups/{g['id']}",
            json={"schemas": [GROUP], "displayName": "Sales EU", "members": [{"value": a}]},
            headers={**h, "If-Match": 'W/"1"'},
        )
        assert r.status == 412


async def test_concurrent_patches_on_one_user_all_apply(service_env, tenant, provisioner):
    """Six PATCHes read the same version; the stale ones are retried on version_mismatch,
    so every change lands and none overwrites another."""
    async with scim_client(scim_write_retries=5) as c:
        h = bearer(tenant.token)
        (uid,) = await _users(c, h, "busy@x.com")
        ops = [
            patch_body({"op": "add", "path": "phoneNumbers", "value": [{"value": f"+1-555-000{i}", "type": "work"}]})
            for i in range(6)
        ]
        rs = await asyncio.gather(*(c.patch(f"/scim/v2/Users/{uid}", json=o, headers=h) for o in ops))
        assert [r.status for r in rs] == [200] * 6, [await r.text() for r in rs]
        r = await c.get(f"/scim/v2/Users/{uid}", headers=h)
        body = await r.json()
        assert sorted(p["value"] for p in body["phoneNumbers"]) == [f"+1-555-000{i}" for i in range(6)]
        assert body["meta"]["version"] == 'W/"7"'


async def test_concurrent_member_adds_all_apply(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        ids = await _users(c, h, *(f"m{i}@x.com" for i in range(8)))
        gid = (
            await (await c.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "G"}, headers=h)).json()
        )["id"]
        rs = await asyncio.gather(
            *(
                c.patch(
                    f"/scim/v2/Groups/{gid}",
                    json=patch_body({"op": "Add", "path": "members", "value": [{"value": i}]}),
                    headers=h,
                )
                for i in ids
            )
        )
        assert {r.status for r in rs} == {200}
        r = await c.get(f"/scim/v2/Groups/{gid}", headers=h)
        assert {m["value"] for m in (await r.json())["members"]} == set(ids)


async def test_openapi_matches_the_routes(service_env, tenant):
    async with scim_client() as c:
        r = await c.get("/openapi.json")
        assert r.status == 200
        doc = await r.json()
        assert doc["openapi"].startswith("3.")
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        served = set()
        for route in c.app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter")
            if path and path.startswith("/scim/v2") and route.method != "HEAD":
                served.add((route.method, path))
        assert documented == served
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                assert op["responses"], (method, path)
                if "{id}" in path:
                    assert any(p["name"] == "id" and p["in"] == "path" for p in op["parameters"])
        # the document is valid OpenAPI 3 (schemathesis loads and validates it)
        import schemathesis

        schema = schemathesis.openapi.from_dict(doc)
        assert len(list(schema.get_all_operations())) == len(served)


def test_main_refuses_bad_settings_with_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIO_")}
    env["PROVISIO_DATABASE_URL"] = "mysql://nope"
    p = subprocess.run([sys.executable, "-m", "scim_gateway"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr


async def test_root_search_spans_users_and_groups(service_env, tenant, provisioner):
    async with scim_client() as c:
        h = bearer(tenant.token)
        await _users(c, h, "sales.lead@x.com", "other@x.com")
        await c.post("/scim/v2/Groups", json={"schemas": [GROUP], "displayName": "Sales"}, headers=h)
        search = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]}
        r = await c.post("/scim/v2/.search", json={**search, "attributes": ["displayName", "userName"]}, headers=h)
        body = await r.json()
        assert body["totalResults"] == 3
        assert [x.get("userName") or x.get("displayName") for x in body["Resources"]] == [
            "sales.lead@x.com",
            "other@x.com",
            "Sales",
        ]
        # userName exists only on Users: Groups match nothing (RFC 7644 §3.4.2.1)
        r = await c.post("/scim/v2/.search", json={**search, "filter": 'userName sw "sales"'}, headers=h)
        assert [x["userName"] for x in (await r.json())["Resources"]] == ["sales.lead@x.com"]
        # paging runs across both types
        r = await c.post("/scim/v2/.search", json={**search, "startIndex": 2, "count": 2}, headers=h)
        body = await r.json()
        assert body["totalResults"] == 3 and [x["schemas"][0].rsplit(":", 1)[1] for x in body["Resources"]] == [
            "User",
            "Group",
        ]
        r = await c.post("/scim/v2/.search", json={**search, "filter": "nope eq 1"}, headers=h)
        assert r.status == 400 and (await r.json())["scimType"] == "invalidFilter"


async def test_a_timed_out_create_is_still_applied_exactly_once(service_env, tenant, pool):
    from tests.conftest import eventually, running_provisioner

    async with scim_client(scim_outcome_timeout_s=0.3) as c:
        h = bearer(tenant.token)
        r = await c.post("/scim/v2/Users", json={"schemas": [USER], "userName": "queued@x.com"}, headers=h)
        assert r.status == 503 and r.headers["Retry-After"]
        async with running_provisioner():
            await eventually(lambda: pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", tenant.id))
            # the IdP retries: the first attempt was applied, so it is a duplicate now
            r = await c.post("/scim/v2/Users", json={"schemas": [USER], "userName": "queued@x.com"}, headers=h)
            assert r.status == 409
        assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", tenant.id) == 1


async def test_process_serves_and_stops_on_sigterm(service_env, tenant):
    import signal
    import socket

    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PROVISIO_SCIM_PORT": str(port), "PROVISIO_SCIM_HOST": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scim_gateway", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the gateway never became ready")
            async with http.get(f"http://127.0.0.1:{port}/scim/v2/Users", headers=bearer(tenant.token)) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
