"""SQL for the provisioner: one function per change, run inside the caller's transaction.

Every statement is parameterised ($n). Functions raise ``PermanentError`` for what can
never succeed (not found, taken, stale) and let asyncpg errors bubble up otherwise.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg

from provisio_lib import directory
from provisio_lib.contract import GroupData, GroupRef, JitLogin, UserData

from .core import user_values
from .domain import PermanentError, looks_like_object_id, match_group_claims, primary_email
from .events import EventSpec

USER_COLUMNS = (
    "id, tenant_id, user_name, external_id, active, display_name, given_name, family_name, "
    "email, emails, sso_name, attributes, version, created_at, updated_at, created_by, seq_ms, seq_n"
)
GROUP_COLUMNS = (
    "id, tenant_id, display_name, external_id, attributes, version, created_at, updated_at, created_by, seq_ms, seq_n"
)
Seq = tuple[int, int]


def newer(row: Any, seq: Seq) -> Seq:
    return max((row["seq_ms"], row["seq_n"]), seq)


# The row→resource mapping is the read model's (provisio_lib.directory), shared with the App API.
user_state, group_state = directory.user_state, directory.group_state


def _unique(err: asyncpg.UniqueViolationError, what: str, value: str) -> PermanentError:
    return PermanentError("uniqueness", f"{what} {value!r} is already taken in this tenant", field=what)


# --------------------------------------------------------------------------- users


async def insert_user(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    data: UserData,
    created_by: str = "scim",
    seq: Seq = (0, 0),
) -> asyncpg.Record:
    v = user_values(data)
    try:
        return await conn.fetchrow(
            f"""INSERT INTO users (id, tenant_id, user_name, external_id, active, display_name, given_name,
                                  family_name, email, emails, sso_name, attributes, created_by, seq_ms, seq_n)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                RETURNING {USER_COLUMNS}""",
            user_id,
            tenant_id,
            v["user_name"],
            v["external_id"],
            v["active"],
            v["display_name"],
            v["given_name"],
            v["family_name"],
            v["email"],
            v["emails"],
            v["sso_name"],
            v["attributes"],
            created_by,
            seq[0],
            seq[1],
        )
    except asyncpg.UniqueViolationError as err:
        if err.constraint_name == "users_pkey":
            raise PermanentError("uniqueness", f"user id {user_id} already exists", field="id") from None
        raise _unique(err, "userName", data.user_name) from None
    except asyncpg.ForeignKeyViolationError:
        raise PermanentError("invalid_value", "unknown tenant", field="tenant") from None


_BULK_USER_COLS = (
    "id",
    "tenant_id",
    "user_name",
    "external_id",
    "active",
    "display_name",
    "given_name",
    "family_name",
    "email",
    "emails",
    "sso_name",
    "attributes",
    "seq_ms",
    "seq_n",
)
_BULK_USER_ROWS = """SELECT i, t, u, x, a, d, g, f, e, es::jsonb, s, at::jsonb, sm, sn
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bool[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[], $14::bigint[])
         AS r(i, t, u, x, a, d, g, f, e, es, s, at, sm, sn)"""


def _columns(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[list[Any]]:
    """Column arrays for an unnest() of ``rows`` (jsonb columns as text)."""
    return [[json.dumps(r[k]) if k in ("emails", "attributes") else r[k] for r in rows] for k in keys]


def _bulk_user_columns(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Column arrays for ``_BULK_USER_ROWS`` from ``new_user_row``s."""
    return _columns(rows, _BULK_USER_COLS)


def new_user_row(tenant_id: uuid.UUID, user_id: uuid.UUID, data: UserData, seq: Seq, now: datetime) -> dict[str, Any]:
    """The users row a create writes, built here so the outcome can be made before the
    INSERT (``insert_users_with_outcomes``, which writes ``now`` as created_at/updated_at)."""
    return {
        **user_values(data),
        "id": user_id,
        "tenant_id": tenant_id,
        "version": 1,
        "created_at": now,
        "updated_at": now,
        "created_by": "scim",
        "seq_ms": seq[0],
        "seq_n": seq[1],
    }


async def insert_users_bulk(
    conn: asyncpg.Connection, rows: list[tuple[uuid.UUID, uuid.UUID, UserData, Seq]]
) -> dict[uuid.UUID, asyncpg.Record]:
    """Many creates in one statement (the provisioner's fast path; any error aborts it).
    ``rows`` are (tenant_id, user_id, data, seq); returns the inserted rows by id."""
    values = [
        {**user_values(data), "id": user_id, "tenant_id": tenant_id, "seq_ms": seq[0], "seq_n": seq[1]}
        for tenant_id, user_id, data, seq in rows
    ]
    inserted = await conn.fetch(
        f"""INSERT INTO users ({", ".join(_BULK_USER_COLS)}) {_BULK_USER_ROWS} RETURNING {USER_COLUMNS}""",
        *_bulk_user_columns(values),
    )
    return {r["id"]: r for r in inserted}


async def insert_users_with_outcomes(
    conn: asyncpg.Connection,
    rows: list[dict[str, Any]],
    now: datetime,
    inbox: list[tuple[uuid.UUID, uuid.UUID, str, str]],
) -> None:
    """A batch of creates and their inbox rows as ONE statement, outside any explicit
    transaction: Postgres commits it alone, atomically, in a single round trip (instead of
    BEGIN, INSERT, INSERT, COMMIT). A taken userName or a redelivered event (inbox key)
    fails the whole statement and nothing is written."""
    ev, te, ty, oc = (list(c) for c in zip(*inbox, strict=True))
    # One user.created event per create, in the same statement (the outbox, docs/events.md).
    events = [(n, EventSpec("user.created", "User", r["id"])) for n, r in enumerate(rows, 1)]
    await conn.execute(
        f"""WITH created AS (
                INSERT INTO users ({", ".join(_BULK_USER_COLS)}, version, created_at, updated_at, created_by)
                SELECT r.*, 1, $15::timestamptz, $15::timestamptz, 'scim' FROM ({_BULK_USER_ROWS}) AS r),
            x AS (SELECT e, t, y, o::jsonb AS o, n
                  FROM unnest($16::uuid[], $17::uuid[], $18::text[], $19::text[]) WITH ORDINALITY AS x(e, t, y, o, n)),
            inbox_rows AS (INSERT INTO inbox (event_id, tenant_id, type, outcome) SELECT e, t, y, o FROM x)
            """
        + _EVENTS_INSERT.format(k="$20", ty="$21", rt="$22", ri="$23", d="$24", ch="$25"),
        *_bulk_user_columns(rows),
        now,
        ev,
        te,
        ty,
        oc,
        *event_columns(events),
    )


async def lock_user(conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND tenant_id = $2 FOR NO KEY UPDATE", user_id, tenant_id
    )
    if row is None:
        raise PermanentError("not_found", f"user {user_id} not found")
    return row


_UPDATABLE = (
    "user_name",
    "external_id",
    "active",
    "display_name",
    "given_name",
    "family_name",
    "emails",
    "sso_name",
    "attributes",
)


def _merged(row: Any, values: dict[str, Any], seq: Seq) -> dict[str, Any]:
    """``values`` over ``row``'s updatable columns, the primary email derived, the newest
    stream position kept."""
    merged = {k: row[k] for k in _UPDATABLE}
    merged.update(values)
    merged["email"] = primary_email(merged["emails"] or [])
    merged["seq_ms"], merged["seq_n"] = newer(row, seq)
    return merged


async def update_user(
    conn: asyncpg.Connection, row: asyncpg.Record, values: dict[str, Any], seq: Seq = (0, 0)
) -> asyncpg.Record:
    """Write ``values`` over ``row``, bump the version, remember the newest stream position."""
    merged = _merged(row, values, seq)
    try:
        return await conn.fetchrow(
            f"""UPDATE users SET user_name = $2, external_id = $3, active = $4, display_name = $5,
                       given_name = $6, family_name = $7, email = $8, emails = $9, sso_name = $10,
                       attributes = $11, version = version + 1, updated_at = now(), seq_ms = $12, seq_n = $13
                WHERE id = $1 RETURNING {USER_COLUMNS}""",
            row["id"],
            merged["user_name"],
            merged["external_id"],
            merged["active"],
            merged["display_name"],
            merged["given_name"],
            merged["family_name"],
            merged["email"],
            merged["emails"],
            merged["sso_name"],
            merged["attributes"],
            merged["seq_ms"],
            merged["seq_n"],
        )
    except asyncpg.UniqueViolationError as err:
        raise _unique(err, "userName", merged["user_name"]) from None


async def update_users_bulk(
    conn: asyncpg.Connection, updates: list[tuple[Any, dict[str, Any], Seq]]
) -> dict[uuid.UUID, asyncpg.Record]:
    """``update_user`` for several distinct users in one statement (the fast path; any
    error, e.g. a userName taken, aborts it). ``updates``: (row, values, seq)."""
    merged = [{**_merged(row, values, seq), "id": row["id"]} for row, values, seq in updates]
    cols = _columns(merged, ("id", *_UPDATABLE, "email", "seq_ms", "seq_n"))
    rows = await conn.fetch(
        f"""UPDATE users u SET user_name = r.u, external_id = r.x, active = r.a, display_name = r.d,
                   given_name = r.g, family_name = r.f, emails = r.es::jsonb, sso_name = r.s,
                   attributes = r.at::jsonb, email = r.e, version = u.version + 1, updated_at = now(),
                   seq_ms = r.sm, seq_n = r.sn
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[],
                        $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::bigint[])
                 AS r(i, u, x, a, d, g, f, es, s, at, e, sm, sn)
            WHERE u.id = r.i
            RETURNING {", ".join("u." + c for c in USER_COLUMNS.split(", "))}""",
        *cols,
    )
    return {r["id"]: r for r in rows}


# A user's groups (a user may be a member twice: by SCIM and by JIT).
_GROUPS_OF = """SELECT DISTINCT g.id, g.display_name FROM memberships m JOIN groups g ON g.id = m.group_id
    WHERE m.user_id = {user}"""


async def user_groups(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[GroupRef]:
    rows = await conn.fetch(f"{_GROUPS_OF.format(user='$1')} ORDER BY g.display_name, g.id", user_id)
    return [GroupRef(id=r["id"], display_name=r["display_name"]) for r in rows]


async def delete_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    # The user's memberships go with it (ON DELETE CASCADE), so each of its groups gets a
    # new version first: a group's ETag covers its members (RFC 7644 §3.14), and an
    # If-None-Match with the old one must not answer 304 with a stale member list.
    # Groups are locked in id order, as lock_in_order does.
    await conn.execute(
        """UPDATE groups g SET version = g.version + 1, updated_at = now()
           FROM (SELECT id FROM groups WHERE id IN (SELECT group_id FROM memberships WHERE user_id = $1)
                 ORDER BY id FOR NO KEY UPDATE) AS s
           WHERE g.id = s.id""",
        user_id,
    )
    await conn.execute("DELETE FROM users WHERE id = $1", user_id)


async def find_user_for_login(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_name: str, email: str | None
) -> asyncpg.Record | None:
    """The user a SAML login refers to: same userName, else same email (case-insensitive),
    so a user SCIM created first is matched, not duplicated."""
    return await conn.fetchrow(
        f"""SELECT {USER_COLUMNS} FROM users
            WHERE tenant_id = $1 AND (lower(user_name) = lower($2) OR ($3::text IS NOT NULL AND lower(email) = lower($3)))
            ORDER BY (lower(user_name) = lower($2)) DESC LIMIT 1 FOR NO KEY UPDATE""",
        tenant_id,
        user_name,
        email,
    )


async def login_connections(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> list[asyncpg.Record]:
    """The tenant's SSO connections, as the JIT identity rules need them."""
    return await conn.fetch(
        """SELECT id, name, verified_domains, groups_absent, groups_claim_seen
           FROM sso_connections WHERE tenant_id = $1 ORDER BY name""",
        tenant_id,
    )


async def user_by_identity(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, connection_id: uuid.UUID, name_id: str
) -> asyncpg.Record | None:
    """The user linked to (connection, NameID), locked."""
    return await conn.fetchrow(
        f"""SELECT {", ".join("u." + c for c in USER_COLUMNS.split(", "))} FROM user_identities i
            JOIN users u ON u.id = i.user_id
            WHERE i.connection_id = $1 AND i.name_id = $2 AND u.tenant_id = $3 FOR NO KEY UPDATE OF u""",
        connection_id,
        name_id,
        tenant_id,
    )


async def identity_name_id(conn: asyncpg.Connection, connection_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    """The NameID a connection has linked to this user, if any."""
    return await conn.fetchval(
        "SELECT name_id FROM user_identities WHERE connection_id = $1 AND user_id = $2", connection_id, user_id
    )


async def link_identity(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    connection_id: uuid.UUID,
    name_id: str,
    user_id: uuid.UUID,
    linked_by: str = "jit",
) -> None:
    """Link (connection, NameID) to the user; the user's earlier NameID on this
    connection, if any, is replaced (a NameID change at the IdP)."""
    await conn.execute(
        """INSERT INTO user_identities (tenant_id, connection_id, name_id, user_id, linked_by)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (connection_id, user_id) DO UPDATE SET name_id = EXCLUDED.name_id,
               linked_by = EXCLUDED.linked_by, linked_at = now()""",
        tenant_id,
        connection_id,
        name_id,
        user_id,
        linked_by,
    )


async def mark_groups_claim_seen(conn: asyncpg.Connection, connection_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE sso_connections SET groups_claim_seen = true WHERE id = $1 AND NOT groups_claim_seen", connection_id
    )


# --------------------------------------------------------------------------- groups


async def insert_group(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    group_id: uuid.UUID,
    data: GroupData,
    created_by: str = "scim",
    seq: Seq = (0, 0),
) -> asyncpg.Record:
    try:
        return await conn.fetchrow(
            f"""INSERT INTO groups (id, tenant_id, display_name, external_id, attributes, created_by, seq_ms, seq_n)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {GROUP_COLUMNS}""",
            group_id,
            tenant_id,
            data.display_name,
            data.external_id,
            dict(data.attributes),
            created_by,
            seq[0],
            seq[1],
        )
    except asyncpg.UniqueViolationError as err:
        if err.constraint_name == "groups_pkey":
            raise PermanentError("uniqueness", f"group id {group_id} already exists", field="id") from None
        raise _unique(err, "displayName", data.display_name) from None
    except asyncpg.ForeignKeyViolationError:
        raise PermanentError("invalid_value", "unknown tenant", field="tenant") from None


async def lock_group(conn: asyncpg.Connection, tenant_id: uuid.UUID, group_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {GROUP_COLUMNS} FROM groups WHERE id = $1 AND tenant_id = $2 FOR NO KEY UPDATE", group_id, tenant_id
    )
    if row is None:
        raise PermanentError("not_found", f"group {group_id} not found")
    return row


async def update_group(
    conn: asyncpg.Connection, row: asyncpg.Record, data: GroupData | None, seq: Seq = (0, 0)
) -> asyncpg.Record:
    seq_ms, seq_n = newer(row, seq)
    if data is None:  # membership change only: bump the version (the ETag covers members)
        return await conn.fetchrow(
            f"""UPDATE groups SET version = version + 1, updated_at = now(), seq_ms = $2, seq_n = $3
                WHERE id = $1 RETURNING {GROUP_COLUMNS}""",
            row["id"],
            seq_ms,
            seq_n,
        )
    try:
        return await conn.fetchrow(
            f"""UPDATE groups SET display_name = $2, external_id = $3, attributes = $4,
                       version = version + 1, updated_at = now(), seq_ms = $5, seq_n = $6
                WHERE id = $1 RETURNING {GROUP_COLUMNS}""",
            row["id"],
            data.display_name,
            data.external_id,
            dict(data.attributes),
            seq_ms,
            seq_n,
        )
    except asyncpg.UniqueViolationError as err:
        raise _unique(err, "displayName", data.display_name) from None


async def touch_groups(conn: asyncpg.Connection, group_ids: list[uuid.UUID], seq: Seq = (0, 0)) -> list[asyncpg.Record]:
    """``update_group(row, None)`` for several groups in one statement: a new version and
    lastModified for groups whose members changed (a JIT login's memberships; the ETag
    covers members, RFC 7644 §3.14), the newest stream position kept. Locked in id
    order, as lock_in_order locks them — but after the login's user, as delete_user
    locks groups after its user: a batch holding one of these groups and waiting for
    that user deadlocks with it, and Postgres's deadlock check ends one (a transient
    error: that batch is retried)."""
    if not group_ids:
        return []
    return await conn.fetch(
        f"""UPDATE groups g SET version = g.version + 1, updated_at = now(),
                   seq_ms = CASE WHEN (g.seq_ms, g.seq_n) < ($2::bigint, $3::bigint) THEN $2 ELSE g.seq_ms END,
                   seq_n = CASE WHEN (g.seq_ms, g.seq_n) < ($2::bigint, $3::bigint) THEN $3 ELSE g.seq_n END
            FROM (SELECT id FROM groups WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE) AS s
            WHERE g.id = s.id RETURNING {", ".join("g." + c for c in GROUP_COLUMNS.split(", "))}""",
        sorted(set(group_ids)),
        seq[0],
        seq[1],
    )


async def delete_group(conn: asyncpg.Connection, group_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM groups WHERE id = $1", group_id)


async def known_users(conn: asyncpg.Connection, tenant_id: uuid.UUID, user_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of ``user_ids`` are users of this tenant."""
    if not user_ids:
        return set()
    rows = await conn.fetch("SELECT id FROM users WHERE tenant_id = $1 AND id = ANY($2::uuid[])", tenant_id, user_ids)
    return {r["id"] for r in rows}


async def other_memberships(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_ids: list[uuid.UUID], group_id: uuid.UUID
) -> list[asyncpg.Record]:
    """The users' memberships in groups other than ``group_id`` (user_id, group_id,
    user_name, display_name): what "one group per user" (core.member_adds_refusal) reads."""
    return await conn.fetch(
        """SELECT DISTINCT m.user_id, m.group_id, u.user_name, g.display_name FROM memberships m
           JOIN users u ON u.id = m.user_id JOIN groups g ON g.id = m.group_id
           WHERE m.tenant_id = $1 AND m.user_id = ANY($2::uuid[]) AND m.group_id <> $3""",
        tenant_id,
        user_ids,
        group_id,
    )


async def insert_members(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    group_id: uuid.UUID,
    user_ids: list[uuid.UUID],
    source: str,
    added: list[uuid.UUID] | None = None,
) -> int:
    """Add memberships the caller decided on (core.member_adds_refusal); ``added``
    collects the user ids actually added (for the member events)."""
    if not user_ids:
        return 0
    sql = """INSERT INTO memberships (tenant_id, group_id, user_id, source)
           SELECT $1, $2, unnest($3::uuid[]), $4 ON CONFLICT DO NOTHING"""
    # sorted: one row order for every writer
    if added is not None:
        rows = await conn.fetch(sql + " RETURNING user_id", tenant_id, group_id, sorted(user_ids), source)
        added.extend(r["user_id"] for r in rows)
        return len(rows)
    status = await conn.execute(sql, tenant_id, group_id, sorted(user_ids), source)
    return int(status.split()[-1])


async def remove_members(
    conn: asyncpg.Connection,
    group_id: uuid.UUID,
    user_ids: list[uuid.UUID],
    source: str,
    removed: list[uuid.UUID] | None = None,
) -> int:
    """``removed`` collects the user ids actually removed (for the member events)."""
    if not user_ids:
        return 0
    sql = "DELETE FROM memberships WHERE group_id = $1 AND source = $2 AND user_id = ANY($3::uuid[])"
    if removed is not None:
        rows = await conn.fetch(sql + " RETURNING user_id", group_id, source, user_ids)
        removed.extend(r["user_id"] for r in rows)
        return len(rows)
    status = await conn.execute(sql, group_id, source, user_ids)
    return int(status.split()[-1])


async def member_ids(conn: asyncpg.Connection, group_id: uuid.UUID, source: str) -> set[uuid.UUID]:
    return {
        r["user_id"]
        for r in await conn.fetch(
            "SELECT user_id FROM memberships WHERE group_id = $1 AND source = $2", group_id, source
        )
    }


async def resolve_jit_groups(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, claims: list[str], created: list[asyncpg.Record] | None = None
) -> dict[str, uuid.UUID]:
    """Claim value → group id: matched by externalId, then displayName (domain.
    match_group_claims); a group first seen in a claim is created, with the claim as its
    externalId when it looks like an Entra object id (so Entra's SCIM adopts it later).
    ``created`` collects the rows of the groups made here (for group.created events)."""
    if not claims:
        return {}
    select = """SELECT id, display_name, external_id FROM groups
                WHERE tenant_id = $1 AND (external_id = ANY($2::text[]) OR lower(display_name) = ANY($3::text[]))"""
    args = (tenant_id, claims, [c.lower() for c in claims])
    found, missing = match_group_claims(claims, [dict(r) for r in await conn.fetch(select, *args)])
    if not missing:
        return found
    made = await conn.fetch(
        f"""INSERT INTO groups (id, tenant_id, display_name, external_id, created_by)
           SELECT gen_random_uuid(), $1, n, x, 'jit' FROM unnest($2::text[], $3::text[]) AS r(n, x)
           ON CONFLICT (tenant_id, lower(display_name)) DO NOTHING RETURNING {GROUP_COLUMNS}""",
        tenant_id,
        missing,
        [c if looks_like_object_id(c) else None for c in missing],
    )
    if created is not None:
        created.extend(made)
    found, _ = match_group_claims(claims, [dict(r) for r in await conn.fetch(select, *args)])
    return found


async def jit_member_groups(conn: asyncpg.Connection, user_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """The groups JIT made this user a member of: id → displayName, by name (so the
    groups a login leaves, and their events, come in one order whatever the ids)."""
    rows = await conn.fetch(
        """SELECT g.id, g.display_name FROM memberships m JOIN groups g ON g.id = m.group_id
           WHERE m.user_id = $1 AND m.source = 'jit' ORDER BY lower(g.display_name)""",
        user_id,
    )
    return {r["id"]: r["display_name"] for r in rows}


async def member_of(conn: asyncpg.Connection, user_id: uuid.UUID) -> dict[uuid.UUID, set[str]]:
    """Every group of the user → the sources of its memberships."""
    out: dict[uuid.UUID, set[str]] = {}
    for r in await conn.fetch("SELECT group_id, source FROM memberships WHERE user_id = $1", user_id):
        out.setdefault(r["group_id"], set()).add(r["source"])
    return out


async def adoptable_jit_group(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, external_id: str
) -> asyncpg.Record | None:
    """A group JIT created from a claim with this externalId (a SCIM create adopts it)."""
    return await conn.fetchrow(
        f"""SELECT {GROUP_COLUMNS} FROM groups WHERE tenant_id = $1 AND external_id = $2 AND created_by = 'jit'
            ORDER BY created_at LIMIT 1 FOR NO KEY UPDATE""",
        tenant_id,
        external_id,
    )


async def adopt_group(conn: asyncpg.Connection, row: asyncpg.Record, data: GroupData, seq: Seq) -> asyncpg.Record:
    """SCIM takes over a JIT-created group: its displayName and attributes, and it is
    SCIM's from now on (JIT memberships stay JIT's)."""
    seq_ms, seq_n = newer(row, seq)
    try:
        return await conn.fetchrow(
            f"""UPDATE groups SET display_name = $2, external_id = $3, attributes = $4, created_by = 'scim',
                       version = version + 1, updated_at = now(), seq_ms = $5, seq_n = $6
                WHERE id = $1 RETURNING {GROUP_COLUMNS}""",
            row["id"],
            data.display_name,
            data.external_id,
            dict(data.attributes),
            seq_ms,
            seq_n,
        )
    except asyncpg.UniqueViolationError as err:
        raise _unique(err, "displayName", data.display_name) from None


async def join_groups(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID, group_ids: list[uuid.UUID], source: str
) -> list[uuid.UUID]:
    """Make the user a member of ``group_ids`` (one statement); the groups actually
    joined (a membership already there is left as it is)."""
    if not group_ids:
        return []
    rows = await conn.fetch(
        """INSERT INTO memberships (tenant_id, group_id, user_id, source)
           SELECT $1, unnest($2::uuid[]), $3, $4 ON CONFLICT DO NOTHING RETURNING group_id""",
        tenant_id,
        sorted(set(group_ids)),  # one row order for every writer
        user_id,
        source,
    )
    return [r["group_id"] for r in rows]


async def remove_user_from_groups(
    conn: asyncpg.Connection,
    user_id: uuid.UUID,
    group_ids: list[uuid.UUID],
    source: str,
    removed: list[uuid.UUID] | None = None,
) -> None:
    """``removed`` collects the group ids the user actually left (for the member events)."""
    if group_ids:
        rows = await conn.fetch(
            "DELETE FROM memberships WHERE user_id = $1 AND source = $2 AND group_id = ANY($3::uuid[]) RETURNING group_id",
            user_id,
            source,
            group_ids,
        )
        if removed is not None:
            removed.extend(r["group_id"] for r in rows)


# --------------------------------------------------------------------------- tenants & inbox


async def lock_in_order(
    conn: asyncpg.Connection,
    user_ids: list[uuid.UUID],
    group_ids: list[uuid.UUID],
    *,
    with_groups: bool = False,
    also_ordered: Iterable[uuid.UUID] = (),
) -> dict[uuid.UUID, asyncpg.Record]:
    """Lock every user and group a batch will change, groups first, each in id order;
    return the locked users' rows (so the batch need not read them again), with each
    user's groups if ``with_groups`` (see ``locked_groups``).

    Two workers' batches touching the same rows then queue on the first row they share
    instead of deadlocking (each deadlock costs Postgres's deadlock_timeout, 1 s, and a
    retried batch). NO KEY UPDATE, because no key changes: it does not block the KEY SHARE
    locks that foreign keys take when memberships are inserted.

    Before any row lock, a transaction-level advisory lock per resource (sorted): they
    assign no transaction id, so a batch that must wait for another's resource gets its
    xid only after that batch committed, and the event feed's (xid, id) order is then the
    commit order of each resource's changes (docs/events.md). Without them, a batch that
    had locked another row first (and so had an xid) could wait on this row and commit
    its change after a batch with a higher xid. Waiting here holds no lock, so this adds
    no deadlock. ``also_ordered``: resources that get only the advisory lock (those a
    JIT login may change, ``jit_login_resources``; the login locks their rows itself)."""
    keys = sorted({advisory_key(i) for i in (*group_ids, *user_ids, *also_ordered)})
    if keys:
        await conn.execute("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k", keys)
    if group_ids:
        await conn.execute(
            "SELECT 1 FROM groups WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE", sorted(set(group_ids))
        )
    if not user_ids:
        return {}
    groups = f", ({_GROUPS_OF_U}) AS groups" if with_groups else ""
    rows = await conn.fetch(
        f"""SELECT {USER_COLUMNS}{groups} FROM users u
            WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE""",
        sorted(set(user_ids)),
    )
    return {r["id"]: r for r in rows}


async def jit_login_resources(conn: asyncpg.Connection, tenant_id: uuid.UUID, p: JitLogin) -> set[uuid.UUID]:
    """The users and groups a JIT login may change, read without a lock (so without a
    transaction id): the user its NameID is linked to or its userName/email matches, the
    existing groups its claim names, and that user's JIT groups (a sync login may leave
    them). ``lock_in_order`` takes their advisory locks with the batch's own, so the
    login's events sort after those of a batch it waits for (docs/events.md). A resource
    that changes between this read and the login (a group renamed to a claimed name
    meanwhile) is changed without that order; the events still carry their versions."""
    rows = await conn.fetch(
        """SELECT i.user_id FROM user_identities i
            WHERE i.connection_id = $2 AND i.name_id = $3 AND i.tenant_id = $1
           UNION
           SELECT id FROM users
            WHERE tenant_id = $1 AND (lower(user_name) = lower($4) OR ($5::text IS NOT NULL AND lower(email) = lower($5)))""",
        tenant_id,
        p.connection_id,
        p.name_id,
        p.user_name,
        p.email,
    )
    users = [r[0] for r in rows]
    claims = list(p.groups or ())
    groups = await conn.fetch(
        """SELECT id FROM groups
            WHERE tenant_id = $1 AND (external_id = ANY($2::text[]) OR lower(display_name) = ANY($3::text[]))
           UNION
           SELECT group_id FROM memberships WHERE user_id = ANY($4::uuid[]) AND source = 'jit'""",
        tenant_id,
        claims,
        [c.lower() for c in claims],
        users,
    )
    return {*users, *(r[0] for r in groups)}


def advisory_key(resource_id: uuid.UUID) -> int:
    """A resource's advisory lock key: its id's first 64 bits (random in a uuid4)."""
    return int.from_bytes(resource_id.bytes[:8], "big", signed=True)


# A locked user's groups, read by the same statement, ordered as ``user_groups`` orders them.
_GROUPS_OF_U = f"""SELECT coalesce(jsonb_agg(jsonb_build_array(x.id, x.display_name) ORDER BY x.display_name, x.id), '[]')
    FROM ({_GROUPS_OF.format(user="u.id")}) AS x"""


def locked_groups(row: asyncpg.Record) -> list[GroupRef]:
    """The groups ``lock_in_order`` read with a user's row."""
    return [GroupRef(id=uuid.UUID(gid), display_name=name) for gid, name in row["groups"]]


async def tenant_policies(conn: asyncpg.Connection, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT id, deprovision, one_group_per_user, immutable_user_name FROM tenants WHERE id = ANY($1::uuid[])",
        tenant_ids,
    )
    return {r["id"]: r for r in rows}


async def stored_outcomes(conn: asyncpg.Connection, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    rows = await conn.fetch("SELECT event_id, outcome FROM inbox WHERE event_id = ANY($1::uuid[])", event_ids)
    return {r["event_id"]: r["outcome"] for r in rows}


async def record_outcome(
    conn: asyncpg.Connection,
    event_id: uuid.UUID,
    tenant_id: uuid.UUID,
    type_: str,
    outcome_json: str,
    events: list[EventSpec] | tuple[EventSpec, ...] = (),
) -> None:
    """One command's inbox row and its events (the careful path, in its savepoint)."""
    await record_outcomes(conn, [(event_id, tenant_id, type_, outcome_json)], [(1, e) for e in events])


# The outbox (docs/events.md): each event row is joined to its command's inbox row by
# position (k, 1-based) and takes source, correlation id, time, and unless given its data
# and changes, from the outcome JSON the statement parses once for the inbox. The ORDER BY
# makes the identity ids follow the events' order within the batch.
_EVENTS_INSERT = """INSERT INTO events (tenant_id, type, occurred_at, source, correlation_id, command_id,
                                   resource_type, resource_id, data, changes)
    SELECT x.t, v.ty, (x.o->>'completed_at')::timestamptz, x.o->'source', x.o->>'correlation_id', x.e, v.rt, v.ri,
           coalesce(v.d::jsonb, x.o->'resource', 'null'::jsonb), CASE WHEN v.ch THEN x.o->'changes' END
    FROM unnest({k}::int[], {ty}::text[], {rt}::text[], {ri}::uuid[], {d}::text[], {ch}::bool[])
         WITH ORDINALITY AS v(k, ty, rt, ri, d, ch, n)
    JOIN x ON x.n = v.k ORDER BY v.n"""


def event_columns(events: list[tuple[int, EventSpec]]) -> list[list[Any]]:
    """Column arrays for ``_EVENTS_INSERT`` from (outcome position, EventSpec)."""
    return [
        [k for k, _ in events],
        [e.type for _, e in events],
        [e.resource_type for _, e in events],
        [e.resource_id for _, e in events],
        [e.data for _, e in events],
        [e.with_changes for _, e in events],
    ]


async def record_outcomes(
    conn: asyncpg.Connection,
    rows: list[tuple[uuid.UUID, uuid.UUID, str, str]],
    events: list[tuple[int, EventSpec]] | None = None,
) -> None:
    """Inbox rows for a whole batch and their events in one statement: rows are (event_id,
    tenant_id, type, outcome JSON); events (position in rows, 1-based; EventSpec)."""
    if not rows:
        return
    ev, te, ty, oc = zip(*rows, strict=True)
    if not events:
        await conn.execute(
            """INSERT INTO inbox (event_id, tenant_id, type, outcome)
               SELECT e, t, y, o::jsonb FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS x(e, t, y, o)""",
            list(ev),
            list(te),
            list(ty),
            list(oc),
        )
        return
    await conn.execute(
        """WITH x AS (SELECT e, t, y, o::jsonb AS o, n
                      FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) WITH ORDINALITY AS x(e, t, y, o, n)),
                inbox_rows AS (INSERT INTO inbox (event_id, tenant_id, type, outcome) SELECT e, t, y, o FROM x)
           """
        + _EVENTS_INSERT.format(k="$5", ty="$6", rt="$7", ri="$8", d="$9", ch="$10"),
        list(ev),
        list(te),
        list(ty),
        list(oc),
        *event_columns(events),
    )


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)
