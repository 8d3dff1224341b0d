"""Claims → the fields of a ``contract.JitLogin``: pure, no I/O, no SAML library.

The attribute map (field → claim names, first one present wins) comes from the
connection's preset plus its ``--map`` overrides (``provisio_lib.sso.attribute_map``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provisio_lib.sso_presets import STANDARD_FIELDS

EMAIL_NAME_ID = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"


class MissingClaim(Exception):
    """A required field's claim is absent; the message names the claim."""

    def __init__(self, field: str, claims: Sequence[str]) -> None:
        self.field = field
        self.claims = tuple(claims)
        names = " or ".join(claims) if claims else "(no claim mapped)"
        super().__init__(
            f"The identity provider did not send {field}: add the claim {names} to the SAML app, "
            "or ask your administrator to."
        )


@dataclass(frozen=True)
class MappedLogin:
    user_name: str
    email: str | None
    given_name: str | None
    family_name: str | None
    display_name: str | None
    custom: dict[str, Any]
    groups: tuple[str, ...] | None
    groups_overage: bool


def _first(attributes: Mapping[str, Sequence[str]], claims: Sequence[str]) -> list[str] | None:
    for claim in claims:
        values = attributes.get(claim)
        if values:
            return list(values)
    return None


def map_claims(
    attribute_map: Mapping[str, Sequence[str]],
    required: Sequence[str],
    name_id: str,
    name_id_format: str | None,
    attributes: Mapping[str, Sequence[str]],
) -> MappedLogin:
    found: dict[str, list[str] | None] = {f: _first(attributes, c) for f, c in attribute_map.items()}
    for field in required:
        if field == "user_name" and "user_name" not in attribute_map:
            continue  # the NameID, always present
        if not found.get(field):
            raise MissingClaim(field, attribute_map.get(field, ()))

    def one(field: str) -> str | None:
        values = found.get(field)
        return values[0] if values else None

    if "user_name" in attribute_map:
        user_name = one("user_name")
        if not user_name:
            raise MissingClaim("user_name", attribute_map["user_name"])
    else:
        user_name = name_id
    email = one("email")
    if email is None and name_id_format == EMAIL_NAME_ID and "@" in name_id:
        email = name_id  # saml-core §8.3.2: the NameID is an email address
    # A group claim with no values means "in no groups"; no claim at all means the IdP
    # says nothing about groups (Entra omits the claim then), and memberships stay.
    group_claim = next((c for c in attribute_map.get("groups", ()) if c in attributes), None)
    groups = tuple(dict.fromkeys(g for g in attributes[group_claim] if g)) if group_claim else None
    # Entra: more than 150 groups → a groups.link claim instead of the groups (Microsoft
    # "Configure group claims": group overage). Recorded, never silently dropped.
    overage = bool(found.get("groups_overage"))
    custom: dict[str, Any] = {}
    for field, values in found.items():
        if field in STANDARD_FIELDS or not values:
            continue
        custom[field] = values[0] if len(values) == 1 else values
    return MappedLogin(
        user_name=user_name,
        email=email,
        given_name=one("given_name"),
        family_name=one("family_name"),
        display_name=one("display_name"),
        custom=custom,
        groups=groups,
        groups_overage=overage,
    )


# Claim limits, checked before any command is sent (issue 13 §2: a 3,000-character claim
# used to reach Postgres's index limit and be retried for minutes). Values that sit in a
# btree index (NameID, userName, email, group names) get SCIM's bound of 512 characters
# (scim_gateway.resources._INDEXED_MAX); the rest are generous but finite.
MAX_INDEXED = 512
MAX_NAME = 1024  # givenName, familyName, displayName
MAX_CUSTOM = 4096  # each value of a custom (mapped) field
MAX_CUSTOM_VALUES = 100  # values of one custom field
MAX_GROUPS = 1000  # Entra sends at most 150 (then the overage claim); Okta/Google filters more


class ClaimTooLong(Exception):
    """A claim is longer (or has more values) than Provisio accepts; the message says which."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def check_claims(login: MappedLogin, name_id: str) -> None:
    """Refuse claims that are too long to store, naming the field and the limit."""

    def bounded(field: str, value: str | None, limit: int, label: str | None = None) -> None:
        if value is not None and len(value) > limit:
            raise ClaimTooLong(
                field,
                f"The identity provider sent a {label or field} of {len(value)} characters; "
                f"the limit is {limit}. Ask your administrator to shorten the claim.",
            )

    bounded("user_name", login.user_name, MAX_INDEXED)
    bounded("NameID", name_id, MAX_INDEXED)
    bounded("email", login.email, MAX_INDEXED)
    for field in ("given_name", "family_name", "display_name"):
        bounded(field, getattr(login, field), MAX_NAME)
    if login.groups is not None:
        if len(login.groups) > MAX_GROUPS:
            raise ClaimTooLong(
                "groups",
                f"The identity provider sent {len(login.groups)} groups; the limit is "
                f"{MAX_GROUPS}. Ask your administrator to filter the group claim.",
            )
        for group in login.groups:
            bounded("groups", group, MAX_INDEXED, "group name")
    for field, value in login.custom.items():
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_CUSTOM_VALUES:
            raise ClaimTooLong(
                field, f"The identity provider sent {len(values)} values of {field}; the limit is {MAX_CUSTOM_VALUES}."
            )
        for v in values:
            bounded(field, v, MAX_CUSTOM)
