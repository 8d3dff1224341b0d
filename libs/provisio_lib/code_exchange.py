"""The SAML one-time code exchange, shared by the SAML gateway (``POST /saml/token``)
and the App API (``POST /api/v1/saml/token``).

After a login the SAML gateway stores the profile under a one-time code in Redis and
redirects the browser to the application with the code; the application's backend
exchanges it, proving who it is with its connection's app secret (stored as SHA-256 like
SCIM tokens). Errors follow RFC 6749 §5.2 (``invalid_request``, ``invalid_client``,
``invalid_grant``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .tokens import hash_token
from .topology import Topology

MAX_CODE_LEN = 256
BAD_GRANT = "the code is unknown, already used or expired, or the app secret is not its connection's"
_NO_CONNECTION = uuid.UUID(int=0)


class ExchangeError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def code_key(topo: Topology, code: str) -> str:
    """The Redis key of a one-time code (its SHA-256: the code itself is never stored)."""
    return topo.key("saml", "code", hashlib.sha256(code.encode()).hexdigest())


async def secret_hash_from_db(pool: Any, connection_id: uuid.UUID) -> bytes | None:
    """The app secret hash of an SSO connection (None: no connection or no secret)."""
    value = await pool.fetchval("SELECT app_secret_hash FROM sso_connections WHERE id = $1", connection_id)
    return bytes(value) if value is not None else None


async def exchange_code(
    redis: Any, topo: Topology, code: Any, secret: str, secret_hash_of: Callable[[uuid.UUID], Awaitable[bytes | None]]
) -> dict[str, Any]:
    """The profile stored under ``code``, once, if ``secret`` is the app secret of the
    code's connection; ExchangeError otherwise. ``secret_hash_of`` reads the hash."""
    if not secret:
        raise ExchangeError(401, "invalid_client", "Authorization: Bearer <app secret> is required")
    if not isinstance(code, str) or not code or len(code) > MAX_CODE_LEN:
        raise ExchangeError(400, "invalid_request", "code is missing")
    key = code_key(topo, code)
    raw = await redis.get(key)
    entry = json.loads(raw) if raw is not None else None
    # One answer for an unknown, used or expired code and for a code issued to another
    # connection than the secret's (RFC 6749 §5.2 invalid_grant: "issued to another
    # client"), so a stolen code cannot be tested for validity without its secret. The
    # same lookup runs either way (no timing difference) and the hashes are compared in
    # constant time.
    stored = await secret_hash_of(uuid.UUID(entry["connection_id"]) if entry else _NO_CONNECTION)
    valid = hmac.compare_digest(hash_token(secret), stored or b"")
    if entry is None or stored is None or not valid:
        raise ExchangeError(400, "invalid_grant", BAD_GRANT)
    # Delete only after the caller proved who it is; DEL's count makes it single use
    # even when two exchanges race.
    if await redis.delete(key) != 1:
        raise ExchangeError(400, "invalid_grant", BAD_GRANT)
    profile: dict[str, Any] = entry["profile"]
    return profile
