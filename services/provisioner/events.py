"""Which identity events a command's change makes (the transactional outbox, docs/events.md).

Pure: from the command and what it did (``Applied``) to the event rows the provisioner
writes with the command's inbox row, in the same statement and transaction. An event's
``data`` is, unless given here, the outcome's committed resource, which the statement
takes from the outcome JSON it already parses for the inbox (no second serialisation on
the hot path); ``changes`` likewise.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from provisio_lib.contract import Command, JitLogin


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event row. ``data``: JSON text, or None for the outcome's resource;
    ``with_changes``: carry the outcome's changes (field → before/after)."""

    type: str
    resource_type: str | None
    resource_id: uuid.UUID | None
    data: str | None = None
    with_changes: bool = False


# Fields whose change alone is a group.updated (members have their own events).
_GROUP_FIELDS = ("display_name", "external_id")


def member_event(
    kind: str, group: dict[str, Any] | None, group_id: uuid.UUID, user_id: uuid.UUID, source: str
) -> EventSpec:
    """group.member_added / group.member_removed: the group's state, the user's id and
    which source's membership it is (SCIM and JIT memberships are kept apart)."""
    data = {
        "group": group if group is not None else {"id": str(group_id)},
        "user": {"id": str(user_id)},
        "source": source,
    }
    return EventSpec(f"group.member_{kind}", "Group", group_id, json.dumps(data))


def user_event(
    cmd_type: str,
    result: str,
    notes: tuple[str, ...] | list[str],
    changes: dict[str, Any],
    resource_id: uuid.UUID | None,
    user_name: str | None,
) -> EventSpec | None:
    """The user event of an applied user command (None if it changed nothing)."""
    if result != "applied":
        return None
    if cmd_type == "user.create" or "created" in notes:
        return EventSpec("user.created", "User", resource_id, with_changes=False)
    if cmd_type == "user.delete" and "deleted" in notes:
        return EventSpec(
            "user.deleted",
            "User",
            resource_id,
            json.dumps({"id": str(resource_id), "user_name": user_name}),
            with_changes=True,
        )
    active = changes.get("active")
    if active is not None:
        after = active.after if hasattr(active, "after") else active.get("after")
        return EventSpec("user.reactivated" if after else "user.deactivated", "User", resource_id, with_changes=True)
    if any(not k.startswith("groups.") for k in changes):
        return EventSpec("user.updated", "User", resource_id, with_changes=True)
    return None


def events_of(
    cmd: Command,
    result: str,
    resource_type: str | None,
    resource_id: uuid.UUID | None,
    user_name: str | None,
    resource: dict[str, Any] | None,
    changes: dict[str, Any],
    notes: tuple[str, ...] | list[str],
    extra: list[EventSpec],
) -> list[EventSpec]:
    """The events of one command, in the order a receiver should apply them."""
    if result == "failed":
        return []
    out: list[EventSpec] = []
    t = cmd.type
    if t.startswith("user."):
        ev = user_event(t, result, notes, changes, resource_id, user_name)
        if ev is not None:
            out.append(ev)
    elif t == "jit.login":
        p = cmd.payload
        assert isinstance(p, JitLogin)
        created = "created" in notes
        ev = user_event(t, result, notes, changes, resource_id, user_name)
        if ev is not None:
            out.append(ev)
        # JIT-made groups and memberships come before the login that caused them.
        out.extend(extra)
        updated = not created and ev is not None
        out.append(
            EventSpec(
                "sso.login",
                "User",
                resource_id,
                json.dumps(
                    {
                        "user_id": str(resource_id) if resource_id else None,
                        "user": resource,
                        "connection": {"id": str(p.connection_id), "name": p.connection_name},
                        "created": created,
                        "updated": updated,
                    }
                ),
            )
        )
        return out
    elif result == "applied":
        if t == "group.create":
            # A SCIM create that adopted a group JIT made (Entra object id) changes a group
            # the feed already announced: an update, not a second group.created.
            if "adopted a group JIT created" in notes:
                out.append(EventSpec("group.updated", "Group", resource_id, with_changes=True))
            else:
                out.append(EventSpec("group.created", "Group", resource_id))
        elif t == "group.delete":
            name = changes.get("display_name")
            before = (name.before if hasattr(name, "before") else name.get("before")) if name is not None else None
            out.append(
                EventSpec(
                    "group.deleted",
                    "Group",
                    resource_id,
                    json.dumps({"id": str(resource_id), "display_name": before}),
                    with_changes=True,
                )
            )
        elif t == "group.replace" and any(k in changes for k in _GROUP_FIELDS):
            out.append(EventSpec("group.updated", "Group", resource_id, with_changes=True))
    out.extend(extra)
    return out


EVENT_TYPES = (
    "user.created",
    "user.updated",
    "user.deactivated",
    "user.reactivated",
    "user.deleted",
    "group.created",
    "group.updated",
    "group.deleted",
    "group.member_added",
    "group.member_removed",
    "sso.login",
)
