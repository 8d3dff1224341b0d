"""The OpenAPI 3 description of the gateway, generated from the route table
(``handlers.ROUTES``) so it cannot drift from what the app serves."""

from __future__ import annotations

from typing import Any

from .keys import BASE_PATH

_LIST_PARAMS = [
    {"name": "filter", "in": "query", "schema": {"type": "string"}, "description": "RFC 7644 §3.4.2.2 filter"},
    {"name": "startIndex", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "count", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "sortBy", "in": "query", "schema": {"type": "string"}},
    {"name": "sortOrder", "in": "query", "schema": {"type": "string", "enum": ["ascending", "descending"]}},
]
_PROJECTION = [
    {"name": "attributes", "in": "query", "schema": {"type": "string"}, "description": "Comma-separated paths"},
    {"name": "excludedAttributes", "in": "query", "schema": {"type": "string"}},
]
_ERROR_REF = {"$ref": "#/components/responses/Error"}
_SCIM = "application/scim+json"


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {_SCIM: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _ok(ref: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": "OK", "content": {_SCIM: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}}


def build_openapi(routes: list[tuple[str, str, Any, bool, str]], server_url: str | None = None) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, rel, _handler, needs_auth, summary in routes:
        path = BASE_PATH + rel
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method.lower()}{rel.replace('/', '_').replace('{', '').replace('}', '').replace('.', '')}",
        }
        params: list[dict[str, Any]] = []
        if "{id}" in rel:
            params.append({"name": "id", "in": "path", "required": True, "schema": {"type": "string"}})
        resource = "User" if "/Users" in rel else "Group" if "/Groups" in rel else "Resource"
        responses: dict[str, Any] = {"400": _ERROR_REF, "404": _ERROR_REF, "500": _ERROR_REF}
        if needs_auth:
            op["security"] = [{"bearer": []}]
            responses.update({"401": _ERROR_REF, "429": _ERROR_REF})
        if method == "GET" and rel in ("/Users", "/Groups"):
            params += _LIST_PARAMS + _PROJECTION
            responses.update(_ok("ListResponse"))
        elif method == "GET":
            params += _PROJECTION if resource != "Resource" else []
            responses.update(_ok(resource))
        elif method == "POST" and rel.endswith(".search"):
            op["requestBody"] = _body("SearchRequest")
            responses.update(_ok("ListResponse"))
        elif method == "POST" and rel == "/Bulk":
            responses["501"] = _ERROR_REF
        elif method == "POST":
            op["requestBody"] = _body(resource)
            responses.update(_ok(resource, "201"))
            responses.update({"409": _ERROR_REF, "413": _ERROR_REF, "503": _ERROR_REF})
        elif method == "PUT":
            op["requestBody"] = _body(resource)
            params.append({"name": "If-Match", "in": "header", "schema": {"type": "string"}})
            responses.update(_ok(resource))
            responses.update({"409": _ERROR_REF, "412": _ERROR_REF, "503": _ERROR_REF})
        elif method == "PATCH":
            op["requestBody"] = _body("PatchOp")
            params.append({"name": "If-Match", "in": "header", "schema": {"type": "string"}})
            responses.update(_ok(resource))
            responses.update({"409": _ERROR_REF, "412": _ERROR_REF, "503": _ERROR_REF})
        elif method == "DELETE":
            params.append({"name": "If-Match", "in": "header", "schema": {"type": "string"}})
            responses.update({"204": {"description": "Deleted"}, "412": _ERROR_REF, "503": _ERROR_REF})
        if params:
            op["parameters"] = params
        op["responses"] = responses
        paths.setdefault(path, {})[method.lower()] = op
    obj = {"type": "object", "additionalProperties": True}
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "Provisio SCIM 2.0 gateway",
            "version": "1.0.0",
            "description": "RFC 7643/7644 Users and Groups with the enterprise and Provisio User extensions.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "User": {**obj, "required": ["userName"], "properties": {"userName": {"type": "string"}}},
                "Group": {**obj, "required": ["displayName"], "properties": {"displayName": {"type": "string"}}},
                "Resource": obj,
                "PatchOp": {
                    "type": "object",
                    "required": ["schemas", "Operations"],
                    "properties": {
                        "schemas": {"type": "array", "items": {"type": "string"}},
                        "Operations": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["op"],
                                "properties": {"op": {"type": "string"}, "path": {"type": "string"}, "value": {}},
                            },
                        },
                    },
                },
                "SearchRequest": obj,
                "ListResponse": {
                    "type": "object",
                    "properties": {
                        "schemas": {"type": "array", "items": {"type": "string"}},
                        "totalResults": {"type": "integer"},
                        "startIndex": {"type": "integer"},
                        "itemsPerPage": {"type": "integer"},
                        "Resources": {"type": "array", "items": obj},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["schemas", "status"],
                    "properties": {
                        "schemas": {"type": "array", "items": {"type": "string"}},
                        "status": {"type": "string"},
                        "scimType": {"type": "string"},
                        "detail": {"type": "string"},
                    },
                },
            },
            "responses": {
                "Error": {
                    "description": "SCIM error (RFC 7644 §3.12)",
                    "content": {_SCIM: {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
