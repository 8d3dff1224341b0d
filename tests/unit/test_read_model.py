"""The directory read model without Postgres: the row → state mapping, the renderers on
top of it, and the SQL it makes (every statement scoped to the tenant)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest

from provisio_lib import directory
from provisio_lib.contract import GroupRef, GroupState, UserState
from provisio_lib.directory import layout
from scim_gateway.filters import compile_filter, compile_sort
from scim_gateway.repository import search_sql, unique_sql
from scim_gateway.resources import render_group, render_user
from scim_gateway.schema import group_kind, user_kind

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = datetime(2026, 2, 3, 4, 5, 6, tzinfo=UTC)
UID = uuid.UUID("00000000-0000-4000-8000-000000000001")
GID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
TENANT = uuid.UUID("00000000-0000-4000-8000-00000000000f")


def user_row(**over):
    """A row as ``layout.user_columns`` reads it (asyncpg decodes jsonb to Python)."""
    row = {
        "id": UID,
        "user_name": "bjensen@example.com",
        "external_id": "x-1",
        "active": True,
        "display_name": "Babs Jensen",
        "given_name": "Barbara",
        "family_name": "Jensen",
        "email": "bjensen@work.example",
        "emails": [{"value": "bjensen@work.example", "type": "work", "primary": True}],
        "sso_name": "okta",
        "attributes": {"title": "Tour Guide", "name": {"middleName": "J"}},
        "version": 4,
        "created_at": T0,
        "updated_at": T1,
        "created_by": "scim",
        "groups": [{"id": str(GID), "display_name": "Ops"}],
    }
    row.update(over)
    return row


def group_row(**over):
    row = {
        "id": GID,
        "display_name": "Ops",
        "external_id": None,
        "attributes": {},
        "version": 2,
        "created_at": T0,
        "updated_at": T1,
        "created_by": "jit",
        "member_count": 3,
    }
    row.update(over)
    return row


def test_a_row_has_exactly_the_read_columns():
    """The test rows above are what the SELECT lists read: a column added to the layout
    without the mapping (or the other way round) shows here."""
    assert tuple(k for k in user_row() if k != "groups") == layout.USER_FIELDS
    assert tuple(k for k in group_row() if k != "member_count") == layout.GROUP_FIELDS


def test_user_state_maps_every_field():
    row = user_row()
    state = directory.user_state(row, row["groups"])
    assert state == UserState(
        id=UID,
        user_name="bjensen@example.com",
        external_id="x-1",
        active=True,
        display_name="Babs Jensen",
        given_name="Barbara",
        family_name="Jensen",
        emails=({"value": "bjensen@work.example", "type": "work", "primary": True},),
        sso_name="okta",
        attributes={"title": "Tour Guide", "name": {"middleName": "J"}},
        version=4,
        created_at=T0,
        updated_at=T1,
        created_by="scim",
        groups=(GroupRef(id=GID, display_name="Ops"),),
    )


def test_user_state_of_empty_json_columns():
    state = directory.user_state(user_row(emails=None, attributes=None))
    assert (state.emails, state.attributes, state.groups) == ((), {}, ())


def test_group_state_maps_every_field():
    assert directory.group_state(group_row(attributes=None)) == GroupState(
        id=GID,
        display_name="Ops",
        external_id=None,
        attributes={},
        version=2,
        created_at=T0,
        updated_at=T1,
        created_by="jit",
    )


def test_app_api_json_is_the_state_as_json():
    row = user_row()
    assert directory.user_json(row) == directory.user_state(row, row["groups"]).model_dump(mode="json")
    assert directory.user_json(row)["groups"] == [{"id": str(GID), "display_name": "Ops"}]
    assert directory.user_json(user_row(groups=None))["groups"] == []
    g = directory.group_json(group_row())
    assert g == {**directory.group_state(group_row()).model_dump(mode="json"), "member_count": 3}


def test_scim_renders_a_row_and_its_state_alike():
    """The SCIM renderer reads the read model's row and ``UserState.model_dump()`` (a
    committed outcome) by the same names: both give the same resource."""
    row = user_row()
    state = directory.user_state(row, row["groups"]).model_dump(mode="json")
    base = "https://scim.example/scim/v2"
    from_row = render_user(row, base, kind=user_kind())
    assert from_row == render_user(state, base, kind=user_kind())
    assert from_row["groups"] == [
        {"value": str(GID), "$ref": f"{base}/Groups/{GID}", "display": "Ops", "type": "direct"}
    ]
    g = group_row()
    members = [{"id": UID, "display": "Babs Jensen"}]
    assert render_group(g, members, base) == render_group(
        directory.group_state(g).model_dump(mode="json"), members, base
    )


def test_a_column_the_table_lacks_is_refused():
    assert layout.USERS.col("user_name", "x") == "x.user_name"
    with pytest.raises(KeyError):
        layout.USERS.col("username")
    with pytest.raises(KeyError):
        layout.GROUPS.col("user_name")


def _tenant_scoped(sql: str, alias: str) -> bool:
    return f"{alias}.tenant_id = $1" in sql


@pytest.mark.parametrize("table", [directory.USERS, directory.GROUPS])
def test_filtered_reads_are_scoped_to_the_tenant_parameter(table):
    a = table.alias
    cond = f"{table.col('display_name')} = $2"
    for sql in (
        directory.lookup_sql(table, cond),
        directory.count_sql(table, cond),
        directory.count_sql(table, None),
        directory.page_sql(table, cond, None, 2),
        directory.page_sql(table, None, f"lower({a}.display_name) ASC", 1),
    ):
        assert _tenant_scoped(sql, a), sql
    page = directory.page_sql(table, cond, None, 2)
    assert re.findall(r"LIMIT \$\d+ OFFSET \$\d+", page) == ["LIMIT $3 OFFSET $4"]


def test_joined_rows_repeat_the_outer_rows_tenant():
    """Memberships are keyed by ids alone: every subquery over them also requires the
    tenant of the row it is correlated to."""
    groups = layout.groups_of("u")
    assert "g.tenant_id = u.tenant_id" in groups and "m.tenant_id = u.tenant_id" in groups
    assert "m.tenant_id = g.tenant_id" in layout.member_count("g")
    exists = layout.link_exists(layout.MEMBERS, "g", "m", "mu", "TRUE")
    assert "mu.tenant_id = m.tenant_id" in exists and "m.tenant_id = g.tenant_id" in exists
    assert "m.tenant_id = g.tenant_id" in layout.link_exists(layout.MEMBERS, "g", "m", None)


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (user_kind(), 'groups[display eq "Ops"]'),
        (user_kind(), 'groups.value eq "00000000-0000-4000-8000-0000000000aa"'),
        (user_kind(), "groups pr"),
        (group_kind(), 'members[value eq "00000000-0000-4000-8000-000000000001"]'),
        (group_kind(), 'members.display ne "x"'),
        (group_kind(), "members pr"),
    ],
)
def test_filters_on_memberships_use_the_read_models_scoped_join(kind, text):
    alias = directory.TABLES[kind.name].alias
    sql = compile_filter(kind, text, alias, 2).sql
    assert f"m.tenant_id = {alias}.tenant_id" in sql or f"ug.tenant_id = {alias}.tenant_id" in sql, sql


def test_scim_queries_bind_the_tenant_first():
    for kind in (user_kind(), group_kind()):
        a = directory.TABLES[kind.name].alias
        for text in (None, 'displayName co "x"', 'meta.created gt "2020-01-01T00:00:00Z"'):
            sql, params, count, count_params = search_sql(
                kind, TENANT, filter_text=text, start_index=3, count=10, sort_by="displayName", descending=True
            )
            assert _tenant_scoped(sql, a) and _tenant_scoped(count, a)
            assert params[0] == count_params[0] == TENANT
            assert params[-2:] == [10, 2]
            assert f"ORDER BY lower({a}.display_name) DESC NULLS LAST, {a}.created_at, {a}.id" in sql
    sql, params = unique_sql(user_kind(), TENANT, 'userName eq "a@b"')
    assert _tenant_scoped(sql, "u") and params == [TENANT, "a@b"]
    assert compile_sort(user_kind(), "userName", "u", 2).sql == "lower(u.user_name)"


def test_the_operators_view_reads_the_same_row():
    """`provisio audit user` and the console's user page show these fields of the read
    model's row, in this order (a column the layout drops fails here, not on a page)."""
    from provisio_lib.admin.audit import STATE_FIELDS, operator_state

    assert set(STATE_FIELDS) <= set(layout.USER_FIELDS)
    view = operator_state(user_row())
    assert list(view) == list(STATE_FIELDS)
    assert (view["email"], view["created_by"]) == ("bjensen@work.example", "scim")
