"""Pure provisioning rules: no I/O, tested without a database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from provisio_lib.contract import Change

# Never recorded in an outcome or the audit trail, whatever the IdP sends.
SECRET_KEYS = frozenset({"password", "secret", "token"})

USER_FIELDS = (
    "user_name", "external_id", "active", "display_name", "given_name", "family_name",
    "emails", "sso_name",
)


class PermanentError(Exception):
    """The command can never succeed as sent: answered with a failure outcome at once."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def _scrub(value: Any) -> Any:
    # Scalars first, and dict before the Mapping ABC: this runs for every field of every
    # change, and an ABC isinstance check costs more than the rest of it.
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict | Mapping):
        return {k: ("[redacted]" if k.lower() in SECRET_KEYS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, fields: Iterable[str]) -> dict[str, Change]:
    """Field → Change for every field that differs; attributes compared key by key."""
    before = before or {}
    after = after or {}
    changes: dict[str, Change] = {}
    for f in fields:
        if before.get(f) != after.get(f):
            changes[f] = Change(before=_scrub(before.get(f)), after=_scrub(after.get(f)))
    b_attrs = before.get("attributes") or {}
    a_attrs = after.get("attributes") or {}
    for key in sorted(set(b_attrs) | set(a_attrs)):
        if b_attrs.get(key) != a_attrs.get(key):
            redacted = key.lower() in SECRET_KEYS
            changes[f"attributes.{key}"] = Change(
                before="[redacted]" if redacted and key in b_attrs else _scrub(b_attrs.get(key)),
                after="[redacted]" if redacted and key in a_attrs else _scrub(a_attrs.get(key)),
            )
    return changes


def primary_email(emails: Iterable[Mapping[str, Any]]) -> str | None:
    """The primary email, else the first (RFC 7643 §2.4: at most one primary)."""
    emails = list(emails)
    for e in emails:
        if e.get("primary"):
            return str(e["value"])
    return str(emails[0]["value"]) if emails else None


def reconcile_jit_groups(
    claimed: Iterable[str], jit_member_of: Mapping[str, Any]
) -> tuple[list[str], list[Any]]:
    """Group names to join and group ids to leave, so that the JIT-sourced memberships
    equal the claim. ``jit_member_of`` maps lower-case group name → group id of the
    memberships JIT added earlier; memberships SCIM manages are never in it."""
    wanted: dict[str, str] = {}
    for name in claimed:
        name = name.strip()
        if name:
            wanted.setdefault(name.lower(), name)
    join = [wanted[k] for k in sorted(wanted) if k not in jit_member_of]
    leave = [gid for k, gid in sorted(jit_member_of.items()) if k not in wanted]
    return join, leave


def jit_updates(current: Mapping[str, Any], login: Mapping[str, Any]) -> dict[str, Any]:
    """Fields a `sync` login changes: the mapped values the IdP sent that differ."""
    updates: dict[str, Any] = {}
    for f in ("given_name", "family_name", "display_name"):
        if login.get(f) is not None and login[f] != current.get(f):
            updates[f] = login[f]
    email = login.get("email")
    if email and (current.get("email") or "").lower() != email.lower():
        others = [e for e in current.get("emails") or [] if (e.get("value") or "").lower() != email.lower()]
        others = [{**e, "primary": False} for e in others]
        updates["emails"] = [{"value": email, "type": "work", "primary": True}, *others]
    custom = login.get("custom") or {}
    if custom:
        attrs = dict(current.get("attributes") or {})
        merged = {**(attrs.get("custom") or {}), **custom}
        if merged != (attrs.get("custom") or {}):
            attrs["custom"] = merged
            updates["attributes"] = attrs
    return updates
