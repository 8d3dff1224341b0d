"""Refusals the SCIM gateway answers itself are in the audit trail, with the token's
label (issue 13 §5): real gateway, provisioner and auditor, rows read from audit_log."""

from __future__ import annotations

import pytest

from tests.conftest import eventually, make_tenant
from tests.integration.audit_support import running_auditor
from tests.integration.scim_helpers import USER, bearer, scim_client

pytestmark = pytest.mark.integration


async def _rows(pool, tenant_id):
    return await pool.fetch(
        "SELECT operation, source_kind, source_label, result, error_code, error_message, notes, user_name, "
        "resource_id, correlation_id FROM audit_log WHERE tenant_id = $1 AND error_code = 'refused' ORDER BY id",
        tenant_id,
    )


async def test_gateway_refusals_are_audited_with_the_token_label(service_env, pool, provisioner):
    tenant = await make_tenant(pool, immutable_user_name=True)
    async with running_auditor(), scim_client(scim_max_body=2048) as c:
        h = bearer(tenant.token)
        r = await c.post("/scim/v2/Users", headers=h, json={"schemas": [USER], "userName": "ann@example.com"})
        assert r.status == 201
        uid = (await r.json())["id"]
        # 400 on the schema (a type error), naming the user being created
        r = await c.post("/scim/v2/Users", headers=h, json={"userName": "bob@example.com", "active": "maybe"})
        assert r.status == 400
        bad_cid = r.headers["X-Correlation-Id"]
        # 400 on a tenant policy (userName immutable): the provisioner's rule, so its refusal
        r = await c.put(f"/scim/v2/Users/{uid}", headers=h, json={"schemas": [USER], "userName": "ann2@example.com"})
        assert r.status == 400 and (await r.json())["scimType"] == "mutability"
        policy_cid = r.headers["X-Correlation-Id"]
        # 413
        r = await c.post("/scim/v2/Users", headers=h, json={"userName": "big@example.com", "displayName": "x" * 4000})
        assert r.status == 413
        # not recorded: a refused read, and the provisioner's own refusal (it audits it)
        r = await c.get("/scim/v2/Users", headers=h, params={"filter": "userName zz 1"})
        assert r.status == 400
        r = await c.post("/scim/v2/Users", headers=h, json={"schemas": [USER], "userName": "ANN@example.com"})
        assert r.status == 409
        dup_cid = r.headers["X-Correlation-Id"]

        await eventually(lambda: _count(pool, tenant.id, 2), timeout=15)
        rows = await _rows(pool, tenant.id)
        assert len(rows) == 2, rows
        assert all(r["source_kind"] == "scim" and r["source_label"] == "test" and r["result"] == "failed" for r in rows)
        schema, big = rows
        assert schema["operation"] == "user.create" and schema["user_name"] == "bob@example.com"
        assert schema["correlation_id"] == bad_cid
        assert list(schema["notes"]) == ["refused:http_400", "scimType:invalidValue"]
        assert "active must be a boolean" in schema["error_message"]
        policy_sql = "SELECT operation, error_code, error_message, resource_id FROM audit_log WHERE correlation_id = $1"
        await eventually(lambda: _any(pool, policy_sql, policy_cid), timeout=15)
        (policy,) = await pool.fetch(policy_sql, policy_cid)  # once, by the provisioner
        assert policy["operation"] == "user.replace" and str(policy["resource_id"]) == uid
        assert policy["error_code"] == "mutability" and "immutable userName" in policy["error_message"]
        assert big["operation"] == "user.create" and "refused:http_413" in big["notes"]
        dup_sql = "SELECT error_code FROM audit_log WHERE correlation_id = $1"
        await eventually(lambda: _any(pool, dup_sql, dup_cid), timeout=15)
        dup = await pool.fetch(dup_sql, dup_cid)
        assert [d["error_code"] for d in dup] == ["uniqueness"]  # once, by the provisioner


async def _any(pool, sql, *args):
    return bool(await pool.fetch(sql, *args))


async def _count(pool, tenant_id, n):
    return len(await _rows(pool, tenant_id)) >= n


async def test_a_flood_of_refusals_is_sampled(service_env, pool):
    tenant = await make_tenant(pool, rate_limit_per_s=1)
    async with running_auditor(), scim_client() as c:
        h = bearer(tenant.token)
        statuses = []
        for i in range(60):
            r = await c.post("/scim/v2/Users", headers=h, json={"userName": f"u{i}@example.com", "active": "maybe"})
            statuses.append(r.status)
        assert statuses.count(429) >= 50 and set(statuses) <= {400, 429}
        await eventually(lambda: _count(pool, tenant.id, 21), timeout=15)
        rows = await _rows(pool, tenant.id)
        too_many = [r for r in rows if "refused:http_429" in r["notes"]]
        # at most the burst (20) per tenant and status, not one row per refused request
        assert 1 <= len(too_many) <= 20 and len(rows) <= 22
        assert "too many requests" in too_many[0]["error_message"]
