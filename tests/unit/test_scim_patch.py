"""PATCH (RFC 7644 §3.5.2) as Entra ID and Okta send it, applied without I/O."""

from __future__ import annotations

import uuid

import pytest

from scim_gateway.errors import ScimError
from scim_gateway.patch import apply_patch, parse_patch, plan_group_patch
from scim_gateway.resources import normalise
from scim_gateway.schema import group_kind, user_kind

pytestmark = pytest.mark.unit

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PRV = "urn:ietf:params:scim:schemas:extension:provisio:2.0:User"


def user(**extra):
    body = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "Test_User_ab6490ee@testuser.com",
        "active": True,
        "name": {"givenName": "Barbara", "familyName": "Jensen", "formatted": "Barbara Jensen"},
        "emails": [
            {"value": "bjensen@example.com", "type": "work", "primary": True},
            {"value": "babs@home.example", "type": "home"},
        ],
        **extra,
    }
    return normalise(user_kind(), body)


def patch(resource, *ops, kind=None):
    kind = kind or user_kind()
    return normalise(kind, apply_patch(kind, resource, parse_patch({"schemas": [PATCH], "Operations": list(ops)})))


def test_entra_multi_valued_replace_keeps_other_emails():
    # Microsoft tutorial, "Update User [Multi-valued properties]"
    out = patch(
        user(),
        {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "updatedEmail@microsoft.com"},
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
    )
    assert out["emails"] == [
        {"value": "updatedEmail@microsoft.com", "type": "work", "primary": True},
        {"value": "babs@home.example", "type": "home"},
    ]
    assert out["name"] == {"givenName": "Barbara", "familyName": "updatedFamilyName", "formatted": "Barbara Jensen"}


def test_entra_work_email_add_creates_it_when_absent():
    start = normalise(user_kind(), {"userName": "a", "emails": [{"value": "h@x", "type": "home"}]})
    out = patch(start, {"op": "Add", "path": 'emails[type eq "work"].value', "value": "w@x"})
    assert out["emails"] == [{"value": "h@x", "type": "home"}, {"type": "work", "value": "w@x"}]


def test_entra_single_valued_replace_of_user_name():
    out = patch(user(), {"op": "Replace", "path": "userName", "value": "5b50642d@testuser.com"})
    assert out["userName"] == "5b50642d@testuser.com"


@pytest.mark.parametrize("value", [False, "False", "false"])
def test_disable_user_with_real_or_string_boolean(value):
    out = patch(user(), {"op": "Replace", "path": "active", "value": value})
    assert out["active"] is False


def test_op_names_in_any_case():
    out = patch(
        user(), {"op": "REPLACE", "path": "displayName", "value": "B"}, {"op": "aDd", "path": "title", "value": "T"}
    )
    assert out["displayName"] == "B" and out["title"] == "T"


def test_pathless_value_object_with_paths_and_urns():
    out = patch(
        user(),
        {
            "op": "Replace",
            "value": {
                "name.givenName": "Babs",
                f"{ENT}:department": "Tour Operations",
                "active": "False",
                ENT: {"employeeNumber": "701984"},
                "urn:ietf:params:scim:schemas:core:2.0:User:displayName": "Babs J",
            },
        },
    )
    assert out["name"]["givenName"] == "Babs"
    assert out[ENT] == {"department": "Tour Operations", "employeeNumber": "701984"}
    assert out["active"] is False
    assert out["displayName"] == "Babs J"


def test_okta_pathless_deactivate():
    out = patch(user(), {"op": "replace", "value": {"active": False}})
    assert out["active"] is False


def test_enterprise_manager_as_bare_id():
    out = patch(user(), {"op": "Add", "path": f"{ENT}:manager", "value": "2819c223-7f76-453a-919d-413861904646"})
    assert out[ENT]["manager"] == {"value": "2819c223-7f76-453a-919d-413861904646"}
    out = patch(out, {"op": "Replace", "path": f"{ENT}:manager", "value": [{"value": "other"}]})
    assert out[ENT]["manager"] == {"value": "other"}
    out = patch(out, {"op": "Remove", "path": f"{ENT}:manager"})
    assert ENT not in out


def test_urn_prefixed_core_path_and_remove():
    out = patch(user(title="Boss"), {"op": "remove", "path": "urn:ietf:params:scim:schemas:core:2.0:User:title"})
    assert "title" not in out


def test_remove_email_by_filter():
    out = patch(user(), {"op": "remove", "path": 'emails[type eq "home"]'})
    assert [e["type"] for e in out["emails"]] == ["work"]


def test_add_to_multi_valued_appends_and_new_primary_wins():
    out = patch(
        user(), {"op": "add", "path": "emails", "value": [{"value": "new@x", "type": "other", "primary": True}]}
    )
    assert [e.get("primary") for e in out["emails"]] == [False, None, True]


def test_provisio_custom_and_sso_name():
    out = patch(
        user(),
        {"op": "add", "path": f"{PRV}:custom.costCode", "value": "CC-1"},
        {"op": "add", "path": f"{PRV}:ssoName", "value": "entra-main"},
    )
    assert out[PRV] == {"custom": {"costCode": "CC-1"}, "ssoName": "entra-main"}


@pytest.mark.parametrize(
    ("op", "scim_type"),
    [
        ({"op": "remove"}, "noTarget"),
        ({"op": "move", "path": "title", "value": "x"}, "invalidSyntax"),
        ({"op": "replace", "path": "noSuchAttribute", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": "emails[type eq ", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": "id", "value": "x"}, "mutability"),
        ({"op": "replace", "path": "groups", "value": []}, "mutability"),
        ({"op": "replace", "path": "active", "value": "maybe"}, "invalidValue"),
        ({"op": "replace", "path": "userName", "value": None}, "invalidValue"),
        ({"op": "replace", "path": 'emails[type eq "a" or type eq "b"].value', "value": "x"}, "noTarget"),
    ],
)
def test_bad_operations_are_4xx_with_scim_type(op, scim_type):
    with pytest.raises(ScimError) as err:
        patch(user(), op)
    assert err.value.status == 400
    assert err.value.scim_type == scim_type


def test_patch_body_must_be_a_patch_op():
    for body in ([], {"Operations": []}, {"schemas": [PATCH], "Operations": []}, {"schemas": [PATCH]}):
        with pytest.raises(ScimError) as err:
            parse_patch(body)
        assert err.value.status == 400


def test_group_members_add_and_remove_need_no_member_list():
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    plan = plan_group_patch(
        group_kind(),
        parse_patch(
            {
                "schemas": [PATCH],
                "Operations": [
                    # Microsoft tutorial "Update Group [Add Members]"
                    {"op": "Add", "path": "members", "value": [{"$ref": None, "value": a}, {"value": b}]},
                    # Entra: Remove + value list removes only those
                    {"op": "Remove", "path": "members", "value": [{"$ref": None, "value": b}]},
                    # Okta: members[value eq "id"]
                    {"op": "remove", "path": f'members[value eq "{c}"]'},
                    {"op": "Replace", "path": "displayName", "value": "New name"},
                ],
            }
        ),
    )
    assert not plan.needs_members
    assert plan.add == [uuid.UUID(a)]
    assert set(plan.remove) == {uuid.UUID(b), uuid.UUID(c)}
    assert [o.path for o in plan.other] == ["displayName"]


def test_group_replace_members_needs_the_full_list():
    a = str(uuid.uuid4())
    ops = parse_patch(
        {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "members", "value": [{"value": a}]}]}
    )
    plan = plan_group_patch(group_kind(), ops)
    assert plan.needs_members
    group = normalise(group_kind(), {"displayName": "g", "members": [{"value": str(uuid.uuid4())}]})
    out = apply_patch(group_kind(), group, plan.other)
    assert out["members"] == [{"value": a}]


def test_group_remove_all_members():
    group = normalise(group_kind(), {"displayName": "g", "members": [{"value": str(uuid.uuid4())}]})
    ops = parse_patch({"schemas": [PATCH], "Operations": [{"op": "remove", "path": "members"}]})
    plan = plan_group_patch(group_kind(), ops)
    assert plan.needs_members
    assert "members" not in apply_patch(group_kind(), group, plan.other)


def test_okta_group_pathless_replace_with_id_is_ignored_for_id():
    gid = str(uuid.uuid4())
    group = normalise(group_kind(), {"displayName": "Old"})
    out = patch(group, {"op": "replace", "value": {"id": gid, "displayName": "Test SCIMv2"}}, kind=group_kind())
    assert out == {"displayName": "Test SCIMv2"}


def test_member_value_that_is_not_an_id_is_invalid():
    ops = parse_patch(
        {"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": "nope"}]}]}
    )
    with pytest.raises(ScimError) as err:
        plan_group_patch(group_kind(), ops)
    assert err.value.scim_type == "invalidValue"
