"""``name.formatted`` kept in step with the name's parts (pure).

RFC 7643 §4.1.1: ``formatted`` is "the full name, including all middle names, titles,
and suffixes as appropriate, formatted for display". IdPs send it on create (Entra:
"givenName familyName") but a later PATCH or JIT ``sync`` login usually changes only
``givenName``/``familyName``; the stored ``formatted`` then names the old person. It is
recomputed from the parts when a part changed and ``formatted`` itself was not sent in
the same change (then the IdP's value wins).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAME_PARTS = ("honorificPrefix", "givenName", "middleName", "familyName", "honorificSuffix")


def compose_formatted(name: Mapping[str, Any]) -> str | None:
    parts = [str(name[p]).strip() for p in NAME_PARTS if isinstance(name.get(p), str) and name[p].strip()]
    return " ".join(parts) or None


def refresh_formatted(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``after`` (a SCIM ``name`` object) with ``formatted`` recomputed when a part changed
    from ``before`` and ``formatted`` did not; None when nothing needs to change. A name
    without ``formatted`` is left without one (nothing is invented)."""
    before = before or {}
    after = after or {}
    if "formatted" not in after or after.get("formatted") != before.get("formatted"):
        return None
    if all(before.get(p) == after.get(p) for p in NAME_PARTS):
        return None
    out = dict(after)
    formatted = compose_formatted(after)
    if formatted is None:
        out.pop("formatted", None)
    else:
        out["formatted"] = formatted
    return out if out != after else None
