"""Support-staff accounts of the web console: shared by `provisio staff …` and the
console's login and set-password pages.

An account starts without a password: ``add`` (or ``reset``) returns a one-time link
token (256 bits, stored as its SHA-256, expiring) whose page sets the password, hashed
with argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile).
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .errors import NOT_FOUND, USAGE, AdminError

ROLES = ("support", "admin")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes anything, but a megabyte password is an attack
LINK_TTL = timedelta(hours=48)
_EMAIL = re.compile(r"^[^@\s,;<>\"']{1,200}@[^@\s,;<>\"']{1,200}$")

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified when the account does not exist, so a login takes as long either way
    (made on first use: not at import, which every CLI command pays)."""
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Staff:
    id: uuid.UUID
    email: str
    role: str
    has_password: bool
    totp: bool
    created_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _staff(row: asyncpg.Record) -> Staff:
    return Staff(
        row["id"],
        row["email"],
        row["role"],
        row["password_hash"] is not None,
        row["totp_secret"] is not None,
        row["created_at"],
    )


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def normalise_email(email: str) -> str:
    email = email.strip()
    if not _EMAIL.match(email):
        raise AdminError(f"not an email address: {email!r}", USAGE)
    return email


def check_password(password: str, email: str) -> None:
    """NIST SP 800-63B §5.1.1.2: length, not composition rules; not the email itself."""
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"the password must be at least {MIN_PASSWORD} characters long", USAGE)
    if len(password) > MAX_PASSWORD:
        raise AdminError(f"the password must be at most {MAX_PASSWORD} characters long", USAGE)
    if password.strip().lower() == email.strip().lower():
        raise AdminError("the password must not be the email address", USAGE)


async def _new_link(conn: asyncpg.Connection, staff_id: uuid.UUID, ttl: timedelta) -> str:
    token = secrets.token_urlsafe(32)
    # A new link replaces every unused one: only the latest link works.
    await conn.execute("DELETE FROM staff_links WHERE staff_id = $1", staff_id)
    await conn.execute(
        "INSERT INTO staff_links (token_hash, staff_id, expires_at) VALUES ($1, $2, now() + $3::interval)",
        token_hash(token),
        staff_id,
        ttl,
    )
    return token


async def add(conn: asyncpg.Connection, email: str, role: str, ttl: timedelta = LINK_TTL) -> tuple[Staff, str]:
    """A new account without a password, and its one-time set-password link token."""
    email = normalise_email(email)
    if role not in ROLES:
        raise AdminError(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}", USAGE)
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                "INSERT INTO staff (id, email, role) VALUES ($1, $2, $3) RETURNING *", uuid.uuid4(), email, role
            )
        except asyncpg.UniqueViolationError:
            raise AdminError(f"staff member {email} exists already (new link: provisio staff reset {email})") from None
        token = await _new_link(conn, row["id"], ttl)
    return _staff(row), token


async def list_staff(conn: asyncpg.Connection) -> list[Staff]:
    return [_staff(r) for r in await conn.fetch("SELECT * FROM staff ORDER BY lower(email)")]


async def get(conn: asyncpg.Connection, email: str) -> Staff:
    row = await conn.fetchrow("SELECT * FROM staff WHERE lower(email) = lower($1)", email.strip())
    if row is None:
        raise AdminError(f"no staff member {email.strip()!r} (see `provisio staff list`)", NOT_FOUND)
    return _staff(row)


async def by_id(conn: asyncpg.Connection, staff_id: uuid.UUID) -> Staff | None:
    row = await conn.fetchrow("SELECT * FROM staff WHERE id = $1", staff_id)
    return _staff(row) if row else None


async def remove(conn: asyncpg.Connection, email: str) -> Staff:
    """Delete the account; its sessions and links go with it (ON DELETE CASCADE)."""
    s = await get(conn, email)
    await conn.execute("DELETE FROM staff WHERE id = $1", s.id)
    return s


async def reset(conn: asyncpg.Connection, email: str, ttl: timedelta = LINK_TTL) -> tuple[Staff, str]:
    """Clear the password, end every session, and issue a new one-time link (a reset is
    what one does for a forgotten or possibly known password)."""
    s = await get(conn, email)
    async with conn.transaction():
        await conn.execute("UPDATE staff SET password_hash = NULL, totp_secret = NULL WHERE id = $1", s.id)
        await conn.execute("DELETE FROM staff_sessions WHERE staff_id = $1", s.id)
        token = await _new_link(conn, s.id, ttl)
    return s, token


async def link_staff(conn: asyncpg.Connection, token: str) -> Staff | None:
    """The account of a link that is unused and unexpired, else None."""
    if not token or len(token) > 200:
        return None
    row = await conn.fetchrow(
        """SELECT s.* FROM staff_links l JOIN staff s ON s.id = l.staff_id
           WHERE l.token_hash = $1 AND l.used_at IS NULL AND l.expires_at > now()""",
        token_hash(token),
    )
    return _staff(row) if row else None


async def set_password(conn: asyncpg.Connection, token: str, password: str) -> Staff:
    """Use a one-time link: set the password (argon2id) and spend the link, atomically."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE staff_links SET used_at = now()
               WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING staff_id""",
            token_hash(token),
        )
        if row is None:
            raise AdminError(
                "this link has expired or was used already; ask an admin for a new one (provisio staff reset EMAIL)",
                NOT_FOUND,
            )
        s = await by_id(conn, row["staff_id"])
        assert s is not None  # the link's row cascades with the account
        check_password(password, s.email)
        await conn.execute(
            "UPDATE staff SET password_hash = $2, password_set_at = now() WHERE id = $1", s.id, _hasher.hash(password)
        )
        await conn.execute("DELETE FROM staff_sessions WHERE staff_id = $1", s.id)
    return s


async def set_totp(conn: asyncpg.Connection, email: str, enable: bool) -> tuple[Staff, str | None]:
    """Turn the second factor on (a new RFC 6238 secret; returns its otpauth:// URI for an
    authenticator app) or off."""
    import pyotp

    s = await get(conn, email)
    secret = pyotp.random_base32() if enable else None
    await conn.execute("UPDATE staff SET totp_secret = $2, totp_last_step = NULL WHERE id = $1", s.id, secret)
    uri = pyotp.TOTP(secret).provisioning_uri(name=s.email, issuer_name="Provisio console") if secret else None
    return s, uri


def totp_ok(secret: str, code: str) -> bool:
    """A 6-digit code of this 30-second step or the one before or after (clock drift,
    RFC 6238 §5.2)."""
    return totp_step(secret, code) is not None


def totp_step(secret: str, code: str, *, after: int | None = None, now: datetime | None = None) -> int | None:
    """The time step (RFC 6238 §4: unix time // 30) whose code this is — this step or
    the one before or after (clock drift, §5.2) — and later than ``after`` (the last
    step accepted: §5.2 says a verifier must not accept a code a second time). None if
    no such step."""
    import hmac

    import pyotp

    code = "".join(code.split())
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now or datetime.now().astimezone())
    for step in (current - 1, current, current + 1):
        if (after is None or step > after) and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


async def verify_login(conn: asyncpg.Connection, email: str, password: str, code: str = "") -> Staff | None:
    """The account if the password (and, when it has TOTP on, the one-time code) matches,
    else None (unknown account, no password set yet, wrong password or code: the same
    answer and about the same time)."""
    row = await conn.fetchrow("SELECT * FROM staff WHERE lower(email) = lower($1)", email.strip()[:400])
    stored = row["password_hash"] if row is not None else None
    try:
        ok = _hasher.verify(stored or _dummy_hash(), password[:MAX_PASSWORD]) and stored is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None:
        return None
    if row["totp_secret"] is not None:
        step = totp_step(row["totp_secret"], code, after=row["totp_last_step"])
        # Spend the step atomically: of two logins racing with one code, one wins.
        if step is None or not await conn.fetchval(
            """UPDATE staff SET totp_last_step = $2 WHERE id = $1
               AND (totp_last_step IS NULL OR totp_last_step < $2) RETURNING true""",
            row["id"],
            step,
        ):
            return None
    if stored is not None and _hasher.check_needs_rehash(stored):
        await conn.execute("UPDATE staff SET password_hash = $2 WHERE id = $1", row["id"], _hasher.hash(password))
    return _staff(row)
