"""SCIM filter → SQL translation (no database: the integration tests run the SQL)."""

from __future__ import annotations

import re
import uuid

import pytest

from scim_gateway.errors import ScimError
from scim_gateway.filters import compile_filter, compile_sort, like_escape
from scim_gateway.schema import group_kind, user_kind

pytestmark = pytest.mark.unit


def sql(text, kind=None):
    return compile_filter(kind or user_kind(), text, "u" if kind is None else "g", 2)


def test_user_name_eq_is_the_index_expression():
    f = sql('userName eq "Bjensen@Example.com"')
    # users_user_name_key is (tenant_id, lower(user_name))
    assert f.sql == "(lower(u.user_name) = lower($2::text))"
    assert f.params == ["Bjensen@Example.com"]


def test_case_exact_attributes_are_not_lowered():
    assert sql('externalId eq "AbC"').sql == "(u.external_id = $2::text)"
    assert "lower" not in sql('urn:ietf:params:scim:schemas:extension:provisio:2.0:User:ssoName eq "X"').sql


@pytest.mark.parametrize(
    ("op", "pattern"),
    [("co", "%a\\%b\\_c\\\\d%"), ("sw", "a\\%b\\_c\\\\d%"), ("ew", "%a\\%b\\_c\\\\d")],
)
def test_like_operators_escape_wildcards(op, pattern):
    f = sql(f'userName {op} "a%b_c\\\\d"')
    assert "LIKE" in f.sql
    assert f.params == [pattern]


@pytest.mark.parametrize(
    "value",
    ['x" or "1"="1', "'; DROP TABLE users; --", "a' OR '1'='1", "%", "_", "\\", "--", "/* */", "$1"],
)
def test_values_never_reach_the_sql_text(value):
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    f = sql(f'userName eq "{escaped}" or displayName co "{escaped}"')
    assert value in f.params
    # the SQL text is the same whatever the value: only $n placeholders carry it
    assert f.sql == sql('userName eq "x" or displayName co "x"').sql


def test_logical_operators_grouping_and_not():
    f = sql('(userName sw "a" or displayName ew "b") and not (title pr) and active eq true')
    assert f.sql.startswith("(((lower(u.user_name) LIKE")
    assert " OR " in f.sql and " AND " in f.sql
    assert "NOT coalesce(" in f.sql  # NULL (missing title) must count as false under not
    assert f.params[-1] is True


def test_value_path_over_emails():
    f = sql('emails[type eq "work" and primary eq true]')
    assert f.sql.startswith("EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(u.emails")
    assert f.params == [["type"], "work", ["primary"], True]


def test_entra_value_path_with_sub_attribute_comparison():
    f = sql('emails[type eq "work"].value eq "a@b.c"')
    assert "EXISTS" in f.sql and f.params[-1] == "a@b.c"


def test_enterprise_and_custom_attributes_are_json_paths_as_parameters():
    f = sql('urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "Sales"')
    assert f.params == [["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User", "department"], "Sales"]
    f = sql('urn:ietf:params:scim:schemas:extension:provisio:2.0:User:custom.region eq "EU"')
    assert f.params[0] == ["custom", "region"]
    f = sql('urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager eq "m1"')
    assert f.params[0][-2:] == ["manager", "value"]


def test_meta_dates_compare_as_timestamps():
    f = sql('meta.lastModified gt "2011-05-13T04:42:34Z"')
    assert f.sql == "(u.updated_at > $2::timestamptz)"
    assert f.params[0].year == 2011


def test_id_that_is_not_a_uuid_matches_nothing():
    assert sql('id eq "not-a-uuid"').sql == "FALSE"
    u = uuid.uuid4()
    assert sql(f'id eq "{u}"').params == [u]


def test_groups_members_filter():
    u = uuid.uuid4()
    f = sql(f'members[value eq "{u}"] and displayName eq "Sales"', group_kind())
    assert "memberships" in f.sql and f.params == [u, "Sales"]
    f = sql(f'members.value eq "{u}"', group_kind())
    assert "EXISTS" in f.sql


def test_parameters_are_numbered_from_first_param():
    f = compile_filter(user_kind(), 'userName eq "a" and displayName eq "b"', "u", 5)
    assert re.findall(r"\$\d+", f.sql) == ["$5", "$6"]


@pytest.mark.parametrize(
    "text",
    [
        "userName eq",
        'userName xx "a"',
        'userName eq "a" and',
        "(userName pr",
        'noSuchAttribute eq "x"',
        'urn:example:unknown:1.0:User:x eq "y"',
        "active gt true",
        'active eq "maybe"',
        'meta.lastModified gt "yesterday"',
        'name eq "x"',
        'emails[type eq "work" and members[value eq "x"]]',
        'password eq "x"',
    ],
)
def test_bad_filters_are_400_invalid_filter(text):
    with pytest.raises(ScimError) as err:
        sql(text)
    assert err.value.status == 400
    assert err.value.scim_type == "invalidFilter"


def test_sort_expressions():
    assert compile_sort(user_kind(), "userName", "u", 2).sql == "lower(u.user_name)"
    assert compile_sort(user_kind(), "meta.created", "u", 2).sql == "u.created_at"
    with pytest.raises(ScimError):
        compile_sort(user_kind(), "nope", "u", 2)


def test_like_escape():
    assert like_escape("50%_off\\") == "50\\%\\_off\\\\"


@pytest.mark.parametrize("value", ["a\\u0000b", "\\ud800"])
def test_values_postgres_cannot_hold_are_400(value):
    with pytest.raises(ScimError) as err:
        sql(f'userName eq "{value}"')
    assert err.value.status == 400


@pytest.mark.parametrize(
    "text",
    [
        'userName eq "bjensen@example.com"',
        '  UserName EQ "Bjensen"  ',
        'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"',
        'name.givenName eq "Barbara"',
        'userName eq "quote \\" back\\\\slash \\u00e9 \\n"',
        'userName eq ""',
        'userName eq "%_--\'"',
    ],
)
def test_fast_path_agrees_with_the_grammar(text):
    from scim2_models.path import ScimFilter

    from scim_gateway.filters import _simple_eq

    fast = _simple_eq(text)
    assert fast is not None
    assert fast == ScimFilter(text).ast


@pytest.mark.parametrize(
    "text",
    [
        'userName eq "a" and active eq true',
        'userName eq "\\x"',
        "userName eq 5",
        "userName eq true",
        'emails[type eq "work"]',
        'members.$ref eq "x"',
        'userName eq "a" or userName eq "b"',
    ],
)
def test_fast_path_leaves_everything_else_to_the_grammar(text):
    from scim_gateway.filters import _simple_eq

    assert _simple_eq(text) is None


_EQ_TEXTS = [
    'userName eq "bjensen@example.com"',
    '  UserName EQ "Bjensen"  ',
    'USERNAME eq ""',
    'userName eq "quote \\" back\\\\slash \\u00e9 \\n"',
    'userName eq "%_--\'"',
    'userName eq "\' OR 1=1 --"',
    'userName eq "x\\" or \\"1\\"=\\"1"',
    'userName eq "alice\'; DROP TABLE users; --"',
    'externalId eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"',
    'externalid eq "AbC"',
    'id eq "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef"',
    'ID eq "0A21F0F2-8D2A-4F8E-BF98-7363C4AED4EF"',
    'id eq "not-a-uuid"',
    'id eq ""',
    'displayName eq "Engineering"',
]


_DIRECT = {
    ("User", "username"),
    ("User", "externalid"),
    ("User", "id"),
    ("User", "displayname"),
    ("Group", "displayname"),
    ("Group", "externalid"),
    ("Group", "id"),
}
_UNIQUE = {("User", "username"), ("User", "id"), ("Group", "displayname"), ("Group", "id")}


def _outcome(compile_, *args):
    try:
        f = compile_(*args)
    except ScimError as err:
        return ("error", err.status, err.scim_type, err.detail)
    return ("sql", f.sql, f.params)


@pytest.mark.parametrize("kind_name", ["User", "Group"])
@pytest.mark.parametrize("text", [*_EQ_TEXTS, 'userName eq "x"', 'title eq "x"'])
def test_direct_eq_path_compiles_what_the_grammar_compiles(text, kind_name):
    from scim_gateway.filters import _compile_general, fast_eq_filter

    kind = user_kind() if kind_name == "User" else group_kind()
    alias = "u" if kind_name == "User" else "g"
    general = _outcome(_compile_general, kind, text, alias, 3)
    assert _outcome(compile_filter, kind, text, alias, 3) == general
    key = (kind_name, text.split()[0].lower())
    fast = fast_eq_filter(kind, text, alias, 3)
    if key not in _DIRECT:
        assert fast is None
        return
    assert fast is not None, text
    assert ("sql", fast.sql, fast.params) == general
    assert fast.unique == (key in _UNIQUE)


@pytest.mark.parametrize(
    "text",
    [
        'name.givenName eq "Barbara"',
        'title eq "x"',
        'userName eq "a" and active eq true',
        'userName ne "a"',
        'userName co "a"',
        "userName eq 5",
        "userName eq true",
        "userName eq null",
        'urn:ietf:params:scim:schemas:core:2.0:User:userName eq "a"',
        'emails[type eq "work"]',
    ],
)
def test_everything_else_takes_the_general_path(text):
    from scim_gateway.filters import _compile_general, fast_eq_filter

    assert fast_eq_filter(user_kind(), text, "u", 2) is None
    assert _outcome(compile_filter, user_kind(), text, "u", 2) == _outcome(_compile_general, user_kind(), text, "u", 2)


@pytest.mark.parametrize("value", ["a\\u0000b", "\\ud800"])
def test_direct_eq_path_refuses_what_postgres_cannot_hold(value):
    from scim_gateway.filters import fast_eq_filter

    with pytest.raises(ScimError) as err:
        fast_eq_filter(user_kind(), f'userName eq "{value}"', "u", 2)
    assert err.value.status == 400 and err.value.scim_type == "invalidFilter"
