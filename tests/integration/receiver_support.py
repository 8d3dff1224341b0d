"""Helpers for tests of the example receiving application (examples/receiver): signing
deliveries the way Provisio's dispatcher does, running the app, and reading both
directories (the app's tables, Provisio's App API) into comparable snapshots."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks import Webhook

from examples.receiver.app import Settings, create_app


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def signed(
    event: dict[str, Any], secret: str, *, timestamp: datetime | None = None, msg_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one Standard Webhooks delivery of ``event``."""
    body = json.dumps(event).encode()
    ts = timestamp or datetime.now(UTC)
    msg_id = msg_id or event["id"]
    return body, {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, ts, body.decode()),
    }


@asynccontextmanager
async def receiver_app(
    database_url: str,
    secrets: list[str],
    *,
    api_url: str = "http://127.0.0.1:9",
    api_key: str = "prk_unused",
    tenants: list[str] | None = None,
    port: int | None = None,
) -> AsyncIterator[TestClient]:
    """The example app in process (its own database), on ``port`` if given (a webhook's
    URL names it); ready (``/healthz`` 200) once its backfill is done."""
    settings = Settings(
        api_url=api_url, api_key=api_key, webhook_secrets=secrets, database_url=database_url, tenants=tenants or []
    )
    async with TestClient(TestServer(create_app(settings), host="127.0.0.1", port=port)) as client:
        yield client


async def receiver_snapshot(url: str, tenant: str) -> dict[str, Any]:
    """What the example app holds for ``tenant``: live users, groups, memberships."""
    conn = await asyncpg.connect(url)
    try:
        users = await conn.fetch(
            """SELECT id::text, user_name, external_id, active, display_name, given_name, family_name, email
               FROM users WHERE tenant = $1 AND NOT deleted""",
            tenant,
        )
        groups = await conn.fetch(
            "SELECT id::text, display_name, external_id FROM groups WHERE tenant = $1 AND NOT deleted", tenant
        )
        members = await conn.fetch(
            "SELECT DISTINCT group_id::text, user_id::text FROM memberships WHERE tenant = $1 AND present", tenant
        )
    finally:
        await conn.close()
    return {
        "users": {r["id"]: tuple(r)[1:] for r in users},
        "groups": {r["id"]: tuple(r)[1:] for r in groups},
        "members": {(r["group_id"], r["user_id"]) for r in members},
    }


async def _pages(client: Any, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        r = await client.get(path, params=params, headers=headers)
        assert r.status == 200, await r.text()
        body = await r.json()
        out.extend(body["data"])
        cursor = body["next_cursor"]
        if not cursor:
            return out


async def provisio_snapshot(app_api: Any, key: dict[str, str], tenant: str) -> dict[str, Any]:
    """Provisio's directory of ``tenant`` through the App API, shaped like ``receiver_snapshot``."""
    base = f"/api/v1/tenants/{tenant}"
    users = await _pages(app_api, f"{base}/users", key)
    groups = await _pages(app_api, f"{base}/groups", key)
    members = set()
    for g in groups:
        members |= {(g["id"], m["id"]) for m in await _pages(app_api, f"{base}/groups/{g['id']}/members", key)}

    def email(u: dict[str, Any]) -> str | None:
        emails = u["emails"] or []
        primary = next((e for e in emails if e.get("primary")), emails[0] if emails else None)
        return primary["value"] if primary else None

    return {
        "users": {
            u["id"]: (
                u["user_name"],
                u["external_id"],
                u["active"],
                u["display_name"],
                u["given_name"],
                u["family_name"],
                email(u),
            )
            for u in users
        },
        "groups": {g["id"]: (g["display_name"], g["external_id"]) for g in groups},
        "members": members,
    }
