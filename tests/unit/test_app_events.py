"""Which events a command makes (pure), and the feed's and directory's cursors."""

import json
import uuid
from datetime import UTC, datetime

import pytest

from provisio_lib import directory, events_feed
from provisio_lib.contract import (
    Change,
    Command,
    CreateUser,
    DeleteGroup,
    DeleteUser,
    GroupData,
    JitLogin,
    ReplaceGroup,
    ReplaceUser,
    Source,
    UserData,
)
from provisioner.events import EventSpec, events_of, member_event

pytestmark = pytest.mark.unit

T = uuid.uuid4()
U = uuid.uuid4()
G = uuid.uuid4()
SRC = Source(kind="scim", id="t", label="entra")


def command(payload):
    return Command(tenant_id=T, source=SRC, correlation_id="c", payload=payload)


def types(evs):
    return [e.type for e in evs]


def test_user_commands():
    create = command(CreateUser(user_id=U, data=UserData(user_name="a")))
    assert types(events_of(create, "applied", "User", U, "a", {}, {}, (), [])) == ["user.created"]
    assert events_of(create, "failed", "User", U, "a", None, {}, (), []) == []
    replace = command(ReplaceUser(user_id=U, data=UserData(user_name="a")))
    assert types(
        events_of(replace, "applied", "User", U, "a", {}, {"given_name": Change(before="A", after="B")}, (), [])
    ) == ["user.updated"]
    assert types(
        events_of(
            replace,
            "applied",
            "User",
            U,
            "a",
            {},
            {"active": Change(before=True, after=False), "given_name": Change(before="A", after="B")},
            (),
            [],
        )
    ) == ["user.deactivated"]
    assert types(
        events_of(replace, "applied", "User", U, "a", {}, {"active": Change(before=False, after=True)}, (), [])
    ) == ["user.reactivated"]
    assert (
        events_of(replace, "unchanged", "User", U, "a", {}, {}, ("stale: a newer change was applied first",), []) == []
    )
    delete = command(DeleteUser(user_id=U))
    deleted = events_of(
        delete, "applied", "User", U, "a", None, {"active": Change(before=True, after=None)}, ("deleted",), []
    )
    assert types(deleted) == ["user.deleted"] and json.loads(deleted[0].data) == {"id": str(U), "user_name": "a"}
    # deprovision policy 'deactivate': a DELETE is a deactivation
    assert types(
        events_of(
            delete,
            "applied",
            "User",
            U,
            "a",
            {},
            {"active": Change(before=True, after=False)},
            ("deactivated instead of deleted",),
            [],
        )
    ) == ["user.deactivated"]


def test_group_commands_and_members():
    replace = command(ReplaceGroup(group_id=G, data=GroupData(display_name="x")))
    added = member_event("added", {"id": str(G)}, G, U, "scim")
    # members only: no group.updated, just the membership events
    assert types(
        events_of(
            replace, "applied", "Group", G, None, {}, {"members": {"before": None, "after": "+1 -0"}}, (), [added]
        )
    ) == ["group.member_added"]
    assert types(
        events_of(
            replace, "applied", "Group", G, None, {}, {"display_name": Change(before="a", after="b")}, (), [added]
        )
    ) == ["group.updated", "group.member_added"]
    gone = events_of(
        command(DeleteGroup(group_id=G)),
        "applied",
        "Group",
        G,
        None,
        None,
        {"display_name": Change(before="Ops", after=None)},
        ("deleted",),
        [],
    )
    assert types(gone) == ["group.deleted"] and json.loads(gone[0].data)["display_name"] == "Ops"
    assert json.loads(added.data) == {"group": {"id": str(G)}, "user": {"id": str(U)}, "source": "scim"}


def test_jit_login_always_makes_sso_login_last():
    p = JitLogin(connection_id=uuid.uuid4(), connection_name="okta", mode="sync", name_id="n", user_name="a")
    grp = EventSpec("group.created", "Group", G, "{}")
    evs = events_of(
        command(p), "applied", "User", U, "a", {"id": str(U)}, {"user_name": Change(after="a")}, ("created",), [grp]
    )
    assert types(evs) == ["user.created", "group.created", "sso.login"]
    login = json.loads(evs[-1].data)
    assert login["created"] is True and login["updated"] is False and login["connection"]["name"] == "okta"
    same = events_of(command(p), "unchanged", "User", U, "a", {"id": str(U)}, {}, (), [])
    assert types(same) == ["sso.login"] and json.loads(same[0].data)["updated"] is False
    groups_only = events_of(
        command(p), "applied", "User", U, "a", {}, {"groups.jit": {"before": [], "after": ["x"]}}, (), []
    )
    assert types(groups_only) == ["sso.login"]
    assert events_of(command(p), "failed", "User", None, "a", None, {}, (), []) == []


def test_sequence_and_type_patterns():
    s = events_feed.sequence(0x1234, 7)
    assert events_feed.parse_sequence(s) == (0x1234, 7)
    assert events_feed.sequence(9, 100) < events_feed.sequence(10, 1)  # string order is feed order
    assert events_feed.parse_sequence("f" * 16 + "7" + "f" * 15) == (2**64 - 1, 2**63 - 1)
    for bad in ("", "xyz", "0" * 31, "G" * 32, "0" * 33, "0" * 16 + "8" + "0" * 15):
        with pytest.raises(events_feed.FeedCursorError):
            events_feed.parse_sequence(bad)
    assert events_feed.type_patterns("user.*, group.member_added") == ["user.%", r"group.member\_added"]
    assert events_feed.type_patterns("") is None
    for bad in ("user.%", "'; drop", "group.member_*", "a.b.c"):
        with pytest.raises(ValueError):
            events_feed.type_patterns(bad)


def test_directory_cursor_round_trip_and_refusal():
    at, ident = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), uuid.uuid4()
    assert directory.decode_cursor(directory.encode_cursor(at, ident)) == (at, ident)
    for bad in ("garbage!", "aGVsbG8", ""):
        with pytest.raises(directory.CursorError):
            directory.decode_cursor(bad)
