"""The read model's queries (asyncpg). Every one takes the tenant id as a required
parameter and scopes the outer rows to it (``layout`` scopes the joined ones); values
travel only as ``$n`` parameters. The SQL text of each query depends only on its
shape (with or without groups, the condition a reader passes), never on values, so
asyncpg prepares each statement once per connection and reuses it.

``conn`` is a connection or a pool (both have ``fetch``/``fetchrow``/``fetchval``).
Rows are returned as asyncpg gives them: their names are the state's field names
(``mapping``), and a renderer reads them without a copy per row.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .layout import GROUPS, USERS, Table, group_columns, groups_of, user_columns

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def columns(table: Table, *, groups: bool = True, member_count: bool = False) -> str:
    """The SELECT list of ``table`` read under its own alias."""
    return user_columns(groups=groups) if table is USERS else group_columns(members=member_count)


# --------------------------------------------------------------------------- one resource


async def get_user(conn: Any, tenant_id: uuid.UUID, user_id: uuid.UUID, *, groups: bool = True) -> Any:
    """A user's row (with ``groups`` unless ``groups=False``), None if the tenant has none."""
    return await conn.fetchrow(
        f"SELECT {user_columns(groups=groups)} FROM users u WHERE u.id = $1 AND u.tenant_id = $2", user_id, tenant_id
    )


async def find_user(conn: Any, tenant_id: uuid.UUID, user_name: str, *, groups: bool = True) -> Any:
    """A user by userName, in any letter case (the unique index ``users_user_name_key``)."""
    return await conn.fetchrow(
        f"SELECT {user_columns(groups=groups)} FROM users u WHERE u.tenant_id = $1 AND lower(u.user_name) = lower($2)",
        tenant_id,
        user_name,
    )


async def user_groups(conn: Any, tenant_id: uuid.UUID, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """A user's groups as ``get_user`` returns them in ``groups`` (``[]`` for no such user)."""
    groups: list[dict[str, Any]] | None = await conn.fetchval(
        f"SELECT {groups_of('u')} FROM users u WHERE u.id = $1 AND u.tenant_id = $2", user_id, tenant_id
    )
    return groups or []


async def user_memberships(conn: Any, tenant_id: uuid.UUID, user_id: uuid.UUID) -> list[Any]:
    """Each membership of a user (one per group and source: SCIM, JIT) with its group:
    ``display_name, id, source, added_at``, by group name then source."""
    return list(
        await conn.fetch(
            """SELECT g.display_name, g.id, m.source, m.added_at FROM memberships m
               JOIN groups g ON g.id = m.group_id AND g.tenant_id = m.tenant_id
               WHERE m.user_id = $1 AND m.tenant_id = $2
               ORDER BY lower(g.display_name), m.source""",
            user_id,
            tenant_id,
        )
    )


async def get_group(conn: Any, tenant_id: uuid.UUID, group_id: uuid.UUID, *, member_count: bool = False) -> Any:
    """A group's row (with ``member_count`` if asked), None if the tenant has none."""
    return await conn.fetchrow(
        f"SELECT {group_columns(members=member_count)} FROM groups g WHERE g.id = $1 AND g.tenant_id = $2",
        group_id,
        tenant_id,
    )


# A group's members for display: a user counted once whatever the source of its
# membership; ``display`` is the member's displayName, else its userName.
_MEMBERS_OF = """SELECT DISTINCT ON (m.group_id, u.id) m.group_id, u.id,
    coalesce(nullif(u.display_name, ''), u.user_name) AS display
FROM memberships m JOIN users u ON u.id = m.user_id AND u.tenant_id = m.tenant_id
WHERE m.group_id IN (SELECT g.id FROM groups g WHERE g.id = ANY($1::uuid[]) AND g.tenant_id = $2)
  AND m.tenant_id = $2
ORDER BY m.group_id, u.id"""


async def group_members(conn: Any, tenant_id: uuid.UUID, group_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """Each group's members (rows of ``id, display``, by user id), in one query."""
    out: dict[uuid.UUID, list[Any]] = {gid: [] for gid in group_ids}
    if not group_ids:
        return out
    for r in await conn.fetch(_MEMBERS_OF, list(group_ids), tenant_id):
        out[r["group_id"]].append(r)
    return out


# --------------------------------------------------------------------------- filtered reads
#
# A reader's own condition (the SCIM gateway's compiled filter) over the table's alias
# (``u``/``g``) and its columns (``Table.col``), with parameters numbered from $2: $1 is
# always the tenant.


def lookup_sql(table: Table, where: str, *, groups: bool = True) -> str:
    """At most one row through a unique index: no count, sort or offset."""
    a = table.alias
    return f"SELECT {columns(table, groups=groups)} FROM {table.name} {a} WHERE {a}.tenant_id = $1 AND {where}"


def count_sql(table: Table, where: str | None) -> str:
    a = table.alias
    return f"SELECT count(*) FROM {table.name} {a} WHERE {a}.tenant_id = $1" + (f" AND {where}" if where else "")


def page_sql(table: Table, where: str | None, order: str | None, n_params: int, *, groups: bool = True) -> str:
    """A page with the total in every row (``count(*) OVER ()``, one round trip), in
    ``order`` then creation order; ``LIMIT $n+1 OFFSET $n+2`` after the ``n_params``
    parameters (tenant included) of the condition and the order."""
    a = table.alias
    keyset = f"{a}.created_at, {a}.id"
    return (
        f"SELECT {columns(table, groups=groups)}, count(*) OVER () AS total FROM {table.name} {a} "
        f"WHERE {a}.tenant_id = $1{f' AND {where}' if where else ''} "
        f"ORDER BY {f'{order}, {keyset}' if order else keyset} LIMIT ${n_params + 1} OFFSET ${n_params + 2}"
    )


# --------------------------------------------------------------------------- keyset pages
#
# Pagination is keyset on (created_at, id) over the existing ``users_created_idx`` /
# ``groups_created_idx``: neither changes after insert, so a page boundary never moves
# under concurrent writes (no row seen twice, none skipped; rows created after the
# listing began may or may not appear). ``updated_after`` filters on top of it.


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


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    next_cursor: str | None  # None at the end


def _page(rows: list[Any], limit: int) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None)


async def _keyset_page(
    conn: Any,
    table: Table,
    cols: str,
    tenant_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    updated_after: datetime | None,
) -> Page:
    after = decode_cursor(cursor) if cursor else None
    a = table.alias
    rows = await conn.fetch(
        f"""SELECT {cols} FROM {table.name} {a}
            WHERE {a}.tenant_id = $1 AND ($2::timestamptz IS NULL OR ({a}.created_at, {a}.id) > ($2, $3::uuid))
              AND ($4::timestamptz IS NULL OR {a}.updated_at > $4)
            ORDER BY {a}.created_at, {a}.id LIMIT $5""",
        tenant_id,
        after[0] if after else None,
        after[1] if after else None,
        updated_after,
        limit + 1,
    )
    return _page(list(rows), limit)


async def users_page(
    conn: Any,
    tenant_id: uuid.UUID,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    updated_after: datetime | None = None,
) -> Page:
    """A page of the tenant's users (with their groups), oldest first."""
    return await _keyset_page(conn, USERS, user_columns(), tenant_id, limit, cursor, updated_after)


async def groups_page(
    conn: Any,
    tenant_id: uuid.UUID,
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    updated_after: datetime | None = None,
) -> Page:
    """A page of the tenant's groups (with ``member_count``), oldest first."""
    return await _keyset_page(conn, GROUPS, group_columns(members=True), tenant_id, limit, cursor, updated_after)


async def members_page(
    conn: Any, tenant_id: uuid.UUID, group_id: uuid.UUID, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page:
    """A page of a group's members (users, whatever source added them), oldest user first.
    Each row carries ``membership_sources`` (``scim``, ``jit``): memberships are kept per
    source and a ``group.member_removed`` event removes one source's only, so a receiver
    that backfills needs them to apply later removals right."""
    after = decode_cursor(cursor) if cursor else None
    rows = await conn.fetch(
        f"""SELECT {user_columns()},
                   (SELECT array_agg(m.source ORDER BY m.source) FROM memberships m
                     WHERE m.group_id = $2 AND m.user_id = u.id AND m.tenant_id = $1) AS membership_sources
            FROM users u
            WHERE u.tenant_id = $1 AND EXISTS (SELECT 1 FROM groups g WHERE g.id = $2 AND g.tenant_id = $1)
              AND EXISTS (SELECT 1 FROM memberships m WHERE m.group_id = $2 AND m.user_id = u.id AND m.tenant_id = $1)
              AND ($3::timestamptz IS NULL OR (u.created_at, u.id) > ($3, $4::uuid))
            ORDER BY u.created_at, u.id LIMIT $5""",
        tenant_id,
        group_id,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    return _page(list(rows), limit)
