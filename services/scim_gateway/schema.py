"""The SCIM schemas this gateway serves, as data (pure, no I/O).

The core User, Group and enterprise User definitions come from scim2-models
(``Model.to_schema()``), so names, types, ``caseExact`` and ``mutability`` follow
RFC 7643 §4 and §8.7 as that library encodes them; the Provisio User extension is
defined here. Everything else in the gateway (validation of bodies, PATCH paths,
filters, /Schemas) reads these tables, so an attribute is declared exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from typing import Any

from provisio_lib.scim_extensions import (
    PRESET_SSO_ALIASES,
    UNDECLARED_DEFAULT,
    UNDECLARED_MODES,
    SchemaDocumentError,
    validate_schema_document,
)

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE_SCHEMA = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PROVISIO_SCHEMA = "urn:ietf:params:scim:schemas:extension:provisio:2.0:User"
LIST_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"


@dataclass(frozen=True)
class Attr:
    name: str
    type: str  # string boolean decimal integer dateTime reference complex binary
    multi_valued: bool = False
    case_exact: bool = False
    mutability: str = "readWrite"  # readOnly readWrite immutable writeOnly
    returned: str = "default"
    required: bool = False
    uniqueness: str = "none"
    description: str = ""
    sub: dict[str, Attr] = field(default_factory=dict)  # lower-case name -> Attr
    free_form: bool = False  # Provisio "custom": any JSON object, keys kept as sent

    def child(self, name: str) -> Attr | None:
        return self.sub.get(name.lower())

    def to_scim(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "multiValued": self.multi_valued,
            "description": self.description or self.name,
            "required": self.required,
            "caseExact": self.case_exact,
            "mutability": self.mutability,
            "returned": self.returned,
            "uniqueness": self.uniqueness,
        }
        if self.type == "reference":
            out["referenceTypes"] = ["external"] if self.name != "$ref" else ["User", "Group"]
        if self.sub:
            out["subAttributes"] = [a.to_scim() for a in self.sub.values()]
        return out


@dataclass(frozen=True)
class Schema:
    id: str
    name: str
    description: str
    attrs: dict[str, Attr]  # lower-case name -> Attr

    def attr(self, name: str) -> Attr | None:
        return self.attrs.get(name.lower())

    def to_scim(self, location_base: str) -> dict[str, Any]:
        return {
            "schemas": [SCHEMA_SCHEMA],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": [a.to_scim() for a in self.attrs.values()],
            "meta": {"resourceType": "Schema", "location": f"{location_base}/Schemas/{self.id}"},
        }


def _from_scim(d: dict[str, Any]) -> Attr:
    subs = {s["name"].lower(): _from_scim(s) for s in d.get("subAttributes") or ()}
    return Attr(
        name=d["name"],
        type=d["type"],
        multi_valued=bool(d.get("multiValued")),
        case_exact=bool(d.get("caseExact")),
        mutability=d.get("mutability") or "readWrite",
        returned=d.get("returned") or "default",
        required=bool(d.get("required")),
        uniqueness=d.get("uniqueness") or "none",
        description=(d.get("description") or "").replace("\n", " "),
        sub=subs,
    )


def _schema_from_model(model: Any, description: str) -> Schema:
    d = model.to_schema().model_dump()
    attrs = {a["name"].lower(): _from_scim(a) for a in d["attributes"]}
    return Schema(id=d["id"], name=d["name"], description=description, attrs=attrs)


# Common attributes (RFC 7643 §3.1) are part of every resource, not of a schema.
COMMON: dict[str, Attr] = {
    "id": Attr("id", "string", case_exact=True, mutability="readOnly", returned="always", uniqueness="server"),
    "externalid": Attr("externalId", "string", case_exact=True),
    "meta": Attr(
        "meta",
        "complex",
        mutability="readOnly",
        sub={
            "resourcetype": Attr("resourceType", "string", case_exact=True, mutability="readOnly"),
            "created": Attr("created", "dateTime", mutability="readOnly"),
            "lastmodified": Attr("lastModified", "dateTime", mutability="readOnly"),
            "location": Attr("location", "reference", mutability="readOnly"),
            "version": Attr("version", "string", case_exact=True, mutability="readOnly"),
        },
    ),
}


@cache
def user_schema() -> Schema:
    import scim2_models

    s = _schema_from_model(scim2_models.User, "User Account")
    # RFC 7643 §4.1.1: userName is unique (server) and required.
    attrs = dict(s.attrs)
    attrs["username"] = replace(attrs["username"], required=True, uniqueness="server")
    return Schema(s.id, s.name, s.description, attrs)


@cache
def group_schema() -> Schema:
    import scim2_models

    s = _schema_from_model(scim2_models.Group, "Group")
    attrs = dict(s.attrs)
    attrs["displayname"] = replace(attrs["displayname"], required=True, uniqueness="server")
    return Schema(s.id, s.name, s.description, attrs)


@cache
def enterprise_schema() -> Schema:
    import scim2_models

    return _schema_from_model(scim2_models.EnterpriseUser, "Enterprise User")


@cache
def provisio_schema() -> Schema:
    return Schema(
        id=PROVISIO_SCHEMA,
        name="ProvisioUser",
        description="Provisio User extension: SSO routing and per-tenant custom attributes",
        attrs={
            "ssoname": Attr(
                "ssoName",
                "string",
                case_exact=True,
                description="Name of the SSO connection this user signs in with (Splashtop ssoName)",
            ),
            "custom": Attr(
                "custom",
                "complex",
                description="Per-tenant custom attributes: a JSON object whose keys the tenant chooses",
                free_form=True,
            ),
        },
    )


def user_extensions() -> dict[str, Schema]:
    return {ENTERPRISE_SCHEMA.lower(): enterprise_schema(), PROVISIO_SCHEMA.lower(): provisio_schema()}


@dataclass(frozen=True)
class ResourceKind:
    name: str  # "User" / "Group"
    endpoint: str  # "/Users"
    core: Schema
    extensions: dict[str, Schema]  # lower-case URN -> Schema
    # Extension data under a URN no schema declares: "reject" (400 naming the URN) or
    # "store" (kept as sent and returned). A tenant's kind carries its own setting.
    undeclared: str = "reject"
    # (extension URN, attribute name) pairs stored in the sso_name column, as Provisio's
    # own ssoName is (the Splashtop preset's ssoName).
    sso_aliases: tuple[tuple[str, str], ...] = ()

    def schema_for_urn(self, urn: str) -> Schema | None:
        if urn.lower() == self.core.id.lower():
            return self.core
        return self.extensions.get(urn.lower())


@cache
def user_kind() -> ResourceKind:
    return ResourceKind("User", "/Users", user_schema(), user_extensions())


@cache
def group_kind() -> ResourceKind:
    return ResourceKind("Group", "/Groups", group_schema(), {})


def all_schemas(kind: ResourceKind | None = None) -> list[Schema]:
    """The schemas /Schemas lists; with a tenant's User kind, its declared ones too."""
    out = [user_schema(), group_schema(), enterprise_schema(), provisio_schema()]
    if kind is not None:
        out.extend(custom_extensions(kind))
    return out


# --------------------------------------------------------------------------- discovery


def service_provider_config(base: str, max_results: int, max_body: int) -> dict[str, Any]:
    """RFC 7643 §5; what this gateway really supports."""
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://github.com/provisio/provisio",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": max_results},
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "Authentication with a per-tenant bearer token (provisio scim-token create)",
                "specUri": "https://www.rfc-editor.org/info/rfc6750",
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": f"{base}/ServiceProviderConfig",
        },
    }


def resource_types(base: str, kind: ResourceKind | None = None) -> list[dict[str, Any]]:
    declared = [{"schema": e.id, "required": False} for e in custom_extensions(kind)] if kind else []
    return [
        {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "description": "User Account",
            "schema": USER_SCHEMA,
            "schemaExtensions": [
                {"schema": ENTERPRISE_SCHEMA, "required": False},
                {"schema": PROVISIO_SCHEMA, "required": False},
                *declared,
            ],
            "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/User"},
        },
        {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "description": "Group",
            "schema": GROUP_SCHEMA,
            "schemaExtensions": [],
            "meta": {"resourceType": "ResourceType", "location": f"{base}/ResourceTypes/Group"},
        },
    ]


# --------------------------------------------------------------------------- tenant extensions
#
# Entra ID admins add attributes under their own URN
# (urn:ietf:params:scim:schemas:extension:<Name>:2.0:User:<attr>) and Splashtop's Entra
# mapping sends urn:ietf:params:scim:schemas:extension:Splashtop:2.0:User:ssoName. A
# tenant declares such an extension with an RFC 7643 §7 schema document
# (``provisio scim-schema add``); the gateway's User kind for that tenant then knows it.


def parse_schema_document(doc: Any) -> Schema:
    """An RFC 7643 §7 schema document (a User extension) → Schema, or SchemaDocumentError."""
    validate_schema_document(doc)
    attrs = {a["name"].lower(): _from_scim(a) for a in doc["attributes"]}
    sid = doc["id"]
    return Schema(
        id=sid,
        name=doc.get("name") or sid.rsplit(":", 1)[-1],
        description=doc.get("description") or doc.get("name") or sid,
        attrs=attrs,
    )


@lru_cache(maxsize=1024)
def tenant_user_kind(declared_json: str, undeclared: str) -> ResourceKind:
    """The User kind of a tenant: the built-in extensions plus the tenant's declared ones.

    ``declared_json`` is the tenant's rows as the token lookup reads them (a JSON list of
    ``{"preset", "document"}``); cached on that text, so the kind (and the PATCH path
    cache keyed on it) is made once per distinct declaration, not per request."""
    base = user_kind()
    extensions = dict(base.extensions)
    aliases: list[tuple[str, str]] = []
    for row in json.loads(declared_json or "[]"):
        try:
            schema = parse_schema_document(row.get("document"))
        except SchemaDocumentError:
            continue  # validated by the CLI; a hand-edited row must not break the tenant
        extensions[schema.id.lower()] = schema
        aliases.extend(PRESET_SSO_ALIASES.get(row.get("preset") or "", ()))
    mode = undeclared if undeclared in UNDECLARED_MODES else UNDECLARED_DEFAULT
    return replace(base, extensions=extensions, undeclared=mode, sso_aliases=tuple(aliases))


BUILT_IN_URNS = frozenset(u.lower() for u in (USER_SCHEMA, GROUP_SCHEMA, ENTERPRISE_SCHEMA, PROVISIO_SCHEMA))


def custom_extensions(kind: ResourceKind) -> list[Schema]:
    """The kind's extensions beyond the built-in ones (a tenant's declared schemas)."""
    return [s for k, s in kind.extensions.items() if k not in BUILT_IN_URNS]
