"""Test logins of SSO connections, and enabling/disabling a connection (issue 14).

The console's setup page (and `provisio sso enable|disable`) call this layer:

- :func:`start_test` records a pending test and returns the SAML gateway's test-mode
  login URL (``…/saml/{tenant}/{connection}/login?test=<id>``). The gateway runs the IdP
  round trip, verifies the response with the same code as a real login, asks the
  provisioner for a dry run of what a real login would do, stores the result here and
  sends the browser to ``return_to?test=<id>``. Nothing is provisioned.
- :func:`get_result` reads it back (``None`` for another tenant's test id).
- :func:`enable` switches a connection on only when a test passed against its current
  settings (``sso_connections.changed_at``, kept by a trigger of migration 0014);
  :func:`disable` switches it off. Both are audited with the actor.

Nothing here prints or reads the environment except through :class:`TestLoginSettings`
when the caller passes no URLs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit
from uuid import UUID

import asyncpg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from provisio_lib.contract import Outcome
from provisio_lib.settings import ENV_PREFIX, load_settings

from .audit import record_staff_action
from .errors import NOT_FOUND, USAGE, AdminError

Status = Literal["pending", "passed", "failed"]
Action = Literal["create", "update", "match", "refuse"]


class TestLoginSettings(BaseSettings):
    """The two public URLs a test login needs, read like the services read them."""

    __test__ = False  # not a pytest test class, despite the name

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    saml_public_url: str = Field(default="http://127.0.0.1:8082", pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    console_public_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    console_port: int = Field(default=8084, ge=1, le=65535)

    def console_base(self) -> str:
        return (self.console_public_url or f"http://localhost:{self.console_port}").rstrip("/")


@dataclass(frozen=True)
class TestStart:
    __test__ = False  # not a pytest test class, despite the name
    test_id: UUID
    login_url: str


@dataclass(frozen=True)
class Check:
    name: str  # e.g. "signature", "audience", "replay", "provisioning"
    ok: bool
    reason: str | None = None  # plain language, set when ok is False


@dataclass(frozen=True)
class Received:
    """What the IdP sent, as Provisio read it (on a failed test: what could be read)."""

    issuer: str | None = None
    name_id: str | None = None
    name_id_format: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    signature_algorithms: list[str] = field(default_factory=list)
    encryption_algorithms: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Preview:
    """What a real login would do, from the provisioner's dry run of the same code."""

    action: Action
    user: dict[str, Any] | None = None  # the user as it would be after the login
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # field → {before, after}
    groups_added: list[str] = field(default_factory=list)
    groups_removed: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # why a real login would be refused


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class, despite the name
    test_id: UUID
    connection_name: str
    status: Status
    received: Received | None
    checks: list[Check]
    preview: Preview | None
    error: str | None
    created_at: datetime
    completed_at: datetime | None


# --------------------------------------------------------------------------- pure parts


def check_return_to(return_to: str, console_base: str) -> str:
    """``return_to`` must be a page of the console itself (same scheme, host and port,
    under its base path): the gateway redirects the browser there, so anything else
    would be an open redirect. A path (``/setup/…``) is taken relative to the console.
    Returns the absolute URL; ``AdminError`` otherwise."""
    value = return_to
    base = urlsplit(console_base.rstrip("/"))
    bad = AdminError("return_to must be a page of this console", USAGE)
    # Browsers read "\\" as "/" and drop tabs/newlines inside URLs (WHATWG URL parser),
    # so "/\\evil.example" or "/\t/evil.example" would leave the console.
    if not value or len(value) > 2048 or "\\" in value or any(ord(c) < 0x21 or c == "\x7f" for c in value):
        raise bad
    if value.startswith("/") and not value.startswith("//"):
        value = f"{base.scheme}://{base.netloc}{value}"
    parts = urlsplit(value)
    if parts.scheme != base.scheme or parts.netloc.lower() != base.netloc.lower() or parts.username or parts.password:
        raise bad
    prefix = base.path.rstrip("/")
    if prefix and parts.path != prefix and not parts.path.startswith(prefix + "/"):
        raise bad
    if parts.fragment:
        raise AdminError("return_to must not carry a #fragment", USAGE)
    return value


def login_url_for_test(saml_public_url: str, tenant: str, connection: str, test_id: UUID) -> str:
    base = f"{saml_public_url.rstrip('/')}/saml/{tenant}/{connection}/login"
    return f"{base}?{urlencode({'test': str(test_id)})}"


def result_from_row(row: Any) -> TestResult:
    """A ``sso_test_logins`` row (with ``connection_name``) as a :class:`TestResult`."""
    received = row["received"]
    preview = row["preview"]
    return TestResult(
        test_id=row["id"],
        connection_name=row["connection_name"],
        status=row["status"],
        received=Received(**received) if received else None,
        checks=[Check(**c) for c in row["checks"] or []],
        preview=Preview(**preview) if preview else None,
        error=row["error"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
    )


KEEP_DAYS = 90  # test logins older than this are deleted when the tenant starts a new one
WOULD_FAIL = "would_fail:"  # services/provisioner/preview.py: a policy failure of a dry run


def preview_from_outcome(outcome: Outcome) -> Preview:
    """The provisioner's answer to a dry-run JIT login as a :class:`Preview`: ``refuse``
    (the login would fail, with why), ``create``, ``update`` (fields or JIT groups change)
    or ``match`` (the user signs in unchanged)."""
    if not outcome.ok:
        return Preview(action="refuse", refusals=[outcome.error.message if outcome.error else "refused"])
    refusals = [n.removeprefix(WOULD_FAIL).partition(":")[2] for n in outcome.notes if n.startswith(WOULD_FAIL)]
    changes: dict[str, dict[str, Any]] = {
        name: {"before": change.before, "after": change.after}
        for name, change in outcome.changes.items()
        if name != "groups.jit"
    }
    groups = outcome.changes.get("groups.jit")
    before = [str(g) for g in (groups.before or [])] if groups else []
    after = [str(g) for g in (groups.after or [])] if groups else []
    linked = next((n.removeprefix("linked:") for n in outcome.notes if n.startswith("linked:")), None)
    if linked:
        # An existing user gets this connection's identity link (domain.adoption_basis).
        changes["linked"] = {"before": None, "after": linked}
    if "created" in outcome.notes:
        action: Action = "create"
    elif outcome.result == "applied" or linked:
        action = "update"
    else:
        action = "match"
    return Preview(
        action=action,
        user=outcome.resource,
        changes=changes,
        groups_added=[g for g in after if g not in before],
        groups_removed=[g for g in before if g not in after],
        refusals=refusals,
    )


# --------------------------------------------------------------------------- operations


async def _connection_row(conn: asyncpg.Connection, tenant_id: UUID, name: str) -> Any:
    row = await conn.fetchrow(
        """SELECT c.id, c.name, c.enabled, c.changed_at, t.name AS tenant_name
           FROM sso_connections c JOIN tenants t ON t.id = c.tenant_id
           WHERE c.tenant_id = $1 AND c.name = $2""",
        tenant_id,
        name.strip().lower(),
    )
    if row is None:
        raise AdminError(f"this tenant has no SSO connection named {name!r}", NOT_FOUND)
    return row


async def start_test(
    conn: asyncpg.Connection,
    tenant_id: UUID,
    connection_name: str,
    *,
    return_to: str,
    actor: str,
    settings: TestLoginSettings | None = None,
) -> TestStart:
    """Record a pending test of the tenant's connection and return where to send the
    browser. ``AdminError`` for an unknown connection or a ``return_to`` outside the
    console. ``settings`` defaults to the environment (PROVISIO_SAML_PUBLIC_URL,
    PROVISIO_CONSOLE_PUBLIC_URL)."""
    s = settings or load_settings(TestLoginSettings)
    target = check_return_to(return_to, s.console_base())
    row = await _connection_row(conn, tenant_id, connection_name)
    test_id = uuid.uuid4()
    # Old tests are of no use (enable needs one of the current settings): kept a while
    # for the audit's sake, then dropped here rather than by a separate job.
    await conn.execute(
        "DELETE FROM sso_test_logins WHERE tenant_id = $1 AND created_at < now() - make_interval(days => $2)",
        tenant_id,
        KEEP_DAYS,
    )
    await conn.execute(
        """INSERT INTO sso_test_logins (id, tenant_id, connection_id, created_by, return_to)
           VALUES ($1, $2, $3, $4, $5)""",
        test_id,
        tenant_id,
        row["id"],
        actor[:320],
        target,
    )
    return TestStart(test_id, login_url_for_test(s.saml_public_url, row["tenant_name"], row["name"], test_id))


async def get_result(conn: asyncpg.Connection, tenant_id: UUID, test_id: UUID) -> TestResult | None:
    """The test's state; ``None`` when it does not exist or belongs to another tenant."""
    row = await conn.fetchrow(
        """SELECT l.*, c.name AS connection_name FROM sso_test_logins l
           JOIN sso_connections c ON c.id = l.connection_id
           WHERE l.id = $1 AND l.tenant_id = $2""",
        test_id,
        tenant_id,
    )
    return result_from_row(row) if row else None


async def _record(conn: asyncpg.Connection, tenant_id: UUID, actor: str, action: str, name: str, **kw: Any) -> None:
    await record_staff_action(
        conn,
        staff_id=actor,
        staff_email=actor,
        action=action,
        tenant_id=tenant_id,
        resource_type="SsoConnection",
        notes=[f"connection {name}", *kw.pop("notes", [])],
        **kw,
    )


async def enable(
    conn: asyncpg.Connection, tenant_id: UUID, connection_name: str, *, actor: str, force: bool = False
) -> None:
    """Switch the connection on. Refused (``AdminError``) unless a test passed against the
    connection's current settings; ``force`` (operator CLI only) skips that, audited.
    Enabling an enabled connection changes nothing."""
    async with conn.transaction():
        row = await _connection_row(conn, tenant_id, connection_name)
        await conn.execute("SELECT 1 FROM sso_connections WHERE id = $1 FOR UPDATE", row["id"])
        if row["enabled"]:
            return
        passed = await conn.fetchval(
            """SELECT id FROM sso_test_logins
               WHERE connection_id = $1 AND status = 'passed' AND tested_changed_at >= $2 AND completed_at > $2
               ORDER BY completed_at DESC LIMIT 1""",
            row["id"],
            row["changed_at"],
        )
        if passed is None and not force:
            earlier = await conn.fetchval(
                "SELECT 1 FROM sso_test_logins WHERE connection_id = $1 AND status = 'passed'", row["id"]
            )
            if earlier:
                raise AdminError(
                    f"connection {row['name']} changed after its last successful test login; "
                    "run the test login again, then enable it"
                )
            raise AdminError(
                f"connection {row['name']} has no successful test login yet; "
                "sign in through the identity provider in test mode first, then enable it"
            )
        await conn.execute("UPDATE sso_connections SET enabled = true WHERE id = $1", row["id"])
        notes = [f"test {passed}"] if passed else ["forced without a passed test login"]
        await _record(
            conn,
            tenant_id,
            actor,
            "sso.enable",
            row["name"],
            notes=notes,
            changes={"enabled": {"before": False, "after": True}},
        )


async def disable(conn: asyncpg.Connection, tenant_id: UUID, connection_name: str, *, actor: str) -> None:
    """Switch the connection off: its real logins are refused, test logins still work.
    Disabling a disabled connection changes nothing."""
    async with conn.transaction():
        row = await _connection_row(conn, tenant_id, connection_name)
        status = await conn.execute("UPDATE sso_connections SET enabled = false WHERE id = $1 AND enabled", row["id"])
        if status.endswith(" 0"):
            return
        await _record(
            conn, tenant_id, actor, "sso.disable", row["name"], changes={"enabled": {"before": True, "after": False}}
        )
