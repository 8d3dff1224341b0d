"""The provisioner's pure core (services/provisioner/core.py) and batch planner
(planner.py), without Postgres: each tenant rule for each source, and which path a batch
takes."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from provisio_lib.contract import (
    ChangeGroupMembers,
    Command,
    CreateUser,
    DeleteUser,
    GroupData,
    JitLogin,
    ReplaceGroup,
    ReplaceUser,
    Source,
    UserData,
)
from provisioner.core import (
    DEACTIVATED_NOT_DELETED,
    JIT_OWNED_FIELDS,
    STALE,
    Connection,
    LoginState,
    Policy,
    decide_delete_user,
    decide_login,
    decide_login_groups,
    decide_login_update,
    decide_replace_group,
    decide_replace_user,
    member_adds_refusal,
    user_values,
)
from provisioner.domain import PermanentError
from provisioner.planner import Run, fallback_reason, plan_batch, reads_groups, runs

pytestmark = pytest.mark.unit

TENANT = uuid.uuid4()
OFF = Policy()
IMMUTABLE = Policy(immutable_user_name=True)
ONE_GROUP = Policy(one_group_per_user=True)
DEACTIVATE = Policy(deprovision="deactivate")


def user_row(**kw: Any) -> dict[str, Any]:
    """A users row as the provisioner reads it."""
    data = UserData(
        user_name=kw.pop("user_name", "ann@acme.test"),
        emails=({"value": kw.pop("email", "ann@acme.test"), "primary": True},),
        given_name=kw.pop("given_name", "Ann"),
        family_name=kw.pop("family_name", "Lee"),
        sso_name=kw.pop("sso_name", None),
        active=kw.pop("active", True),
    )
    row = {
        **user_values(data),
        "id": kw.pop("id", uuid.uuid4()),
        "tenant_id": TENANT,
        "version": 3,
        "seq_ms": 100,
        "seq_n": 0,
    }
    row.update(kw)
    return row


def replace(row: dict[str, Any], expected_version: int | None = None, **data: Any) -> ReplaceUser:
    fields = {
        "user_name": row["user_name"],
        "emails": tuple(row["emails"]),
        "given_name": row["given_name"],
        "family_name": row["family_name"],
        "active": row["active"],
        **data,
    }
    return ReplaceUser(user_id=row["id"], data=UserData(**fields), expected_version=expected_version)


# --------------------------------------------------------------------------- replace


def test_replace_changes_only_what_differs() -> None:
    row = user_row()
    d = decide_replace_user(row, replace(row, display_name="Ann L."), (200, 0), OFF)
    assert d.action == "update" and d.result == "applied" and d.refused is None
    assert set(d.changes) == {"display_name"} and d.changes["display_name"].after == "Ann L."
    assert d.values is not None and d.values["display_name"] == "Ann L." and d.values["email"] == "ann@acme.test"
    same = decide_replace_user(row, replace(row), (200, 0), OFF)
    assert same.action == "none" and same.result == "unchanged" and not same.changes


def test_replace_checks_the_version_before_the_stream_order() -> None:
    row = user_row()
    d = decide_replace_user(row, replace(row, expected_version=2, display_name="x"), (50, 0), OFF)
    assert d.result == "failed" and d.refused is not None and d.refused.code == "version_mismatch"
    assert decide_replace_user(row, replace(row, expected_version=3, display_name="x"), (200, 0), OFF).action == (
        "update"
    )


def test_a_replace_accepted_before_the_rows_change_is_stale() -> None:
    row = user_row()
    d = decide_replace_user(row, replace(row, display_name="older"), (99, 5), OFF)
    assert d.action == "none" and d.notes == (STALE,)
    # no stream position (a replay, a test): never stale
    assert decide_replace_user(row, replace(row, display_name="x"), (0, 0), OFF).action == "update"
    # the same position is not older
    assert decide_replace_user(row, replace(row, display_name="x"), (100, 0), OFF).action == "update"


def test_immutable_user_name_and_email_for_scim() -> None:
    row = user_row()
    d = decide_replace_user(row, replace(row, user_name="bob@acme.test"), (200, 0), IMMUTABLE)
    assert d.refused is not None and (d.refused.code, d.refused.field) == ("mutability", "userName")
    assert "immutable userName" in d.refused.message
    new_mail = ({"value": "new@acme.test", "primary": True},)
    d = decide_replace_user(row, replace(row, emails=new_mail), (200, 0), IMMUTABLE)
    assert d.refused is not None and d.refused.field == "emails"
    # letter case is no change; without the policy both may change
    assert decide_replace_user(row, replace(row, user_name="ANN@acme.test"), (200, 0), IMMUTABLE).refused is None
    assert decide_replace_user(row, replace(row, user_name="bob@acme.test"), (200, 0), OFF).action == "update"
    # a stale replace is not refused: it changes nothing
    assert decide_replace_user(row, replace(row, user_name="bob@acme.test"), (1, 0), IMMUTABLE).refused is None


# --------------------------------------------------------------------------- deprovision


def test_deprovision_deletes_or_deactivates_as_the_tenant_says() -> None:
    row = user_row()
    p = DeleteUser(user_id=row["id"])
    d = decide_delete_user(row, p, OFF)
    assert d.action == "delete" and d.notes == ("deleted",) and d.changes["user_name"].after is None
    d = decide_delete_user(row, p, DEACTIVATE)
    assert d.action == "deactivate" and d.values == {"active": False} and d.notes == (DEACTIVATED_NOT_DELETED,)
    assert (d.changes["active"].before, d.changes["active"].after) == (True, False) and set(d.changes) == {"active"}
    d = decide_delete_user(user_row(active=False), p, DEACTIVATE)
    assert d.action == "none" and d.result == "unchanged" and d.notes == (DEACTIVATED_NOT_DELETED,)
    d = decide_delete_user(row, DeleteUser(user_id=row["id"], expected_version=1), OFF)
    assert d.refused is not None and d.refused.code == "version_mismatch"


# --------------------------------------------------------------------------- groups


def group_row(**kw: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "display_name": "Blue",
        "external_id": None,
        "attributes": {},
        "version": 2,
        "seq_ms": 100,
        "seq_n": 0,
        **kw,
    }


def test_group_replace_diffs_fields_and_scim_members() -> None:
    g = group_row()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    p = ReplaceGroup(group_id=g["id"], data=GroupData(display_name="Blue", members=(b, c, c)))
    d = decide_replace_group(g, p, (200, 0), {a, b})
    assert d.action == "update" and d.join == (c,) and d.leave == (a,) and not d.changes
    d = decide_replace_group(g, ReplaceGroup(group_id=g["id"], data=GroupData(display_name="Green")), (200, 0), {a})
    assert d.join == d.leave == () and set(d.changes) == {"display_name"}  # members None: left alone
    same = ReplaceGroup(group_id=g["id"], data=GroupData(display_name="Blue", members=(a,)))
    assert decide_replace_group(g, same, (200, 0), {a}).action == "none"
    assert decide_replace_group(g, same, (99, 0), set()).notes == (STALE,)
    stale_version = ReplaceGroup(group_id=g["id"], data=GroupData(display_name="x"), expected_version=1)
    refused = decide_replace_group(g, stale_version, (200, 0), set()).refused
    assert refused is not None and refused.code == "version_mismatch"


def membership(user: uuid.UUID, group: uuid.UUID, user_name: str = "ann", group_name: str = "Red") -> dict[str, Any]:
    return {"user_id": user, "group_id": group, "user_name": user_name, "display_name": group_name}


def test_scim_member_adds_unknown_users_and_one_group_per_user() -> None:
    gid, other, ann, bob = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    err = member_adds_refusal(gid, [ann, bob], {ann}, [], OFF)
    assert err is not None and err.code == "invalid_value" and str(bob) in err.message
    assert member_adds_refusal(gid, [ann, bob], {ann, bob}, [membership(ann, other)], OFF) is None
    err = member_adds_refusal(gid, [ann, bob], {ann, bob}, [membership(ann, other)], ONE_GROUP)
    assert err is not None and err.code == "policy" and "ann (in Red)" in err.message and err.field == "members"
    # already in this very group (a re-sent add) is no second group
    assert member_adds_refusal(gid, [ann], {ann}, [membership(ann, gid)], ONE_GROUP) is None
    assert member_adds_refusal(gid, [ann], {ann}, [], ONE_GROUP) is None


# --------------------------------------------------------------------------- JIT logins

CORP = Connection(id=uuid.uuid4(), name="corp", verified_domains=("acme.test",))
PARTNER = Connection(id=uuid.uuid4(), name="partner")


def login(connection: Connection = CORP, **kw: Any) -> JitLogin:
    fields: dict[str, Any] = {
        "connection_id": connection.id,
        "connection_name": connection.name,
        "mode": "sync",
        "name_id": "nid-1",
        "user_name": "ann@acme.test",
        "email": "ann@acme.test",
        **kw,
    }
    return JitLogin(**fields)


def test_login_creates_a_user_when_jit_may() -> None:
    d = decide_login(login(given_name="Ann", custom={"team": "blue"}), LoginState((CORP, PARTNER)))
    assert d.refused is None and d.user is None and d.link and d.notes == ("created",)
    assert (
        d.new_user is not None
        and d.new_user.sso_name == "corp"
        and d.new_user.attributes == {"custom": {"team": "blue"}}
    )
    assert d.new_user.emails[0].value == "ann@acme.test" and d.new_user.emails[0].primary
    off = decide_login(login(mode="off"), LoginState((CORP,)))
    assert off.refused is not None and off.refused.code == "user_not_found"


def test_login_through_a_removed_connection_is_refused() -> None:
    d = decide_login(login(), LoginState((PARTNER,)))
    assert d.refused is not None and d.refused.code == "policy" and d.refused.field == "connection"


def test_an_unlinked_login_adopts_only_where_its_connection_is_authoritative() -> None:
    victim = user_row(user_name="victim@corp.test", email="victim@corp.test")
    via_partner = login(PARTNER, user_name="victim@corp.test", email="victim@corp.test")
    d = decide_login(via_partner, LoginState((CORP, PARTNER), matched=victim))
    assert d.refused is not None and d.refused.code == "not_linked" and d.refused.field == "name_id"
    # the connection already holds another identity of this user (a NameID change at the IdP)
    d = decide_login(via_partner, LoginState((CORP, PARTNER), matched=victim, matched_linked_here=True))
    assert d.refused is None and d.user is victim and d.link and d.notes == ("linked:linked",)
    # the only connection, a verified domain, the user's ssoName
    assert decide_login(via_partner, LoginState((PARTNER,), matched=victim)).notes == ("linked:only_connection",)
    ann = user_row()
    assert decide_login(login(), LoginState((CORP, PARTNER), matched=ann)).notes == ("linked:verified_domain",)
    routed = user_row(sso_name="partner")
    assert decide_login(login(PARTNER), LoginState((CORP, PARTNER), matched=routed)).notes == ("linked:sso_name",)


def test_a_linked_login_is_its_user_and_sso_name_routes_it() -> None:
    ann = user_row()
    d = decide_login(login(), LoginState((CORP, PARTNER), linked=ann))
    assert d.refused is None and d.user is ann and not d.link and d.notes == ()
    routed = user_row(sso_name="partner")
    d = decide_login(login(), LoginState((CORP, PARTNER), linked=routed))
    assert d.refused is not None and d.refused.code == "policy" and d.refused.field == "ssoName"
    d = decide_login(login(), LoginState((CORP,), linked=user_row(active=False)))
    assert d.refused is not None and "deactivated" in d.refused.message


def test_the_groups_claim() -> None:
    seen = Connection(id=CORP.id, name="corp", groups_claim_seen=True)
    never = Connection(id=CORP.id, name="corp", groups_absent="auto")
    none = Connection(id=CORP.id, name="corp", groups_absent="none")
    ann = user_row()
    assert decide_login(login(groups=("Blue",)), LoginState((never,), linked=ann)).claimed == ("Blue",)
    assert decide_login(login(groups=("Blue",)), LoginState((never,), linked=ann)).claim_seen
    assert not decide_login(login(groups=("Blue",)), LoginState((seen,), linked=ann)).claim_seen
    # absent: "no groups" once the connection has sent a claim, or when it says so
    assert decide_login(login(), LoginState((seen,), linked=ann)).claimed == ()
    assert decide_login(login(), LoginState((none,), linked=ann)).claimed == ()
    assert decide_login(login(), LoginState((never,), linked=ann)).claimed is None
    # Entra's overage claim: the groups are unknown, memberships stay
    overage = decide_login(login(groups_overage=True), LoginState((seen,), linked=ann))
    assert overage.claimed is None and overage.notes == ("groups_overage",)


def test_jit_field_ownership() -> None:
    ann = user_row(attributes={"custom": {"a": 1}, "enterprise": {"department": "x"}})
    d = decide_login_update(ann, login(given_name="Annie", custom={"b": 2}, user_name="other@acme.test"), OFF)
    assert d.action == "update" and d.values is not None
    # what a login owns: the names, emails, custom attributes; never userName or SCIM's attributes
    assert set(d.values) == {"given_name", "attributes"} and "user_name" not in d.changes
    assert d.values["attributes"] == {"custom": {"a": 1, "b": 2}, "enterprise": {"department": "x"}}
    assert decide_login_update(ann, login(mode="create", given_name="Annie"), OFF).action == "none"
    assert decide_login_update(ann, login(), OFF).action == "none"
    d = decide_login_update(ann, login(email="new@acme.test"), OFF)
    assert d.values is not None and d.values["emails"][0] == {"value": "new@acme.test", "type": "work", "primary": True}


def test_a_login_changes_only_the_fields_it_owns() -> None:
    stored = user_row(
        display_name="Ann Lee",
        external_id="x-1",
        sso_name="corp",
        attributes={"name": {"formatted": "Ann Lee", "givenName": "Ann"}, "enterprise": {"department": "x"}},
    )
    everything = login(
        user_name="someone-else@acme.test",
        email="annie@acme.test",
        given_name="Annie",
        family_name="Li",
        display_name="Annie Li",
        custom={"team": "red"},
        groups=("Red",),
    )
    d = decide_login_update(stored, everything, OFF)
    assert d.action == "update" and set(d.changes) <= JIT_OWNED_FIELDS
    assert {"given_name", "family_name", "display_name", "emails", "attributes.custom"} <= set(d.changes)
    assert d.values is not None and d.values["attributes"]["enterprise"] == {"department": "x"}
    assert d.values["attributes"]["name"]["formatted"] == "Annie Li"  # derived, not stale


def test_immutable_email_for_jit_keeps_the_login() -> None:
    ann = user_row()
    d = decide_login_update(ann, login(email="new@acme.test", given_name="Annie"), IMMUTABLE)
    assert d.result == "applied" and d.values is not None and "emails" not in d.values
    assert [(e.code, e.field) for e in d.refusals] == [("mutability", "emails")]
    d = decide_login_update(ann, login(email="new@acme.test"), IMMUTABLE)
    assert d.action == "none" and len(d.refusals) == 1


def test_jit_groups_follow_the_claim_under_one_group_per_user() -> None:
    red, blue, green = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    d = decide_login_groups("ann", {"Red": red, "Blue": blue}, [green], OFF)
    assert set(d.join) == {red, blue} and d.leave == (green,) and not d.refusals
    # one group per user: two claimed groups are one too many, and no join is guessed
    d = decide_login_groups("ann", {"Red": red, "Blue": blue}, [], ONE_GROUP, {})
    assert d.join == () and d.refusals[0].code == "policy" and "'Red'" in d.refusals[0].message
    # moving from one JIT group to another is allowed: the old one is left
    d = decide_login_groups("ann", {"Blue": blue}, [red], ONE_GROUP, {red: {"jit"}})
    assert d.join == (blue,) and d.leave == (red,) and not d.refusals
    # a SCIM membership stays whatever the claim says, so the join is refused
    d = decide_login_groups("ann", {"Blue": blue}, [red], ONE_GROUP, {red: {"jit", "scim"}})
    assert d.join == () and d.leave == (red,) and len(d.refusals) == 1
    assert decide_login_groups("ann", {"Red": red}, [red], ONE_GROUP, {red: {"jit"}}) == type(d)()


def test_a_login_bumps_the_version_of_each_group_it_joins_or_leaves_but_one_it_made() -> None:
    red, blue, green = (uuid.UUID(int=i) for i in (1, 2, 3))
    # RFC 7644 §3.14: a group's ETag covers its members, as a SCIM member PATCH moves it
    d = decide_login_groups("ann", {"Red": red, "Blue": blue}, [green], OFF)
    assert d.bump == (red, blue, green)
    # a group made by this very login is created with its member (version 1), as a SCIM POST
    assert decide_login_groups("ann", {"Red": red, "Blue": blue}, [green], OFF, made=[blue]).bump == (red, green)
    # no membership changes: no group is written
    assert decide_login_groups("ann", {"Red": red}, [red], OFF).bump == ()
    # a refused join changes nothing of that group; the group left still moves
    d = decide_login_groups("ann", {"Blue": blue}, [red], ONE_GROUP, {red: {"jit", "scim"}})
    assert d.join == () and d.bump == (red,)


# --------------------------------------------------------------------------- the planner

SCIM = Source(kind="scim", id="t", label="t")


def command(payload: Any, **kw: Any) -> Command:
    return Command(tenant_id=kw.pop("tenant", TENANT), source=SCIM, correlation_id="c", payload=payload, **kw)


def create() -> Command:
    return command(CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=uuid.uuid4().hex)))


def put(uid: uuid.UUID) -> Command:
    return command(ReplaceUser(user_id=uid, data=UserData(user_name="x")))


def test_plan_picks_the_path() -> None:
    known = {TENANT}
    creates = [create(), create()]
    assert plan_batch(creates, known).path == "one_statement"
    mixed = [create(), put(uuid.uuid4())]
    assert plan_batch(mixed, known).path == "one_transaction"
    assert plan_batch(mixed, known, fast_paths=False).path == "careful"
    twice = [creates[0], creates[0]]
    assert (plan_batch(twice, known).path, plan_batch(twice, known).reason) == ("careful", "duplicate_event")
    stranger = [create(), command(CreateUser(user_id=uuid.uuid4(), data=UserData(user_name="x")), tenant=uuid.uuid4())]
    assert plan_batch(stranger, known).reason == "unknown_tenant"


def test_runs_group_creates_and_replaces_of_distinct_users() -> None:
    u1, u2 = uuid.uuid4(), uuid.uuid4()
    members = command(ChangeGroupMembers(group_id=uuid.uuid4()))
    batch = [create(), create(), put(u1), put(u2), put(u1), create(), members]
    assert runs(batch) == [
        Run("creates", 0, 2),
        Run("replaces", 2, 4),
        Run("one", 4, 5),
        Run("one", 5, 6),
        Run("one", 6, 7),
    ]
    assert runs([]) == []
    assert reads_groups(batch) and not reads_groups(batch[:6])


def test_fallback_reasons_are_short_codes() -> None:
    assert fallback_reason(PermanentError("uniqueness", "taken")) == "refused:uniqueness"
    inbox = asyncpg.UniqueViolationError("duplicate key")
    inbox.constraint_name = "inbox_pkey"  # type: ignore[attr-defined]
    assert fallback_reason(inbox) == "redelivered"
    taken = asyncpg.UniqueViolationError("duplicate key")
    taken.constraint_name = "users_tenant_lower_user_name_key"  # type: ignore[attr-defined]
    assert fallback_reason(taken) == "unique_violation"
    assert fallback_reason(asyncpg.CheckViolationError("check")) == "database_refused"
    assert fallback_reason(KeyError("bug")) == "unexpected"
