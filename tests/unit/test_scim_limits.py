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
    MAX_STRING_CHARS,
    MAX_VALUES,
    MAX_VALUES_BYTES,
    MIN_STRING_CHARS,
    check_string,
    filter_cost,
)
from scim_gateway.patch import apply_patch, parse_patch
from scim_gateway.resources import canonical_user, group_data, normalise, parse_member_id, user_data
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


# --------------------------------------------------------------------------- string values

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PROVISIO = "urn:ietf:params:scim:schemas:extension:provisio:2.0:User"
OVER = "x" * (MAX_STRING_CHARS + 1)


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(ScimError) as e:
        fn(*args, **kwargs)
    assert (e.value.status, e.value.scim_type) == (400, "invalidValue")
    return e.value.detail


def test_the_string_rule():
    check_string("title", "x" * MAX_STRING_CHARS, MAX_STRING_CHARS)
    detail = refused(check_string, "name.givenName", "x" * 5000, MAX_STRING_CHARS)
    assert detail == "name.givenName is 5000 characters; the limit is 1024"
    check_string("x", "é" * 1024, 1024)  # characters (code points), not UTF-8 bytes


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"displayName": OVER}, "displayName"),
        ({"name": {"givenName": OVER}}, "name.givenName"),
        ({"name": {"formatted": OVER}}, "name.formatted"),
        ({"title": OVER}, "title"),
        ({"nickName": OVER}, "nickName"),
        ({"profileUrl": OVER}, "profileUrl"),  # a reference
        ({"emails": [{"value": "a@b.c"}, {"value": "b@b.c", "display": OVER}]}, "emails[1].display"),
        ({"phoneNumbers": [{"value": OVER}]}, "phoneNumbers[0].value"),
        ({"addresses": [{"streetAddress": OVER}]}, "addresses[0].streetAddress"),
        ({ENTERPRISE: {"department": OVER}}, f"{ENTERPRISE}:department"),
        ({ENTERPRISE: {"manager": OVER}}, f"{ENTERPRISE}:manager.value"),  # Entra's bare id
        ({ENTERPRISE: {"manager": {"value": OVER}}}, f"{ENTERPRISE}:manager.value"),
        ({PROVISIO: {"ssoName": OVER}}, f"{PROVISIO}:ssoName"),
        ({PROVISIO: {"custom": {"k": [OVER]}}}, f"{PROVISIO}:custom.k[0]"),
        ({PROVISIO: {"custom": {OVER: 1}}}, f"a key of {PROVISIO}:custom"),
        ({"urn:acme:ext:1.0:User": {"badge": OVER}}, "urn:acme:ext:1.0:User.badge"),  # stored as sent
    ],
)
def test_every_string_of_a_user_is_bounded(body, where):
    user = {"userName": "a@example.com", **body}
    detail = refused(normalise, user_kind(), user, undeclared="store")
    assert detail == f"{where} is {MAX_STRING_CHARS + 1} characters; the limit is 1024"
    assert normalise(user_kind(), _shorten(user), undeclared="store")  # the limit is inclusive


def _shorten(value):
    if value == OVER:
        return OVER[:-1]
    if isinstance(value, dict):
        return {_shorten(k): _shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    return value


def test_an_undeclared_extension_urn_is_bounded_as_the_key_it_is_stored_under():
    urn = "urn:acme:" + "x" * MAX_STRING_CHARS
    detail = refused(normalise, user_kind(), {"userName": "a", urn: {"k": "v"}}, undeclared="store")
    assert detail == f"an undeclared extension's URN is {len(urn)} characters; the limit is 1024"


def test_a_number_sent_for_a_string_is_bounded_as_its_text():
    detail = refused(normalise, user_kind(), {"userName": "a", "title": int("9" * 2000)})
    assert detail.startswith("title is 2000 characters")


def test_indexed_attributes_keep_their_lower_limit():
    assert refused(normalise, user_kind(), {"userName": "a", "externalId": "e" * 5000}) == (
        "externalId is 5000 characters; the limit is 512"
    )
    long_name = normalise(user_kind(), {"userName": "u" * 600})
    assert refused(user_data, long_name) == "userName is 600 characters; the limit is 512"
    assert refused(normalise, user_kind(), {"userName": "u" * 5000}).startswith("userName is 5000 characters")
    group = normalise(group_kind(), {"displayName": "g" * 600})
    assert refused(group_data, group, []) == "displayName is 600 characters; the limit is 512"


def test_real_idp_values_pass():
    """Entra ID: userName and displayName up to 256 characters; Okta's profile strings ~100."""
    body = {
        "userName": "u" * 250 + "@x.com",
        "externalId": "0f4e5b2c-8d1a-4c3e-9b7f-2a6d8e1c5f90",
        "displayName": "D" * 256,
        "name": {"givenName": "G" * 100, "familyName": "F" * 100, "formatted": "N" * 201},
        "title": "T" * 128,
        "emails": [{"value": "m" * 200 + "@example.com", "type": "work", "primary": True}],
        ENTERPRISE: {"department": "d" * 256, "manager": "1d5e7c0a-aaaa-bbbb-cccc-000000000000"},
        # a base64 DER certificate (binary) is 1 to 3 KB: bounded by MAX_BINARY_CHARS instead
        "x509Certificates": [{"value": "A" * 3000}],
    }
    out = normalise(user_kind(), body)
    assert user_data(out).display_name == "D" * 256
    group = normalise(group_kind(), {"displayName": "G" * 256})
    assert group_data(group, []).display_name == "G" * 256


def test_a_binary_value_has_the_size_of_a_multi_valued_attribute():
    certs = [{"value": "A" * 10_000}]  # a 4096-bit certificate chain, base64
    assert normalise(user_kind(), {"userName": "a", "x509Certificates": certs})["x509Certificates"] == certs
    big = [{"value": "A" * (MAX_VALUES_BYTES + 1)}]
    assert "x509Certificates" in refused(normalise, user_kind(), {"userName": "a", "x509Certificates": big})


def test_the_limit_is_the_callers():
    body = {"userName": "a", "title": "t" * 1500}
    assert normalise(user_kind(), body, max_chars=2000)["title"] == "t" * 1500
    assert refused(normalise, user_kind(), {"userName": "a", "title": "t" * 300}, max_chars=256) == (
        "title is 300 characters; the limit is 256"
    )
    assert MIN_STRING_CHARS == 256


@pytest.mark.parametrize(
    "op",
    [
        {"op": "replace", "path": "name.givenName", "value": OVER},
        {"op": "add", "path": "title", "value": OVER},
        {"op": "replace", "value": {"name": {"givenName": OVER}}},
        {"op": "replace", "value": {"name.givenName": OVER}},  # Entra's path-less form
        {"op": "replace", "value": {f"{ENTERPRISE}:department": OVER}},
        {"op": "replace", "path": f"{ENTERPRISE}:department", "value": OVER},
        {"op": "replace", "path": 'emails[type eq "work"].value', "value": OVER},
        {"op": "add", "path": 'emails[type eq "home"].value', "value": OVER},  # creates the value
        {"op": "add", "path": "emails", "value": [{"value": OVER}]},
        {"op": "replace", "path": f"{PROVISIO}:custom", "value": {"k": OVER}},
    ],
)
def test_a_patch_value_is_bounded_when_its_result_is_normalised(op):
    after = apply_patch(user_kind(), a_user(), patch(op))  # as the gateway: apply, then normalise
    detail = refused(normalise, user_kind(), after, undeclared="store")
    assert f"is {MAX_STRING_CHARS + 1} characters; the limit is {MAX_STRING_CHARS}" in detail


def test_a_value_stored_before_the_limit_can_be_trimmed_by_a_patch():
    """The stored state is read without the limit (canonical_user), the result is checked:
    a PATCH keeping the long value is refused, one replacing it applies."""
    row = {
        "id": "6b0f2a4e-0000-4000-8000-000000000000",
        "user_name": "a@example.com",
        "display_name": None,
        "given_name": None,
        "family_name": None,
        "external_id": None,
        "active": True,
        "emails": [],
        "sso_name": None,
        "attributes": {"title": OVER},
    }
    view = canonical_user(user_kind(), row)
    assert view["title"] == OVER
    kept = apply_patch(user_kind(), view, patch({"op": "replace", "path": "displayName", "value": "A"}))
    assert refused(normalise, user_kind(), kept).startswith("title is 1025 characters")
    trimmed = apply_patch(user_kind(), view, patch({"op": "replace", "path": "title", "value": "Engineer"}))
    assert normalise(user_kind(), trimmed)["title"] == "Engineer"


def test_group_strings_are_bounded():
    import uuid

    assert refused(normalise, group_kind(), {"displayName": OVER}).startswith("displayName is 1025")
    members = [{"value": str(uuid.uuid4()), "display": OVER}]
    assert refused(normalise, group_kind(), {"displayName": "g", "members": members}).startswith(
        "members[0].display is 1025"
    )
    assert refused(normalise, group_kind(), {"displayName": "g", "members": [{"value": OVER}]}).startswith(
        "members[0].value is 1025"
    )
    # a member id that is no id is never echoed in full
    assert refused(parse_member_id, "x" * 500) == "members[].value of 500 characters is not the id of a User"


def test_a_patch_of_a_resource_stored_before_the_cap_is_judged_by_what_it_changes():
    from scim_gateway.limits import check_changed_strings, has_string_over

    stored = {"title": OVER, "emails": [{"value": "a@x.test"}], "name": {"givenName": "A"}}
    assert has_string_over(stored, MAX_STRING_CHARS) and not has_string_over({"a": ["b"]}, MAX_STRING_CHARS)
    check_changed_strings(stored, {**stored, "active": False}, MAX_STRING_CHARS)  # keeps the long title
    changed = {**stored, "name": {"givenName": OVER}}
    with pytest.raises(ScimError) as err:
        check_changed_strings(stored, changed, MAX_STRING_CHARS)
    assert err.value.detail == f"name.givenName is {len(OVER)} characters; the limit is {MAX_STRING_CHARS}"
    added = {**stored, "emails": [{"value": "a@x.test"}, {"value": OVER}]}
    with pytest.raises(ScimError, match=r"emails\[1\]\.value is"):
        check_changed_strings(stored, added, MAX_STRING_CHARS)
    with pytest.raises(ScimError, match="an attribute name"):
        check_changed_strings(stored, {**stored, OVER: "x"}, MAX_STRING_CHARS)
    cert = {**stored, "x509Certificates": [{"value": "M" * 3000}]}  # base64: the binary limit
    check_changed_strings(stored, cert, MAX_STRING_CHARS)
