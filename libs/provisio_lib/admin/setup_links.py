"""Setup links: one-time capability URLs that let a customer's IT admin set up SSO and
SCIM for one tenant without an account (`provisio setup-link …`, the console's
``/setup/…`` pages).

- The token is 256 bits of randomness; only its SHA-256 is stored (like SCIM tokens),
  with the tenant, the scopes (``sso``, ``scim``), an expiry, and who made it.
- Redeeming is one-time: the first open atomically marks the link redeemed and binds it
  to a new setup session (its id, again only hashed, travels in a signed cookie of that
  one browser). Any later open of the URL is refused, whoever makes it.
- The setup session lives as long as the link: it ends at the link's expiry or when it
  is revoked. It sees its tenant only, and only its scopes.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from .errors import NOT_FOUND, USAGE, AdminError
from .tenants import record

SCOPES = ("sso", "scim")
DEFAULT_TTL = timedelta(days=7)
MAX_TTL = timedelta(days=30)
PREFIX_LEN = 8
TOKEN_PREFIX = "psl_"  # Provisio setup link
_DURATION = re.compile(r"^\s*(\d+)\s*(m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _hash(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def parse_ttl(text: str) -> timedelta:
    """``30m``, ``12h``, ``7d``, ``2w``: at least a minute, at most 30 days."""
    m = _DURATION.match(text or "")
    if not m:
        raise AdminError(f"bad --expires {text!r}: use e.g. 30m, 12h, 7d or 2w", USAGE)
    ttl = timedelta(**{_UNITS[m.group(2).lower()]: int(m.group(1))})
    if not timedelta(minutes=1) <= ttl <= MAX_TTL:
        raise AdminError("--expires must be between 1m and 30d", USAGE)
    return ttl


def parse_scopes(text: str) -> list[str]:
    scopes = [s.strip().lower() for s in (text or "").split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise AdminError(f"bad --scope {text!r}: a comma-separated list of {', '.join(SCOPES)}", USAGE)
    return list(dict.fromkeys(scopes))


@dataclass(frozen=True)
class SetupLink:
    id: UUID
    tenant_id: UUID
    tenant_name: str
    prefix: str
    scopes: tuple[str, ...]
    created_by: str
    created_at: datetime
    expires_at: datetime
    redeemed_at: datetime | None
    revoked_at: datetime | None
    # Who made it, readable: ``cli:<OS user>``, or ``staff:<email>`` for a console user
    # (``created_by`` keeps the account id, as the audit trail's source id does).
    created_by_label: str = ""

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= datetime.now(self.expires_at.tzinfo):
            return "expired"
        return "redeemed" if self.redeemed_at is not None else "unused"

    @property
    def state(self) -> str:
        """The console's finer :attr:`status`: ``unused``; ``in use`` (opened, its setup
        session lives until the link expires); ``used`` (opened, then expired: the session
        ended); ``expired`` (never opened); ``revoked``."""
        status = self.status
        if status == "redeemed":
            return "in use"
        if status == "expired" and self.redeemed_at is not None:
            return "used"
        return status

    @property
    def live(self) -> bool:
        """Unrevoked and unexpired: it (or its session) still works, so revoking ends something."""
        return self.status in ("unused", "redeemed")


@dataclass(frozen=True)
class SetupSession:
    link_id: UUID
    tenant_id: UUID
    tenant_name: str
    scopes: tuple[str, ...]
    csrf_token: str
    expires_at: datetime
    prefix: str

    @property
    def actor(self) -> str:
        return f"setup:{self.prefix}"

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


_COLUMNS = """l.id, l.tenant_id, t.name AS tenant_name, l.prefix, l.scopes, l.created_by, l.created_at,
              l.expires_at, l.redeemed_at, l.revoked_at,
              coalesce('staff:' || s.email, l.created_by) AS created_by_label"""
# A console user made it when created_by is a staff account's id.
_FROM = """setup_links l JOIN tenants t ON t.id = l.tenant_id LEFT JOIN staff s ON s.id::text = l.created_by"""


def _link(row: asyncpg.Record) -> SetupLink:
    return SetupLink(
        row["id"],
        row["tenant_id"],
        row["tenant_name"],
        row["prefix"],
        tuple(row["scopes"]),
        row["created_by"],
        row["created_at"],
        row["expires_at"],
        row["redeemed_at"],
        row["revoked_at"],
        row["created_by_label"],
    )


async def create(
    conn: asyncpg.Connection,
    tid: UUID,
    *,
    scopes: list[str],
    ttl: timedelta,
    actor: str,
    actor_label: str | None = None,
    correlation_id: str = "",
) -> tuple[SetupLink, str]:
    """A new link; returns it and its token (for the URL, shown once). ``actor`` is who
    (``cli:<OS user>``, or a staff account's id with ``actor_label`` her email)."""
    scopes = parse_scopes(",".join(scopes))
    if not timedelta(minutes=1) <= ttl <= MAX_TTL:
        raise AdminError("--expires must be between 1m and 30d", USAGE)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    link_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO setup_links (id, tenant_id, token_hash, prefix, scopes, created_by, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, now() + $7::interval)""",
            link_id,
            tid,
            _hash(token),
            token[: len(TOKEN_PREFIX) + PREFIX_LEN],
            scopes,
            actor,
            ttl,
        )
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE l.id = $1", link_id)
        link = _link(row)
        await record(
            conn,
            actor,
            "setup_link.create",
            tid,
            label=actor_label,
            correlation_id=correlation_id,
            resource_type="SetupLink",
            notes=[f"setup link {link.prefix} ({','.join(scopes)}) until {link.expires_at.isoformat()}"],
        )
    return link, token


async def list_links(conn: asyncpg.Connection, tid: UUID) -> list[SetupLink]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM {_FROM} WHERE l.tenant_id = $1 ORDER BY l.created_at DESC", tid)
    return [_link(r) for r in rows]


async def get(conn: asyncpg.Connection, tid: UUID, link_id: UUID) -> SetupLink:
    """One link of this tenant; another tenant's id is not found (never acted on)."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} WHERE l.id = $1 AND l.tenant_id = $2", link_id, tid)
    if row is None:
        raise AdminError(f"no setup link {link_id} in this tenant", NOT_FOUND)
    return _link(row)


async def session_activity(conn: asyncpg.Connection, tid: UUID, prefixes: list[str]) -> dict[str, list[dict[str, Any]]]:
    """What each link's setup session did, from the audit trail (its rows are recorded as
    ``setup:<prefix>``): per prefix, each operation with its count and last time, the
    redeeming itself left out. One query on the (tenant, source label) index."""
    rows = await conn.fetch(
        """SELECT source_label, operation, count(*) AS n, max(completed_at) AS last_at,
                  count(*) FILTER (WHERE result = 'failed') AS failed
           FROM audit_log
           WHERE tenant_id = $1 AND source_label = ANY($2::text[]) AND source_kind = 'setup'
             AND operation <> 'setup_link.redeem'
           GROUP BY source_label, operation ORDER BY source_label, min(completed_at)""",
        tid,
        [f"setup:{p}" for p in prefixes],
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["source_label"].removeprefix("setup:"), []).append(
            {"operation": r["operation"], "count": r["n"], "failed": r["failed"], "last_at": r["last_at"]}
        )
    return out


async def revoke(
    conn: asyncpg.Connection,
    which: str,
    *,
    actor: str,
    tid: UUID | None = None,
    actor_label: str | None = None,
    correlation_id: str = "",
) -> SetupLink:
    """Revoke a link by its id or the prefix shown at create (``psl_XXXXXXXX``); its
    setup session ends with it. With ``tid``, only a link of that tenant (the console's
    URL names the tenant: another tenant's link is not found)."""
    which = which.strip()
    if not which:
        raise AdminError("give the link's id or prefix (see `provisio setup-link list TENANT`)", USAGE)
    async with conn.transaction():
        rows = await conn.fetch(
            f"""SELECT {_COLUMNS} FROM {_FROM}
                WHERE (l.id::text = $1 OR l.prefix = $1) AND ($2::uuid IS NULL OR l.tenant_id = $2)""",
            which.lower() if len(which) == 36 else which,
            tid,
        )
        if not rows:
            raise AdminError(f"no setup link {which!r} (see `provisio setup-link list TENANT`)", NOT_FOUND)
        if len(rows) > 1:
            raise AdminError(f"{which!r} names {len(rows)} setup links; give the id instead", USAGE)
        link = _link(rows[0])
        if link.revoked_at is None:
            await conn.execute("UPDATE setup_links SET revoked_at = now(), session_hash = NULL WHERE id = $1", link.id)
            await record(
                conn,
                actor,
                "setup_link.revoke",
                link.tenant_id,
                label=actor_label,
                correlation_id=correlation_id,
                resource_type="SetupLink",
                notes=[f"setup link {link.prefix}"],
            )
    return link


class LinkRefused(AdminError):
    """A link that cannot be opened: ``reason`` is one of unknown, used, expired, revoked."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, NOT_FOUND)
        self.reason = reason


REFUSALS = {
    "unknown": "This setup link is not valid. Check that you copied the whole link, or ask your "
    "Provisio contact for a new one.",
    "used": "This setup link was opened already. It works only once, in the browser that opened "
    "it first. If that was not you, ask your Provisio contact to revoke it and send a new one.",
    "expired": "This setup link has expired. Ask your Provisio contact for a new one.",
    "revoked": "This setup link was revoked. Ask your Provisio contact for a new one.",
}


async def refusal(conn: asyncpg.Connection, token: str) -> str | None:
    """Why this link cannot be opened (unknown, used, expired, revoked), or None if it
    can; changes nothing (the page before the redeeming POST)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return "unknown"
    found = await conn.fetchrow(
        "SELECT revoked_at, expires_at <= now() AS expired, redeemed_at FROM setup_links WHERE token_hash = $1",
        _hash(token),
    )
    if found is None:
        return "unknown"
    if found["revoked_at"] is not None:
        return "revoked"
    if found["expired"]:
        return "expired"
    return "used" if found["redeemed_at"] is not None else None


async def tenant_of(conn: asyncpg.Connection, token: str) -> str | None:
    """The tenant name of the link with this token (for its landing page)."""
    name = await conn.fetchval(
        "SELECT t.name FROM setup_links l JOIN tenants t ON t.id = l.tenant_id WHERE l.token_hash = $1", _hash(token)
    )
    return None if name is None else str(name)


async def redeem(conn: asyncpg.Connection, token: str) -> tuple[SetupSession, str]:
    """Open a link for the first time: atomically mark it redeemed and bind it to a new
    setup session. Returns the session and its id (for the signed cookie). Refused
    (:class:`LinkRefused`) when unknown, used, expired or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise LinkRefused("unknown", REFUSALS["unknown"])
    session_id = secrets.token_urlsafe(32)
    async with conn.transaction():
        row = await conn.fetchrow(
            """UPDATE setup_links SET redeemed_at = now(), session_hash = $2, csrf_token = $3
               WHERE token_hash = $1 AND redeemed_at IS NULL AND revoked_at IS NULL AND expires_at > now()
               RETURNING id""",
            _hash(token),
            _hash(session_id),
            secrets.token_urlsafe(32),
        )
        if row is None:
            reason = await refusal(conn, token) or "used"
            raise LinkRefused(reason, REFUSALS[reason])
        session = await load_session(conn, session_id)
        assert session is not None
        await record(
            conn,
            session.actor,
            "setup_link.redeem",
            session.tenant_id,
            resource_type="SetupLink",
            notes=[f"setup link {session.prefix} opened"],
        )
    return session, session_id


async def load_session(conn: asyncpg.Connection, session_id: str) -> SetupSession | None:
    """The setup session of this id while its link is unexpired and unrevoked."""
    if not session_id or len(session_id) > 200:
        return None
    row = await conn.fetchrow(
        """SELECT l.id, l.tenant_id, t.name, l.scopes, l.csrf_token, l.expires_at, l.prefix
           FROM setup_links l JOIN tenants t ON t.id = l.tenant_id
           WHERE l.session_hash = $1 AND l.revoked_at IS NULL AND l.expires_at > now()""",
        _hash(session_id),
    )
    if row is None:
        return None
    return SetupSession(
        row["id"],
        row["tenant_id"],
        row["name"],
        tuple(row["scopes"]),
        row["csrf_token"],
        row["expires_at"],
        row["prefix"],
    )


def describe(link: SetupLink) -> dict[str, Any]:
    return {
        "id": str(link.id),
        "prefix": link.prefix,
        "tenant": link.tenant_name,
        "scopes": ",".join(link.scopes),
        "status": link.status,
        "created_by": link.created_by_label or link.created_by,
        "created_at": link.created_at,
        "expires_at": link.expires_at,
        "redeemed_at": link.redeemed_at,
        "revoked_at": link.revoked_at,
    }
