"""The directory read model: a tenant's users and groups as the App API serves them.

One place for the SQL and for the row → JSON mapping, so every reader (the App API
today; the SCIM gateway's reads and the CLI later) shows the same resource. A user or
group here has the shape of ``UserState`` / ``GroupState`` (the events' ``data``), so an
application can apply an event and a directory page with the same code.

Pagination is keyset on (created_at, id) over the existing ``users_created_idx`` /
``groups_created_idx``: neither changes after insert, so a page boundary never moves
under concurrent writes (no row seen twice, none skipped; rows created after the
listing began may or may not appear). ``updated_after`` filters on top of it.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .contract import GroupState, UserState

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class CursorError(ValueError):
    """A cursor this module did not make (or a malformed one)."""


def encode_cursor(created_at: datetime, id_: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{id_}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, ident = raw.partition("|")
        return datetime.fromisoformat(ts), uuid.UUID(ident)
    except (binascii.Error, UnicodeDecodeError, ValueError) as err:
        raise CursorError("the cursor is not one this API returned") from err


_USER_COLUMNS = """u.id, u.user_name, u.external_id, u.active, u.display_name, u.given_name, u.family_name,
    u.emails, u.sso_name, u.attributes, u.version, u.created_at, u.updated_at, u.created_by,
    (SELECT coalesce(jsonb_agg(jsonb_build_object('id', x.id, 'display_name', x.display_name)
                               ORDER BY x.display_name, x.id), '[]')
     FROM (SELECT DISTINCT g.id, g.display_name FROM memberships m JOIN groups g ON g.id = m.group_id
           WHERE m.user_id = u.id) AS x) AS groups"""
_GROUP_COLUMNS = """g.id, g.display_name, g.external_id, g.attributes, g.version, g.created_at, g.updated_at,
    g.created_by, (SELECT count(DISTINCT m.user_id) FROM memberships m WHERE m.group_id = g.id) AS member_count"""


def user_state(row: Any, groups: Sequence[Any] = ()) -> UserState:
    """A users row as ``UserState``: the one row→resource mapping of users (the
    provisioner's outcomes and the App API both use it)."""
    return UserState(
        id=row["id"],
        user_name=row["user_name"],
        external_id=row["external_id"],
        active=row["active"],
        display_name=row["display_name"],
        given_name=row["given_name"],
        family_name=row["family_name"],
        emails=tuple(row["emails"] or ()),
        sso_name=row["sso_name"],
        attributes=row["attributes"] or {},
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        created_by=row["created_by"],
        groups=tuple(groups),
    )


def group_state(row: Any) -> GroupState:
    """A groups row as ``GroupState`` (the one mapping of groups)."""
    return GroupState(
        id=row["id"],
        display_name=row["display_name"],
        external_id=row["external_id"],
        attributes=row["attributes"] or {},
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        created_by=row["created_by"],
    )


def user_json(row: Any) -> dict[str, Any]:
    """A users row (with its groups) as the API's user: ``UserState`` as JSON."""
    return user_state(row, row["groups"] or ()).model_dump(mode="json")


def group_json(row: Any) -> dict[str, Any]:
    """A groups row as the API's group: ``GroupState`` as JSON plus ``member_count``."""
    return {**group_state(row).model_dump(mode="json"), "member_count": row["member_count"]}


def _page(rows: list[Any], limit: int, to_json: Any) -> tuple[list[dict[str, Any]], str | None]:
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return [to_json(r) for r in rows], nxt


async def _keyset_page(
    conn: Any,
    table: str,
    alias: str,
    columns: str,
    to_json: Any,
    tenant_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    updated_after: datetime | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a tenant's ``users`` (alias u) or ``groups`` (g), oldest first, keyed
    on (created_at, id): stable under concurrent inserts, and on existing indexes."""
    after = decode_cursor(cursor) if cursor else None
    rows = await conn.fetch(
        f"""SELECT {columns} FROM {table} {alias}
            WHERE {alias}.tenant_id = $1 AND ($2::timestamptz IS NULL OR ({alias}.created_at, {alias}.id) > ($2, $3::uuid))
              AND ($4::timestamptz IS NULL OR {alias}.updated_at > $4)
            ORDER BY {alias}.created_at, {alias}.id LIMIT $5""",
        tenant_id,
        after[0] if after else None,
        after[1] if after else None,
        updated_after,
        limit + 1,
    )
    return _page(rows, limit, to_json)


async def list_users(
    conn: Any,
    tenant_id: uuid.UUID,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    updated_after: datetime | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the tenant's users, oldest first, and the cursor of the next (None at the end)."""
    return await _keyset_page(conn, "users", "u", _USER_COLUMNS, user_json, tenant_id, limit, cursor, updated_after)


async def get_user(conn: Any, tenant_id: uuid.UUID, user_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE u.tenant_id = $1 AND u.id = $2", tenant_id, user_id
    )
    return user_json(row) if row else None


async def list_groups(
    conn: Any,
    tenant_id: uuid.UUID,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    updated_after: datetime | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    return await _keyset_page(conn, "groups", "g", _GROUP_COLUMNS, group_json, tenant_id, limit, cursor, updated_after)


async def get_group(conn: Any, tenant_id: uuid.UUID, group_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.tenant_id = $1 AND g.id = $2", tenant_id, group_id
    )
    return group_json(row) if row else None


async def list_members(
    conn: Any, tenant_id: uuid.UUID, group_id: uuid.UUID, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of a group's members (users, whatever source added them), oldest user first.
    Each carries ``membership_sources`` (``scim``, ``jit``): the memberships are kept per
    source, and a ``group.member_removed`` event removes one source's only, so a
    receiver that backfills needs them to apply later removals right."""
    after = decode_cursor(cursor) if cursor else None
    rows = await conn.fetch(
        f"""SELECT {_USER_COLUMNS},
                   (SELECT array_agg(m.source ORDER BY m.source) FROM memberships m
                     WHERE m.group_id = $2 AND m.user_id = u.id) AS membership_sources
            FROM users u
            WHERE u.tenant_id = $1 AND EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = $2 AND m.user_id = u.id)
              AND ($3::timestamptz IS NULL OR (u.created_at, u.id) > ($3, $4::uuid))
            ORDER BY u.created_at, u.id LIMIT $5""",
        tenant_id,
        group_id,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    return _page(rows, limit, lambda r: {**user_json(r), "membership_sources": list(r["membership_sources"] or ())})
