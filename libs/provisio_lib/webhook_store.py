"""Webhook endpoints, deliveries and attempts in Postgres (migration 0012): what the
``provisio webhook`` commands and the dispatcher read and write.

The dispatcher's cycle per endpoint (docs/events.md, "Webhooks"):

1. **fan-out** — read the feed after the endpoint's cursor with the feed's visibility
   rule (``xid < pg_snapshot_xmin``), insert one delivery per matching event and move
   the cursor, in one statement: nothing skipped, nothing twice;
2. **claim** — under a transaction-level advisory lock on the endpoint (one claimer at a
   time, any number of dispatchers), take its due deliveries in feed order that no
   earlier pending, not-due delivery of the same resource holds back, and lease them
   (``next_attempt_at`` past the request timeout);
3. **record** — after sending, mark them delivered, retry later, or dead, in batches.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from . import events_feed, webhooks


class EndpointExists(Exception):
    """An endpoint already has this name."""


class NoSuchEndpoint(Exception):
    """No endpoint has this name."""


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    name: str
    tenant_id: uuid.UUID | None
    tenant_name: str | None
    url: str
    event_types: list[str] | None
    secret: str
    previous_secret: str | None
    previous_expires_at: datetime | None
    status: str

    def secrets(self, now: datetime) -> list[str]:
        return webhooks.signing_secrets(self.secret, self.previous_secret, self.previous_expires_at, now)


_ENDPOINT_COLUMNS = """w.id, w.name, w.tenant_id, t.name AS tenant_name, w.url, w.event_types, w.secret,
       w.previous_secret, w.previous_expires_at, w.status"""


def _endpoint(r: Any) -> Endpoint:
    return Endpoint(
        id=r["id"],
        name=r["name"],
        tenant_id=r["tenant_id"],
        tenant_name=r["tenant_name"],
        url=r["url"],
        event_types=list(r["event_types"]) if r["event_types"] is not None else None,
        secret=r["secret"],
        previous_secret=r["previous_secret"],
        previous_expires_at=r["previous_expires_at"],
        status=r["status"],
    )


# --------------------------------------------------------------------------- endpoints (CLI)


async def add_endpoint(
    conn: asyncpg.Connection, name: str, tenant_id: uuid.UUID | None, url: str, event_types: list[str] | None
) -> str:
    """Create an endpoint; return its signing secret. It receives the events committed
    from now on: its cursor starts at the feed's current visibility horizon."""
    secret = webhooks.new_secret()
    try:
        await conn.execute(
            """INSERT INTO webhook_endpoints (id, name, tenant_id, url, event_types, secret, cursor_xid, cursor_id)
               VALUES ($1, $2, $3, $4, $5, $6, pg_snapshot_xmin(pg_current_snapshot()), 0)""",
            uuid.uuid4(),
            name,
            tenant_id,
            url,
            event_types,
            secret,
        )
    except asyncpg.UniqueViolationError:
        raise EndpointExists(name) from None
    return secret


async def get_endpoint(conn: Any, name: str) -> Endpoint:
    row = await conn.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints w LEFT JOIN tenants t ON t.id = w.tenant_id WHERE w.name = $1",
        name,
    )
    if row is None:
        raise NoSuchEndpoint(name)
    return _endpoint(row)


async def list_endpoints(conn: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT w.name, coalesce(t.name, '*') AS tenant, w.url, w.event_types, w.status, w.created_at,
                  w.failing_since, w.last_success_at, w.disabled_at, w.disabled_reason,
                  w.previous_expires_at,
                  (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'pending')
                      AS pending,
                  (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = w.id AND d.status = 'dead')
                      AS dead
           FROM webhook_endpoints w LEFT JOIN tenants t ON t.id = w.tenant_id
           ORDER BY w.created_at, w.name"""
    )
    out = []
    for r in rows:
        d = dict(r)
        d["events"] = webhooks.patterns_text(d.pop("event_types"))
        if d["previous_expires_at"] is not None and d["previous_expires_at"] <= datetime.now(UTC):
            d["previous_expires_at"] = None
        d["rotation_overlap_until"] = d.pop("previous_expires_at")
        out.append(d)
    return out


async def remove_endpoint(conn: Any, name: str) -> bool:
    status: str = await conn.execute("DELETE FROM webhook_endpoints WHERE name = $1", name)
    return status.split()[-1] != "0"


async def set_enabled(conn: Any, name: str, enabled: bool, reason: str | None = None) -> bool:
    """Enable (clearing the failure window, so it gets a full day again) or disable."""
    if enabled:
        status: str = await conn.execute(
            """UPDATE webhook_endpoints SET status = 'active', disabled_at = NULL, disabled_reason = NULL,
                   failing_since = NULL WHERE name = $1""",
            name,
        )
    else:
        status = await conn.execute(
            """UPDATE webhook_endpoints SET status = 'disabled', disabled_at = now(), disabled_reason = $2
               WHERE name = $1""",
            name,
            reason or "disabled by an operator",
        )
    return status.split()[-1] != "0"


async def rotate_secret(conn: Any, name: str, overlap_s: float) -> str:
    """A new signing secret; the current one keeps signing (beside it) for ``overlap_s``."""
    secret = webhooks.new_secret()
    row = await conn.fetchrow(
        """UPDATE webhook_endpoints SET previous_secret = secret, secret = $2,
               previous_expires_at = now() + make_interval(secs => $3)
           WHERE name = $1 RETURNING id""",
        name,
        secret,
        float(overlap_s),
    )
    if row is None:
        raise NoSuchEndpoint(name)
    return secret


async def record_test_attempt(conn: Any, endpoint: Endpoint, event: dict[str, Any], answer: Any) -> None:
    await conn.execute(
        """INSERT INTO webhook_attempts (delivery_id, endpoint_id, tenant_id, event_id, event_type, attempted_at,
                                         ok, status_code, latency_ms, excerpt, error)
           VALUES (NULL, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        endpoint.id,
        endpoint.tenant_id,
        uuid.UUID(event["id"]),
        event["type"],
        answer.attempted_at,
        answer.ok,
        answer.status,
        answer.latency_ms,
        answer.excerpt,
        answer.error,
    )


async def list_attempts(
    conn: Any, tenant_id: uuid.UUID, *, failed: bool = False, endpoint: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """A tenant's delivery attempts, newest first. ``failed``: only attempts of
    deliveries that are not delivered (dead letters, and those still being retried)."""
    rows = await conn.fetch(
        """SELECT a.attempted_at, w.name AS endpoint, a.event_type, a.event_id, a.delivery_id,
                  coalesce(d.status, 'test') AS delivery, d.attempts, a.ok, a.status_code AS status,
                  round(a.latency_ms::numeric, 1)::float8 AS latency_ms, a.excerpt, a.error, d.next_attempt_at
           FROM webhook_attempts a
           JOIN webhook_endpoints w ON w.id = a.endpoint_id
           LEFT JOIN webhook_deliveries d ON d.id = a.delivery_id
           WHERE a.tenant_id = $1
             AND ($2::bool IS FALSE OR (d.status IS NOT NULL AND d.status <> 'delivered'))
             AND ($3::text IS NULL OR w.name = $3)
           ORDER BY a.attempted_at DESC, a.id DESC
           LIMIT $4""",
        tenant_id,
        failed,
        endpoint,
        limit,
    )
    out = []
    for r in rows:
        d = dict(r)
        if d["delivery"] != "pending":
            d["next_attempt_at"] = None
        out.append(d)
    return out


# --------------------------------------------------------------------------- replay (CLI)

_MATCH = """(w.tenant_id IS NULL OR e.tenant_id = w.tenant_id)
            AND (w.event_types IS NULL OR e.type LIKE ANY (w.event_types))"""

_INSERT_DELIVERIES = """INSERT INTO webhook_deliveries (endpoint_id, event_xid, event_row, event_id, event_type,
                                         event_created_at, tenant_id, order_key, replay)"""


async def replay_event(conn: Any, endpoint: Endpoint, event_id: uuid.UUID) -> int:
    """Deliver one event (again): a new delivery, whatever happened to earlier ones."""
    status: str = await conn.execute(
        f"""{_INSERT_DELIVERIES}
            SELECT w.id, e.xid, e.id, e.event_id, e.type, e.created_at, e.tenant_id,
                   coalesce(e.resource_id, '00000000-0000-0000-0000-000000000000'::uuid), true
            FROM events e, webhook_endpoints w
            WHERE w.id = $1 AND e.event_id = $2 AND (w.tenant_id IS NULL OR e.tenant_id = w.tenant_id)""",
        endpoint.id,
        event_id,
    )
    return int(status.split()[-1])


async def replay_from(conn: Any, endpoint: Endpoint, after: tuple[int, int]) -> int:
    """Deliver again every matching event after ``after`` up to the endpoint's cursor
    (later events are on their way already)."""
    status: str = await conn.execute(
        f"""{_INSERT_DELIVERIES}
            SELECT w.id, e.xid, e.id, e.event_id, e.type, e.created_at, e.tenant_id,
                   coalesce(e.resource_id, '00000000-0000-0000-0000-000000000000'::uuid), true
            FROM webhook_endpoints w JOIN events e ON {_MATCH}
            WHERE w.id = $1 AND (e.xid, e.id) > ($2::text::xid8, $3::bigint)
              AND (e.xid, e.id) <= (w.cursor_xid, w.cursor_id)
            ORDER BY e.xid, e.id""",
        endpoint.id,
        str(after[0]),
        after[1],
    )
    return int(status.split()[-1])


async def replay_dead(conn: Any, endpoint: Endpoint) -> int:
    """Deliver again every dead letter of the endpoint (each as a new delivery; the
    dead ones stay, with their attempts, for the record)."""
    status: str = await conn.execute(
        f"""{_INSERT_DELIVERIES}
            SELECT endpoint_id, event_xid, event_row, event_id, event_type, event_created_at, tenant_id,
                   order_key, true
            FROM webhook_deliveries WHERE endpoint_id = $1 AND status = 'dead'
              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries n
                              WHERE n.endpoint_id = $1 AND n.event_id = webhook_deliveries.event_id
                                AND n.status = 'pending')
            ORDER BY event_xid, event_row, id""",
        endpoint.id,
    )
    return int(status.split()[-1])


# --------------------------------------------------------------------------- dispatcher


async def load_endpoints(conn: Any) -> list[Endpoint]:
    rows = await conn.fetch(
        f"""SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints w LEFT JOIN tenants t ON t.id = w.tenant_id
            WHERE w.status = 'active' ORDER BY w.id"""
    )
    return [_endpoint(r) for r in rows]


def _fan_out_sql(tenant_filter: str) -> str:
    # The cursor is read through scalar subqueries: evaluated once, they bound an index scan
    # that returns events in feed order and stops at the LIMIT. Joined to `w` instead, the
    # planner scanned and sorted every event after the cursor on each poll.
    return f"""
WITH w AS (
    SELECT id, tenant_id, event_types, cursor_xid, cursor_id FROM webhook_endpoints
    WHERE id = $1 AND status = 'active' FOR UPDATE
), ev AS (
    SELECT e.xid, e.id, e.event_id, e.type, e.created_at, e.tenant_id, e.resource_id
    FROM events e
    WHERE ({tenant_filter})
      AND (e.xid, e.id) > ((SELECT cursor_xid FROM w), (SELECT cursor_id FROM w))
      AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY e.xid, e.id
    LIMIT $2
), ins AS (
    {_INSERT_DELIVERIES}
    SELECT w.id, ev.xid, ev.id, ev.event_id, ev.type, ev.created_at, ev.tenant_id,
           coalesce(ev.resource_id, '00000000-0000-0000-0000-000000000000'::uuid), false
    FROM ev, w
    WHERE w.event_types IS NULL OR ev.type LIKE ANY (w.event_types)
    ORDER BY ev.xid, ev.id
    RETURNING 1
), last AS (
    SELECT xid, id FROM ev ORDER BY xid DESC, id DESC LIMIT 1
), moved AS (
    UPDATE webhook_endpoints e SET cursor_xid = last.xid, cursor_id = last.id
    FROM last WHERE e.id = $1
    RETURNING 1
)
SELECT (SELECT count(*) FROM ev) AS scanned, (SELECT count(*) FROM ins) AS inserted,
       (SELECT count(*) FROM moved) AS moved
"""


# Any endpoint: every tenant's events, filtered by the endpoint's tenant if it has one.
_FAN_OUT = _fan_out_sql("(SELECT tenant_id FROM w) IS NULL OR e.tenant_id = (SELECT tenant_id FROM w)")
# One tenant's endpoint: that tenant's events only, from events_tenant_idx, so an idle
# endpoint's poll costs one index probe whatever other tenants write. The endpoint's own
# tenant is checked too: a tenant that is not the endpoint's finds nothing.
_FAN_OUT_TENANT = _fan_out_sql("e.tenant_id = $3::uuid AND $3::uuid = (SELECT tenant_id FROM w)")


async def fan_out(
    pool: Any, endpoint_id: uuid.UUID, limit: int = 1000, *, tenant_id: uuid.UUID | None = None
) -> tuple[int, int]:
    """Create the deliveries of up to ``limit`` new feed events for one endpoint.
    Returns (events read, deliveries created); call again while events read == limit.
    ``tenant_id``: the endpoint's tenant, if it has one (its events are then read by
    tenant; without it every tenant's events after the cursor are read and filtered)."""
    if tenant_id is None:
        row = await pool.fetchrow(_FAN_OUT, endpoint_id, limit)
    else:
        row = await pool.fetchrow(_FAN_OUT_TENANT, endpoint_id, limit, tenant_id)
    return int(row["scanned"]), int(row["inserted"])


@dataclass
class Claimed:
    id: int
    endpoint_id: uuid.UUID
    order_key: uuid.UUID
    attempts: int
    created_at: datetime
    event_id: uuid.UUID
    event_type: str
    tenant_id: uuid.UUID
    event: dict[str, Any] | None  # None: pruned from the feed meanwhile
    lease_until: datetime = field(default_factory=lambda: datetime.now(UTC))


_CLAIM = """
SELECT d.id, d.order_key, d.attempts, d.created_at, d.event_id, d.event_type, d.tenant_id,
       e.id AS row_id, e.xid::text AS xid, e.event_id AS e_event_id, e.tenant_id AS e_tenant_id,
       t.name AS tenant_name, e.type, e.occurred_at, e.source, e.correlation_id, e.resource_type,
       e.resource_id, e.data, e.changes
FROM webhook_deliveries d
LEFT JOIN events e ON e.xid = d.event_xid AND e.id = d.event_row
LEFT JOIN tenants t ON t.id = e.tenant_id
WHERE d.endpoint_id = $1 AND d.status = 'pending' AND d.next_attempt_at <= now()
  -- A scalar subquery, not NOT EXISTS: the planner turns NOT EXISTS into an anti-join,
  -- and with the statistics of a freshly filled table (a first sync) it scanned every
  -- pending delivery of the endpoint for each candidate; as a correlated subplan it is
  -- always one probe of the order index by (endpoint, order_key).
  AND (SELECT true FROM webhook_deliveries p
       WHERE p.endpoint_id = d.endpoint_id AND p.order_key = d.order_key AND p.status = 'pending'
         AND (p.event_xid, p.event_row, p.id) < (d.event_xid, d.event_row, d.id)
         AND p.next_attempt_at > now()
       LIMIT 1) IS NULL
ORDER BY d.event_xid, d.event_row, d.id
LIMIT $2
"""


def lease_s(position: int, timeout_s: float) -> float:
    """How long the ``position``-th delivery of a chain (0: the first) is leased: the
    requests before it and its own may each take the whole timeout, plus a margin."""
    return (position + 1) * (timeout_s + 1.0) + 5.0


async def claim(
    pool: Any, endpoint_id: uuid.UUID, limit: int, *, timeout_s: float, max_chain: int = 20
) -> list[Claimed]:
    """Lease up to ``limit`` deliveries of one endpoint that may be sent now, in feed
    order, at most ``max_chain`` per resource (the rest of a resource's deliveries stay
    due, held back by the leased ones). Empty when another dispatcher is claiming for
    this endpoint right now."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1::uuid::text, 1212))", endpoint_id
        ):
            return []
        rows = await conn.fetch(_CLAIM, endpoint_id, limit)
        if not rows:
            return []
        now = datetime.now(UTC)
        out: list[Claimed] = []
        position: dict[uuid.UUID, int] = {}
        for r in rows:
            pos = position.get(r["order_key"], 0)
            if pos >= max_chain:
                continue
            position[r["order_key"]] = pos + 1
            event = None
            if r["row_id"] is not None:
                event = events_feed.event_json(
                    {
                        "id": r["row_id"],
                        "xid": r["xid"],
                        "event_id": r["e_event_id"],
                        "tenant_id": r["e_tenant_id"],
                        "tenant_name": r["tenant_name"],
                        "type": r["type"],
                        "occurred_at": r["occurred_at"],
                        "source": r["source"],
                        "correlation_id": r["correlation_id"],
                        "resource_type": r["resource_type"],
                        "resource_id": r["resource_id"],
                        "data": r["data"],
                        "changes": r["changes"],
                    }
                )
            out.append(
                Claimed(
                    id=r["id"],
                    endpoint_id=endpoint_id,
                    order_key=r["order_key"],
                    attempts=r["attempts"],
                    created_at=r["created_at"],
                    event_id=r["event_id"],
                    event_type=r["event_type"],
                    tenant_id=r["tenant_id"],
                    event=event,
                    lease_until=now + timedelta(seconds=lease_s(pos, timeout_s)),
                )
            )
        # `d.id = ANY(...)` beside the join: an index condition on the primary key whatever
        # the statistics say (joined to unnest() alone, a hash join scanned every row).
        await conn.execute(
            """UPDATE webhook_deliveries d SET next_attempt_at = l.until
               FROM unnest($1::bigint[], $2::timestamptz[]) AS l(id, until)
               WHERE d.id = ANY($1::bigint[]) AND d.id = l.id""",
            [c.id for c in out],
            [c.lease_until for c in out],
        )
        return out


def chains(claimed: Sequence[Claimed]) -> list[list[Claimed]]:
    """Claimed deliveries as chains per resource, each in feed order
    (``webhooks.sendable_chains``; everything claimed is due)."""
    by_id = {c.id: c for c in claimed}
    pending = [
        webhooks.Pending(id=c.id, key=c.order_key, position=(i, 0, c.id), due=True) for i, c in enumerate(claimed)
    ]
    return [[by_id[i] for i in chain] for chain in webhooks.sendable_chains(pending)]


@dataclass(frozen=True)
class Outcome:
    """What to record for one claimed delivery after an attempt (or none)."""

    delivery: Claimed
    ok: bool
    status: int | None
    latency_ms: float
    excerpt: str | None
    error: str | None
    attempted_at: datetime
    next_attempt_at: datetime | None  # failed: when to retry; None with ok False: dead
    attempted: bool = True  # False: dead without an attempt (event pruned)


@dataclass(frozen=True)
class Disabled:
    endpoint_id: uuid.UUID
    name: str
    tenant_id: uuid.UUID | None
    tenant_name: str | None
    url: str
    failing_since: datetime
    last_error: str | None


async def record(
    pool: Any,
    outcomes: Sequence[Outcome],
    released: Sequence[int],
    *,
    disable_after_s: float,
) -> list[Disabled]:
    """Record a batch of attempts in one transaction; release leased deliveries a chain
    did not get to; disable endpoints failing for ``disable_after_s`` (queueing their
    tenant's mail for the auditor). Returns the endpoints disabled now."""
    delivered = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    attempted = [o for o in outcomes if o.attempted]
    ok_endpoints = {o.delivery.endpoint_id for o in delivered}
    first_failure: dict[uuid.UUID, Outcome] = {}
    last_failure: dict[uuid.UUID, Outcome] = {}
    for o in failed:
        if o.attempted and o.delivery.endpoint_id not in ok_endpoints:
            first_failure.setdefault(o.delivery.endpoint_id, o)
            last_failure[o.delivery.endpoint_id] = o
    async with pool.acquire() as conn, conn.transaction():
        if delivered:
            await conn.execute(
                """UPDATE webhook_deliveries d SET status = 'delivered', attempts = d.attempts + 1,
                       done_at = r.at, last_status = r.status, last_error = NULL
                   FROM unnest($1::bigint[], $2::int[], $3::timestamptz[]) AS r(id, status, at)
                   WHERE d.id = ANY($1::bigint[]) AND d.id = r.id AND d.status = 'pending'""",
                [o.delivery.id for o in delivered],
                [o.status for o in delivered],
                [o.attempted_at for o in delivered],
            )
        if failed:
            await conn.execute(
                """UPDATE webhook_deliveries d SET attempts = d.attempts + r.n, last_status = r.status,
                       last_error = r.error,
                       status = CASE WHEN r.next_at IS NULL THEN 'dead' ELSE 'pending' END,
                       next_attempt_at = coalesce(r.next_at, d.next_attempt_at),
                       done_at = CASE WHEN r.next_at IS NULL THEN r.at END
                   FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::int[])
                        AS r(id, status, error, next_at, at, n)
                   WHERE d.id = ANY($1::bigint[]) AND d.id = r.id AND d.status = 'pending'""",
                [o.delivery.id for o in failed],
                [o.status for o in failed],
                [o.error if o.error else (f"HTTP {o.status}" if o.status else None) for o in failed],
                [o.next_attempt_at for o in failed],
                [o.attempted_at for o in failed],
                [1 if o.attempted else 0 for o in failed],
            )
        if released:
            await conn.execute(
                "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = ANY($1::bigint[]) AND status = 'pending'",
                list(released),
            )
        if attempted:
            await conn.execute(
                """INSERT INTO webhook_attempts (delivery_id, endpoint_id, tenant_id, event_id, event_type,
                                                 attempted_at, ok, status_code, latency_ms, excerpt, error)
                   SELECT u.* FROM unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                          $6::timestamptz[], $7::bool[], $8::int[], $9::float8[], $10::text[], $11::text[])
                        AS u(delivery_id, endpoint_id, tenant_id, event_id, event_type, attempted_at, ok,
                             status_code, latency_ms, excerpt, error)
                   -- not for an endpoint removed while its request was in flight
                   WHERE EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = u.delivery_id)""",
                [o.delivery.id for o in attempted],
                [o.delivery.endpoint_id for o in attempted],
                [o.delivery.tenant_id for o in attempted],
                [o.delivery.event_id for o in attempted],
                [o.delivery.event_type for o in attempted],
                [o.attempted_at for o in attempted],
                [o.ok for o in attempted],
                [o.status for o in attempted],
                [o.latency_ms for o in attempted],
                [o.excerpt for o in attempted],
                [o.error for o in attempted],
            )
        if ok_endpoints:
            last_ok = max(o.attempted_at for o in delivered)
            await conn.execute(
                """UPDATE webhook_endpoints SET failing_since = NULL, last_success_at = $2
                   WHERE id = ANY($1::uuid[]) AND (failing_since IS NOT NULL OR last_success_at IS NULL
                                                  OR last_success_at < $2::timestamptz - interval '1 second')""",
                sorted(ok_endpoints),
                last_ok,
            )
        disabled: list[Disabled] = []
        if first_failure:
            ids = sorted(first_failure)
            rows = await conn.fetch(
                """UPDATE webhook_endpoints w SET failing_since = coalesce(w.failing_since, f.at)
                   FROM unnest($1::uuid[], $2::timestamptz[]) AS f(id, at)
                   WHERE w.id = f.id
                   RETURNING w.id, w.failing_since""",
                ids,
                [first_failure[i].attempted_at for i in ids],
            )
            due = [r["id"] for r in rows if (datetime.now(UTC) - r["failing_since"]).total_seconds() >= disable_after_s]
            if due:
                gone = await conn.fetch(
                    """UPDATE webhook_endpoints w SET status = 'disabled', disabled_at = now(),
                           disabled_reason = $2
                       FROM webhook_endpoints w0 LEFT JOIN tenants t ON t.id = w0.tenant_id
                       WHERE w.id = ANY($1::uuid[]) AND w0.id = w.id AND w.status = 'active'
                       RETURNING w.id, w.name, w.tenant_id, t.name AS tenant_name, w.url, w.failing_since""",
                    sorted(due),
                    f"failing for {webhooks.duration_text(disable_after_s)}",
                )
                for r in gone:
                    last = last_failure[r["id"]]
                    d = Disabled(
                        endpoint_id=r["id"],
                        name=r["name"],
                        tenant_id=r["tenant_id"],
                        tenant_name=r["tenant_name"],
                        url=r["url"],
                        failing_since=r["failing_since"],
                        last_error=last.error or (f"HTTP {last.status}: {last.excerpt or ''}" if last.status else None),
                    )
                    disabled.append(d)
                    if d.tenant_id is not None:
                        mail = webhooks.disabled_mail(
                            endpoint=d.name,
                            tenant=d.tenant_name or str(d.tenant_id),
                            url=d.url,
                            failing_since=d.failing_since,
                            disable_after_s=disable_after_s,
                            last_error=d.last_error,
                        )
                        # The auditor's notifier sends it (its SMTP settings, retries, claim).
                        await conn.execute(
                            """INSERT INTO notifications (tenant_id, kind, window_start, window_end, due_at,
                                                          next_attempt_at, subject, body)
                               VALUES ($1, 'webhook_disabled', clock_timestamp(), clock_timestamp(), now(), now(), $2, $3)
                               ON CONFLICT DO NOTHING""",
                            d.tenant_id,
                            mail.subject,
                            mail.text,
                        )
        return disabled


# --------------------------------------------------------------------------- housekeeping, metrics


async def prune(pool: Any, older_than: datetime, *, batch: int = 5000, max_batches: int = 200) -> int:
    """Delete finished deliveries (their attempts cascade) created before ``older_than``
    — the events' retention — in short batches."""
    total = 0
    for _ in range(max_batches):
        status: str = await pool.execute(
            """DELETE FROM webhook_deliveries WHERE id IN (
                   SELECT id FROM webhook_deliveries WHERE status <> 'pending' AND created_at < $1 LIMIT $2)""",
            older_than,
            batch,
        )
        n = int(status.split()[-1])
        total += n
        if n < batch:
            break
    await pool.execute("DELETE FROM webhook_attempts WHERE delivery_id IS NULL AND attempted_at < $1", older_than)
    return total


async def backlog(conn: Any) -> list[dict[str, Any]]:
    """Per endpoint: pending deliveries, dead letters, the oldest pending event's age."""
    rows = await conn.fetch(
        """SELECT w.name, w.status,
                  count(d.id) FILTER (WHERE d.status = 'pending') AS pending,
                  extract(epoch FROM now() - min(d.event_created_at) FILTER (WHERE d.status = 'pending'))
                      AS oldest_pending_s
           FROM webhook_endpoints w
           LEFT JOIN webhook_deliveries d ON d.endpoint_id = w.id AND d.status = 'pending'
           GROUP BY w.id, w.name, w.status"""
    )
    return [dict(r) for r in rows]
