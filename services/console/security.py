"""Sessions, CSRF tokens and the login limiter of the console.

- Session: a random 256-bit id in a cookie signed with itsdangerous (HttpOnly,
  SameSite=Strict, Secure over https); Postgres keeps only its SHA-256 with the staff
  member, the CSRF token, and the login and last-seen times, so a session ends on the
  server (logout, idle or absolute expiry, account removed or reset) whatever the
  browser keeps.
- CSRF: every form carries the session's token (synchroniser token, OWASP CSRF cheat
  sheet); forms shown before login (login, set password) carry a signed token bound to
  a random nonce in a separate cookie (signed double submit).
- Login limiter: failed attempts counted per account and per source address in Redis
  (INCR, expiring with the window); at the limit, the form is refused before the
  password is even checked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "provisio_console"
FORM_COOKIE = "provisio_console_form"
_SESSION_SALT = "provisio-console-session"
_FORM_SALT = "provisio-console-form"


@dataclass(frozen=True)
class Session:
    id_hash: bytes
    staff_id: uuid.UUID
    email: str
    role: str
    csrf_token: str
    created_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Signer:
    """Signs cookie values (itsdangerous: HMAC-SHA1 over a key derived per salt, with a
    timestamp checked against a maximum age)."""

    def __init__(self, secret: str) -> None:
        self._session = URLSafeTimedSerializer(secret, salt=_SESSION_SALT)
        self._form = URLSafeTimedSerializer(secret, salt=_FORM_SALT)

    def session_cookie(self, session_id: str) -> str:
        return self._session.dumps(session_id)

    def session_id(self, cookie: str | None, max_age: int) -> str | None:
        if not cookie or len(cookie) > 512:
            return None
        try:
            value = self._session.loads(cookie, max_age=max_age)
        except BadSignature:  # also SignatureExpired
            return None
        return value if isinstance(value, str) else None

    def form_token(self, nonce: str) -> str:
        return self._form.dumps(nonce)

    def form_token_ok(self, token: str | None, nonce: str | None, max_age: int = 3600) -> bool:
        if not token or not nonce or len(token) > 512:
            return False
        try:
            value = self._form.loads(token, max_age=max_age)
        except BadSignature:
            return False
        return isinstance(value, str) and hmac.compare_digest(value, nonce)


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def csrf_ok(session: Session, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf_token.encode(), str(token).encode())


async def create_session(conn: asyncpg.Connection, staff_id: uuid.UUID, source: str | None) -> str:
    """A new session for a staff member who just logged in; returns its id (for the cookie)."""
    session_id = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO staff_sessions (id_hash, staff_id, csrf_token, source) VALUES ($1, $2, $3, $4)",
        _hash(session_id),
        staff_id,
        secrets.token_urlsafe(32),
        (source or "")[:200],
    )
    return session_id


# Within the limits, and touched at most once a minute (not one write per page view).
_LOOKUP = """
UPDATE staff_sessions s SET last_seen_at = CASE WHEN s.last_seen_at < now() - interval '60 seconds'
                                               THEN now() ELSE s.last_seen_at END
FROM staff st
WHERE s.id_hash = $1 AND st.id = s.staff_id AND st.password_hash IS NOT NULL
  AND s.created_at > now() - make_interval(secs => $2)
  AND s.last_seen_at > now() - make_interval(secs => $3)
RETURNING s.id_hash, s.staff_id, st.email, st.role, s.csrf_token, s.created_at
"""


async def load_session(conn: asyncpg.Connection, session_id: str, *, idle_s: int, max_s: int) -> Session | None:
    row = await conn.fetchrow(_LOOKUP, _hash(session_id), float(max_s), float(idle_s))
    if row is None:
        return None
    return Session(row["id_hash"], row["staff_id"], row["email"], row["role"], row["csrf_token"], row["created_at"])


async def end_session(conn: asyncpg.Connection, session_id: str) -> None:
    await conn.execute("DELETE FROM staff_sessions WHERE id_hash = $1", _hash(session_id))


async def purge_sessions(conn: asyncpg.Connection, *, idle_s: int, max_s: int) -> int:
    status = await conn.execute(
        """DELETE FROM staff_sessions WHERE created_at < now() - make_interval(secs => $1)
           OR last_seen_at < now() - make_interval(secs => $2)""",
        float(max_s),
        float(idle_s),
    )
    return int(status.split()[-1])


# --------------------------------------------------------------------------- login limiter


def limiter_keys(prefix: str, email: str, address: str) -> tuple[str, str]:
    """Redis keys of the two counters. The email is hashed: key names show up in
    monitoring, and an unknown address typed by someone is nobody's business."""
    account = hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
    return f"{prefix}:console:login:account:{account}", f"{prefix}:console:login:address:{address[:64]}"


def locked_out(account_failures: int, address_failures: int, *, per_account: int, per_address: int) -> bool:
    """Pure rule: refused once either counter reached its limit."""
    return account_failures >= per_account or address_failures >= per_address


class LoginLimiter:
    def __init__(self, redis: object, prefix: str, *, per_account: int, per_address: int, window_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.per_account = per_account
        self.per_address = per_address
        self.window_s = window_s

    async def is_locked(self, email: str, address: str) -> bool:
        keys = limiter_keys(self.prefix, email, address)
        values = [await self.redis.get(k) for k in keys]  # type: ignore[attr-defined]
        counts = [int(v) if v else 0 for v in values]
        return locked_out(*counts, per_account=self.per_account, per_address=self.per_address)

    async def failed(self, email: str, address: str) -> None:
        for key in limiter_keys(self.prefix, email, address):
            # Fixed window from the first failure (EXPIRE NX keeps it from sliding forever).
            async with self.redis.pipeline(transaction=True) as pipe:  # type: ignore[attr-defined]
                pipe.incr(key)
                pipe.expire(key, self.window_s, nx=True)
                await pipe.execute()

    async def succeeded(self, email: str, address: str) -> None:
        account_key, _address_key = limiter_keys(self.prefix, email, address)
        await self.redis.delete(account_key)  # type: ignore[attr-defined]
