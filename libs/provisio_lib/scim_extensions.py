"""SCIM schema extensions a tenant declares (issue 13 §4): presets and the validation of
an RFC 7643 §7 schema document (pure). Shared by the CLI (``provisio scim-schema add``)
and the SCIM gateway, which builds its attribute tables from the same documents.

Entra ID admins add attributes under their own URN
(``urn:ietf:params:scim:schemas:extension:<Name>:2.0:User:<attr>``) and Splashtop's
Entra mapping sends ``urn:ietf:params:scim:schemas:extension:Splashtop:2.0:User:ssoName``.
"""

from __future__ import annotations

import re
from typing import Any

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PROVISIO_SCHEMA = "urn:ietf:params:scim:schemas:extension:provisio:2.0:User"


SPLASHTOP_SCHEMA = "urn:ietf:params:scim:schemas:extension:Splashtop:2.0:User"
BUILT_IN_URNS = frozenset(u.lower() for u in (USER_SCHEMA, GROUP_SCHEMA, ENTERPRISE_SCHEMA, PROVISIO_SCHEMA))
UNDECLARED_MODES = ("store", "reject")
# The default: Entra sends an extension attribute only once an admin has mapped it, so
# refusing it fails that user in every provisioning cycle until someone declares the
# schema; stored, it is kept and returned (bounded by the body limit) and can be declared
# later to make it typed and filterable.
UNDECLARED_DEFAULT = "store"

PRESETS: dict[str, dict[str, Any]] = {
    "splashtop": {
        "id": SPLASHTOP_SCHEMA,
        "name": "SplashtopUser",
        "description": "Splashtop User extension (Splashtop's Entra ID attribute mapping)",
        "attributes": [
            {
                "name": "ssoName",
                "type": "string",
                "multiValued": False,
                "description": "Name of the SSO connection the user signs in with; stored as Provisio's ssoName",
                "required": False,
                "caseExact": True,
                "mutability": "readWrite",
                "returned": "default",
                "uniqueness": "none",
            }
        ],
    }
}
# What a preset maps onto Provisio's columns.
PRESET_SSO_ALIASES: dict[str, tuple[tuple[str, str], ...]] = {"splashtop": ((SPLASHTOP_SCHEMA, "ssoName"),)}

_TYPES = ("string", "boolean", "decimal", "integer", "dateTime", "reference", "binary", "complex")
_MUTABILITY = ("readOnly", "readWrite", "immutable", "writeOnly")
_RETURNED = ("always", "never", "default", "request")
_ATTRNAME = re.compile(r"[A-Za-z][A-Za-z0-9_$-]*")  # RFC 7643 §2.1 ATTRNAME ($ as in $ref)
_URN = re.compile(r"urn:[A-Za-z0-9][A-Za-z0-9-]{0,31}:[A-Za-z0-9()+,\-.:=@;$_!*'%/?#]+")
MAX_ATTRIBUTES = 100


class SchemaDocumentError(ValueError):
    """A schema document a tenant cannot declare; the message says what to fix."""


def validate_schema_document(doc: Any) -> None:
    """Raise SchemaDocumentError unless ``doc`` is an RFC 7643 §7 schema document of a
    User extension that the gateway can enforce."""
    if not isinstance(doc, dict):
        raise SchemaDocumentError("a schema document is a JSON object (RFC 7643 §7)")
    sid = doc.get("id")
    if not isinstance(sid, str) or not _URN.fullmatch(sid):
        raise SchemaDocumentError(f"id must be the schema's URN, e.g. {SPLASHTOP_SCHEMA}; got {sid!r}")
    if sid.lower() in BUILT_IN_URNS:
        raise SchemaDocumentError(f"{sid} is built in; declare only your own extensions")
    if sid.lower().endswith(":group"):
        raise SchemaDocumentError(f"{sid}: only User extensions can be declared")
    for key in ("name", "description"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise SchemaDocumentError(f"{key} must be a string")
    attributes = doc.get("attributes")
    if not isinstance(attributes, list) or not attributes:
        raise SchemaDocumentError("attributes must be a non-empty list of attribute definitions")
    if len(attributes) > MAX_ATTRIBUTES:
        raise SchemaDocumentError(f"at most {MAX_ATTRIBUTES} attributes per schema")
    _check_attributes(attributes, "attributes", nested=False)


def _check_attributes(items: list[Any], where: str, *, nested: bool) -> None:
    seen: set[str] = set()
    for i, d in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(d, dict):
            raise SchemaDocumentError(f"{at} must be an object")
        name = d.get("name")
        if not isinstance(name, str) or not _ATTRNAME.fullmatch(name):
            raise SchemaDocumentError(f"{at}.name must be an attribute name (a letter, then letters, digits, - or _)")
        at = f"{where}[{i}] ({name})"
        if name.lower() in seen:
            raise SchemaDocumentError(f"{at}: the name is declared twice (names are case-insensitive)")
        typ = d.get("type")
        if typ not in _TYPES:
            raise SchemaDocumentError(f"{at}.type must be one of {', '.join(_TYPES)}; got {typ!r}")
        for key in ("multiValued", "required", "caseExact"):
            if d.get(key) is not None and not isinstance(d[key], bool):
                raise SchemaDocumentError(f"{at}.{key} must be true or false")
        if d.get("mutability", "readWrite") not in _MUTABILITY:
            raise SchemaDocumentError(f"{at}.mutability must be one of {', '.join(_MUTABILITY)}")
        if d.get("returned", "default") not in _RETURNED:
            raise SchemaDocumentError(f"{at}.returned must be one of {', '.join(_RETURNED)}")
        if d.get("uniqueness", "none") != "none":
            # Not enforced on JSON attributes: refuse rather than promise it.
            raise SchemaDocumentError(f'{at}.uniqueness: only "none" is supported for extension attributes')
        if d.get("description") is not None and not isinstance(d["description"], str):
            raise SchemaDocumentError(f"{at}.description must be a string")
        subs_raw = d.get("subAttributes")
        if typ == "complex":
            if nested:
                # RFC 7643 §2.3.8: a complex attribute has no complex sub-attributes
                raise SchemaDocumentError(f"{at}: a sub-attribute cannot be complex (RFC 7643 §2.3.8)")
            if not isinstance(subs_raw, list) or not subs_raw:
                raise SchemaDocumentError(f"{at}: a complex attribute needs subAttributes")
            _check_attributes(subs_raw, f"{at}.subAttributes", nested=True)
        elif subs_raw:
            raise SchemaDocumentError(f"{at}: only complex attributes have subAttributes")
        seen.add(name.lower())
