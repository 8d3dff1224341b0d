"""Tenants and their policies: shared by `provisio tenant …` and the console.

Every change is recorded in the audit trail with its actor (``cli:<OS user>``, a staff
member's email, ``setup:<link>``)."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg

from .audit import record_staff_action, resolve_tenant
from .errors import USAGE, AdminError

DEPROVISION = ("deactivate", "delete")

__all__ = ["create", "list_tenants", "parse_rate_limit", "record", "resolve_tenant", "set_policy", "tenant_name"]


async def record(
    conn: asyncpg.Connection,
    actor: str,
    action: str,
    tenant_id: UUID | None,
    *,
    label: str | None = None,
    **kwargs: Any,
) -> None:
    """One audit row for an admin action (source kind ``cli``, ``setup`` or ``staff`` by the
    actor, the actor as its label, so ``provisio audit search --connection cli:alice``
    finds what alice did). A console user is recorded by account id with ``label`` her
    email (as the console's own actions are)."""
    await record_staff_action(
        conn, staff_id=actor, staff_email=label or actor, action=action, tenant_id=tenant_id, **kwargs
    )


async def tenant_name(conn: asyncpg.Connection, tid: UUID) -> str:
    name = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", tid)
    if name is None:
        raise AdminError(f"unknown tenant {tid}")
    return str(name)


async def create(conn: asyncpg.Connection, name: str, deprovision: str = "delete", *, actor: str) -> UUID:
    name = name.strip().lower()
    tid = uuid.uuid4()
    async with conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO tenants (id, name, deprovision) VALUES ($1, $2, $3)", tid, name, deprovision
            )
        except asyncpg.UniqueViolationError:
            raise AdminError(f"tenant {name!r} already exists") from None
        except asyncpg.CheckViolationError:
            raise AdminError(
                f"invalid tenant name {name!r} or --deprovision {deprovision!r}: names are 1-63 "
                "lowercase letters, digits and dashes; deprovision is deactivate or delete"
            ) from None
        await record(
            conn,
            actor,
            "tenant.create",
            tid,
            resource_type="Tenant",
            changes={"tenant": {"before": None, "after": {"name": name, "deprovision": deprovision}}},
        )
    return tid


async def list_tenants(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT t.id, t.name, t.deprovision, t.one_group_per_user, t.immutable_user_name,
                  coalesce(t.rate_limit_per_s::text, 'default') AS rate_limit, t.created_at,
                  (SELECT count(*) FROM users u WHERE u.tenant_id = t.id) AS users,
                  (SELECT count(*) FROM scim_tokens k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS tokens
           FROM tenants t ORDER BY t.name"""
    )
    return [dict(r) for r in rows]


def parse_rate_limit(raw: str | None) -> int | None:
    """--rate-limit: a whole number of requests per second (0: unlimited), or 'default'
    (NULL: the gateway's PROVISIO_SCIM_RATE_LIMIT_PER_S)."""
    if raw is None or raw.strip().lower() == "default":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise AdminError(
            f"--rate-limit must be a whole number of requests per second or 'default', not {raw!r}"
        ) from None
    if not 0 <= value <= 1_000_000:
        raise AdminError("--rate-limit must be between 0 (unlimited) and 1000000")
    return value


_POLICY = ("deprovision", "one_group_per_user", "immutable_user_name", "rate_limit_per_s")


async def set_policy(
    conn: asyncpg.Connection,
    tid: UUID,
    *,
    actor: str,
    deprovision: str | None = None,
    one_group_per_user: bool | None = None,
    immutable_user_name: bool | None = None,
    rate_limit: str | None = None,
) -> None:
    """Change the given policies (None: unchanged; ``rate_limit`` 'default' resets it)."""
    if deprovision is not None and deprovision not in DEPROVISION:
        raise AdminError("--deprovision must be deactivate or delete", USAGE)
    rate = parse_rate_limit(rate_limit)
    async with conn.transaction():
        before = await conn.fetchrow(f"SELECT {', '.join(_POLICY)} FROM tenants WHERE id = $1 FOR UPDATE", tid)
        if before is None:
            raise AdminError(f"unknown tenant {tid}")
        after = await conn.fetchrow(
            f"""UPDATE tenants SET deprovision = coalesce($2, deprovision),
                   one_group_per_user = coalesce($3, one_group_per_user),
                   immutable_user_name = coalesce($4, immutable_user_name),
                   rate_limit_per_s = CASE WHEN $5 THEN $6::integer ELSE rate_limit_per_s END
               WHERE id = $1 RETURNING {", ".join(_POLICY)}""",
            tid,
            deprovision,
            one_group_per_user,
            immutable_user_name,
            rate_limit is not None,
            rate,
        )
        changes = {k: {"before": before[k], "after": after[k]} for k in _POLICY if before[k] != after[k]}
        await record(conn, actor, "tenant.policy", tid, resource_type="Tenant", changes=changes)
