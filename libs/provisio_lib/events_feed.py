"""Reading and pruning the outbox of identity events (docs/events.md).

Feed order is (xid, id): the writing transaction's id (``pg_current_xact_id()``), then
the row's identity. A reader only sees rows whose transaction id is below the xmin of its
own snapshot — every transaction with a lower xid has then ended, so no row can later be
committed behind the reader's cursor, whatever order concurrent provisioners commit in.
The price is a visibility delay of the longest transaction running at the time (the
provisioner's batches take milliseconds).

A ``sequence`` is the pair written as 32 hex digits: string order is feed order, and the
cursor an application keeps is the sequence of the last event it applied.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

SEQUENCE_RE = re.compile(r"^[0-9a-f]{32}$")
TYPE_PATTERN_RE = re.compile(r"^(\*|[a-z_]+\.\*|[a-z_]+\.[a-z_]+)$")
MAX_LIMIT = 1000
PRUNE_BATCH = 5000
# pg_try_advisory_xact_lock key: one pruner at a time across App API replicas.
PRUNE_LOCK = 0x70726576


class FeedCursorError(ValueError):
    """An ``after`` value that is not a sequence this feed returned."""


def sequence(xid: int, id_: int) -> str:
    return f"{xid:016x}{id_:016x}"


def parse_sequence(value: str) -> tuple[int, int]:
    if not SEQUENCE_RE.match(value):
        raise FeedCursorError("after must be the sequence (next_cursor) of an event from this API")
    xid, id_ = int(value[:16], 16), int(value[16:], 16)
    if id_ >= 2**63:  # ids are bigint: a larger one was never made here
        raise FeedCursorError("after must be the sequence (next_cursor) of an event from this API")
    return xid, id_


def type_patterns(raw: str | None) -> list[str] | None:
    """``user.*,group.member_added`` → SQL LIKE patterns; ValueError for anything else."""
    if not raw:
        return None
    out = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if not TYPE_PATTERN_RE.match(item) or len(item) > 64:
            raise ValueError(f"types: {item!r} is not an event type or a pattern like user.*")
        out.append(item.replace("_", r"\_").replace("*", "%"))
    return out or None


_SELECT = """SELECT e.id, e.xid::text AS xid, e.event_id, e.tenant_id, t.name AS tenant_name, e.type,
       e.occurred_at, e.source, e.correlation_id, e.resource_type, e.resource_id, e.data, e.changes
FROM events e LEFT JOIN tenants t ON t.id = e.tenant_id"""

_WHERE = """WHERE ($1::uuid[] IS NULL OR e.tenant_id = ANY($1::uuid[]))
  AND (e.xid, e.id) > ($2::text::xid8, $3::bigint)
  AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
  AND ($4::text[] IS NULL OR e.type LIKE ANY($4::text[]))
ORDER BY e.xid, e.id LIMIT $5"""

# The event of ``event_json`` rendered to JSON text by Postgres: the App API splices these
# into its page instead of decoding the jsonb columns into dicts only to encode them again
# (BENCHMARKS.md, issue 12, "Events API"). Same keys in the same order, same values;
# tests/integration/test_app_api.py compares the two renderings. ``occurred_at`` follows
# Python's isoformat(): six fractional digits, or none on a whole second.
_SEQUENCE_SQL = "lpad(to_hex(e.xid::text::bigint), 16, '0') || lpad(to_hex(e.id), 16, '0')"
_EVENT_FIELDS_SQL = f"""'id', e.event_id, 'type', e.type, 'tenant', coalesce(t.name, e.tenant_id::text),
    'tenant_id', e.tenant_id, 'sequence', {_SEQUENCE_SQL},
    'occurred_at', to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN date_part('microseconds', e.occurred_at)::int % 1000000 = 0 THEN ''
                ELSE to_char(e.occurred_at AT TIME ZONE 'UTC', '.US') END || 'Z',
    'source', json_build_object('kind', e.source -> 'kind', 'label', e.source -> 'label'),
    'correlation_id', e.correlation_id, 'resource_type', e.resource_type,
    'resource_id', e.resource_id, 'data', e.data"""
_SELECT_TEXT = f"""SELECT {_SEQUENCE_SQL} AS sequence,
       CASE WHEN e.changes IS NULL THEN json_build_object({_EVENT_FIELDS_SQL})
            ELSE json_build_object({_EVENT_FIELDS_SQL}, 'changes', e.changes) END::text AS event
FROM events e LEFT JOIN tenants t ON t.id = e.tenant_id"""


async def read_events(
    conn: Any,
    tenants: list[uuid.UUID] | None,
    after: tuple[int, int] | None,
    limit: int,
    types: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Up to ``limit`` visible events after ``after`` (None: from the oldest retained),
    oldest first. ``tenants`` None: every tenant."""
    xid, rid = after if after is not None else (0, 0)
    rows = await conn.fetch(f"{_SELECT}\n{_WHERE}", tenants, str(xid), rid, types, limit)
    return [event_json(r) for r in rows]


async def read_events_text(
    conn: Any,
    tenants: list[uuid.UUID] | None,
    after: tuple[int, int] | None,
    limit: int,
    types: list[str] | None = None,
) -> tuple[list[str], str | None]:
    """``read_events`` as JSON texts, one per event, and the last event's sequence
    (None: no event)."""
    xid, rid = after if after is not None else (0, 0)
    rows = await conn.fetch(f"{_SELECT_TEXT}\n{_WHERE}", tenants, str(xid), rid, types, limit)
    return [r[1] for r in rows], (rows[-1][0] if rows else None)


async def head(conn: Any, tenants: list[uuid.UUID] | None) -> tuple[int, int] | None:
    """The newest visible event's position (None: the feed is empty). Every event that
    becomes visible later sorts after it (module docstring), so an application that
    notes it before backfilling from the directory misses nothing by following from it."""
    row = await conn.fetchrow(
        """SELECT xid::text AS xid, id FROM events
            WHERE ($1::uuid[] IS NULL OR tenant_id = ANY($1::uuid[]))
              AND xid < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY xid DESC, id DESC LIMIT 1""",
        tenants,
    )
    return (int(row["xid"]), row["id"]) if row is not None else None


def event_json(row: Any) -> dict[str, Any]:
    src = row["source"] or {}
    out: dict[str, Any] = {
        "id": str(row["event_id"]),
        "type": row["type"],
        "tenant": row["tenant_name"] or str(row["tenant_id"]),
        "tenant_id": str(row["tenant_id"]),
        "sequence": sequence(int(row["xid"]), row["id"]),
        "occurred_at": _iso(row["occurred_at"]),
        "source": {"kind": src.get("kind"), "label": src.get("label")},
        "correlation_id": row["correlation_id"],
        "resource_type": row["resource_type"],
        "resource_id": str(row["resource_id"]) if row["resource_id"] else None,
        "data": row["data"],
    }
    if row["changes"] is not None:
        out["changes"] = row["changes"]
    return out


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def prune(pool: Any, older_than: datetime, *, batch: int = PRUNE_BATCH, max_batches: int = 1000) -> int:
    """Delete events created before ``older_than``, from the head of the feed, ``batch``
    rows per transaction (short transactions: a DELETE of old rows never touches the rows
    writers insert, and no lock is held between batches). One pruner at a time across
    replicas (a transaction-level advisory lock, skipped if taken). Returns rows deleted."""
    total = 0
    for _ in range(max_batches):
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
                return total
            status = await conn.execute(
                """DELETE FROM events WHERE (xid, id) IN (
                       SELECT xid, id FROM (SELECT xid, id, created_at FROM events ORDER BY xid, id LIMIT $2) AS head
                       WHERE created_at < $1)""",
                older_than,
                batch,
            )
        n = int(status.split()[-1])
        total += n
        if n < batch:
            return total
    return total
