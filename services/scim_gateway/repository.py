"""Reads from Postgres (asyncpg). Every query is scoped to the caller's tenant and uses
only ``$n`` parameters; asyncpg prepares and caches each statement per connection."""

from __future__ import annotations

import uuid
from typing import Any

from .filters import SqlFilter, compile_filter, compile_sort, fast_eq_filter
from .schema import ResourceKind

_USER_COLS = """u.id, u.user_name, u.external_id, u.active, u.display_name, u.given_name,
u.family_name, u.emails, u.sso_name, u.attributes, u.version, u.created_at, u.updated_at"""

# A user's groups (RFC 7643 §4.1.2 "groups", read-only) as a JSON array.
_GROUPS_OF = """SELECT coalesce(jsonb_agg(jsonb_build_object('value', g.id, 'display', g.display_name)
    ORDER BY g.display_name), '[]'::jsonb)
  FROM groups g WHERE g.id IN (SELECT m.group_id FROM memberships m WHERE m.user_id = {user})"""
# ... in the same round trip as the user's row.
_USER_GROUPS = f"({_GROUPS_OF.format(user='u.id')}) AS groups"

_GROUP_COLS = "g.id, g.display_name, g.external_id, g.attributes, g.version, g.created_at, g.updated_at"

_MEMBERS_SQL = """SELECT DISTINCT ON (m.group_id, u.id) m.group_id, u.id, u.user_name, u.display_name
FROM memberships m JOIN users u ON u.id = m.user_id
WHERE m.group_id = ANY($1::uuid[]) AND m.tenant_id = $2
ORDER BY m.group_id, u.id"""


async def get_user(pool: Any, tenant_id: uuid.UUID, user_id: uuid.UUID, with_groups: bool = True) -> Any:
    groups = _USER_GROUPS if with_groups else _NO_GROUPS
    return await pool.fetchrow(
        f"SELECT {_USER_COLS}, {groups} FROM users u WHERE u.id = $1 AND u.tenant_id = $2",
        user_id,
        tenant_id,
    )


async def user_groups(pool: Any, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """A user's groups as ``get_user(with_groups=True)`` returns them in ``groups``."""
    groups: list[dict[str, Any]] = await pool.fetchval(_GROUPS_OF.format(user="$1"), user_id)
    return groups


async def get_group(pool: Any, tenant_id: uuid.UUID, group_id: uuid.UUID) -> Any:
    return await pool.fetchrow(
        f"SELECT {_GROUP_COLS} FROM groups g WHERE g.id = $1 AND g.tenant_id = $2", group_id, tenant_id
    )


async def group_members(pool: Any, tenant_id: uuid.UUID, group_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    out: dict[uuid.UUID, list[Any]] = {gid: [] for gid in group_ids}
    if not group_ids:
        return out
    for r in await pool.fetch(_MEMBERS_SQL, group_ids, tenant_id):
        out[r["group_id"]].append({"id": r["id"], "display": r["display_name"] or r["user_name"]})
    return out


def _cols(kind: ResourceKind, with_groups: bool) -> str:
    if kind.name == "User":
        return f"{_USER_COLS}, {_USER_GROUPS if with_groups else _NO_GROUPS}"
    return _GROUP_COLS


_NO_GROUPS = "'[]'::jsonb AS groups"


def unique_sql(
    kind: ResourceKind, tenant_id: uuid.UUID, filter_text: str, *, with_groups: bool = True
) -> tuple[str, list[Any]] | None:
    """The query for a filter that matches at most one row through a unique index
    (``userName eq``, ``id eq``, a group's ``displayName eq``): a plain indexed lookup,
    no window count, sort or offset. None for any other filter."""
    alias = "u" if kind.name == "User" else "g"
    f = fast_eq_filter(kind, filter_text, alias, 2)  # None for filters that need the grammar
    if f is None or not f.unique:
        return None
    table = "users" if kind.name == "User" else "groups"
    return f"SELECT {_cols(kind, with_groups)} FROM {table} {alias} WHERE {alias}.tenant_id = $1 AND {f.sql}", [
        tenant_id,
        *f.params,
    ]


def search_sql(
    kind: ResourceKind,
    tenant_id: uuid.UUID,
    *,
    filter_text: str | None,
    start_index: int,
    count: int,
    sort_by: str | None,
    descending: bool,
    with_groups: bool = True,
) -> tuple[str, list[Any], str, list[Any]]:
    """(page SQL, its params, count SQL, its params) for a list/search request."""
    alias = "u" if kind.name == "User" else "g"
    table = "users" if kind.name == "User" else "groups"
    params: list[Any] = [tenant_id]
    where = f"{alias}.tenant_id = $1"
    if filter_text:
        f: SqlFilter = compile_filter(kind, filter_text, alias, len(params) + 1)
        where += f" AND {f.sql}"
        params += f.params
    count_sql = f"SELECT count(*) FROM {table} {alias} WHERE {where}"
    count_params = list(params)
    order = f"{alias}.created_at, {alias}.id"
    if sort_by:
        s = compile_sort(kind, sort_by, alias, len(params) + 1)
        params += s.params
        direction = "DESC" if descending else "ASC"
        order = f"{s.sql} {direction} NULLS LAST, {order}"
    cols = _cols(kind, with_groups)
    n = len(params)
    sql = (
        f"SELECT {cols}, count(*) OVER () AS total FROM {table} {alias} WHERE {where} "
        f"ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}"
    )
    return sql, [*params, count, start_index - 1], count_sql, count_params


async def search(
    pool: Any,
    kind: ResourceKind,
    tenant_id: uuid.UUID,
    *,
    filter_text: str | None,
    start_index: int,
    count: int,
    sort_by: str | None,
    descending: bool,
    with_groups: bool = True,
) -> tuple[int, list[Any]]:
    """(totalResults, rows of the page) for a list/search request."""
    if filter_text and not sort_by:
        lookup = unique_sql(kind, tenant_id, filter_text, with_groups=with_groups)
        if lookup is not None:
            sql, params = lookup
            rows = await pool.fetch(sql, *params)
            # at most one row: it is the page when the page starts at 1 and holds any
            return len(rows), (list(rows) if start_index == 1 and count > 0 else [])
    sql, params, count_sql, count_params = search_sql(
        kind,
        tenant_id,
        filter_text=filter_text,
        start_index=start_index,
        count=count,
        sort_by=sort_by,
        descending=descending,
        with_groups=with_groups,
    )
    if count == 0:
        return int(await pool.fetchval(count_sql, *count_params)), []
    rows = await pool.fetch(sql, *params)
    if rows:
        return int(rows[0]["total"]), list(rows)
    if start_index > 1:  # past the end: the window count saw no rows
        return int(await pool.fetchval(count_sql, *count_params)), []
    return 0, []
