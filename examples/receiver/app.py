"""A receiving application for Provisio: documentation that runs (README.md beside it).

It keeps its own copy of its customers' directories — ``users``, ``groups`` and
``memberships`` tables in its own Postgres database — in step with Provisio:

1. On first start, for each tenant it serves: note the feed's newest cursor, copy the
   directory (``GET /api/v1/tenants/{t}/users``, ``…/groups``, ``…/groups/{id}/members``),
   then apply the feed from the noted cursor. Noting it *before* the copy is what
   makes nothing that changed during the copy get lost.
2. From then on Provisio pushes every event to ``POST /webhooks/provisio``, signed in the
   Standard Webhooks format, which the ``standardwebhooks`` package verifies.

Every event is applied idempotently and never lets older state overwrite newer:

- by event ``id`` (Provisio delivers at least once: a retried delivery is a no-op), and
- per resource, by ``sequence``: every row keeps the sequence of the last change applied
  to it, and a change older than that is skipped. Deletions and removed memberships stay
  as tombstones so that a late copy from the backfill cannot bring them back.

Only aiohttp, asyncpg and standardwebhooks: copy this file into your application.

    python examples/receiver/app.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

log = logging.getLogger("receiver")

PAGE_SIZE = 1000  # the directory API's largest page

SCHEMA = """
-- Sequences are compared as strings (32 hex digits: string order is feed order), so
-- byte order ("C"), whatever the database's locale.
CREATE TABLE IF NOT EXISTS users (
    id           uuid PRIMARY KEY,
    tenant       text NOT NULL,
    user_name    text NOT NULL,
    external_id  text,
    active       boolean NOT NULL,
    display_name text,
    given_name   text,
    family_name  text,
    email        text,
    data         jsonb NOT NULL,                   -- Provisio's whole user, for everything else
    deleted      boolean NOT NULL DEFAULT false,   -- a tombstone: see apply_event
    sequence     text COLLATE "C" NOT NULL         -- the last change applied to this row
);
CREATE TABLE IF NOT EXISTS groups (
    id           uuid PRIMARY KEY,
    tenant       text NOT NULL,
    display_name text,
    external_id  text,
    data         jsonb NOT NULL,
    deleted      boolean NOT NULL DEFAULT false,
    sequence     text COLLATE "C" NOT NULL
);
-- Provisio keeps a user's SCIM and JIT memberships of a group apart (a member_removed
-- event removes one source's); the user is a member while either is present.
CREATE TABLE IF NOT EXISTS memberships (
    group_id uuid NOT NULL,
    user_id  uuid NOT NULL,
    source   text NOT NULL,                        -- scim | jit
    tenant   text NOT NULL,
    present  boolean NOT NULL,                     -- false: a removal's tombstone
    sequence text COLLATE "C" NOT NULL,
    PRIMARY KEY (group_id, user_id, source)
);
CREATE INDEX IF NOT EXISTS memberships_user_idx ON memberships (user_id);
-- Every event id seen, in the order first applied: the idempotency key.
CREATE TABLE IF NOT EXISTS applied_events (
    n           bigserial,
    id          uuid PRIMARY KEY,
    tenant      text NOT NULL,
    type        text NOT NULL,
    resource_id uuid,
    sequence    text COLLATE "C" NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
-- A tenant is here once its backfill finished (the first start's work is done).
CREATE TABLE IF NOT EXISTS backfills (
    tenant      text PRIMARY KEY,
    cursor      text NOT NULL,                     -- the feed cursor noted before the copy
    finished_at timestamptz NOT NULL DEFAULT now()
);
"""

# The errors of a database that is down, restarting or unreachable (not of a bad query).
DATABASE_AWAY = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)
USER_EVENTS = {"user.created", "user.updated", "user.deactivated", "user.reactivated"}
MEMBER_EVENTS = {"group.member_added", "group.member_removed"}


# --------------------------------------------------------------------------- applying


async def put_user(conn: Any, tenant: str, user: dict[str, Any], sequence: str) -> None:
    """Upsert a user's state, unless this row already holds a later change (or a deletion)."""
    emails = user.get("emails") or []
    primary = next((e for e in emails if e.get("primary")), emails[0] if emails else None)
    await conn.execute(
        """INSERT INTO users (id, tenant, user_name, external_id, active, display_name, given_name,
                              family_name, email, data, sequence)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (id) DO UPDATE SET
               user_name = EXCLUDED.user_name, external_id = EXCLUDED.external_id,
               active = EXCLUDED.active, display_name = EXCLUDED.display_name,
               given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name,
               email = EXCLUDED.email, data = EXCLUDED.data, sequence = EXCLUDED.sequence
           WHERE users.sequence <= EXCLUDED.sequence AND NOT users.deleted""",
        user["id"],
        tenant,
        user["user_name"],
        user.get("external_id"),
        user.get("active", True),
        user.get("display_name"),
        user.get("given_name"),
        user.get("family_name"),
        primary["value"] if primary else None,
        json.dumps(user),
        sequence,
    )


async def put_group(conn: Any, tenant: str, group: dict[str, Any], sequence: str) -> None:
    await conn.execute(
        """INSERT INTO groups (id, tenant, display_name, external_id, data, sequence)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (id) DO UPDATE SET
               display_name = EXCLUDED.display_name, external_id = EXCLUDED.external_id,
               data = EXCLUDED.data, sequence = EXCLUDED.sequence
           WHERE groups.sequence <= EXCLUDED.sequence AND NOT groups.deleted""",
        group["id"],
        tenant,
        group.get("display_name"),
        group.get("external_id"),
        json.dumps(group),
        sequence,
    )


async def put_membership(
    conn: Any, tenant: str, group_id: str, user_id: str, source: str, present: bool, sequence: str
) -> None:
    """Add or remove one source's membership. A removal leaves a tombstone (present =
    false) so that a backfill copy taken before it cannot add it back."""
    await conn.execute(
        """INSERT INTO memberships (group_id, user_id, source, tenant, present, sequence)
           SELECT $1, $2, $3, $4, $5, $6
           -- A deleted user or group has no memberships (Provisio sends no member_removed
           -- for them); the user's deletion may be applied before this older event.
           WHERE NOT EXISTS (SELECT 1 FROM users WHERE id = $2 AND deleted)
             AND NOT EXISTS (SELECT 1 FROM groups WHERE id = $1 AND deleted)
           ON CONFLICT (group_id, user_id, source) DO UPDATE SET
               present = EXCLUDED.present, sequence = EXCLUDED.sequence
           WHERE memberships.sequence <= EXCLUDED.sequence""",
        group_id,
        user_id,
        source,
        tenant,
        present,
        sequence,
    )


# A deletion leaves a tombstone: an older event or backfill copy arriving later must not
# bring the user or group back.
TOMBSTONES = {
    "users": """INSERT INTO users (id, tenant, user_name, active, data, deleted, sequence)
                VALUES ($1, $2, coalesce($3::jsonb->>'user_name', ''), false, $3, true, $4)
                ON CONFLICT (id) DO UPDATE SET deleted = true, active = false, sequence = EXCLUDED.sequence
                WHERE users.sequence <= EXCLUDED.sequence""",
    "groups": """INSERT INTO groups (id, tenant, display_name, data, deleted, sequence)
                 VALUES ($1, $2, $3::jsonb->>'display_name', $3, true, $4)
                 ON CONFLICT (id) DO UPDATE SET deleted = true, sequence = EXCLUDED.sequence
                 WHERE groups.sequence <= EXCLUDED.sequence""",
}


async def delete_resource(conn: Any, table: str, tenant: str, data: dict[str, Any], sequence: str) -> None:
    """Mark a user or group deleted and drop its memberships (Provisio sends no
    member_removed events for them)."""
    await conn.execute(TOMBSTONES[table], data["id"], tenant, json.dumps(data), sequence)
    column = "user_id" if table == "users" else "group_id"
    await conn.execute(f"DELETE FROM memberships WHERE {column} = $1", data["id"])


async def apply_event(conn: Any, event: dict[str, Any]) -> bool:
    """Apply one event in one transaction. False: this event id was applied before."""
    kind, tenant, seq, data = event["type"], event["tenant"], event["sequence"], event["data"]
    async with conn.transaction():
        # Recorded in the same transaction as its effect: after a crash, either both
        # happened or neither did, and the redelivery is applied (or skipped) accordingly.
        first = await conn.fetchval(
            """INSERT INTO applied_events (id, tenant, type, resource_id, sequence) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (id) DO NOTHING RETURNING true""",
            event["id"],
            tenant,
            kind,
            event.get("resource_id"),
            seq,
        )
        if not first:
            return False
        if kind in USER_EVENTS:
            await put_user(conn, tenant, data, seq)
        elif kind == "sso.login" and data.get("user"):  # a JIT login: the user after it
            await put_user(conn, tenant, data["user"], seq)
        elif kind == "user.deleted":
            await delete_resource(conn, "users", tenant, data, seq)
        elif kind in ("group.created", "group.updated"):
            await put_group(conn, tenant, data, seq)
        elif kind == "group.deleted":
            await delete_resource(conn, "groups", tenant, data, seq)
        elif kind in MEMBER_EVENTS:
            group = data["group"]
            if "display_name" in group:  # an older Provisio sent only the id for a JIT membership
                await put_group(conn, tenant, group, seq)
            present = kind == "group.member_added"
            await put_membership(conn, tenant, group["id"], data["user"]["id"], data["source"], present, seq)
        # Any other type (a newer Provisio's) is recorded and otherwise ignored.
    return True


# --------------------------------------------------------------------------- Provisio's App API


@dataclass
class Settings:
    api_url: str  # Provisio's App API, e.g. http://127.0.0.1:8083
    api_key: str
    webhook_secrets: list[str]  # whsec_…; two during a secret rotation
    database_url: str
    tenants: list[str] = field(default_factory=list)  # backfilled on first start
    host: str = "127.0.0.1"
    port: int = 8090
    backfill: bool = False  # backfill again even if done before


class AppApi:
    """The few App API calls a receiver makes (docs/app-integration.md)."""

    def __init__(self, http: aiohttp.ClientSession, settings: Settings) -> None:
        self.http = http
        self.base = settings.api_url.rstrip("/") + "/api/v1"
        self.headers = {"Authorization": f"Bearer {settings.api_key}"}

    async def get(self, path: str, **params: str) -> dict[str, Any]:
        for attempt in range(10):
            async with self.http.get(self.base + path, params=params, headers=self.headers) as r:
                if r.status in (429, 503):  # rate-limited or briefly unavailable: as told
                    await asyncio.sleep(min(float(r.headers.get("Retry-After", "1")), 10) * (attempt + 1) / 2)
                    continue
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise RuntimeError(f"GET {path}: {r.status} {body}")
                return body
        raise RuntimeError(f"GET {path}: still unavailable")

    async def pages(self, path: str) -> AsyncIterator[list[dict[str, Any]]]:
        """Every page of a list endpoint, following next_cursor."""
        cursor = ""
        while True:
            page = await self.get(path, limit=str(PAGE_SIZE), **({"cursor": cursor} if cursor else {}))
            yield page["data"]
            if not page["next_cursor"]:
                return
            cursor = page["next_cursor"]


async def backfill(pool: Any, api: AppApi, tenant: str) -> int:
    """First start for a tenant: copy its directory, then catch up with the feed.
    Returns the number of events applied while catching up."""
    # 1. The feed's newest cursor, BEFORE the copy: any change made while we copy has a
    #    later sequence, so step 3 (or a webhook) brings it.
    cursor = (await api.get("/events", tenant=tenant, after="latest"))["next_cursor"]
    # 2. The copy. Each row gets the noted cursor as its sequence: any event after it
    #    may overwrite it, and nothing before it will.
    #    One transaction per page: one commit (one disk flush) per page, not per row.
    t = f"/tenants/{tenant}"
    async with pool.acquire() as conn:
        async for users in api.pages(f"{t}/users"):
            async with conn.transaction():
                for user in users:
                    await put_user(conn, tenant, user, cursor)
        async for groups in api.pages(f"{t}/groups"):
            for group in groups:
                await put_group(conn, tenant, group, cursor)
                async for members in api.pages(f"{t}/groups/{group['id']}/members"):
                    async with conn.transaction():
                        for member in members:
                            for source in member["membership_sources"]:
                                await put_membership(conn, tenant, group["id"], member["id"], source, True, cursor)
    # 3. What changed during the copy, from the feed (webhooks may bring the same events
    #    too: applying is idempotent).
    applied, after = 0, cursor
    while True:
        page = await api.get("/events", tenant=tenant, after=after, limit="1000")
        async with pool.acquire() as conn:
            for event in page["data"]:
                applied += await apply_event(conn, event)
        if not page["data"]:
            break
        after = page["next_cursor"]
    async with pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO backfills (tenant, cursor) VALUES ($1, $2)
               ON CONFLICT (tenant) DO UPDATE SET cursor = EXCLUDED.cursor, finished_at = now()""",
            tenant,
            cursor,
        )
    return applied


async def backfill_all(app: web.Application) -> None:
    """Backfill each configured tenant not yet backfilled, retrying until it works."""
    settings, pool = app[SETTINGS], app[POOL]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        api = AppApi(http, settings)
        for tenant in settings.tenants:
            done = await pool.fetchval("SELECT true FROM backfills WHERE tenant = $1", tenant)
            delay = 1.0
            while settings.backfill or not done:
                try:
                    caught_up = await backfill(pool, api, tenant)
                    log.info("backfilled tenant %s (%d events caught up)", tenant, caught_up)
                    break
                except Exception as err:  # Provisio or our database away: try again later
                    log.warning("backfill of %s failed (%r); retrying in %.0f s", tenant, err, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30)
    app[READY].set()


# --------------------------------------------------------------------------- HTTP

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
VERIFIERS = web.AppKey("verifiers", list)
READY = web.AppKey("ready", asyncio.Event)


def verify(verifiers: list[Webhook], body: bytes, headers: Any) -> dict[str, Any]:
    """The event, if any of our secrets signed it (during a rotation Provisio signs with
    both). Raises WebhookVerificationError: unsigned, forged, or older than 5 minutes."""
    for verifier in verifiers:
        try:
            return verifier.verify(body, dict(headers))
        except (WebhookVerificationError, ValueError):  # ValueError: a malformed header
            continue
    raise WebhookVerificationError("no valid signature")


async def receive_webhook(request: web.Request) -> web.Response:
    """``POST /webhooks/provisio``: any 2xx tells Provisio it is delivered; anything else
    (or no answer) makes it retry later, and hold this resource's later events meanwhile."""
    body = await request.read()
    try:
        event = verify(request.app[VERIFIERS], body, request.headers)
    except WebhookVerificationError:
        return web.json_response({"error": "invalid signature"}, status=401)
    if event.get("type") == "webhook.test":  # `provisio webhook test`
        return web.json_response({"ok": True, "pong": event.get("id")})
    if not all(k in event for k in ("id", "type", "tenant", "sequence", "data")):
        return web.json_response({"error": "not an event"}, status=400)
    try:
        async with request.app[POOL].acquire() as conn:
            applied = await apply_event(conn, event)
    except DATABASE_AWAY:
        # Our database is away: not applied, so not 2xx; Provisio sends it again later.
        log.warning("database unavailable; event %s not applied yet", event["id"])
        return web.json_response({"error": "unavailable"}, status=503)
    return web.json_response({"applied": applied})


async def healthz(request: web.Request) -> web.Response:
    """200 once the first start's backfills are done (tests and scripts wait for it)."""
    ready = request.app[READY].is_set()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def tenant_users(request: web.Request) -> web.Response:
    """``GET /tenants/{tenant}/users``: what this app holds (a demo page; no auth, so it
    listens on 127.0.0.1 by default)."""
    rows = await request.app[POOL].fetch(
        """SELECT u.id::text, u.user_name, u.active, u.display_name, u.email,
                  coalesce(array_agg(DISTINCT g.display_name) FILTER (WHERE g.id IS NOT NULL), '{}') AS groups
           FROM users u
           LEFT JOIN memberships m ON m.user_id = u.id AND m.present
           LEFT JOIN groups g ON g.id = m.group_id AND NOT g.deleted
           WHERE u.tenant = $1 AND NOT u.deleted
           GROUP BY u.id ORDER BY u.user_name""",
        request.match_info["tenant"],
    )
    return web.json_response([{**dict(r), "groups": sorted(r["groups"])} for r in rows])


async def ensure_database(url: str) -> None:
    """Create the app's database if it does not exist yet — a convenience for trying the
    app on `provisio dev`'s Postgres (no psql needed); your application has migrations."""
    try:
        await (await asyncpg.connect(url)).close()
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(url)
        name = parts.path.lstrip("/")
        if not name.replace("_", "").isalnum():
            raise
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()


async def stats(request: web.Request) -> web.Response:
    """``GET /stats[?tenant=T]``: how much the app holds (scripts and benchmarks poll it)."""
    tenant = request.query.get("tenant")
    row = await request.app[POOL].fetchrow(
        """SELECT (SELECT count(*) FROM users WHERE NOT deleted AND ($1::text IS NULL OR tenant = $1)) AS users,
                  (SELECT count(*) FROM groups WHERE NOT deleted AND ($1::text IS NULL OR tenant = $1)) AS groups,
                  (SELECT count(*) FROM memberships WHERE present AND ($1::text IS NULL OR tenant = $1)) AS memberships,
                  (SELECT count(*) FROM applied_events WHERE $1::text IS NULL OR tenant = $1) AS applied_events""",
        tenant,
    )
    return web.json_response(dict(row))


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[VERIFIERS] = [Webhook(s) for s in settings.webhook_secrets]
    app[READY] = asyncio.Event()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await ensure_database(settings.database_url)
        # As many connections as Provisio sends requests at once (PROVISIO_WEBHOOK_MAX_IN_FLIGHT,
        # 32): each request holds one until its commit is on disk.
        async with asyncpg.create_pool(settings.database_url, min_size=1, max_size=32) as pool:
            async with pool.acquire() as conn:
                await conn.execute(SCHEMA)
            app[POOL] = pool
            # Webhooks are accepted during the backfill: the sequence checks keep the
            # newer of the two, whichever is applied first.
            task = asyncio.create_task(backfill_all(app))
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(resources)
    app.router.add_post("/webhooks/provisio", receive_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/tenants/{tenant}/users", tenant_users)
    app.router.add_get("/stats", stats)
    return app


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Settings from the command line, else RECEIVER_* environment variables."""
    env = os.environ.get
    p = argparse.ArgumentParser(description="A Provisio receiving application (examples/receiver/README.md)")
    p.add_argument("--api-url", default=env("RECEIVER_API_URL", "http://127.0.0.1:8083"), help="Provisio's App API")
    p.add_argument("--api-key", default=env("RECEIVER_API_KEY"), help="prk_… (provisio api-key create)")
    p.add_argument(
        "--webhook-secret",
        default=env("RECEIVER_WEBHOOK_SECRET"),
        help="whsec_… (provisio webhook add); several comma-separated during a rotation",
    )
    p.add_argument("--database-url", default=env("RECEIVER_DATABASE_URL"), help="this app's own Postgres database")
    p.add_argument("--tenants", default=env("RECEIVER_TENANTS", ""), help="comma-separated tenants to backfill")
    p.add_argument("--host", default=env("RECEIVER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("RECEIVER_PORT", "8090")))
    p.add_argument("--backfill", action="store_true", help="backfill again even if done before")
    a = p.parse_args(argv)
    missing = [n for n in ("api_key", "webhook_secret", "database_url") if not getattr(a, n)]
    if missing:
        p.error("missing: " + ", ".join("--" + n.replace("_", "-") for n in missing))
    return Settings(
        api_url=a.api_url,
        api_key=a.api_key,
        webhook_secrets=[s.strip() for s in a.webhook_secret.split(",") if s.strip()],
        database_url=a.database_url,
        tenants=[t.strip() for t in a.tenants.split(",") if t.strip()],
        host=a.host,
        port=a.port,
        backfill=a.backfill,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_settings(argv)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)


if __name__ == "__main__":
    main()
