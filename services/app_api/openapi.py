"""The App API's OpenAPI 3.1 document, served at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from provisio_lib.contract import GroupState, UserState

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_EVENT = {
    "type": "object",
    "required": ["id", "type", "tenant", "sequence", "occurred_at", "data"],
    "properties": {
        "id": {"type": "string", "format": "uuid", "description": "Stable: the receiver's idempotency key"},
        "type": {
            "type": "string",
            "enum": [
                "user.created",
                "user.updated",
                "user.deactivated",
                "user.reactivated",
                "user.deleted",
                "group.created",
                "group.updated",
                "group.deleted",
                "group.member_added",
                "group.member_removed",
                "sso.login",
            ],
        },
        "tenant": {"type": "string"},
        "tenant_id": {"type": "string", "format": "uuid"},
        "sequence": {"type": "string", "description": "Feed position; string order is feed order; the cursor"},
        "occurred_at": {"type": "string", "format": "date-time"},
        "source": {"type": "object", "properties": {"kind": {"type": "string"}, "label": {"type": "string"}}},
        "correlation_id": {"type": "string"},
        "resource_type": {"type": ["string", "null"]},
        "resource_id": {"type": ["string", "null"]},
        "data": {"description": "The resource after the change (see docs/app-integration.md)"},
        "changes": {"type": "object", "description": "field → {before, after} (updates, deactivations, deletes)"},
    },
}


def _err(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _page(item: str) -> dict[str, Any]:
    return {
        "description": "A page",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["data", "next_cursor"],
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                }
            }
        },
    }


_ERRORS = {
    "400": _err("Bad parameter"),
    "401": _err("No or invalid API key"),
    "403": _err("The key is not for this tenant"),
    "404": _err("Not found"),
    "429": _err("Rate limited"),
}
_TENANT = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Tenant name or id",
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
_CURSOR = {
    "name": "cursor",
    "in": "query",
    "schema": {"type": "string"},
    "description": "next_cursor of the previous page",
}
_UPDATED = {"name": "updated_after", "in": "query", "schema": {"type": "string", "format": "date-time"}}


def _get(summary: str, params: list[dict[str, Any]], ok: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "parameters": params,
            "responses": {"200": ok, **_ERRORS},
        }
    }


def _one(schema: str) -> dict[str, Any]:
    return {
        "description": "Found",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def build_openapi(server: str) -> dict[str, Any]:
    group = {**GroupState.model_json_schema(), "title": "Group"}
    group.setdefault("properties", {})["member_count"] = {"type": "integer"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Provisio App API",
            "version": "1",
            "description": "Directory, ordered event feed and SAML code exchange for the application's backend.",
        },
        "servers": [{"url": server}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "`provisio api-key create` (prk_…)"},
                "appSecret": {"type": "http", "scheme": "bearer", "description": "The SSO connection's app secret"},
            },
            "schemas": {
                "Error": _ERROR,
                "Event": _EVENT,
                "User": {**UserState.model_json_schema(), "title": "User"},
                "Member": {
                    "title": "Member",
                    "description": "A user, and the sources of its membership of the group",
                    "allOf": [
                        {"$ref": "#/components/schemas/User"},
                        {
                            "type": "object",
                            "required": ["membership_sources"],
                            "properties": {
                                "membership_sources": {
                                    "type": "array",
                                    "items": {"type": "string", "enum": ["jit", "scim"]},
                                }
                            },
                        },
                    ],
                },
                "Group": group,
            },
        },
        "paths": {
            "/api/v1/tenants/{tenant}/users": _get(
                "List a tenant's users (oldest first)", [_TENANT, _LIMIT, _CURSOR, _UPDATED], _page("User")
            ),
            "/api/v1/tenants/{tenant}/users/{id}": _get("One user", [_TENANT, _ID], _one("User")),
            "/api/v1/tenants/{tenant}/groups": _get(
                "List a tenant's groups (oldest first)", [_TENANT, _LIMIT, _CURSOR, _UPDATED], _page("Group")
            ),
            "/api/v1/tenants/{tenant}/groups/{id}": _get("One group", [_TENANT, _ID], _one("Group")),
            "/api/v1/tenants/{tenant}/groups/{id}/members": _get(
                "A group's members", [_TENANT, _ID, _LIMIT, _CURSOR], _page("Member")
            ),
            "/api/v1/events": _get(
                "Events after a cursor, oldest first; long-polls with wait",
                [
                    {
                        "name": "tenant",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Tenant name or id; omitted: every tenant of the key",
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "A sequence (next_cursor); empty: the oldest retained event; "
                        "latest: the newest event now (next_cursor is its sequence)",
                    },
                    _LIMIT,
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0},
                        "description": "Seconds to wait for an event when none is there yet (capped)",
                    },
                    {
                        "name": "types",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "Comma-separated types or patterns: user.*,group.member_added",
                    },
                ],
                {
                    "description": "Events",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["data", "next_cursor"],
                                "properties": {
                                    "data": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                                    "next_cursor": {"type": "string"},
                                },
                            }
                        }
                    },
                },
            ),
            "/api/v1/saml/token": {
                "post": {
                    "summary": "Exchange a SAML one-time code for the signed-in user's profile (single use)",
                    "security": [{"appSecret": []}],
                    "requestBody": {
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {"type": "object", "properties": {"code": {"type": "string"}}}
                            },
                            "application/json": {
                                "schema": {"type": "object", "properties": {"code": {"type": "string"}}}
                            },
                        }
                    },
                    "responses": {
                        "200": {"description": "The profile"},
                        "400": _err("invalid_request / invalid_grant"),
                        "401": _err("invalid_client"),
                    },
                }
            },
        },
    }
