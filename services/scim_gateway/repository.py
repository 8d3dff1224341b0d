"""The gateway's reads: SCIM's filter, sort and paging on top of the directory read
model (``provisio_lib.directory``), which owns the SQL, the tables' layout and the
tenant scoping. What stays here is SCIM's: a filter compiled to a condition over the
read model's columns, and startIndex/count paging (RFC 7644 §3.4.2.4)."""

from __future__ import annotations

import uuid
from typing import Any

from provisio_lib import directory

from .filters import compile_filter, compile_sort, fast_eq_filter
from .schema import ResourceKind


def unique_sql(
    kind: ResourceKind, tenant_id: uuid.UUID, filter_text: str, *, with_groups: bool = True
) -> tuple[str, list[Any]] | None:
    """The query for a filter that matches at most one row through a unique index
    (``userName eq``, ``id eq``, a group's ``displayName eq``): a plain indexed lookup,
    no window count, sort or offset. None for any other filter."""
    table = directory.TABLES[kind.name]
    f = fast_eq_filter(kind, filter_text, table.alias, 2)  # None for filters that need the grammar
    if f is None or not f.unique:
        return None
    return directory.lookup_sql(table, f.sql, groups=with_groups), [tenant_id, *f.params]


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
    table = directory.TABLES[kind.name]
    params: list[Any] = [tenant_id]
    where = None
    if filter_text:
        f = compile_filter(kind, filter_text, table.alias, len(params) + 1)
        where = f.sql
        params += f.params
    count_params = list(params)
    order = None
    if sort_by:
        s = compile_sort(kind, sort_by, table.alias, len(params) + 1)
        params += s.params
        order = f"{s.sql} {'DESC' if descending else 'ASC'} NULLS LAST"
    sql = directory.page_sql(table, where, order, len(params), groups=with_groups)
    return sql, [*params, count, start_index - 1], directory.count_sql(table, where), count_params


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
