"""SCIM bearer tokens of a tenant: shared by `provisio scim-token …`, the console and the
setup link's SCIM page. A token is shown once; only its SHA-256 is stored
(provisio_lib.tokens)."""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

import asyncpg

from provisio_lib.tokens import generate_token, hash_token

from .errors import AdminError
from .tenants import record


async def create(
    conn: asyncpg.Connection, tid: UUID, label: str | None, *, actor: str, default_prefix: str = "token"
) -> tuple[str, str]:
    """A new active token (label default ``<default_prefix>-N``); returns (label, token)."""
    async with conn.transaction():
        if not label:
            n = await conn.fetchval("SELECT count(*) FROM scim_tokens WHERE tenant_id = $1", tid)
            label = f"{default_prefix}-{n + 1}"
        label = label.strip()
        if not 1 <= len(label) <= 100:
            raise AdminError("a token label is 1-100 characters")
        token = generate_token()
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO scim_tokens (id, tenant_id, label, token_hash) VALUES ($1, $2, $3, $4)",
                    uuid.uuid4(),
                    tid,
                    label,
                    hash_token(token),
                )
        except asyncpg.UniqueViolationError:
            name = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", tid)
            raise AdminError(f"tenant {name!r} already has an active token labelled {label!r}") from None
        await record(conn, actor, "scim_token.create", tid, resource_type="ScimToken", notes=[f"token {label}"])
    return label, token


async def list_tokens(conn: asyncpg.Connection, tid: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT label, created_at, last_used_at, revoked_at,
                  CASE WHEN revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS status
           FROM scim_tokens WHERE tenant_id = $1 ORDER BY created_at""",
        tid,
    )
    return [dict(r) for r in rows]


async def revoke(conn: asyncpg.Connection, tid: UUID, label: str, *, actor: str) -> bool:
    """Revoke the tenant's active token of this label; False if there is none."""
    async with conn.transaction():
        status = await conn.execute(
            "UPDATE scim_tokens SET revoked_at = now() WHERE tenant_id = $1 AND label = $2 AND revoked_at IS NULL",
            tid,
            label,
        )
        done = int(status.split()[-1]) > 0
        if done:
            await record(conn, actor, "scim_token.revoke", tid, resource_type="ScimToken", notes=[f"token {label}"])
    return done


async def rotate(conn: asyncpg.Connection, tid: UUID, label: str, *, actor: str) -> str:
    """Replace the active token of this label by a new one (same label), atomically: the
    old one stops working at once (within the SCIM gateway's token cache). Returns the
    new token."""
    async with conn.transaction():
        if not await revoke(conn, tid, label, actor=actor):
            raise AdminError(f"there is no active token labelled {label!r} to rotate")
        _label, token = await create(conn, tid, label, actor=actor)
    return token
