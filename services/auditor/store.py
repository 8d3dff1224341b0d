"""Postgres side of the auditor: audit rows in batches, notification rows with them,
and retention.

One transaction per batch: one multi-row ``INSERT … SELECT FROM unnest(…)`` for the
whole batch (``ON CONFLICT (event_id, result) DO NOTHING``: a redelivered outcome is
not written twice), then, for the failures actually inserted, the notification rows
that will report them. A crash anywhere rolls both back, so a failure is never
recorded without its notification, nor notified twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg

from .records import AuditRow

INSERT_AUDIT = """
INSERT INTO audit_log (event_id, occurred_at, completed_at, tenant_id, source_kind, source_id,
                       source_label, operation, resource_type, resource_id, user_name, changes,
                       result, error_code, error_message, notes, correlation_id, latency_ms)
SELECT r.event_id, r.occurred_at, r.completed_at, r.tenant_id, r.source_kind, r.source_id,
       r.source_label, r.operation, r.resource_type, r.resource_id, r.user_name, r.changes::jsonb,
       r.result, r.error_code, r.error_message,
       ARRAY(SELECT jsonb_array_elements_text(r.notes::jsonb)), r.correlation_id, r.latency_ms
FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::uuid[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::uuid[], $11::text[], $12::text[],
            $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::float8[])
     AS r(event_id, occurred_at, completed_at, tenant_id, source_kind, source_id,
          source_label, operation, resource_type, resource_id, user_name, changes,
          result, error_code, error_message, notes, correlation_id, latency_ms)
ON CONFLICT (event_id, result) DO NOTHING
RETURNING id, tenant_id, result
"""

# Serialises window decisions per tenant across auditors (two batches of one tenant
# may be in flight on two workers); transaction-scoped, so released at commit.
_LOCK_NS = 0x70726E  # "prn"

_OPEN_WINDOW = """
SELECT id, window_start, window_end FROM notifications
WHERE tenant_id = $1 AND kind = 'first' AND window_end > clock_timestamp()
ORDER BY window_start DESC LIMIT 1
"""

# Only for tenants that exist: an outcome of a deleted tenant is audited, not mailed.
_NEW_FIRST = """
WITH now AS (SELECT clock_timestamp() AS t)
INSERT INTO notifications (tenant_id, kind, window_start, window_end, due_at, next_attempt_at)
SELECT $1, 'first', now.t, now.t + make_interval(secs => $2), now.t, now.t
FROM now, tenants WHERE tenants.id = $1
ON CONFLICT (tenant_id, window_start, kind) DO NOTHING
RETURNING id
"""

# FOR UPDATE waits for a notifier that is sending this digest right now; re-evaluated
# after the wait, a digest that went out no longer matches status = 'pending'.
_WINDOW_DIGEST = """
SELECT id, status FROM notifications
WHERE tenant_id = $1 AND window_start = $2 AND kind = 'digest'
FOR UPDATE
"""

_NEW_DIGEST = """
INSERT INTO notifications (tenant_id, kind, window_start, window_end, due_at, next_attempt_at)
VALUES ($1, 'digest', $2, $3, $3, $3)
RETURNING id
"""

_ATTACH = """
INSERT INTO notification_items (notification_id, audit_id)
SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING
"""


@dataclass
class WriteResult:
    inserted: int = 0
    duplicates: int = 0
    failures: int = 0
    first_mails: int = 0  # 'first' notifications created: due now, wake the notifier
    notification_ids: list[int] = field(default_factory=list)
    by_result: dict[str, int] = field(default_factory=dict)  # inserted rows per result


def _columns(rows: list[AuditRow]) -> list[list[object]]:
    cols: list[list[object]] = [[] for _ in range(18)]
    for row in rows:
        for i, value in enumerate(row.as_tuple()):
            if i == 15:  # notes: text[] per row; unnest would flatten a 2-D array
                value = _json_list(value)
            cols[i].append(value)
    return cols


def _json_list(items: tuple[str, ...]) -> str:
    import json

    return json.dumps(list(items))


async def write_batch(conn: asyncpg.Connection, rows: list[AuditRow], window_s: float) -> WriteResult:
    """Insert the rows and queue notifications for new failures, in one transaction."""
    result = WriteResult()
    if not rows:
        return result
    if not any(r.result == "failed" for r in rows):
        # Nothing to notify: the INSERT alone is atomic, without BEGIN and COMMIT round trips.
        _count(result, rows, await conn.fetch(INSERT_AUDIT, *_columns(rows)))
        return result
    async with conn.transaction():
        inserted = await conn.fetch(INSERT_AUDIT, *_columns(rows))
        _count(result, rows, inserted)
        failed: dict[uuid.UUID, list[int]] = {}
        for r in inserted:
            if r["result"] == "failed":
                failed.setdefault(r["tenant_id"], []).append(r["id"])
        result.failures = sum(len(v) for v in failed.values())
        # Sorted, so two auditors lock tenants in the same order (no deadlock).
        for tenant_id in sorted(failed):
            await _queue_notification(conn, tenant_id, sorted(failed[tenant_id]), window_s, result)
    return result


def _count(result: WriteResult, rows: list[AuditRow], inserted: list[asyncpg.Record]) -> None:
    result.inserted = len(inserted)
    result.duplicates = len(rows) - len(inserted)
    for r in inserted:
        result.by_result[r["result"]] = result.by_result.get(r["result"], 0) + 1


async def _queue_notification(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, audit_ids: list[int], window_s: float, result: WriteResult
) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_NS, str(tenant_id))
    window = await conn.fetchrow(_OPEN_WINDOW, tenant_id)
    nid: int | None = None
    if window is not None:
        digest = await conn.fetchrow(_WINDOW_DIGEST, tenant_id, window["window_start"])
        if digest is None:
            nid = await conn.fetchval(_NEW_DIGEST, tenant_id, window["window_start"], window["window_end"])
        elif digest["status"] == "pending":
            nid = digest["id"]
        # else: the window's digest just went out (its end passed while we waited):
        # these failures open a new window below.
    if nid is None:
        nid = await conn.fetchval(_NEW_FIRST, tenant_id, float(window_s))
        if nid is None:
            return  # tenant deleted
        result.first_mails += 1
    await conn.execute(_ATTACH, nid, audit_ids)
    result.notification_ids.append(nid)


# --------------------------------------------------------------------------- retention


async def purge_expired(conn: asyncpg.Connection, retention_days: int, chunk: int = 10_000) -> int:
    """Delete audit rows (and finished notifications) older than the retention, in
    chunks so no transaction holds many locks; return the audit rows deleted."""
    if retention_days <= 0:
        return 0
    total = 0
    while True:
        status = await conn.execute(
            """DELETE FROM audit_log WHERE id IN (
                   SELECT id FROM audit_log WHERE completed_at < now() - make_interval(days => $1)
                   LIMIT $2)""",
            retention_days,
            chunk,
        )
        n = int(status.split()[-1])
        total += n
        if n < chunk:
            break
    await conn.execute(
        """DELETE FROM notifications WHERE status <> 'pending'
           AND created_at < now() - make_interval(days => $1)""",
        retention_days,
    )
    return total
