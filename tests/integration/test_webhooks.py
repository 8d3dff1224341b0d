"""Webhooks end to end: the dispatcher (in process) delivering to real HTTP receivers on
loopback, SCIM writes through the gateway and the provisioner, the `provisio webhook`
CLI as a subprocess, mail through aiosmtpd and the auditor."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from provisio_lib import events_feed, webhook_store
from tests.conftest import eventually
from tests.integration.scim_helpers import USER, bearer, patch_body, scim_client

from .webhook_support import receiver, running_dispatcher

pytestmark = pytest.mark.integration


async def add(pool, tenant_id, url, name=None, types=None) -> tuple[str, str]:
    name = name or f"ep-{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as conn:
        secret = await webhook_store.add_endpoint(conn, name, tenant_id, url, types)
    return name, secret


async def create_user(s, tenant, user_name: str) -> str:
    r = await s.post("/scim/v2/Users", json={"schemas": [USER], "userName": user_name}, headers=bearer(tenant.token))
    assert r.status == 201, await r.text()
    return (await r.json())["id"]


async def rename(s, tenant, uid: str, given: str) -> None:
    r = await s.patch(
        f"/scim/v2/Users/{uid}",
        json=patch_body({"op": "replace", "path": "name.givenName", "value": given}),
        headers=bearer(tenant.token),
    )
    assert r.status == 200, await r.text()


async def delivery_rows(pool, name: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT d.* FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id
           WHERE w.name = $1 ORDER BY d.id""",
        name,
    )
    return [dict(r) for r in rows]


# --------------------------------------------------------------------------- delivery


async def test_a_scim_write_reaches_the_receiver_signed_as_the_events_api_has_it(
    service_env, pool, tenant, provisioner
):
    async with receiver() as rx, running_dispatcher():
        name, secret = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            uid = await create_user(s, tenant, "ann@x.test")
        await eventually(lambda: _n(rx, 1), timeout=10)
        got = rx.delivered[0]
        # Standard Webhooks' own verifier accepts it; a wrong secret does not.
        event = Webhook(secret).verify(got.body, got.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["webhook-id"] == event["id"]
        assert event["type"] == "user.created" and event["resource_id"] == uid
        # The body is the event exactly as GET /api/v1/events returns it.
        feed = await events_feed.read_events(pool, [tenant.id], None, 10)
        assert [event] == [e for e in feed if e["id"] == event["id"]]
        assert event["tenant"] == tenant.name and event["data"]["user_name"] == "ann@x.test"
        rows = await eventually(lambda: _delivered(pool, name, 1))
        assert rows[0]["attempts"] == 1 and rows[0]["last_status"] == 200


async def _n(rx, n: int) -> bool:
    return len(rx.delivered) >= n


async def _delivered(pool, name, n):
    rows = [r for r in await delivery_rows(pool, name) if r["status"] == "delivered"]
    return rows if len(rows) >= n else None


async def test_order_per_resource_holds_under_retries_and_other_resources_proceed(
    service_env, pool, tenant, provisioner
):
    failed_once: set[str] = set()
    ann_id: dict[str, str] = {}

    def behaviour(rx, got):
        ev = got.event
        if ev["type"] == "user.created" and ev["data"]["user_name"] == "ann@x.test" and ev["id"] not in failed_once:
            failed_once.add(ev["id"])
            return web.Response(status=503, text="busy, try later")
        return web.Response(text="ok")

    async with receiver(behaviour) as rx, running_dispatcher(webhook_backoff_base_s=1.5, webhook_backoff_max_s=2):
        name, _ = await add(pool, tenant.id, rx.url)
        async with scim_client() as s:
            ann_id["id"] = await create_user(s, tenant, "ann@x.test")
            bob = await create_user(s, tenant, "bob@x.test")
            await rename(s, tenant, ann_id["id"], "Anna")
            await rename(s, tenant, bob, "Bobby")
        await eventually(lambda: _n(rx, 4), timeout=15)
    ann = ann_id["id"]
    seen = [(r.event["resource_id"], r.event["type"]) for r in rx.requests]
    ok = [(r.event["resource_id"], r.event["type"]) for r in rx.delivered]
    # Ann's creation failed once and went again; her update never went before it.
    assert seen.count((ann, "user.created")) == 2
    assert ok.index((ann, "user.created")) < ok.index((ann, "user.updated"))
    first_ann_update = seen.index((ann, "user.updated"))
    assert first_ann_update > max(i for i, x in enumerate(seen) if x == (ann, "user.created"))
    # Bob did not wait for Ann's retry.
    assert ok.index((bob, "user.updated")) < ok.index((ann, "user.created"))
    rows = await delivery_rows(pool, name)
    assert {r["status"] for r in rows} == {"delivered"}
    assert sorted(r["attempts"] for r in rows) == [1, 1, 1, 2]
