"""Bounds on filters, PATCH paths and multi-valued attributes (issue 13 §2), no I/O.

Before: a 2,000-term filter was compiled and ran for minutes, a 500-term PATCH path
filter was evaluated against 20,000 emails on the event loop, and such a user was
accepted."""

from __future__ import annotations

import pytest

from scim_gateway.errors import ScimError
from scim_gateway.filters import compile_filter
from scim_gateway.limits import (
    MAX_FILTER_CHARS,
    MAX_FILTER_DEPTH,
    MAX_FILTER_TERMS,
    MAX_PATCH_OPERATIONS,
    MAX_VALUES,
    MAX_VALUES_BYTES,
    filter_cost,
)
from scim_gateway.patch import apply_patch, parse_patch
from scim_gateway.resources import normalise
from scim_gateway.schema import group_kind, user_kind

pytestmark = pytest.mark.unit

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def compile_user(text):
    return compile_filter(user_kind(), text, "u", 2)


def ors(n, template='emails co "x{i}"'):
    return " or ".join(template.format(i=i) for i in range(n))


def test_a_filter_at_the_term_limit_compiles():
    f = compile_user(ors(MAX_FILTER_TERMS))
    assert len(f.params) >= MAX_FILTER_TERMS


@pytest.mark.parametrize("n", [MAX_FILTER_TERMS + 1, 150])
def test_too_many_terms_is_400_invalid_filter(n):
    with pytest.raises(ScimError) as e:
        compile_user(ors(n))
    assert (e.value.status, e.value.scim_type) == (400, "invalidFilter")
    assert f"at most {MAX_FILTER_TERMS}" in e.value.detail


def test_terms_inside_a_value_filter_count():
    text = "emails[" + ors(MAX_FILTER_TERMS + 1, 'value co "x{i}"') + "]"
    with pytest.raises(ScimError) as e:
        compile_user(text)
    assert e.value.scim_type == "invalidFilter"


def test_too_deep_nesting_is_400_invalid_filter():
    text = 'userName eq "a"'
    for _ in range(MAX_FILTER_DEPTH + 1):
        text = f"not ({text} and active eq true)"
    with pytest.raises(ScimError) as e:
        compile_user(text)
    assert (e.value.status, e.value.scim_type) == (400, "invalidFilter")
    assert "nests" in e.value.detail


def test_a_filter_longer_than_the_limit_is_refused_before_parsing():
    text = 'userName eq "a" or displayName co "' + "x" * MAX_FILTER_CHARS + '"'
    with pytest.raises(ScimError) as e:
        compile_user(text)
    assert (e.value.status, e.value.scim_type) == (400, "invalidFilter")
    assert str(MAX_FILTER_CHARS) in e.value.detail


def test_what_idps_send_is_well_inside_the_limits():
    from scim_gateway.filters import parse_filter

    for text in (
        'userName eq "a@example.com"',
        'emails[type eq "work"].value eq "a@example.com"',
        'externalId eq "1" and (active eq true or not (title pr))',
    ):
        terms, depth = filter_cost(parse_filter(text))
        assert terms <= 3 and depth <= 3


def test_group_filters_are_limited_too():
    with pytest.raises(ScimError):
        compile_filter(group_kind(), ors(MAX_FILTER_TERMS + 1, 'displayName co "g{i}"'), "g", 2)


# --------------------------------------------------------------------------- PATCH


def patch(*ops):
    return parse_patch({"schemas": [PATCH], "Operations": list(ops)})


def a_user(emails=2):
    return normalise(
        user_kind(),
        {
            "userName": "a@example.com",
            "emails": [{"value": f"e{i}@example.com", "type": "work"} for i in range(emails)],
        },
    )


def test_a_patch_path_filter_with_too_many_terms_is_400_invalid_path():
    path = "emails[" + ors(MAX_FILTER_TERMS + 1, 'value eq "e{i}@example.com"') + "].type"
    with pytest.raises(ScimError) as e:
        apply_patch(user_kind(), a_user(), patch({"op": "replace", "path": path, "value": "home"}))
    assert (e.value.status, e.value.scim_type) == (400, "invalidPath")


def test_a_patch_path_filter_within_the_limit_applies():
    path = "emails[" + ors(MAX_FILTER_TERMS, 'value eq "e{i}@example.com"') + "].type"
    out = apply_patch(user_kind(), a_user(), patch({"op": "replace", "path": path, "value": "home"}))
    assert {e["type"] for e in out["emails"]} == {"home"}


def test_an_overlong_patch_path_is_400_invalid_path():
    path = 'emails[value eq "' + "x" * MAX_FILTER_CHARS + '"].type'
    with pytest.raises(ScimError) as e:
        apply_patch(user_kind(), a_user(), patch({"op": "replace", "path": path, "value": "home"}))
    assert e.value.scim_type == "invalidPath"


def test_too_many_patch_operations_is_400():
    ops = [{"op": "replace", "path": "displayName", "value": str(i)} for i in range(MAX_PATCH_OPERATIONS + 1)]
    with pytest.raises(ScimError) as e:
        patch(*ops)
    assert e.value.status == 400
    assert str(MAX_PATCH_OPERATIONS) in e.value.detail
    assert len(patch(*ops[:MAX_PATCH_OPERATIONS])) == MAX_PATCH_OPERATIONS


# --------------------------------------------------------------------------- multi-valued attributes


def test_a_user_with_too_many_emails_is_400_invalid_value():
    assert len(a_user(MAX_VALUES)["emails"]) == MAX_VALUES
    with pytest.raises(ScimError) as e:
        a_user(20_000)
    assert (e.value.status, e.value.scim_type) == (400, "invalidValue")
    assert "emails" in e.value.detail and str(MAX_VALUES) in e.value.detail


def test_too_many_bytes_in_one_multi_valued_attribute_is_400():
    big = "x" * (MAX_VALUES_BYTES // 4)
    with pytest.raises(ScimError) as e:
        normalise(user_kind(), {"userName": "a", "phoneNumbers": [{"value": big + str(i)} for i in range(5)]})
    assert (e.value.status, e.value.scim_type) == (400, "invalidValue")
    assert "bytes" in e.value.detail


def test_a_patch_cannot_grow_an_attribute_past_the_limit():
    user = a_user(MAX_VALUES)
    added = apply_patch(
        user_kind(), user, patch({"op": "add", "path": "emails", "value": [{"value": "new@example.com"}]})
    )
    with pytest.raises(ScimError) as e:
        normalise(user_kind(), added)  # what the gateway does with every PATCH result
    assert e.value.scim_type == "invalidValue"


def test_group_members_are_not_capped_like_attributes():
    import uuid

    members = [{"value": str(uuid.uuid4())} for _ in range(MAX_VALUES * 3)]
    group = normalise(group_kind(), {"displayName": "big", "members": members})
    assert len(group["members"]) == MAX_VALUES * 3


def test_a_value_filter_is_not_run_over_a_legacy_oversized_attribute():
    """A user stored before the limit with 20,000 emails: a PATCH value filter over them
    blocked the event loop; now it is refused and the attribute must be replaced whole."""
    user = a_user(2)
    user["emails"] = [{"value": f"e{i}@example.com", "type": "work"} for i in range(20_000)]
    with pytest.raises(ScimError) as e:
        apply_patch(user_kind(), user, patch({"op": "remove", "path": 'emails[value eq "e1@example.com"]'}))
    assert (e.value.status, e.value.scim_type) == (400, "invalidValue")
    out = apply_patch(user_kind(), user, patch({"op": "replace", "path": "emails", "value": [{"value": "a@b.c"}]}))
    assert out["emails"] == [{"value": "a@b.c"}]


def test_removing_by_filter_from_a_large_member_list_is_linear():
    import uuid

    members = [{"value": str(uuid.uuid4()), "display": f"u{i}"} for i in range(5000)]
    group = {"displayName": "g", "members": members}
    out = apply_patch(group_kind(), group, patch({"op": "remove", "path": 'members[display sw "u1"]'}))
    assert len(out["members"]) == 5000 - sum(1 for m in members if m["display"].startswith("u1"))
