"""Tenant-declared SCIM extensions as pure rules (issue 13 §4): schema documents, the
tenant's User kind, undeclared data, the Splashtop ssoName alias, PATCH by URN path."""

from __future__ import annotations

import json

import pytest

from provisio_lib.scim_extensions import PRESETS, SPLASHTOP_SCHEMA, SchemaDocumentError, validate_schema_document
from scim_gateway.errors import ScimError
from scim_gateway.filters import compile_filter
from scim_gateway.patch import apply_patch, parse_patch
from scim_gateway.resources import canonical_user, fold_sso_aliases, normalise, render_user, require, user_data
from scim_gateway.schema import PROVISIO_SCHEMA, parse_schema_document, tenant_user_kind, user_kind

pytestmark = pytest.mark.unit

EXT = "urn:ietf:params:scim:schemas:extension:Acme:2.0:User"
DOC = {
    "id": EXT,
    "attributes": [
        {"name": "level", "type": "integer"},
        {"name": "badge", "type": "complex", "subAttributes": [{"name": "id", "type": "string"}]},
        {"name": "tags", "type": "string", "multiValued": True},
    ],
}


def kind(*docs, preset=None, undeclared="store"):
    rows = [{"preset": preset, "document": d} for d in docs]
    return tenant_user_kind(json.dumps(rows), undeclared)


def patch(*ops):
    return parse_patch({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": list(ops)})


def test_documents_are_validated():
    validate_schema_document(DOC)
    validate_schema_document(PRESETS["splashtop"])
    bad = [
        ({**DOC, "id": "not-a-urn"}, "URN"),
        (
            {
                **DOC,
                "attributes": [
                    {
                        "name": "a",
                        "type": "complex",
                        "subAttributes": [
                            {"name": "b", "type": "complex", "subAttributes": [{"name": "c", "type": "string"}]}
                        ],
                    }
                ],
            },
            "§2.3.8",
        ),
        (
            {
                **DOC,
                "attributes": [{"name": "a", "type": "string", "subAttributes": [{"name": "b", "type": "string"}]}],
            },
            "only complex",
        ),
        ({**DOC, "attributes": [{"name": "a", "type": "string", "mutability": "sometimes"}]}, "mutability"),
        ({**DOC, "id": EXT.replace("User", "Group")}, "only User extensions"),
        ({**DOC, "attributes": [{"name": f"a{i}", "type": "string"} for i in range(101)]}, "at most 100"),
    ]
    for doc, why in bad:
        with pytest.raises(SchemaDocumentError, match=why):
            validate_schema_document(doc)


def test_tenant_kind_is_built_once_per_declaration_and_keeps_the_built_ins():
    k = kind(DOC)
    assert k is kind(DOC)
    assert EXT.lower() in k.extensions and user_kind().extensions.keys() <= k.extensions.keys()
    assert EXT.lower() not in user_kind().extensions
    assert kind(DOC, undeclared="reject").undeclared == "reject"
    assert kind({"id": "broken"}).extensions.keys() == user_kind().extensions.keys()  # a bad row is skipped


def test_declared_values_are_typed_and_undeclared_ones_follow_the_setting():
    k = kind(DOC)
    out = normalise(
        k,
        {
            "userName": "a",
            EXT: {"level": "3", "badge": {"id": "b1"}, "tags": ["x"]},
            "urn:x:Other:2.0:User": {"k": [1, {"a": None}]},
        },
    )
    assert out[parse_schema_document(DOC).id] == {"level": 3, "badge": {"id": "b1"}, "tags": ["x"]}
    assert out["urn:x:Other:2.0:User"] == {"k": [1, {"a": None}]}
    with pytest.raises(ScimError) as e:
        normalise(kind(DOC, undeclared="reject"), {"userName": "a", "urn:x:Other:2.0:User": {"k": 1}})
    assert "urn:x:Other:2.0:User" in e.value.detail
    with pytest.raises(ScimError) as e:
        normalise(k, {"userName": "a", EXT: {"level": "high"}})
    assert e.value.scim_type == "invalidValue"


def test_required_in_an_extension_only_when_it_is_sent():
    doc = {
        "id": EXT,
        "attributes": [{"name": "cc", "type": "string", "required": True}, {"name": "x", "type": "string"}],
    }
    k = kind(doc)
    require(k, normalise(k, {"userName": "a"}))
    with pytest.raises(ScimError, match="cc is required"):
        require(k, normalise(k, {"userName": "a", EXT: {"x": "1"}}))


def test_splashtop_sso_name_is_the_column():
    k = kind(PRESETS["splashtop"], preset="splashtop")
    created = fold_sso_aliases(k, normalise(k, {"userName": "a", SPLASHTOP_SCHEMA: {"ssoName": "entra"}}))
    assert created == {"userName": "a", PROVISIO_SCHEMA: {"ssoName": "entra"}}
    assert user_data(created).sso_name == "entra" and user_data(created).attributes == {}
    row = {
        "id": "00000000-0000-0000-0000-000000000001",
        "user_name": "a",
        "sso_name": "entra",
        "attributes": {},
        "active": True,
    }
    shown = render_user(row, "", meta=False, kind=k)
    assert shown[SPLASHTOP_SCHEMA] == {"ssoName": "entra"} and shown[PROVISIO_SCHEMA] == {"ssoName": "entra"}
    view = canonical_user(k, row)
    for path in (f"{SPLASHTOP_SCHEMA}:ssoName", f"{PROVISIO_SCHEMA}:ssoName"):
        after = fold_sso_aliases(
            k, normalise(k, apply_patch(k, view, patch({"op": "replace", "path": path, "value": "okta"}))), view
        )
        assert after[PROVISIO_SCHEMA] == {"ssoName": "okta"} and SPLASHTOP_SCHEMA not in after, path
    f = compile_filter(k, f'{SPLASHTOP_SCHEMA}:ssoName eq "okta"', "u", 2)
    assert "u.sso_name" in f.sql and f.params == ["okta"]


def test_patch_by_undeclared_urn_paths_in_store_mode():
    k = kind()
    urn = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User"
    res = apply_patch(
        k,
        {"userName": "a"},
        patch(
            {"op": "Add", "path": f"{urn}:CustomAttribute", "value": "v"},
            {"op": "add", "path": urn, "value": {"Other": 1}},
            {"op": "add", "path": f"{urn}:obj.sub", "value": True},
        ),
    )
    assert res[urn] == {"CustomAttribute": "v", "Other": 1, "obj": {"sub": True}}
    res = apply_patch(k, res, patch({"op": "remove", "path": f"{urn.lower()}:Other"}))
    assert res[urn] == {"CustomAttribute": "v", "obj": {"sub": True}}
    assert urn not in apply_patch(k, res, patch({"op": "remove", "path": urn}))
    with pytest.raises(ScimError) as e:
        apply_patch(
            kind(undeclared="reject"),
            {"userName": "a"},
            patch({"op": "add", "path": f"{urn}:CustomAttribute", "value": "v"}),
        )
    assert e.value.scim_type == "invalidPath" and urn in e.value.detail


def test_returned_never_is_hidden_but_kept_through_a_patch():
    doc = {
        "id": EXT,
        "attributes": [{"name": "pin", "type": "string", "returned": "never"}, {"name": "x", "type": "string"}],
    }
    k = kind(doc)
    row = {
        "id": "00000000-0000-0000-0000-000000000002",
        "user_name": "a",
        "active": True,
        "attributes": {EXT: {"pin": "1234", "x": "1"}},
    }
    assert render_user(row, "", meta=False, kind=k)[EXT] == {"x": "1"}
    view = canonical_user(k, row)
    after = normalise(k, apply_patch(k, view, patch({"op": "replace", "path": f"{EXT}:x", "value": "2"})))
    assert user_data(after).attributes[EXT] == {"pin": "1234", "x": "2"}
