"""Request bodies → canonical form → contract, and back (no I/O)."""

from __future__ import annotations

import pytest

from scim_gateway.errors import ScimError
from scim_gateway.resources import normalise, project, render_user, user_data
from scim_gateway.schema import user_kind

pytestmark = pytest.mark.unit

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PRV = "urn:ietf:params:scim:schemas:extension:provisio:2.0:User"


def test_attribute_names_are_case_insensitive_and_read_only_ones_ignored():
    out = normalise(
        user_kind(),
        {
            "UserName": "a",
            "ACTIVE": "true",
            "id": "x",
            "meta": {"version": "1"},
            "groups": [{"value": "g"}],
            "password": "secret",
            ENT.upper(): {"Department": "D", "schemas": [ENT]},
        },
    )
    assert out == {"userName": "a", "active": True, ENT: {"department": "D"}}


@pytest.mark.parametrize(
    "body",
    [
        {"userName": "a\u0000b"},
        {"userName": "\ud800"},
        {"userName": "a", "externalId": "x" * 513},
        {"userName": "a", PRV: {"custom": {"k": "v\u0000"}}},
        {"userName": "a", PRV: {"custom": "not an object"}},
        {"userName": "a", "emails": [{"value": "x" * 600}]},
    ],
)
def test_values_postgres_cannot_store_are_400(body):
    with pytest.raises(ScimError) as err:
        user_data(normalise(user_kind(), body))
    assert err.value.status == 400


def test_round_trip_through_the_neutral_model():
    body = {
        "userName": "bjensen",
        "name": {"givenName": "B", "familyName": "J", "middleName": "M"},
        "emails": [{"value": "b@x", "type": "work", "primary": True, "display": "Babs"}],
        "title": "T",
        ENT: {"manager": "m-1"},
        PRV: {"ssoName": "okta", "custom": {"tier": 3}},
    }
    data = user_data(normalise(user_kind(), body))
    assert (data.given_name, data.sso_name) == ("B", "okta")
    assert data.attributes == {
        "name": {"middleName": "M"},
        "title": "T",
        ENT: {"manager": {"value": "m-1"}},
        "custom": {"tier": 3},
    }
    row = {
        **data.model_dump(),
        "id": "00000000-0000-0000-0000-000000000001",
        "version": 3,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-02T00:00:00Z",
    }
    out = render_user(row, "https://h/scim/v2")
    assert out["name"] == {"middleName": "M", "givenName": "B", "familyName": "J"}
    assert out["emails"] == [{"value": "b@x", "type": "work", "primary": True, "display": "Babs"}]
    assert out[ENT]["manager"] == {"value": "m-1", "$ref": "https://h/scim/v2/Users/m-1"}
    assert out[PRV] == {"custom": {"tier": 3}, "ssoName": "okta"}
    assert out["meta"]["version"] == 'W/"3"'
    assert project(user_kind(), out, ["name.givenName", f"{ENT}:manager"], None) == {
        "schemas": out["schemas"],
        "id": out["id"],
        "name": {"givenName": "B"},
        ENT: {"manager": out[ENT]["manager"]},
    }
    assert "title" not in project(user_kind(), out, None, ["TITLE"])


def test_canonical_user_is_the_normalised_stored_rendering():
    # canonical_user renders without meta (read-only: normalise drops it); the result is
    # the one of normalising the full storage rendering
    from scim_gateway.resources import canonical_user

    body = {
        "userName": "bjensen",
        "externalId": "e-1",
        "displayName": "Babs",
        "active": False,
        "name": {"givenName": "B", "familyName": "J", "formatted": "B J"},
        "emails": [{"value": "b@x", "type": "work", "primary": True}, {"value": "c@x", "primary": True}],
        "title": "T",
        ENT: {"manager": "m-1", "department": "D"},
        PRV: {"ssoName": "okta", "custom": {"tier": 3}},
    }
    data = user_data(normalise(user_kind(), body), keep={"jit_only": 1})
    row = {
        **data.model_dump(),
        "id": "00000000-0000-0000-0000-000000000001",
        "version": 3,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-02T00:00:00Z",
        "groups": [{"value": "00000000-0000-0000-0000-000000000002", "display": "G"}],
    }
    full = normalise(user_kind(), render_user(row, "", storage=True))
    assert canonical_user(user_kind(), row) == full
    assert full["userName"] == "bjensen" and full[ENT]["manager"] == {"value": "m-1"} and "meta" not in full


def test_refusal_sampler_bounds_records_and_counts_the_rest():
    from scim_gateway.refusals import RefusalSampler, refused_operation

    s = RefusalSampler(rate=0.5, burst=3)
    key = ("tenant", 400)
    assert [s.admit(key, now=0.0) for _ in range(3)] == [0, 0, 0]
    assert [s.admit(key, now=0.0) for _ in range(5)] == [None] * 5
    assert s.admit(key, now=2.0) == 5  # the next record says how many were skipped
    assert s.admit(("other", 400), now=2.0) == 0  # per tenant and status
    assert refused_operation("POST", "/Users") == ("user.create", "User", None)
    assert refused_operation("PATCH", "/Groups/00000000-0000-0000-0000-000000000001")[0] == "group.replace"
    assert refused_operation("GET", "/Users") is None
    assert refused_operation("POST", "/Users/.search") is None
    assert refused_operation("DELETE", "/Users/not-an-id") is None
