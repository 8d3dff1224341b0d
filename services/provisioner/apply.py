"""Apply commands to Postgres: load the state a command needs, ask the pure core
(``core.decide_*``) what to do, write it (``store``), and describe it (``Applied``).

The handlers decide nothing themselves: every tenant rule is in core.py. They run in the
caller's transaction — the careful path gives each command a savepoint, so a command that
fails permanently (taken userName, stale version) rolls back alone and its failure
outcome is still recorded; which path a batch takes is planner.py's.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from provisio_lib.contract import (
    Change,
    ChangeGroupMembers,
    Command,
    CreateGroup,
    CreateUser,
    DeleteGroup,
    DeleteUser,
    ErrorInfo,
    JitLogin,
    Outcome,
    ReplaceGroup,
    ReplaceUser,
    encode,
)

from . import store
from .core import (
    Connection,
    Decision,
    LoginState,
    Policy,
    Row,
    Seq,
    decide_delete_user,
    decide_login,
    decide_login_groups,
    decide_login_update,
    decide_replace_group,
    decide_replace_user,
    group_dict,
    is_stale,
    member_adds_refusal,
    user_dict,
)
from .domain import USER_FIELDS, PermanentError, diff
from .events import EventSpec, member_event

__all__ = ["HANDLERS", "Applied", "Ctx", "Seq", "is_stale", "make_outcome", "parse_seq", "side_outcomes"]


def parse_seq(entry_id: str) -> Seq:
    """A stream entry id ("1700000000000-3") as a comparable pair."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


@dataclass(frozen=True)
class Ctx:
    """What a handler needs besides the command: the tenant's policies and the command's
    position in its partition stream (acceptance order)."""

    policy: Policy
    seq: Seq = (0, 0)
    # The fast path's batch-wide reads: users locked up front (id → current row, kept up
    # to date as the batch changes them) and, when no command of the batch touches
    # groups, each locked user's groups. None: query per command (the careful path).
    users: dict[uuid.UUID, Any] | None = None
    groups: dict[uuid.UUID, list[Any]] | None = None

    async def lock_user(self, conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Any:
        row = self.users.get(user_id) if self.users is not None else None
        if row is None or row["tenant_id"] != tenant_id:
            return await store.lock_user(conn, tenant_id, user_id)
        return row

    def changed(self, row: Any) -> Any:
        if self.users is not None:
            self.users[row["id"]] = row
        return row


@dataclass
class Applied:
    """What one command did, before it becomes an Outcome."""

    result: Literal["applied", "unchanged", "failed"] = "applied"
    resource_type: Literal["User", "Group"] | None = None
    resource_id: uuid.UUID | None = None
    user_name: str | None = None
    resource: dict[str, Any] | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Policy failures of a command applied otherwise (see side_outcomes).
    failures: list[PermanentError] = field(default_factory=list)
    # Events besides the resource's own (memberships, JIT-made groups): events.events_of.
    extra_events: list[EventSpec] = field(default_factory=list)


def _checked(decision: Decision) -> Decision:
    """The decision, or its refusal raised (the command's savepoint rolls back)."""
    if decision.refused is not None:
        raise decision.refused
    return decision


async def _user_result(
    conn: asyncpg.Connection, row: Any, ctx: Ctx | None = None, *, with_groups: bool = True
) -> dict[str, Any]:
    if not with_groups:
        groups: list[Any] = []
    elif ctx is not None and ctx.groups is not None and row["id"] in ctx.groups:
        groups = ctx.groups[row["id"]]
    else:
        groups = await store.user_groups(conn, row["id"])
    return store.user_state(row, groups).model_dump(mode="json")


# --------------------------------------------------------------------------- users


async def create_user(conn: asyncpg.Connection, cmd: Command, p: CreateUser, ctx: Ctx) -> Applied:
    return created_user(await store.insert_user(conn, cmd.tenant_id, p.user_id, p.data, seq=ctx.seq))


def created_user(row: Any) -> Applied:
    """A new user has no groups yet: no query needed for its state."""
    return Applied(
        resource_type="User",
        resource_id=row["id"],
        user_name=row["user_name"],
        resource=store.user_state(row).model_dump(mode="json"),
        changes=diff(None, user_dict(row), USER_FIELDS),
    )


async def _user_applied(conn: asyncpg.Connection, ctx: Ctx, row: Any, decision: Decision) -> Applied:
    """The Applied of a user decision; ``row`` is the new row after an update."""
    return Applied(
        result=decision.result,
        resource_type="User",
        resource_id=row["id"],
        user_name=row["user_name"],
        resource=await _user_result(conn, row, ctx),
        changes=dict(decision.changes),
        notes=list(decision.notes),
    )


async def replace_user(conn: asyncpg.Connection, cmd: Command, p: ReplaceUser, ctx: Ctx) -> Applied:
    row = await ctx.lock_user(conn, cmd.tenant_id, p.user_id)
    decision = _checked(decide_replace_user(row, p, ctx.seq, ctx.policy))
    if decision.action == "update":
        row = ctx.changed(await store.update_user(conn, row, dict(decision.values or {}), seq=ctx.seq))
    return await _user_applied(conn, ctx, row, decision)


async def replace_users(conn: asyncpg.Connection, run: list[tuple[Command, Ctx]]) -> list[Applied]:
    """Full replaces of distinct users (the fast path): decided one by one, written with
    one UPDATE. Any refusal or database error aborts the batch's fast path."""
    planned: list[tuple[Ctx, Any, Decision]] = []
    for cmd, ctx in run:
        p = cmd.payload
        assert isinstance(p, ReplaceUser)
        row = await ctx.lock_user(conn, cmd.tenant_id, p.user_id)
        planned.append((ctx, row, _checked(decide_replace_user(row, p, ctx.seq, ctx.policy))))
    updates = [(row, dict(d.values or {}), ctx.seq) for ctx, row, d in planned if d.action == "update"]
    new_rows = await store.update_users_bulk(conn, updates) if updates else {}
    out = []
    for ctx, row, d in planned:
        if d.action == "update":
            row = ctx.changed(new_rows[row["id"]])
        out.append(await _user_applied(conn, ctx, row, d))
    return out


async def delete_user(conn: asyncpg.Connection, cmd: Command, p: DeleteUser, ctx: Ctx) -> Applied:
    row = await ctx.lock_user(conn, cmd.tenant_id, p.user_id)
    decision = _checked(decide_delete_user(row, p, ctx.policy))
    if decision.action == "delete":
        await store.delete_user(conn, row["id"])
        if ctx.users is not None:
            ctx.users.pop(row["id"], None)
        return Applied(
            resource_type="User",
            resource_id=row["id"],
            user_name=row["user_name"],
            changes=dict(decision.changes),
            notes=list(decision.notes),
        )
    if decision.action == "deactivate":
        row = ctx.changed(await store.update_user(conn, row, dict(decision.values or {}), seq=ctx.seq))
    return await _user_applied(conn, ctx, row, decision)


# --------------------------------------------------------------------------- groups


async def _add_scim_members(
    conn: asyncpg.Connection,
    ctx: Ctx,
    tenant_id: uuid.UUID,
    group_id: uuid.UUID,
    user_ids: list[uuid.UUID],
    added: list[uuid.UUID],
) -> int:
    """SCIM memberships, refused as core.member_adds_refusal says."""
    if not user_ids:
        return 0
    known = await store.known_users(conn, tenant_id, user_ids)
    others = (
        await store.other_memberships(conn, tenant_id, user_ids, group_id)
        if ctx.policy.one_group_per_user and len(known) == len(set(user_ids))
        else []
    )
    if err := member_adds_refusal(group_id, user_ids, known, others, ctx.policy):
        raise err
    return await store.insert_members(conn, tenant_id, group_id, user_ids, "scim", added=added)


async def create_group(conn: asyncpg.Connection, cmd: Command, p: CreateGroup, ctx: Ctx) -> Applied:
    # Entra's SCIM creates a group JIT already made from its object id in a group claim
    # (externalId = that id): adopt it rather than make a duplicate (issue 13 §3).
    jit_row = await store.adoptable_jit_group(conn, cmd.tenant_id, p.data.external_id) if p.data.external_id else None
    if jit_row is not None:
        row = await store.adopt_group(conn, jit_row, p.data, ctx.seq)
        changes = diff(group_dict(jit_row), group_dict(row), ("display_name", "external_id"))
    else:
        row = await store.insert_group(conn, cmd.tenant_id, p.group_id, p.data, seq=ctx.seq)
        changes = diff(None, group_dict(row), ("display_name", "external_id"))
    added: list[uuid.UUID] = []
    if p.data.members:
        n = await _add_scim_members(conn, ctx, cmd.tenant_id, row["id"], list(dict.fromkeys(p.data.members)), added)
        changes["members"] = Change(before=0, after=n)
    resource = store.group_state(row).model_dump(mode="json")
    return Applied(
        resource_type="Group",
        resource_id=row["id"],
        resource=resource,
        changes=changes,
        notes=["adopted a group JIT created"] if jit_row is not None else [],
        extra_events=_member_events(resource, row["id"], added, []),
    )


def _member_events(
    group: dict[str, Any] | None,
    group_id: uuid.UUID,
    added: list[uuid.UUID],
    removed: list[uuid.UUID],
    source: str = "scim",
) -> list[EventSpec]:
    return [member_event("added", group, group_id, u, source) for u in added] + [
        member_event("removed", group, group_id, u, source) for u in removed
    ]


def _group_unchanged(row: Row, notes: tuple[str, ...] = ()) -> Applied:
    return Applied(
        result="unchanged",
        resource_type="Group",
        resource_id=row["id"],
        resource=store.group_state(row).model_dump(mode="json"),
        notes=list(notes),
    )


async def replace_group(conn: asyncpg.Connection, cmd: Command, p: ReplaceGroup, ctx: Ctx) -> Applied:
    row = await store.lock_group(conn, cmd.tenant_id, p.group_id)
    current: set[uuid.UUID] = set()
    if p.data.members is not None and not is_stale(row, ctx.seq):
        current = await store.member_ids(conn, row["id"], "scim")
    decision = _checked(decide_replace_group(row, p, ctx.seq, current))
    changes = dict(decision.changes)
    added_ids: list[uuid.UUID] = []
    removed_ids: list[uuid.UUID] = []
    added = await _add_scim_members(conn, ctx, cmd.tenant_id, row["id"], list(decision.join), added_ids)
    removed = await store.remove_members(conn, row["id"], list(decision.leave), "scim", removed=removed_ids)
    if added or removed:
        changes["members"] = Change(before=None, after=f"+{added} -{removed}")
    if not changes:
        return _group_unchanged(row, decision.notes)
    new = await store.update_group(conn, row, p.data, seq=ctx.seq)
    resource = store.group_state(new).model_dump(mode="json")
    return Applied(
        resource_type="Group",
        resource_id=row["id"],
        resource=resource,
        changes=changes,
        extra_events=_member_events(resource, row["id"], added_ids, removed_ids),
    )


async def change_members(conn: asyncpg.Connection, cmd: Command, p: ChangeGroupMembers, ctx: Ctx) -> Applied:
    row = await store.lock_group(conn, cmd.tenant_id, p.group_id)
    added_ids: list[uuid.UUID] = []
    removed_ids: list[uuid.UUID] = []
    added = await _add_scim_members(conn, ctx, cmd.tenant_id, row["id"], list(dict.fromkeys(p.add)), added_ids)
    removed = await store.remove_members(conn, row["id"], list(dict.fromkeys(p.remove)), "scim", removed=removed_ids)
    if not added and not removed:
        return _group_unchanged(row)
    new = await store.update_group(conn, row, None, seq=ctx.seq)
    changes: dict[str, Any] = {}
    if p.add:
        changes["members.added"] = {"before": None, "after": [str(u) for u in p.add][:100]}
    if p.remove:
        changes["members.removed"] = {"before": [str(u) for u in p.remove][:100], "after": None}
    resource = store.group_state(new).model_dump(mode="json")
    return Applied(
        resource_type="Group",
        resource_id=row["id"],
        resource=resource,
        changes=changes,
        extra_events=_member_events(resource, row["id"], added_ids, removed_ids),
    )


async def delete_group(conn: asyncpg.Connection, cmd: Command, p: DeleteGroup, ctx: Ctx) -> Applied:
    row = await store.lock_group(conn, cmd.tenant_id, p.group_id)
    await store.delete_group(conn, row["id"])
    return Applied(
        resource_type="Group",
        resource_id=row["id"],
        changes=diff(group_dict(row), None, ("display_name",)),
        notes=["deleted"],
    )


# --------------------------------------------------------------------------- JIT login


async def jit_login(conn: asyncpg.Connection, cmd: Command, p: JitLogin, ctx: Ctx) -> Applied:
    """A SAML login: load what core.decide_login reads, then write what it decided (the
    user, its identity link, its profile under JIT sync, its JIT group memberships)."""
    connections = tuple(Connection.of(c) for c in await store.login_connections(conn, cmd.tenant_id))
    linked = await store.user_by_identity(conn, cmd.tenant_id, p.connection_id, p.name_id)
    matched = None if linked is not None else await store.find_user_for_login(conn, cmd.tenant_id, p.user_name, p.email)
    linked_here = matched is not None and await store.identity_name_id(conn, p.connection_id, matched["id"]) is not None
    login = decide_login(p, LoginState(connections, linked, matched, linked_here))
    if login.refused is not None:
        raise login.refused
    if login.claim_seen:
        await store.mark_groups_claim_seen(conn, p.connection_id)
    failures: list[PermanentError] = []
    extra: list[EventSpec] = []
    if login.new_user is not None:
        row = await store.insert_user(conn, cmd.tenant_id, uuid.uuid4(), login.new_user, created_by="jit", seq=ctx.seq)
        await store.link_identity(conn, cmd.tenant_id, p.connection_id, p.name_id, row["id"])
        changes: dict[str, Any] = diff(None, user_dict(row), USER_FIELDS)
        if login.claimed:
            joined = await _sync_jit_groups(conn, ctx, cmd.tenant_id, row, login.claimed, failures, events=extra)
            if joined:
                changes["groups.jit"] = Change(before=[], after=joined)
        return Applied(
            resource_type="User",
            resource_id=row["id"],
            user_name=row["user_name"],
            resource=await _user_result(conn, row),
            changes=changes,
            notes=list(login.notes),
            failures=failures,
            extra_events=extra,
        )
    row = login.user
    assert row is not None
    if login.link:
        await store.link_identity(conn, cmd.tenant_id, p.connection_id, p.name_id, row["id"])
    if p.mode != "sync":
        # off / create: an existing user is left exactly as it is (Splashtop create-only).
        return Applied(
            result="unchanged",
            resource_type="User",
            resource_id=row["id"],
            user_name=row["user_name"],
            resource=await _user_result(conn, row),
            notes=list(login.notes),
        )
    update = decide_login_update(row, p, ctx.policy)
    failures.extend(update.refusals)
    changes = dict(update.changes)
    if update.action == "update":
        # ctx.changed: a later command of a fast-path batch reads this row, not the one
        # locked before this login changed it (the careful path reads it afresh).
        row = ctx.changed(await store.update_user(conn, row, dict(update.values or {}), seq=ctx.seq))
    if login.claimed is not None:
        before_groups = sorted((await store.jit_member_groups(conn, row["id"])).values(), key=str.lower)
        await _sync_jit_groups(conn, ctx, cmd.tenant_id, row, login.claimed, failures, sync=True, events=extra)
        after_groups = sorted((await store.jit_member_groups(conn, row["id"])).values(), key=str.lower)
        if after_groups != before_groups:
            changes["groups.jit"] = Change(before=before_groups, after=after_groups)
    return Applied(
        result="applied" if changes else "unchanged",
        resource_type="User",
        resource_id=row["id"],
        user_name=row["user_name"],
        resource=await _user_result(conn, row),
        changes=changes,
        notes=list(login.notes),
        failures=failures,
        extra_events=extra,
    )


async def _sync_jit_groups(
    conn: asyncpg.Connection,
    ctx: Ctx,
    tenant_id: uuid.UUID,
    user: Any,
    claimed: tuple[str, ...],
    failures: list[PermanentError],
    *,
    sync: bool = False,
    events: list[EventSpec],
) -> list[str]:
    """Write core.decide_login_groups for this claim: the JIT memberships equal it
    (``sync``), or a new user joins its groups; groups first seen in a claim are made.
    Returns the displayNames (claims) of the groups joined. ``events`` collects
    group.created for the groups made here and the membership events."""
    made: list[Any] = []
    ids = await store.resolve_jit_groups(conn, tenant_id, list(claimed), created=made)
    states = {r["id"]: store.group_state(r).model_dump(mode="json") for r in made}
    events.extend(EventSpec("group.created", "Group", r["id"], dumps_json(states[r["id"]])) for r in made)
    current = await store.jit_member_groups(conn, user["id"]) if sync else {}
    member_of = await store.member_of(conn, user["id"]) if ctx.policy.one_group_per_user else None
    decision = decide_login_groups(user["user_name"], ids, current, ctx.policy, member_of, made=list(states))
    failures.extend(decision.refusals)
    joined = set(await store.join_groups(conn, tenant_id, user["id"], list(decision.join), "jit"))
    left: list[uuid.UUID] = []
    await store.remove_user_from_groups(conn, user["id"], list(decision.leave), "jit", removed=left)
    # The groups whose members changed get their new version and lastModified (as
    # change_members gives them), and the member events carry that state, as SCIM's do.
    # A login that changes no membership writes nothing here.
    for r in await store.touch_groups(conn, [g for g in decision.bump if g in joined or g in left], ctx.seq):
        states[r["id"]] = store.group_state(r).model_dump(mode="json")
    events.extend(member_event("added", states.get(g), g, user["id"], "jit") for g in decision.join if g in joined)
    events.extend(member_event("removed", states.get(g), g, user["id"], "jit") for g in decision.leave if g in left)
    claim_of = {gid: claim for claim, gid in ids.items()}
    return [claim_of[g] for g in decision.join]


def side_outcomes(cmd: Command, applied: Applied) -> list[tuple[Command, Outcome, bytes]]:
    """The policy failures of a command that was otherwise applied (a JIT login whose
    groups break "one group per user", whose email the tenant keeps): a failed outcome
    each, for the audit trail and so the failure mail. Its event id is derived from the
    command's (a redelivery records it once), and it goes to no waiting gateway: the
    login itself succeeded."""
    out = []
    for i, err in enumerate(applied.failures):
        side = cmd.model_copy(update={"event_id": uuid.uuid5(cmd.event_id, f"policy-{i}"), "reply_to": None})
        outcome = make_outcome(side, error=err).model_copy(
            update={"resource_id": applied.resource_id, "user_name": applied.user_name}
        )
        out.append((side, outcome, encode(outcome)))
    return out


def dumps_json(value: Any) -> str:
    return json.dumps(value, default=str)


# The payload argument is the command type's payload class (checked by the contract).
HANDLERS: dict[str, Callable[[asyncpg.Connection, Command, Any, Ctx], Awaitable[Applied]]] = {
    "user.create": create_user,
    "user.replace": replace_user,
    "user.delete": delete_user,
    "group.create": create_group,
    "group.replace": replace_group,
    "group.members": change_members,
    "group.delete": delete_group,
    "jit.login": jit_login,
}


def make_outcome(cmd: Command, applied: Applied | None = None, error: PermanentError | None = None) -> Outcome:
    now = datetime.now(UTC)
    base: dict[str, Any] = dict(
        event_id=cmd.event_id,
        command_type=cmd.type,
        tenant_id=cmd.tenant_id,
        source=cmd.source,
        correlation_id=cmd.correlation_id,
        occurred_at=cmd.occurred_at,
        completed_at=now,
        latency_ms=round((now - cmd.occurred_at).total_seconds() * 1000, 3),
    )
    if error is not None:
        rtype, rid, uname = _resource_of(cmd)
        return Outcome(
            result="failed",
            error=ErrorInfo(code=error.code, message=error.message, field=error.field),  # type: ignore[arg-type]
            resource_type=rtype,
            resource_id=rid,
            user_name=uname,
            **base,
        )
    assert applied is not None
    return Outcome(
        result=applied.result,
        resource_type=applied.resource_type,
        resource_id=applied.resource_id,
        user_name=applied.user_name,
        resource=applied.resource,
        changes=applied.changes,
        notes=tuple(applied.notes),
        **base,
    )


def _resource_of(cmd: Command) -> tuple[Literal["User", "Group"] | None, uuid.UUID | None, str | None]:
    p = cmd.payload
    if isinstance(p, CreateUser | ReplaceUser):
        return "User", p.user_id, p.data.user_name
    if isinstance(p, DeleteUser):
        return "User", p.user_id, None
    if isinstance(p, JitLogin):
        return "User", None, p.user_name
    return "Group", getattr(p, "group_id", None), None
