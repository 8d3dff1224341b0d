"""App API keys: shown once, stored as SHA-256 (like SCIM tokens, ``tokens.py``).

A key is for one tenant (``tenant_id``) or for every tenant (NULL). The App API looks
keys up by hash through ``api_keys_hash_key`` and compares the stored hash again in
constant time.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from .tokens import hash_token

KEY_PREFIX = "prk_"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyExists(Exception):
    """An active key already has this name."""


@dataclass(frozen=True)
class ApiKey:
    id: uuid.UUID
    name: str
    tenant_id: uuid.UUID | None  # None: every tenant

    def may_read(self, tenant_id: uuid.UUID) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id


async def create_key(conn: asyncpg.Connection, name: str, tenant_id: uuid.UUID | None) -> str:
    """Store a new key's hash; return the key (the only time it exists in clear)."""
    key = generate_key()
    try:
        await conn.execute(
            "INSERT INTO api_keys (id, name, tenant_id, key_hash) VALUES ($1, $2, $3, $4)",
            uuid.uuid4(),
            name,
            tenant_id,
            hash_token(key),
        )
    except asyncpg.UniqueViolationError:
        raise KeyExists(name) from None
    return key


async def list_keys(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT k.name, coalesce(t.name, '*') AS tenant, k.created_at, k.last_used_at, k.revoked_at,
                  CASE WHEN k.revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS status
           FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id ORDER BY k.created_at"""
    )
    return [dict(r) for r in rows]


async def revoke_key(conn: asyncpg.Connection, name: str) -> bool:
    status: str = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return status.split()[-1] != "0"


async def lookup_key(conn: Any, key: str) -> ApiKey | None:
    """The active key ``key`` is, or None."""
    digest = hash_token(key)
    row = await conn.fetchrow(
        "SELECT id, name, tenant_id, key_hash FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest
    )
    if row is None or not hmac.compare_digest(digest, bytes(row["key_hash"])):
        return None
    return ApiKey(id=row["id"], name=row["name"], tenant_id=row["tenant_id"])


async def touch_keys(conn: Any, ids: list[uuid.UUID]) -> None:
    if ids:
        await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::uuid[])", ids)
