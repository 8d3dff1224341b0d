"""SCIM resources ↔ Provisio's neutral model (pure, no I/O).

A resource is handled as a plain dict in *canonical form*: attribute names spelled as
the schema spells them (RFC 7643 §2.1: names are case-insensitive), values coerced to
their schema type, extension attributes under their schema URN, read-only and
write-only attributes dropped. ``normalise`` makes that form from a request body (and
again after a PATCH); ``user_data`` / ``group_data`` turn it into the contract's
``UserData`` / ``GroupData``; ``render_user`` / ``render_group`` rebuild the SCIM
resource from stored columns + ``attributes``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from provisio_lib.contract import Email, GroupData, UserData
from provisio_lib.names import refresh_formatted

from .errors import ScimError, invalid_syntax, invalid_value
from .limits import MAX_BINARY_CHARS, MAX_STRING_CHARS, check_string, check_values
from .schema import (
    COMMON,
    ENTERPRISE_SCHEMA,
    GROUP_SCHEMA,
    PROVISIO_SCHEMA,
    USER_SCHEMA,
    Attr,
    ResourceKind,
    Schema,
    user_schema,
)

# Columns of the users table that hold a core attribute; everything else goes to
# ``attributes`` keyed as SCIM keys it.
_USER_COLUMN_ATTRS = {"userName", "externalId", "active", "displayName", "emails"}

# Prebuilt for the membership tests of the hot loops (a literal with {} or [] in it is
# rebuilt on every evaluation). Never mutated.
_EMPTY_ITEM: tuple[None, dict[str, Any], str] = (None, {}, "")
_ABSENT: tuple[None, dict[str, Any], list[Any]] = (None, {}, [])
_TEXT_TYPES = frozenset({"string", "reference", "binary"})
_BUILT_IN_KEYS = frozenset({ENTERPRISE_SCHEMA, PROVISIO_SCHEMA})
_BUILT_IN = frozenset(u.lower() for u in (ENTERPRISE_SCHEMA, PROVISIO_SCHEMA))


# --------------------------------------------------------------------------- coercion


def coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    # Entra ID sends booleans as the strings "True"/"False" in PATCH values.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise invalid_value(f"{where} must be a boolean, got {value!r}")


def coerce(attr: Attr, value: Any, where: str, max_chars: int | None = None) -> Any:
    """Coerce one attribute value to its schema type; None stays None (= unassigned).
    ``max_chars``: the longest string accepted (limits.py); None: not checked here
    (a PATCH's values are checked when its result is normalised)."""
    if value is None:
        return None
    if attr.multi_valued:
        if isinstance(value, dict):
            value = [value]  # a single value where a list belongs: lenient
        if not isinstance(value, list):
            raise invalid_value(f"{where} must be a list")
        if attr.name != "members":  # a group's members are memberships, not resource data
            check_values(where, value)
        items = [coerce_single(attr, v, f"{where}[{i}]", max_chars) for i, v in enumerate(value)]
        items = [v for v in items if v not in _EMPTY_ITEM]
        return _one_primary(items) if attr.type == "complex" else items
    return coerce_single(attr, value, where, max_chars)


def _one_primary(items: list[Any]) -> list[Any]:
    # RFC 7643 §2.4: "primary" true appears at most once; the first one wins.
    seen = False
    for item in items:
        if isinstance(item, dict) and item.get("primary") is True:
            if seen:
                item["primary"] = False
            seen = True
    return items


def coerce_single(attr: Attr, value: Any, where: str, max_chars: int | None = None) -> Any:
    if value is None:
        return None
    t = attr.type
    if type(value) is str and t in _TEXT_TYPES:  # the common case, as the last branch below
        if max_chars is not None:
            check_string(where, value, max(max_chars, MAX_BINARY_CHARS) if t == "binary" else max_chars)
        return check_text(value, where)
    if t == "complex":
        if attr.free_form:
            if not isinstance(value, dict):
                raise invalid_value(f"{where} must be a JSON object")
            return check_json(value, where, max_chars=max_chars)
        if isinstance(value, str) and attr.child("value") is not None:
            # Entra sends the enterprise manager as a bare id string.
            if max_chars is not None:
                check_string(f"{where}.value", value, max_chars)
            return {"value": value} if value else None
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
            value = value[0]  # a single complex value sent as a one-element list
        if not isinstance(value, dict):
            raise invalid_value(f"{where} must be an object")
        out: dict[str, Any] = {}
        for key, sub_value in value.items():
            sub = attr.child(key)
            if sub is None:
                # Unknown sub-attributes are dropped, not refused: Entra's own test
                # collection sends members as {"displayName": ..., "value": ...}.
                continue
            if sub.mutability == "readOnly" and attr.name != "members":
                continue
            v = coerce_single(sub, sub_value, f"{where}.{sub.name}", max_chars)
            if v is not None:
                out[sub.name] = v
        return out or None
    if t == "boolean":
        return coerce_bool(value, where)
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise invalid_value(f"{where} must be an integer")
        try:
            return int(value)
        except ValueError:
            raise invalid_value(f"{where} must be an integer") from None
    if t == "decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_value(f"{where} must be a number")
        return value
    if t == "dateTime":
        if not isinstance(value, str):
            raise invalid_value(f"{where} must be an xsd:dateTime string")
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise invalid_value(f"{where} must be an xsd:dateTime string") from None
        return value
    # string, reference, binary
    if isinstance(value, (bool, dict, list)):
        raise invalid_value(f"{where} must be a string")
    if isinstance(value, (int, float)):
        value = str(value)  # e.g. employeeNumber sent as a number
    if not isinstance(value, str):
        raise invalid_value(f"{where} must be a string")
    if max_chars is not None:
        check_string(where, value, max(max_chars, MAX_BINARY_CHARS) if t == "binary" else max_chars)
    return check_text(value, where)


# Attributes that sit in a btree index (users_external_id_idx, users_email_idx,
# groups_external_id_idx): bounded so an index row never exceeds Postgres's limit.
_INDEXED_MAX = 512


def check_text(value: str, where: str, max_len: int | None = None) -> str:
    """Postgres text holds neither NUL nor lone UTF-16 surrogates (valid JSON escapes)."""
    if "\x00" in value:
        raise invalid_value(f"{where} contains a NUL character")
    if not value.isascii():  # an ASCII string holds no surrogate: skip the encode
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid_value(f"{where} is not valid Unicode text") from None
    if max_len is not None:
        check_string(where, value, max_len)
    return value


def check_json(value: Any, where: str, depth: int = 0, max_chars: int | None = None) -> Any:
    """Free-form JSON (custom attributes, extension data stored as sent) must be storable
    in jsonb; with ``max_chars``, its strings and keys are bounded like any other string."""
    if depth > 32:
        raise invalid_value(f"{where} nests too deeply")
    if isinstance(value, str):
        if max_chars is not None:
            check_string(where, value, max_chars)
        return check_text(value, where)
    if isinstance(value, dict):
        for k, v in value.items():
            if max_chars is not None:
                check_string(f"a key of {where}", k, max_chars)
            check_text(k, where)
            check_json(v, f"{where}.{k}", depth + 1, max_chars)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json(v, f"{where}[{i}]", depth + 1, max_chars)
    elif (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
        raise invalid_value(f"{where} is not a finite number")
    return value


# --------------------------------------------------------------------------- normalisation


def _normalise_schema_part(
    schema: Schema, part: Any, where: str, out: dict[str, Any], max_chars: int | None, prefix: str = ""
) -> None:
    """``prefix``: "<URN>:" for an extension, so errors name its attributes in full."""
    if not isinstance(part, dict):
        raise invalid_value(f"{where} must be an object")
    attrs = schema.attrs
    for key, value in part.items():
        low = key.lower()
        if low == "schemas":
            continue  # some clients repeat "schemas" inside an extension object
        attr = attrs.get(low)  # = schema.attr(key)
        if attr is None:
            raise invalid_syntax(f"unknown attribute {key!r} in {schema.id}")
        if attr.mutability == "readOnly":
            continue  # RFC 7643 §2.2: read-only attributes in a request are ignored
        if attr.mutability == "writeOnly":
            continue  # password: never stored (Provisio authenticates through SAML)
        v = coerce(attr, value, prefix + attr.name if prefix else attr.name, max_chars)
        if v not in _ABSENT or (attr.free_form and v == {}):
            out[attr.name] = v  # an empty custom object is a value, not an absence


def normalise(
    kind: ResourceKind, body: Any, undeclared: str | None = None, max_chars: int | None = MAX_STRING_CHARS
) -> dict[str, Any]:
    """Canonical form of a resource body; raises ScimError (400) on what it cannot take.

    Extension data under a URN ``kind`` does not declare follows ``undeclared`` (default:
    the kind's tenant setting): "store" keeps it as sent, "reject" refuses it.
    ``max_chars``: the longest string value accepted (PROVISIO_SCIM_MAX_STRING_CHARS);
    None only for a state already stored (``canonical_user``), so that a PATCH can
    still trim a value stored before the limit was lowered."""
    if not isinstance(body, dict):
        raise invalid_syntax("the request body must be a JSON object")
    out: dict[str, Any] = {}
    core_part: dict[str, Any] = {}
    for key, value in body.items():
        low = key.lower()
        if low == "schemas":
            if value is not None and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
                raise invalid_syntax("schemas must be a list of URNs")
            continue
        if low in ("id", "meta"):
            continue  # read-only common attributes
        if low == "externalid":
            v = coerce(COMMON["externalid"], value, "externalId")
            if v is not None:
                check_text(v, "externalId", min(_INDEXED_MAX, max_chars or _INDEXED_MAX))
            if v:
                out["externalId"] = v
            continue
        if low.startswith("urn:"):
            if low == kind.core.id.lower():
                _normalise_schema_part(kind.core, value, key, out, max_chars)
                continue
            ext = kind.extensions.get(low)
            if ext is None:
                _undeclared_part(kind, key, value, undeclared or kind.undeclared, out, max_chars)
                continue
            part: dict[str, Any] = {}
            if value is not None:
                _normalise_schema_part(ext, value, ext.id, part, max_chars, f"{ext.id}:")
            if part:
                out[ext.id] = part
            continue
        core_part[key] = value
    _normalise_schema_part(kind.core, core_part, kind.core.id, out, max_chars)
    return out


def refresh_name(before: Mapping[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` with name.formatted recomputed when a PATCH changed givenName/familyName
    (or another part) without sending formatted (see ``provisio_lib.names``)."""
    fresh = refresh_formatted(before.get("name"), after.get("name"))
    return after if fresh is None else {**after, "name": fresh}


def _undeclared_part(
    kind: ResourceKind, key: str, value: Any, mode: str, out: dict[str, Any], max_chars: int | None
) -> None:
    """Extension data no schema of this tenant declares (issue 13 §4)."""
    if mode != "store":
        raise invalid_syntax(
            f"unknown schema extension {key!r}: not declared for this tenant "
            "(an operator declares it with `provisio scim-schema add`)"
        )
    if max_chars is not None:
        check_string("an undeclared extension's URN", key, max_chars)  # stored as a key
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_value(f"{key} must be an object of extension attributes")
    part = {k: v for k, v in value.items() if k.lower() != "schemas" and v is not None}
    check_json(part, key, max_chars=max_chars)
    if part:
        # One key per URN whatever case the IdP used this time (URNs compare
        # case-insensitively, RFC 8141 §3.1 for the NID; SCIM treats schema URIs so).
        for existing in [k for k in out if k.lower() == key.lower()]:
            del out[existing]
        out[key] = part


def fold_sso_aliases(
    kind: ResourceKind, resource: dict[str, Any], before: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Move an aliased extension attribute (the Splashtop preset's ssoName) onto Provisio's
    ssoName, which is what is stored (the sso_name column). With ``before`` (a PATCH), the
    one of the two that changed wins; else the extension's value, when sent, wins."""
    if not kind.sso_aliases:
        return resource
    out = dict(resource)
    prov = dict(out.get(PROVISIO_SCHEMA) or {})
    for urn, name in kind.sso_aliases:
        ext = dict(out.get(urn) or {})
        if name not in ext and (before is None or name not in (before.get(urn) or {})):
            continue
        value = ext.pop(name, None)
        if before is not None:
            old_alias = (before.get(urn) or {}).get(name)
            old_prov = (before.get(PROVISIO_SCHEMA) or {}).get("ssoName")
            if value == old_alias and prov.get("ssoName") != old_prov:
                value = prov.get("ssoName")  # Provisio's ssoName is the one that changed
        if value is None:
            prov.pop("ssoName", None)
        else:
            prov["ssoName"] = value
        if ext:
            out[urn] = ext
        else:
            out.pop(urn, None)
    if prov:
        out[PROVISIO_SCHEMA] = prov
    else:
        out.pop(PROVISIO_SCHEMA, None)
    return out


def require(kind: ResourceKind, resource: Mapping[str, Any]) -> None:
    for attr in kind.core.attrs.values():
        if attr.required and not resource.get(attr.name):
            raise ScimError(400, f"{attr.name} is required", "invalidValue")
    for urn, schema in kind.extensions.items():
        if urn in _BUILT_IN:
            continue
        part = resource.get(schema.id)
        if not isinstance(part, dict):
            continue  # the extension itself is optional (schemaExtensions required: false)
        for attr in schema.attrs.values():
            if (
                attr.required
                and part.get(attr.name) in (*_ABSENT, "")
                and (schema.id, attr.name) not in kind.sso_aliases
            ):
                raise ScimError(400, f"{schema.id}:{attr.name} is required", "invalidValue")


# --------------------------------------------------------------------------- to the contract


def unknown_attributes(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keys of a stored ``attributes`` that no SCIM schema here describes (written by
    another path, e.g. a future JIT mapping): a SCIM PUT/PATCH keeps them as they are."""
    core = user_schema()
    # Every "urn:" key is extension data SCIM manages (declared or stored as sent): a
    # PUT without it removes it, as RFC 7644 §3.5.1 says of a replace.
    return {
        k: v
        for k, v in (stored or {}).items()
        if k not in ("name", "custom") and not k.startswith("urn:") and core.attr(k) is None
    }


def user_data(resource: Mapping[str, Any], keep: Mapping[str, Any] | None = None) -> UserData:
    """Split a canonical User into the neutral columns and ``attributes`` (plus ``keep``,
    stored attributes SCIM does not describe)."""
    attributes: dict[str, Any] = dict(keep or {})
    name = dict(resource.get("name") or {})
    given = name.pop("givenName", None)
    family = name.pop("familyName", None)
    if name:
        attributes["name"] = name
    for key, value in resource.items():
        if key in _USER_COLUMN_ATTRS or key == "name":
            continue
        if key == PROVISIO_SCHEMA:
            # ssoName has its column; custom is stored as attributes["custom"], where
            # JIT logins put the custom fields they map too.
            if "custom" in value:
                attributes["custom"] = value["custom"]
            continue
        attributes[key] = value
    emails = []
    for e in resource.get("emails") or ():
        if not e.get("value"):
            raise invalid_value("emails[].value is required")
        check_text(e["value"], "emails[].value", _INDEXED_MAX)
        emails.append(
            Email(value=e["value"], type=e.get("type"), primary=bool(e.get("primary", False)), display=e.get("display"))
        )
    sso = (resource.get(PROVISIO_SCHEMA) or {}).get("ssoName")
    if isinstance(resource.get("userName"), str):
        check_text(resource["userName"], "userName", _INDEXED_MAX)  # users_user_name_key
    try:
        return UserData(
            user_name=resource["userName"],
            external_id=resource.get("externalId"),
            active=resource.get("active", True),
            display_name=resource.get("displayName"),
            given_name=given,
            family_name=family,
            emails=tuple(emails),
            sso_name=sso,
            attributes=attributes,
        )
    except ValueError as err:  # pydantic: e.g. userName longer than 512
        raise invalid_value(_first_error(err)) from None


def group_data(resource: Mapping[str, Any], members: Iterable[uuid.UUID] | None) -> GroupData:
    if resource.get("externalId") is not None:
        check_text(resource["externalId"], "externalId", _INDEXED_MAX)
    if isinstance(resource.get("displayName"), str):
        check_text(resource["displayName"], "displayName", _INDEXED_MAX)  # groups' unique name index
    attributes = {k: v for k, v in resource.items() if k not in ("displayName", "externalId", "members")}
    try:
        return GroupData(
            display_name=resource["displayName"],
            external_id=resource.get("externalId"),
            members=tuple(members) if members is not None else None,
            attributes=attributes,
        )
    except ValueError as err:
        raise invalid_value(_first_error(err)) from None


def member_ids(resource: Mapping[str, Any]) -> list[uuid.UUID]:
    out: list[uuid.UUID] = []
    for m in resource.get("members") or ():
        out.append(parse_member_id(m.get("value") if isinstance(m, dict) else m))
    return list(dict.fromkeys(out))


def parse_member_id(value: Any) -> uuid.UUID:
    if not isinstance(value, str) or not value:
        raise invalid_value("members[].value must be the id of a User")
    try:
        return uuid.UUID(value)
    except ValueError:
        shown = repr(value) if len(value) <= 64 else f"of {len(value)} characters"  # never echo a huge value
        raise invalid_value(f"members[].value {shown} is not the id of a User") from None


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        e = errors()[0]
        loc = ".".join(str(x) for x in e.get("loc", ()))
        return f"{loc}: {e.get('msg')}"
    return str(err)


# --------------------------------------------------------------------------- rendering


def etag(version: int) -> str:
    return f'W/"{version}"'


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def render_user(
    row: Mapping[str, Any], base: str, *, storage: bool = False, meta: bool = True, kind: ResourceKind | None = None
) -> dict[str, Any]:
    """Rebuild a SCIM User from a row of the directory read model (or
    ``UserState.model_dump()``: the same field names), ``groups`` included
    (``{"id", "display_name"}`` each, as ``UserState.groups``)."""
    attributes: dict[str, Any] = dict(row.get("attributes") or {})
    uid = str(row["id"])
    out: dict[str, Any] = {"schemas": [USER_SCHEMA], "id": uid}
    if row.get("external_id") is not None:
        out["externalId"] = row["external_id"]
    out["userName"] = row["user_name"]
    name = dict(attributes.pop("name", None) or {})
    if row.get("given_name") is not None:
        name["givenName"] = row["given_name"]
    if row.get("family_name") is not None:
        name["familyName"] = row["family_name"]
    if name:
        out["name"] = name
    if row.get("display_name") is not None:
        out["displayName"] = row["display_name"]
    out["active"] = bool(row.get("active", True))
    emails = []
    for e in row.get("emails") or ():
        item = {"value": e["value"]}
        if e.get("type") is not None:
            item["type"] = e["type"]
        item["primary"] = bool(e.get("primary", False))
        if e.get("display") is not None:
            item["display"] = e["display"]
        emails.append(item)
    if emails:
        out["emails"] = emails
    groups = []
    for g in () if storage else row.get("groups") or ():
        gid = str(g["id"])
        groups.append(
            {
                "value": gid,
                "$ref": f"{base}/Groups/{gid}",
                "display": g["display_name"],
                "type": "direct",
            }
        )
    if groups:
        out["groups"] = groups
    provisio = dict(attributes.pop(PROVISIO_SCHEMA, None) or {})
    if isinstance(attributes.get("custom"), dict):
        provisio["custom"] = attributes.pop("custom")
    attributes.pop("custom", None)
    if row.get("sso_name") is not None:
        provisio["ssoName"] = row["sso_name"]
    core = user_schema()
    for key, value in attributes.items():
        if key.startswith("urn:") or core.attr(key) is None:
            continue  # not a SCIM attribute (see unknown_attributes): stored, not shown
        out[key] = value
    ent = attributes.get(ENTERPRISE_SCHEMA)
    if ent:
        ent = dict(ent)
        mgr = ent.get("manager")
        if isinstance(mgr, dict) and mgr.get("value") and not storage:
            ent["manager"] = {**mgr, "$ref": f"{base}/Users/{mgr['value']}"}
        out[ENTERPRISE_SCHEMA] = ent
        out["schemas"].append(ENTERPRISE_SCHEMA)
    if provisio:
        out[PROVISIO_SCHEMA] = provisio
        out["schemas"].append(PROVISIO_SCHEMA)
    _render_extensions(out, attributes, row.get("sso_name"), kind, storage)
    if not meta:  # canonical_user: normalise drops meta (read-only) anyway
        return out
    out["meta"] = {
        "resourceType": "User",
        "created": _iso(row["created_at"]),
        "lastModified": _iso(row["updated_at"]),
        "location": f"{base}/Users/{uid}",
        "version": etag(int(row["version"])),
    }
    return out


def _render_extensions(
    out: dict[str, Any], attributes: Mapping[str, Any], sso_name: Any, kind: ResourceKind | None, storage: bool
) -> None:
    """A tenant's extension data (declared, or stored as sent), and the preset attributes
    that show Provisio's ssoName under another URN (Splashtop's)."""
    for key, value in attributes.items():
        if key.startswith("urn:") and key not in _BUILT_IN_KEYS and isinstance(value, dict) and value:
            ext = kind.extensions.get(key.lower()) if kind is not None else None
            if ext is not None and not storage:  # kept in the form PATCH works on
                value = {k: v for k, v in value.items() if (a := ext.attr(k)) is None or a.returned != "never"}
            out[key] = value
            out["schemas"].append(key)
    if kind is not None and sso_name is not None:
        for urn, name in kind.sso_aliases:
            if urn not in out:
                out[urn] = {}
                out["schemas"].append(urn)
            out[urn][name] = sso_name


def render_group(row: Mapping[str, Any], members: Iterable[Mapping[str, Any]] | None, base: str) -> dict[str, Any]:
    """Rebuild a SCIM Group from a groups row (or ``GroupState.model_dump()``) and its
    members as ``directory.group_members`` reads them (``id``, ``display``)."""
    gid = str(row["id"])
    out: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "id": gid}
    if row.get("external_id") is not None:
        out["externalId"] = row["external_id"]
    out["displayName"] = row["display_name"]
    for key, value in (row.get("attributes") or {}).items():
        out.setdefault(key, value)
    if members is not None:
        out["members"] = [
            {
                "value": str(m["id"]),
                "$ref": f"{base}/Users/{m['id']}",
                "display": m.get("display") or m.get("user_name"),
                "type": "User",
            }
            for m in members
        ]
    out["meta"] = {
        "resourceType": "Group",
        "created": _iso(row["created_at"]),
        "lastModified": _iso(row["updated_at"]),
        "location": f"{base}/Groups/{gid}",
        "version": etag(int(row["version"])),
    }
    return out


# --------------------------------------------------------------------------- projection


def _split(kind: ResourceKind, path: str) -> tuple[str, str | None] | None:
    """'urn:...:User:name.givenName' → (canonical top key, sub); None when unknown."""
    low = path.lower()
    ext = kind.extensions.get(low)
    if ext is not None:
        return ext.id, None
    schema: Schema = kind.core
    rest = path
    for urn, s in [(kind.core.id.lower(), kind.core), *kind.extensions.items()]:
        if low.startswith(urn + ":"):
            schema, rest = s, path[len(urn) + 1 :]
            break
    top, _, sub = rest.partition(".")
    if schema is kind.core and top.lower() in COMMON:
        return COMMON[top.lower()].name, sub or None
    attr = schema.attr(top)
    if attr is None:
        return None
    name = attr.name if schema is kind.core else f"{schema.id}:{attr.name}"
    if sub:
        child = attr.child(sub)
        sub = child.name if child else sub
    return name, sub or None


def project(
    kind: ResourceKind,
    resource: dict[str, Any],
    attributes: list[str] | None,
    excluded: list[str] | None,
) -> dict[str, Any]:
    """RFC 7644 §3.4.2.5 ``attributes`` / ``excludedAttributes`` on a rendered resource."""
    if not attributes and not excluded:
        return resource
    if attributes:
        wanted = [s for s in (_split(kind, p) for p in attributes) if s]
        out: dict[str, Any] = {k: resource[k] for k in ("schemas", "id") if k in resource}
        for top, sub in wanted:
            if ":" in top and top.rsplit(":", 1)[0].lower() in kind.extensions:
                urn, name = top.rsplit(":", 1)
                src = resource.get(urn)
                if isinstance(src, dict) and name in src:
                    dst = out.setdefault(urn, {})
                    dst[name] = _sub_pick(src[name], sub) if sub else src[name]
                continue
            if top not in resource:
                continue
            if sub is None:
                out[top] = resource[top]
            else:
                picked = _sub_pick(resource[top], sub)
                if picked not in (None, [], {}):
                    prev = out.get(top)
                    out[top] = _merge_pick(prev, picked)
        return out
    out = dict(resource)
    for path in excluded or ():
        s = _split(kind, path)
        if not s:
            continue
        top, sub = s
        if top in ("id", "schemas"):
            continue  # returned "always"
        if ":" in top and top.rsplit(":", 1)[0].lower() in kind.extensions:
            urn, name = top.rsplit(":", 1)
            if isinstance(out.get(urn), dict):
                out[urn] = {k: v for k, v in out[urn].items() if k != name}
            continue
        if sub is None:
            out.pop(top, None)
        elif isinstance(out.get(top), dict):
            out[top] = {k: v for k, v in out[top].items() if k != sub}
        elif isinstance(out.get(top), list):
            out[top] = [{k: v for k, v in item.items() if k != sub} for item in out[top]]
    return out


def _sub_pick(value: Any, sub: str) -> Any:
    if isinstance(value, list):
        return [{sub: v[sub]} for v in value if isinstance(v, dict) and sub in v]
    if isinstance(value, dict):
        return {sub: value[sub]} if sub in value else None
    return None


def _merge_pick(prev: Any, picked: Any) -> Any:
    if prev is None:
        return picked
    if isinstance(prev, dict) and isinstance(picked, dict):
        return {**prev, **picked}
    if isinstance(prev, list) and isinstance(picked, list) and len(prev) == len(picked):
        return [{**a, **b} for a, b in zip(prev, picked, strict=True)]
    return picked


def split_csv(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def canonical_urn(name: str) -> str:
    for urn in (USER_SCHEMA, GROUP_SCHEMA, ENTERPRISE_SCHEMA, PROVISIO_SCHEMA):
        if name.lower() == urn.lower():
            return urn
    return name


def canonical_user(kind: ResourceKind, row: Mapping[str, Any]) -> dict[str, Any]:
    """The stored user in the canonical form PATCH works on. Stored extension data is
    kept even if the tenant now rejects undeclared extensions (it was accepted once)."""
    stored = render_user(row, "", storage=True, meta=False, kind=kind)
    return normalise(kind, stored, undeclared="store", max_chars=None)


def canonical_group(row: Mapping[str, Any], members: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"displayName": row["display_name"]}
    if row.get("external_id") is not None:
        out["externalId"] = row["external_id"]
    for key, value in (row.get("attributes") or {}).items():
        out.setdefault(key, value)
    if members is not None:
        out["members"] = [{"value": str(m["id"])} for m in members]
    return out
