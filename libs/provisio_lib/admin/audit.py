"""Audit-trail queries shared by `provisio audit …` and the console's support pages.

Parameterised SQL only (values travel as $n), served by the indexes of migrations 0001
and 0004; the live tail reads the Redis audit streams the provisioner publishes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from provisio_lib import directory
from provisio_lib.contract import Outcome
from provisio_lib.outcomes import entry_outcomes

from .errors import USAGE, AdminError

_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}
RESULTS = ("applied", "noop", "failed")


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``, ``2h``, ``7d``, ``1w`` (before ``now``) or an ISO 8601 time (UTC if no zone)."""
    m = _RELATIVE.match(text)
    if m:
        try:
            return now - timedelta(**{_UNITS[m.group(2).lower()]: int(m.group(1))})
        except OverflowError:
            pass
    else:
        try:
            t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return t if t.tzinfo else t.replace(tzinfo=UTC)
    raise AdminError(
        f"bad time expression {text!r}: use e.g. 30m, 2h, 7d, 1w or an ISO time like 2026-01-31T08:00", USAGE
    )


@dataclass(frozen=True)
class SearchFilters:
    tenant_id: UUID | None = None
    user: str | None = None
    connection: str | None = None  # SSO connection or SCIM token: label or id
    correlation_id: str | None = None
    since: datetime | None = None
    failed: bool = False
    limit: int = 50
    result: str | None = None  # applied, noop or failed
    until: datetime | None = None
    offset: int = 0


SEARCH_COLUMNS = """a.id, a.event_id, a.completed_at, a.occurred_at, t.name AS tenant, a.tenant_id,
       a.source_kind, a.source_id, a.source_label, a.operation, a.resource_type, a.resource_id,
       a.user_name, a.result, a.error_code, a.error_message, a.correlation_id, a.latency_ms,
       a.changes, a.notes"""


def search_query(f: SearchFilters) -> tuple[str, list[Any]]:
    """SQL and arguments for an audit search, newest first; values only ever travel as $n."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.tenant_id is not None:
        where.append(f"a.tenant_id = {arg(f.tenant_id)}")
    if f.user:
        where.append(f"lower(a.user_name) = lower({arg(f.user)})")
    if f.connection:
        p = arg(f.connection)
        where.append(f"(a.source_label = {p} OR a.source_id = {p})")
    if f.correlation_id:
        where.append(f"a.correlation_id = {arg(f.correlation_id)}")
    if f.since is not None:
        where.append(f"a.completed_at >= {arg(f.since)}")
    if f.until is not None:
        where.append(f"a.completed_at < {arg(f.until)}")
    if f.failed:
        where.append("a.result = 'failed'")
    elif f.result:
        where.append(f"a.result = {arg(f.result)}")
    sql = f"SELECT {SEARCH_COLUMNS}\nFROM audit_log a LEFT JOIN tenants t ON t.id = a.tenant_id"
    if where:
        sql += "\nWHERE " + " AND ".join(where)
    sql += f"\nORDER BY a.completed_at DESC, a.id DESC LIMIT {arg(f.limit)}"
    if f.offset:
        sql += f" OFFSET {arg(f.offset)}"
    return sql, args


def display(row: dict[str, Any]) -> dict[str, Any]:
    """A search row with ``source`` and ``error`` as one readable column each."""
    out = dict(row)
    if "source_kind" in row:
        kind, label = row["source_kind"], row["source_label"]
        # An admin actor's label carries its kind already (``cli:alice``, ``setup:psl_…``):
        # shown once, not as ``cli:cli:alice``.
        out["source"] = label if label == kind or str(label).startswith(f"{kind}:") else f"{kind}:{label}"
    if "error_code" in row and row.get("error_code"):
        out["error"] = f"{row['error_code']}: {row.get('error_message') or ''}"
    if isinstance(out.get("changes"), str):
        with contextlib.suppress(ValueError):
            out["changes"] = json.loads(out["changes"])
    return out


async def resolve_tenant(conn: asyncpg.Connection, tenant: str) -> UUID:
    """A tenant given by name or id; a clear error if there is none."""
    row = await conn.fetchrow("SELECT id FROM tenants WHERE name = $1 OR id::text = $1", tenant.strip().lower())
    if row is None:
        raise AdminError(f"unknown tenant {tenant!r} (see `provisio tenant list`)")
    tid: uuid.UUID = row["id"]
    return tid


async def search(conn: asyncpg.Connection, f: SearchFilters) -> list[dict[str, Any]]:
    sql, args = search_query(f)
    return [display(dict(r)) for r in await conn.fetch(sql, *args)]


@dataclass
class UserHistory:
    history: list[dict[str, Any]]  # oldest first
    user: dict[str, Any] | None  # current state, None if there is no such user (now)
    groups: list[dict[str, Any]]  # display_name, id, source, added_at, connection (JIT)


# The operator's view of a user's current state (`provisio audit user`, the console's
# user page): these fields of the read model's row, in this order.
STATE_FIELDS = (
    "id",
    "user_name",
    "external_id",
    "active",
    "display_name",
    "given_name",
    "family_name",
    "email",
    "sso_name",
    "attributes",
    "version",
    "created_by",
    "created_at",
    "updated_at",
)


def operator_state(row: Any) -> dict[str, Any]:
    """A user row of the directory read model as the operator's view shows it."""
    return {f: row[f] for f in STATE_FIELDS}


async def user_history(conn: asyncpg.Connection, tid: UUID, username: str) -> UserHistory:
    """One user's whole history across SCIM and SAML (oldest first), current state and groups."""
    user = await directory.find_user(conn, tid, username, groups=False)
    uid = user["id"] if user else None
    # By name, and by id so the history survives a rename.
    history = await conn.fetch(
        f"""SELECT {SEARCH_COLUMNS} FROM audit_log a LEFT JOIN tenants t ON t.id = a.tenant_id
            WHERE a.tenant_id = $1 AND (lower(a.user_name) = lower($2) OR a.resource_id = $3)
            ORDER BY a.completed_at, a.id""",
        tid,
        username,
        uid,
    )
    groups = []
    if uid is not None:
        groups = [dict(g) for g in await directory.user_memberships(conn, tid, uid)]
    rows = [display(dict(r)) for r in history]
    for g in groups:
        g["via"] = await _membership_via(conn, tid, g, rows)
    return UserHistory(rows, operator_state(user) if user else None, groups)


async def _membership_via(
    conn: asyncpg.Connection, tid: UUID, group: dict[str, Any], history: list[dict[str, Any]]
) -> str | None:
    """The SCIM token or SSO connection that last added this membership. SCIM: the newest
    applied change recorded on the group (members are added by a group create/PATCH).
    JIT: the newest applied SAML login of the user whose ``groups`` change lists it."""
    if group.get("source") == "scim":
        label: str | None = await conn.fetchval(
            """SELECT source_label FROM audit_log WHERE tenant_id = $1 AND resource_id = $2
               AND source_kind = 'scim' AND result = 'applied' ORDER BY completed_at DESC, id DESC LIMIT 1""",
            tid,
            group["id"],
        )
        return label
    name = str(group.get("display_name") or "").lower()
    for row in reversed(history):
        if row.get("result") != "applied" or row.get("source_kind") != "saml":
            continue
        changes = row.get("changes") if isinstance(row.get("changes"), dict) else {}
        # The provisioner records a JIT login's memberships as "groups.jit".
        change = changes.get("groups.jit") or changes.get("groups")
        after = change.get("after") if isinstance(change, dict) else None
        if isinstance(after, list) and name in {str(x).lower() for x in after}:
            source: str | None = row.get("source_label")
            return source
    return None


# --------------------------------------------------------------------------- live tail


def outcome_row(o: Outcome, tenant_names: dict[UUID, str]) -> dict[str, Any]:
    """An outcome from the stream in the shape of a search row."""
    return {
        "completed_at": o.completed_at,
        "tenant": tenant_names.get(o.tenant_id, str(o.tenant_id)),
        "tenant_id": o.tenant_id,
        "event_id": o.event_id,
        "source": f"{o.source.kind}:{o.source.label}",
        "operation": o.command_type,
        "resource_type": o.resource_type,
        "resource_id": o.resource_id,
        "user_name": o.user_name,
        "result": o.result,
        "error": f"{o.error.code}: {o.error.message}" if o.error else None,
        "error_code": o.error.code if o.error else None,
        "correlation_id": o.correlation_id,
        "latency_ms": o.latency_ms,
        "redelivered": o.redelivered,
    }


def matches(o: Outcome, *, tenant: UUID | None, failed: bool, user: str | None) -> bool:
    if tenant is not None and o.tenant_id != tenant:
        return False
    if failed and o.result != "failed":
        return False
    return not (user and (o.user_name or "").lower() != user.lower())


async def read_stream(r: Any, stream: str, queue: asyncio.Queue[Outcome], stop: asyncio.Event) -> None:
    """Put every new outcome of one audit stream on ``queue`` until ``stop`` is set.
    Never cancelled mid-XREAD (a cancelled blocking read can leave redis-py waiting):
    it sees ``stop`` within one block interval and returns."""
    from redis.exceptions import ResponseError

    try:
        info = await r.xinfo_stream(stream)
        last = info["last-generated-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
    except ResponseError:  # the stream does not exist yet: everything in it will be new
        last = "0-0"
    while not stop.is_set():
        resp = await r.xread({stream: last}, block=500, count=200)
        for _stream, entries in resp or ():
            for entry_id, fields in entries:
                last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                try:
                    outcomes = entry_outcomes(fields)
                except Exception:  # not outcomes: the auditor dead-letters it; tail skips it
                    continue
                for outcome in outcomes:
                    await queue.put(outcome)


# --------------------------------------------------------------------------- staff actions

NO_TENANT = UUID(int=0)  # audit_log.tenant_id of an action that concerns no one tenant

# audit_log.source_kind of an admin action, by who did it (the provisioner's outcomes are
# ``scim`` and ``saml``): an operator at the terminal, a customer's IT admin through a
# setup link, a support-staff member in the console.
ACTOR_KINDS = ("cli", "setup", "staff")


def actor_kind(actor_id: str) -> str:
    """The source kind of an admin actor, from its id: ``cli`` / ``cli:<OS user>`` (the
    CLI), ``setup:<link prefix>`` (a setup link), anything else ``staff`` (the console
    records a staff member by account id, a UUID, so an email can never read as another
    kind). Migration 0015 applies the same rule to the rows written before it."""
    if actor_id == "cli" or actor_id.startswith("cli:"):
        return "cli"
    if actor_id.startswith("setup:"):
        return "setup"
    return "staff"


async def record_staff_action(
    conn: asyncpg.Connection,
    *,
    staff_id: str,
    staff_email: str,
    action: str,
    tenant_id: UUID | None,
    result: str = "applied",
    notes: list[str] | None = None,
    correlation_id: str = "",
    resource_type: str | None = None,
    resource_id: UUID | None = None,
    user_name: str | None = None,
    changes: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> None:
    """One audit row for something an administrator did: the source is who (kind
    :func:`actor_kind` of ``staff_id``, id, and ``staff_email`` as the label), the action
    the operation, so `audit search --connection LABEL` and the console find it; with
    ``resource_id``/``user_name`` it is in that user's history too. ``conn`` decodes
    jsonb (provisio_lib.db's connections and pools do)."""
    now = datetime.now(UTC)
    await conn.execute(
        """INSERT INTO audit_log (event_id, occurred_at, completed_at, tenant_id, source_kind, source_id,
                                  source_label, operation, resource_type, resource_id, user_name, changes,
                                  result, error_code, error_message, notes, correlation_id)
           VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13, $14, $15, $16)""",
        uuid.uuid4(),
        now,
        tenant_id or NO_TENANT,
        actor_kind(staff_id),
        staff_id,
        staff_email,
        action,
        resource_type,
        resource_id,
        user_name,
        changes or {},
        result,
        error_code,
        error_message,
        notes or [],
        correlation_id or uuid.uuid4().hex,
    )
