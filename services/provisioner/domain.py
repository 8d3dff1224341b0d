"""Pure provisioning rules: no I/O, tested without a database."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from provisio_lib.contract import Change
from provisio_lib.names import refresh_formatted

# Never recorded in an outcome or the audit trail, whatever the IdP sends.
SECRET_KEYS = frozenset({"password", "secret", "token"})

USER_FIELDS = (
    "user_name",
    "external_id",
    "active",
    "display_name",
    "given_name",
    "family_name",
    "emails",
    "sso_name",
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
    _refresh_formatted_name(current, updates)
    return updates


# --------------------------------------------------------------------------- JIT identity (issue 13 §1)


def email_domain(value: str | None) -> str | None:
    """The lower-case domain of an email address, None when it is not one."""
    if not value or "@" not in value:
        return None
    domain = value.rsplit("@", 1)[1].strip().lower().rstrip(".")
    return domain or None


def sso_name_refusal(user_sso_name: str | None, connection_name: str, connection_names: Iterable[str]) -> str | None:
    """Splashtop's ``ssoName``: a user whose ssoName names one of the tenant's connections
    signs in through that connection only. A value that names no connection restricts
    nothing (it may be an IdP label the tenant uses elsewhere)."""
    wanted = (user_sso_name or "").strip().lower()
    if not wanted or wanted == connection_name.lower() or wanted not in {n.lower() for n in connection_names}:
        return None
    return f"this account signs in through the SSO connection {wanted!r} only (its ssoName), not {connection_name!r}"


def adoption_basis(
    *,
    connection_name: str,
    connection_names: Iterable[str],
    verified_domains: Iterable[str],
    linked_here: bool,
    user_sso_name: str | None,
    user_email: str | None,
    user_name: str,
) -> str | None:
    """Why an unlinked login through ``connection_name`` may take over the existing user
    it matched by userName or email, or None when it may not (issue 13 §1).

    The claim alone proves nothing: any IdP the tenant trusts can send any email. The
    connection must be authoritative for the user: it already holds an identity of this
    user (it created the user, or an administrator linked it; a NameID change at the IdP
    moves that link), the user's ssoName names it, the user's email domain is verified
    for it, or it is the tenant's only SSO connection (Entra SCIM + Entra SSO)."""
    if linked_here:
        return "linked"
    if (user_sso_name or "").strip().lower() == connection_name.lower():
        return "sso_name"
    domain = email_domain(user_email) or email_domain(user_name)
    if domain is not None and domain in {d.lower() for d in verified_domains}:
        return "verified_domain"
    names = {n.lower() for n in connection_names}
    if names == {connection_name.lower()}:
        return "only_connection"
    return None


# --------------------------------------------------------------------------- JIT groups (issue 13 §3)

# Entra sends group object IDs in its group claim, and its SCIM provisioning creates the
# same groups with externalId = that object ID (Microsoft "Configure group claims").
_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def looks_like_object_id(value: str) -> bool:
    return bool(_OBJECT_ID.match(value.strip()))


def match_group_claims(claimed: Iterable[str], groups: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Each claim value → the existing group it names, and the claims naming none.

    A claim matches a group's ``externalId`` first (exact: object ids), then its
    displayName (case-insensitive, RFC 7643 §4.2 caseExact false)."""
    by_external: dict[str, Any] = {}
    by_name: dict[str, Any] = {}
    for g in groups:
        if g.get("external_id"):
            by_external.setdefault(g["external_id"], g["id"])
        by_name.setdefault(g["display_name"].lower(), g["id"])
    found: dict[str, Any] = {}
    missing: list[str] = []
    for claim in dict.fromkeys(c.strip() for c in claimed):
        if not claim:
            continue
        gid = by_external.get(claim) or by_name.get(claim.lower())
        if gid is None:
            missing.append(claim)
        else:
            found[claim] = gid
    return found, missing


def groups_claim(claimed: tuple[str, ...] | None, setting: str, seen_before: bool) -> tuple[str, ...] | None:
    """What a login's group claim means: the groups, or None for "leave memberships".
    IdPs omit the groups attribute when a user has no groups (Entra, Okta), so an absent
    claim means "no groups" when the connection says so (``none``), or by default
    (``auto``) once the connection has sent a groups claim before."""
    if claimed is not None:
        return claimed
    if setting == "none" or (setting == "auto" and seen_before):
        return ()
    return None


# --------------------------------------------------------------------------- tenant policies for every source


def one_group_refusals(kept: Iterable[Any], joining: Iterable[Any]) -> tuple[list[Any], list[Any]]:
    """The "one group per user" rule (Splashtop teams) for a user who stays in ``kept``
    groups and would join ``joining``: (joins allowed, joins refused). When the result
    would hold more than one group, no join is applied (which one the IdP meant is not
    ours to guess)."""
    kept, joining = set(kept), [g for g in dict.fromkeys(joining) if g not in set(kept)]
    if len(kept) + len(joining) <= 1:
        return joining, []
    return [], joining


class ImmutablePolicy(Protocol):
    @property
    def immutable_user_name(self) -> bool: ...


def immutable_change(policy: ImmutablePolicy, before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """The field a change may not make under "userName immutable", or None. Splashtop:
    neither userName nor email may change once set (compared case-insensitively, as
    both are matched so; setting a first email is no change)."""
    if not policy.immutable_user_name:
        return None
    if (after.get("user_name") or "").lower() != (before.get("user_name") or "").lower():
        return "userName"
    old, new = before.get("email"), after.get("email")
    if old and (new or "").lower() != old.lower():
        return "emails"
    return None


def _refresh_formatted_name(current: Mapping[str, Any], updates: dict[str, Any]) -> None:
    """A sync login that changes given/family name recomputes the stored name.formatted
    (kept in ``attributes["name"]``), which would otherwise name the old person."""
    if "given_name" not in updates and "family_name" not in updates:
        return
    attrs = dict(updates.get("attributes") or current.get("attributes") or {})
    stored = attrs.get("name")
    if not isinstance(stored, dict):
        return
    before = {**stored, "givenName": current.get("given_name"), "familyName": current.get("family_name")}
    after = {
        **stored,
        "givenName": updates.get("given_name", current.get("given_name")),
        "familyName": updates.get("family_name", current.get("family_name")),
    }
    fresh = refresh_formatted(before, after)
    if fresh is None:
        return
    attrs["name"] = {k: v for k, v in fresh.items() if k not in ("givenName", "familyName")}
    updates["attributes"] = attrs
