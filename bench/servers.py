"""Reference servers the SCIM benchmark measures beside Provisio, in the same run.

    python bench/servers.py hello    --port 8090   # aiohttp hello world: the load generator's ceiling
    python bench/servers.py baseline --port 8091   # SCIM subset written straight to Postgres

``baseline`` answers the load generator's requests (create, get by ``userName eq``,
PATCH of name parts, group member add) with one SQL statement each, on Provisio's own
schema and tenant/token tables, in one aiohttp process with an asyncpg pool of the same
size as the gateway's. It has no event pipeline, no outcome wait, no audit: the ratio
Provisio / baseline is the cost of the pipeline (and of the gateway's fuller SCIM
handling). It is a yardstick, not a SCIM server: it handles only these shapes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import uuid
from datetime import UTC
from typing import Any

import asyncpg
from aiohttp import web

SCIM = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
_EQ = re.compile(r'^\s*userName\s+eq\s+"((?:[^"\\]|\\.)*)"\s*$', re.I)
POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)
TOKENS: web.AppKey[dict[bytes, uuid.UUID]] = web.AppKey("tokens", dict)


def hello_app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type=SCIM)


def _error(status: int, detail: str) -> web.Response:
    return _json(
        {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": str(status), "detail": detail}, status
    )


def _user(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "id": str(r["id"]),
        "externalId": r["external_id"],
        "userName": r["user_name"],
        "active": r["active"],
        "displayName": r["display_name"],
        "name": {"givenName": r["given_name"], "familyName": r["family_name"]},
        "emails": json.loads(r["emails"]),
        "meta": {
            "resourceType": "User",
            "version": f'W/"{r["version"]}"',
            "created": r["created_at"].astimezone(UTC).isoformat(),
            "lastModified": r["updated_at"].astimezone(UTC).isoformat(),
        },
    }


_COLS = (
    "id, external_id, user_name, active, display_name, given_name, family_name, emails, version, created_at, updated_at"
)


async def _tenant(request: web.Request) -> uuid.UUID | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    digest = hashlib.sha256(token.strip().encode()).digest()
    cache = request.app[TOKENS]
    if digest not in cache:
        tid = await request.app[POOL].fetchval(
            "SELECT tenant_id FROM scim_tokens WHERE token_hash = $1 AND revoked_at IS NULL", digest
        )
        if tid is None:
            return None
        cache[digest] = tid
    return cache[digest]


async def create_user(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    if tenant is None:
        return _error(401, "bad token")
    try:
        body = await request.json()
        user_name = body["userName"]
    except (ValueError, KeyError, TypeError):
        return _error(400, "invalid body")
    name = body.get("name") or {}
    emails = body.get("emails") or []
    email = next((e.get("value") for e in emails if e.get("primary")), None)
    try:
        row = await request.app[POOL].fetchrow(
            f"""INSERT INTO users (id, tenant_id, user_name, external_id, active, display_name, given_name,
                   family_name, email, emails) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_COLS}""",
            uuid.uuid4(),
            tenant,
            user_name,
            body.get("externalId"),
            bool(body.get("active", True)),
            body.get("displayName"),
            name.get("givenName"),
            name.get("familyName"),
            email,
            json.dumps(emails),
        )
    except asyncpg.UniqueViolationError:
        return _error(409, "userName taken")
    resp = _json(_user(row), 201)
    resp.headers["Location"] = f"{request.url.origin()}/scim/v2/Users/{row['id']}"
    return resp


async def list_users(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    if tenant is None:
        return _error(401, "bad token")
    m = _EQ.match(request.query.get("filter", ""))
    if not m:
        return _error(400, "baseline handles only userName eq")
    rows = await request.app[POOL].fetch(
        f"SELECT {_COLS} FROM users WHERE tenant_id = $1 AND lower(user_name) = lower($2)", tenant, m.group(1)
    )
    return _json(
        {
            "schemas": [LIST],
            "totalResults": len(rows),
            "startIndex": 1,
            "itemsPerPage": len(rows),
            "Resources": [_user(r) for r in rows],
        }
    )


async def patch_user(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    if tenant is None:
        return _error(401, "bad token")
    try:
        uid = uuid.UUID(request.match_info["id"])
        ops = (await request.json())["Operations"]
    except (ValueError, KeyError, TypeError):
        return _error(400, "invalid body")
    given = family = None
    for op in ops:
        if str(op.get("op", "")).lower() != "replace":
            return _error(400, "baseline handles only replace")
        if op.get("path") == "name.givenName":
            given = op.get("value")
        elif op.get("path") == "name.familyName":
            family = op.get("value")
    row = await request.app[POOL].fetchrow(
        f"""UPDATE users SET given_name = coalesce($3, given_name), family_name = coalesce($4, family_name),
               version = version + 1, updated_at = now() WHERE tenant_id = $1 AND id = $2 RETURNING {_COLS}""",
        tenant,
        uid,
        given,
        family,
    )
    if row is None:
        return _error(404, "no such user")
    return _json(_user(row))


async def patch_group(request: web.Request) -> web.Response:
    tenant = await _tenant(request)
    if tenant is None:
        return _error(401, "bad token")
    try:
        gid = uuid.UUID(request.match_info["id"])
        ops = (await request.json())["Operations"]
        members = [
            uuid.UUID(m["value"])
            for op in ops
            if str(op.get("op")).lower() == "add" and op.get("path") == "members"
            for m in op["value"]
        ]
    except (ValueError, KeyError, TypeError):
        return _error(400, "invalid body")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await conn.executemany(
            """INSERT INTO memberships (tenant_id, group_id, user_id, source) VALUES ($1, $2, $3, 'scim')
               ON CONFLICT DO NOTHING""",
            [(tenant, gid, m) for m in members],
        )
        await conn.execute("UPDATE groups SET version = version + 1, updated_at = now() WHERE id = $1", gid)
    return web.Response(status=204)


def baseline_app(dsn: str, pool_max: int) -> web.Application:
    app = web.Application()

    async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[POOL] = await asyncpg.create_pool(dsn, min_size=2, max_size=pool_max)
        app[TOKENS] = {}
        yield
        await app[POOL].close()

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/scim/v2/Users", create_user)
    app.router.add_get("/scim/v2/Users", list_users)
    app.router.add_patch("/scim/v2/Users/{id}", patch_user)
    app.router.add_patch("/scim/v2/Groups/{id}", patch_group)
    app.router.add_get("/hello", lambda _: web.Response(text="hello"))  # type: ignore[arg-type,return-value]
    return app


# The event feed's yardsticks (bench_events.py): the same page shape as
# GET /api/v1/events, without the App API's work.
_FEED_SQL = """SELECT e.id, e.xid::text AS xid, json_build_object(
       'id', e.event_id, 'type', e.type, 'tenant', t.name, 'tenant_id', e.tenant_id,
       'sequence', lpad(to_hex(e.xid::text::bigint), 16, '0') || lpad(to_hex(e.id), 16, '0'),
       'occurred_at', e.occurred_at, 'source', e.source, 'correlation_id', e.correlation_id,
       'resource_type', e.resource_type, 'resource_id', e.resource_id, 'data', e.data)::text AS doc
FROM events e LEFT JOIN tenants t ON t.id = e.tenant_id
WHERE e.tenant_id = (SELECT id FROM tenants WHERE name = $1)
  AND (e.xid, e.id) > ($2::text::xid8, $3::bigint)
  AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY e.xid, e.id LIMIT $4"""


def feed_sql_app(dsn: str) -> web.Application:
    """``feed-sql``: the feed's query with each event rendered to JSON text by Postgres
    and the page assembled by concatenation (no decode and re-encode in Python)."""
    app = web.Application()

    async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[POOL] = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        yield
        await app[POOL].close()

    async def events(request: web.Request) -> web.Response:
        q = request.query
        after = q.get("after", "")
        xid, rid = (int(after[:16], 16), int(after[16:], 16)) if after else (0, 0)
        rows = await request.app[POOL].fetch(_FEED_SQL, q["tenant"], str(xid), rid, int(q.get("limit", "100")))
        nxt = f"{int(rows[-1]['xid']):016x}{rows[-1]['id']:016x}" if rows else after
        body = '{"data": [' + ", ".join(r["doc"] for r in rows) + '], "next_cursor": "' + nxt + '"}'
        return web.Response(body=body.encode(), content_type="application/json")

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/api/v1/events", events)
    return app


def feed_static_app(page_file: str, pages: int) -> web.Application:
    """``feed-static``: one real page of events (``page_file``, its ``data`` array) served
    ``pages`` times, then an empty page: aiohttp, the transfer and the reader's parsing
    alone — the ceiling of any App API on this machine."""
    with open(page_file, "rb") as f:
        data = json.dumps(json.load(f)["data"]).encode()

    async def events(request: web.Request) -> web.Response:
        after = int(request.query.get("after") or 0)
        chunk = data if after < pages else b"[]"
        nxt = str(after + 1 if after < pages else after).encode()
        return web.Response(
            body=b'{"data": ' + chunk + b', "next_cursor": "' + nxt + b'"}', content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/api/v1/events", events)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["hello", "baseline", "feed-sql", "feed-static"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pool-max", type=int, default=10)
    ap.add_argument("--page", help="feed-static: a JSON page of GET /api/v1/events")
    ap.add_argument("--pages", type=int, default=200, help="feed-static: pages before the empty one")
    args = ap.parse_args()
    if args.kind == "hello":
        app = hello_app()
    elif args.kind == "baseline":
        app = baseline_app(os.environ["PROVISIO_DATABASE_URL"], args.pool_max)
    elif args.kind == "feed-sql":
        app = feed_sql_app(os.environ["PROVISIO_DATABASE_URL"])
    else:
        app = feed_static_app(args.page, args.pages)
    if args.kind.startswith("feed"):
        # The App API runs on uvloop (provisio_lib.process); so do its yardsticks.
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
