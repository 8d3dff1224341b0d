"""SSO identity links: which user an SSO connection's NameID signs in as (`provisio sso
link/unlink`; docs/saml.md).

A link decides who may sign in as whom (a login through the connection with that NameID
becomes that user, whatever its claims say), so both are audited with their actor, and a
link only ever joins a user and a connection of the same tenant: the statement that writes
it selects both by the tenant's id, it does not trust the names it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from .audit import actor_kind
from .connections import get as get_connection
from .errors import NOT_FOUND, AdminError
from .tenants import record, tenant_name

MAX_NAME_ID = 512  # the gateway's claim limit for a NameID (docs/saml.md "Claim limits")


@dataclass(frozen=True)
class Link:
    user_id: UUID
    user_name: str
    connection: str
    name_id: str
    before: str | None  # the user's NameID on this connection before, if it had one


def check_name_id(name_id: str) -> None:
    if not name_id.strip() or len(name_id) > MAX_NAME_ID:
        raise AdminError(f"NAMEID must be 1-{MAX_NAME_ID} characters")


async def link(
    conn: asyncpg.Connection,
    tid: UUID,
    connection: str,
    user: str,
    name_id: str,
    *,
    actor: str,
    tenant_label: str | None = None,
) -> Link:
    """Link ``name_id`` of the tenant's connection to its user ``user`` (userName, any
    letter case, or id). The user's earlier NameID on this connection, if any, is
    replaced (an IdP-side NameID change: one identity per user and connection). A NameID
    linked to another user is refused: it is unlinked first, on purpose."""
    check_name_id(name_id)
    async with conn.transaction():
        row = await get_connection(conn, tid, connection, tenant_label=tenant_label)
        found = await conn.fetchrow(
            "SELECT id, user_name FROM users WHERE tenant_id = $1 AND (lower(user_name) = lower($2) OR id::text = $2)",
            tid,
            user.strip(),
        )
        if found is None:
            raise AdminError(f"tenant {tenant_label or await tenant_name(conn, tid)!r} has no user {user!r}")
        taken = await conn.fetchval(
            "SELECT u.user_name FROM user_identities i JOIN users u ON u.id = i.user_id "
            "WHERE i.connection_id = $1 AND i.name_id = $2 AND i.user_id <> $3",
            row["id"],
            name_id,
            found["id"],
        )
        if taken:
            raise AdminError(f"NameID {name_id!r} of {connection} is linked to {taken!r}; unlink it first")
        before = await conn.fetchrow(
            "SELECT name_id, linked_by FROM user_identities WHERE connection_id = $1 AND user_id = $2",
            row["id"],
            found["id"],
        )
        kind = actor_kind(actor)
        try:
            # Connection and user joined on the tenant's id here, in the statement that
            # writes the link: nothing but a same-tenant pair can be inserted.
            written = await conn.fetchval(
                """INSERT INTO user_identities (tenant_id, connection_id, name_id, user_id, linked_by)
                   SELECT c.tenant_id, c.id, $3, u.id, $5
                   FROM sso_connections c JOIN users u ON u.tenant_id = c.tenant_id
                   WHERE c.tenant_id = $4 AND c.id = $1 AND u.id = $2
                   ON CONFLICT (connection_id, user_id) DO UPDATE SET name_id = EXCLUDED.name_id,
                       linked_by = EXCLUDED.linked_by, linked_at = now()
                   RETURNING user_id""",
                row["id"],
                found["id"],
                name_id,
                tid,
                kind,
            )
        except asyncpg.UniqueViolationError:
            # Linked to another user (by a login or another operator) since the check above.
            raise AdminError(f"NameID {name_id!r} of {connection} is linked to another user; unlink it first") from None
        if written is None:  # not reachable: both were found in this tenant
            raise AdminError(f"user {user!r} and connection {connection!r} are not of one tenant")
        await record(
            conn,
            actor,
            "sso.link",
            tid,
            resource_type="User",
            resource_id=found["id"],
            user_name=found["user_name"],
            notes=[f"connection {row['name']}", f"NameID {name_id}"],
            changes={
                "sso_identity": {
                    "before": {"connection": row["name"], **dict(before)} if before else None,
                    "after": {"connection": row["name"], "name_id": name_id, "linked_by": kind},
                }
            },
        )
    return Link(found["id"], found["user_name"], row["name"], name_id, before["name_id"] if before else None)


async def unlink(
    conn: asyncpg.Connection,
    tid: UUID,
    connection: str,
    name_id: str,
    *,
    actor: str,
    tenant_label: str | None = None,
) -> str:
    """Remove the link of ``name_id`` on the tenant's connection; returns the userName it
    was linked to. Its next login is matched anew (docs/saml.md)."""
    async with conn.transaction():
        row = await get_connection(conn, tid, connection, tenant_label=tenant_label)
        gone = await conn.fetchrow(
            """DELETE FROM user_identities i USING users u
               WHERE i.tenant_id = $3 AND i.connection_id = $1 AND i.name_id = $2 AND u.id = i.user_id
               RETURNING i.user_id, u.user_name, i.linked_by""",
            row["id"],
            name_id,
            tid,
        )
        if gone is None:
            raise AdminError(f"NameID {name_id!r} is not linked on {row['name']}", NOT_FOUND)
        await record(
            conn,
            actor,
            "sso.unlink",
            tid,
            resource_type="User",
            resource_id=gone["user_id"],
            user_name=gone["user_name"],
            notes=[f"connection {row['name']}", f"NameID {name_id}"],
            changes={
                "sso_identity": {
                    "before": {"connection": row["name"], "name_id": name_id, "linked_by": gone["linked_by"]},
                    "after": None,
                }
            },
        )
    return str(gone["user_name"])
