"""Drill 7 (SCIM): hostile input at scale, generated from the gateway's own OpenAPI.

The SCIM gateway and a provisioner run as processes. Schemathesis (its CLI, a process
too) reads ``/openapi.json`` and sends valid and invalid requests to every operation with
tenant A's token: examples, boundary ("coverage") cases and random fuzzing, a bounded
number per operation. What must hold:

- no 5xx (``not_a_server_error``) and the token is really required (``ignored_auth``);
- the gateway process is still running and ready afterwards;
- no cross-tenant access: tenant B's users, groups and memberships are exactly as before,
  and A's token gets 404 on every one of B's resources, by every method.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_tenant

from .support import Clock

pytestmark = [pytest.mark.drills, pytest.mark.integration]

pytest.importorskip("scim_gateway")
pytest.importorskip("schemathesis")

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
MAX_EXAMPLES = 25
MAX_TIME_S = 40
SEED = 7


# - /Bulk and the root /.search: the gateway supports neither, and RFC 7644 §3.12 names
#   501 Not Implemented for "service provider does not support the request operation".
# - /Users/{id} and /Groups/{id} are fuzzed with tenant B's ids under tenant A's token, so
#   every generated GET/PUT/PATCH/DELETE on them is a cross-tenant attempt.
CONFIG = """
[[operations]]
include-path = "/scim/v2/Bulk"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "501"]

[[operations]]
include-path = "/scim/v2/.search"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "501"]

[[operations]]
include-path = "/scim/v2/Users/{{id}}"
parameters = {{ "path.id" = "{b_user}" }}

[[operations]]
include-path = "/scim/v2/Groups/{{id}}"
parameters = {{ "path.id" = "{b_group}" }}
"""


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}


async def snapshot(pool: Any, tenant_id: Any) -> dict[str, Any]:
    async with pool.acquire() as conn:
        users = await conn.fetch("SELECT * FROM users WHERE tenant_id = $1 ORDER BY id", tenant_id)
        groups = await conn.fetch("SELECT * FROM groups WHERE tenant_id = $1 ORDER BY id", tenant_id)
        members = await conn.fetch(
            "SELECT m.* FROM memberships m JOIN groups g ON g.id = m.group_id WHERE g.tenant_id = $1 "
            "ORDER BY m.group_id, m.user_id",
            tenant_id,
        )
    return {
        "users": [dict(r) for r in users],
        "groups": [dict(r) for r in groups],
        "members": [dict(r) for r in members],
    }


async def test_schemathesis_finds_no_5xx_and_no_cross_tenant_access(procs, pool, tmp_path: Path):
    clock = Clock()
    a = await make_tenant(pool, name="fuzz-a")
    b = await make_tenant(pool, name="fuzz-b")
    await procs.provisioner()
    gateway, base = await procs.scim_gateway(scim_outcome_timeout_s=10)

    # Tenant B's data, made through SCIM like any IdP would.
    async with aiohttp.ClientSession(base_url=base, headers=headers(b.token)) as http:
        b_users = []
        for i in range(3):
            async with http.post("/scim/v2/Users", json={"schemas": [USER], "userName": f"b{i}@b.test"}) as resp:
                assert resp.status == 201, await resp.text()
                b_users.append((await resp.json(content_type=None))["id"])
        body = {"schemas": [GROUP], "displayName": "B admins", "members": [{"value": u} for u in b_users]}
        async with http.post("/scim/v2/Groups", json=body) as resp:
            assert resp.status == 201, await resp.text()
            b_group = (await resp.json(content_type=None))["id"]
    before = await snapshot(pool, b.id)
    clock.mark("tenants ready")

    report = tmp_path / "schemathesis.xml"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(b_user=b_users[0], b_group=b_group))
    # One worker: with two, schemathesis's threads hit a CPython 3.11 race in ast.parse
    # ("AST constructor recursion depth mismatch") inside Hypothesis and abort the run.
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: Bearer {a.token}",
        "--checks",
        "not_a_server_error,ignored_auth",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_TIME_S),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), MAX_TIME_S + 60)
    text = out.decode(errors="replace")
    clock.mark("schemathesis done")
    assert gateway.alive()
    # (Found here on 2026-11-26 and fixed in 0bb7a67: startIndex beyond int64 was a 500.)
    assert proc.returncode == 0, f"schemathesis found failures:\n{text[-12000:]}\n{procs.logs()}"
    unhandled = [line for line in gateway.text().splitlines() if "unhandled_error" in line]
    assert not unhandled, f"the gateway logged unhandled errors: {unhandled[:3]}"

    # Cross-tenant: B unchanged, and A's token cannot see or touch any of B's resources.
    assert await snapshot(pool, b.id) == before
    async with aiohttp.ClientSession(base_url=base, headers=headers(a.token)) as http:
        for kind, rid in [("Users", u) for u in b_users] + [("Groups", b_group)]:
            path = f"/scim/v2/{kind}/{rid}"
            probes = [
                ("GET", None),
                (
                    "PUT",
                    {"schemas": [USER], "userName": "stolen@a.test"}
                    if kind == "Users"
                    else {"schemas": [GROUP], "displayName": "stolen"},
                ),
                (
                    "PATCH",
                    {
                        "schemas": [PATCH],
                        "Operations": [
                            {
                                "op": "replace",
                                "path": "active" if kind == "Users" else "displayName",
                                "value": False if kind == "Users" else "x",
                            }
                        ],
                    },
                ),
                ("DELETE", None),
            ]
            for method, body in probes:
                async with http.request(method, path, json=body) as resp:
                    assert resp.status == 404, (method, path, resp.status, await resp.text())
        async with http.get("/scim/v2/Users", params={"filter": 'userName sw "b"'}) as resp:
            listed = await resp.json(content_type=None)
            assert not [r for r in listed["Resources"] if r["userName"].endswith("@b.test")]
        async with http.get("/scim/v2/Groups", params={"filter": 'displayName eq "B admins"'}) as resp:
            assert (await resp.json(content_type=None))["totalResults"] == 0
    assert await snapshot(pool, b.id) == before
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as resp:
        assert resp.status == 200
    summary = [line for line in text.splitlines() if "passed" in line or "Test cases" in line or "API probing" in line]
    print(f"drill 7 (SCIM): {clock}; {' | '.join(s.strip() for s in summary[-4:])}")
