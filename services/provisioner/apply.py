"""Apply commands to Postgres exactly once: the inbox row and the change share a transaction.

A batch is one transaction; each command runs in its own savepoint, so a command that
fails permanently (taken userName, stale version) rolls back alone and its failure
outcome is still recorded — a redelivery gets the same answer back.
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
    UserData,
    encode,
)

from . import store
from .domain import (
    USER_FIELDS,
    PermanentError,
    adoption_basis,
    diff,
    groups_claim,
    immutable_change,
    jit_updates,
    one_group_refusals,
    sso_name_refusal,
)
from .events import EventSpec, member_event

Seq = tuple[int, int]


def parse_seq(entry_id: str) -> Seq:
    """A stream entry id ("1700000000000-3") as a comparable pair."""
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


@dataclass(frozen=True)
class Ctx:
    """What a handler needs besides the command: the tenant's policies and the command's
    position in its partition stream (acceptance order)."""

    policy: Any
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


def is_stale(row: Any, seq: Seq) -> bool:
    return seq != (0, 0) and seq < (row["seq_ms"], row["seq_n"])


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


def _user_dict(row: Any) -> dict[str, Any]:
    return {f: row[f] for f in (*USER_FIELDS, "attributes")}


def _group_dict(row: Any) -> dict[str, Any]:
    return {"display_name": row["display_name"], "external_id": row["external_id"], "attributes": row["attributes"]}


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
        changes=diff(None, _user_dict(row), USER_FIELDS),
    )


def _replace_plan(p: ReplaceUser, ctx: Ctx, row: Any) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """What a full replace does to ``row``: ("stale" | "unchanged", None, {}) or
    ("update", the new values, the changes); PermanentError if it may not."""
    if p.expected_version is not None and p.expected_version != row["version"]:
        raise PermanentError("version_mismatch", f"user is at version {row['version']}, not {p.expected_version}")
    if is_stale(row, ctx.seq):
        return "stale", None, {}
    after_values = store.user_values(p.data)
    if ctx.policy["immutable_user_name"] and (what := immutable_change(ctx.policy, row, after_values)):
        raise PermanentError("mutability", f"this tenant does not allow changing {what}", field=what)
    before = _user_dict(row)
    after = {**before, **{k: after_values[k] for k in (*USER_FIELDS, "attributes")}}
    changes = diff(before, after, USER_FIELDS)
    return ("update", after_values, changes) if changes else ("unchanged", None, {})


async def _replaced(conn: asyncpg.Connection, ctx: Ctx, row: Any, kind: str, changes: dict[str, Any]) -> Applied:
    """The Applied of a replace planned as ``kind``; ``row`` is the new row after an update."""
    notes = ["stale: a newer change was applied first"] if kind == "stale" else []
    return Applied(
        result="applied" if kind == "update" else "unchanged",
        resource_type="User",
        resource_id=row["id"],
        user_name=row["user_name"],
        resource=await _user_result(conn, row, ctx),
        changes=changes,
        notes=notes,
    )


async def replace_user(conn: asyncpg.Connection, cmd: Command, p: ReplaceUser, ctx: Ctx) -> Applied:
    row = await ctx.lock_user(conn, cmd.tenant_id, p.user_id)
    kind, values, changes = _replace_plan(p, ctx, row)
    if kind == "update":
        row = ctx.changed(await store.update_user(conn, row, values or {}, seq=ctx.seq))
    return await _replaced(conn, ctx, row, kind, changes)


async def replace_users(conn: asyncpg.Connection, run: list[tuple[Command, Ctx]]) -> list[Applied]:
    """Full replaces of distinct users (the fast path): planned one by one, written with
    one UPDATE. Any PermanentError or database error aborts the batch's fast path."""
    planned = []
    for cmd, ctx in run:
        p = cmd.payload
        assert isinstance(p, ReplaceUser)
        row = await ctx.lock_user(conn, cmd.tenant_id, p.user_id)
        planned.append((ctx, row, *_replace_plan(p, ctx, row)))
    updates = [(row, values, ctx.seq) for ctx, row, kind, values, _ in planned if kind == "update"]
    new_rows = await store.update_users_bulk(conn, updates) if updates else {}  # type: ignore[arg-type]
    out = []
    for ctx, row, kind, _, changes in planned:
        if kind == "update":
            row = ctx.changed(new_rows[row["id"]])
        out.append(await _replaced(conn, ctx, row, kind, changes))
    return out


async def delete_user(conn: asyncpg.Connection, cmd: Command, p: DeleteUser, ctx: Ctx) -> Applied:
    row = await ctx.lock_user(conn, cmd.tenant_id, p.user_id)
    if p.expected_version is not None and p.expected_version != row["version"]:
        raise PermanentError("version_mismatch", f"user is at version {row['version']}, not {p.expected_version}")
    if ctx.policy["deprovision"] == "deactivate":
        # Tenant policy: deprovision by deactivation (the user and history stay).
        if not row["active"]:
            return Applied(
                result="unchanged",
                resource_type="User",
                resource_id=row["id"],
                user_name=row["user_name"],
                resource=await _user_result(conn, row, ctx),
                notes=["deactivated instead of deleted"],
            )
        new = ctx.changed(await store.update_user(conn, row, {"active": False}, seq=ctx.seq))
        return Applied(
            resource_type="User",
            resource_id=row["id"],
            user_name=row["user_name"],
            resource=await _user_result(conn, new, ctx),
            changes=diff(_user_dict(row), _user_dict(new), USER_FIELDS),
            notes=["deactivated instead of deleted"],
        )
    await store.delete_user(conn, row["id"])
    if ctx.users is not None:
        ctx.users.pop(row["id"], None)
    return Applied(
        resource_type="User",
        resource_id=row["id"],
        user_name=row["user_name"],
        changes=diff(_user_dict(row), None, ("user_name", "active")),
        notes=["deleted"],
    )


# --------------------------------------------------------------------------- groups


async def create_group(conn: asyncpg.Connection, cmd: Command, p: CreateGroup, ctx: Ctx) -> Applied:
    # Entra's SCIM creates a group JIT already made from its object id in a group claim
    # (externalId = that id): adopt it rather than make a duplicate (issue 13 §3).
    jit_row = await store.adoptable_jit_group(conn, cmd.tenant_id, p.data.external_id) if p.data.external_id else None
    if jit_row is not None:
        row = await store.adopt_group(conn, jit_row, p.data, ctx.seq)
        changes = diff(_group_dict(jit_row), _group_dict(row), ("display_name", "external_id"))
    else:
        row = await store.insert_group(conn, cmd.tenant_id, p.group_id, p.data, seq=ctx.seq)
        changes = diff(None, _group_dict(row), ("display_name", "external_id"))
    added: list[uuid.UUID] = []
    if p.data.members:
        n = await store.add_members(
            conn,
            cmd.tenant_id,
            row["id"],
            list(dict.fromkeys(p.data.members)),
            "scim",
            one_group_per_user=ctx.policy["one_group_per_user"],
            added=added,
        )
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


async def replace_group(conn: asyncpg.Connection, cmd: Command, p: ReplaceGroup, ctx: Ctx) -> Applied:
    row = await store.lock_group(conn, cmd.tenant_id, p.group_id)
    if p.expected_version is not None and p.expected_version != row["version"]:
        raise PermanentError("version_mismatch", f"group is at version {row['version']}, not {p.expected_version}")
    if is_stale(row, ctx.seq):
        return Applied(
            result="unchanged",
            resource_type="Group",
            resource_id=row["id"],
            resource=store.group_state(row).model_dump(mode="json"),
            notes=["stale: a newer change was applied first"],
        )
    changes = diff(
        _group_dict(row),
        {"display_name": p.data.display_name, "external_id": p.data.external_id, "attributes": dict(p.data.attributes)},
        ("display_name", "external_id"),
    )
    added_ids: list[uuid.UUID] = []
    removed_ids: list[uuid.UUID] = []
    if p.data.members is not None:
        # Full replace of the members SCIM manages; JIT memberships are not SCIM's to drop.
        current = await store.member_ids(conn, row["id"], "scim")
        wanted = list(dict.fromkeys(p.data.members))
        added = await store.add_members(
            conn,
            cmd.tenant_id,
            row["id"],
            [u for u in wanted if u not in current],
            "scim",
            one_group_per_user=ctx.policy["one_group_per_user"],
            added=added_ids,
        )
        removed = await store.remove_members(
            conn, row["id"], [u for u in current if u not in set(wanted)], "scim", removed=removed_ids
        )
        if added or removed:
            changes["members"] = Change(before=None, after=f"+{added} -{removed}")
    if not changes:
        return Applied(
            result="unchanged",
            resource_type="Group",
            resource_id=row["id"],
            resource=store.group_state(row).model_dump(mode="json"),
        )
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
    added = await store.add_members(
        conn,
        cmd.tenant_id,
        row["id"],
        list(dict.fromkeys(p.add)),
        "scim",
        one_group_per_user=ctx.policy["one_group_per_user"],
        added=added_ids,
    )
    removed = await store.remove_members(conn, row["id"], list(dict.fromkeys(p.remove)), "scim", removed=removed_ids)
    if not added and not removed:
        return Applied(
            result="unchanged",
            resource_type="Group",
            resource_id=row["id"],
            resource=store.group_state(row).model_dump(mode="json"),
        )
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
        changes=diff(_group_dict(row), None, ("display_name",)),
        notes=["deleted"],
    )


# --------------------------------------------------------------------------- JIT login


async def jit_login(conn: asyncpg.Connection, cmd: Command, p: JitLogin, ctx: Ctx) -> Applied:
    """A SAML login: find the user by its identity link (connection, NameID); an unlinked
    login may create a user, or adopt the user its userName/email claim matches only
    where the connection is authoritative for that user (domain.adoption_basis)."""
    notes = ["groups_overage"] if p.groups_overage else []
    connections = await store.login_connections(conn, cmd.tenant_id)
    this = next((c for c in connections if c["id"] == p.connection_id), None)
    if this is None:  # removed while the login was on its way
        raise PermanentError("policy", f"the SSO connection {p.connection_name!r} no longer exists", field="connection")
    names = [c["name"] for c in connections]
    row = await store.user_by_identity(conn, cmd.tenant_id, p.connection_id, p.name_id)
    link = row is None
    if row is None:
        row = await store.find_user_for_login(conn, cmd.tenant_id, p.user_name, p.email)
    if row is not None:
        refusal = sso_name_refusal(row["sso_name"], p.connection_name, names)
        if refusal:
            raise PermanentError("policy", refusal, field="ssoName")
    if row is not None and link:
        linked_here = await store.identity_name_id(conn, p.connection_id, row["id"]) is not None
        basis = adoption_basis(
            connection_name=p.connection_name,
            connection_names=names,
            verified_domains=this["verified_domains"],
            linked_here=linked_here,
            user_sso_name=row["sso_name"],
            user_email=row["email"],
            user_name=row["user_name"],
        )
        if basis is None:
            raise PermanentError(
                "not_linked",
                f"this sign-in (NameID {p.name_id!r}) matches the existing user {row['user_name']!r}, but the "
                f"connection {p.connection_name!r} is not authoritative for it (it did not create the user, the "
                f"user's ssoName does not name it, the user's email domain is not verified for it, and the tenant "
                f"has other SSO connections): an administrator must link the account",
                field="name_id",
            )
        notes.append(f"linked:{basis}")
    failures: list[PermanentError] = []
    claimed = p.groups
    if p.groups is not None:
        await store.mark_groups_claim_seen(conn, p.connection_id)
    elif not p.groups_overage:
        claimed = groups_claim(None, this["groups_absent"], this["groups_claim_seen"])
    if row is None:
        if p.mode == "off":
            raise PermanentError(
                "user_not_found",
                f"no user {p.user_name!r} in this tenant and JIT is off for connection {p.connection_name!r}",
            )
        data = UserData(
            user_name=p.user_name,
            display_name=p.display_name,
            given_name=p.given_name,
            family_name=p.family_name,
            emails=({"value": p.email, "type": "work", "primary": True},) if p.email else (),  # type: ignore[arg-type]
            sso_name=p.connection_name,
            attributes={"custom": dict(p.custom)} if p.custom else {},
        )
        row = await store.insert_user(conn, cmd.tenant_id, uuid.uuid4(), data, created_by="jit", seq=ctx.seq)
        await store.link_identity(conn, cmd.tenant_id, p.connection_id, p.name_id, row["id"])
        changes = diff(None, _user_dict(row), USER_FIELDS)
        extra: list[EventSpec] = []
        if claimed:
            joined = await _sync_jit_groups(conn, ctx, cmd.tenant_id, row, claimed, failures, events=extra)
            if joined:
                changes["groups.jit"] = Change(before=[], after=joined)
        return Applied(
            resource_type="User",
            resource_id=row["id"],
            user_name=row["user_name"],
            resource=await _user_result(conn, row),
            changes=changes,
            notes=[*notes, "created"],
            failures=failures,
            extra_events=extra,
        )
    if not row["active"]:
        raise PermanentError("policy", f"user {row['user_name']!r} is deactivated")
    if link:
        await store.link_identity(conn, cmd.tenant_id, p.connection_id, p.name_id, row["id"])
    if p.mode != "sync":
        # off / create: an existing user is left exactly as it is (Splashtop create-only).
        return Applied(
            result="unchanged",
            resource_type="User",
            resource_id=row["id"],
            user_name=row["user_name"],
            resource=await _user_result(conn, row),
            notes=notes,
        )
    changes = {}
    updates = jit_updates(_user_dict(row) | {"email": row["email"]}, login := p.model_dump())
    if "emails" in updates and (
        what := immutable_change(
            ctx.policy,
            {"user_name": row["user_name"], "email": row["email"]},
            {"user_name": row["user_name"], "email": login["email"]},
        )
    ):
        # The login still signs in; the change the tenant forbids is not made, and says so.
        del updates["emails"]
        failures.append(
            PermanentError(
                "mutability",
                f"this tenant does not allow changing {what}: the identity "
                f"provider sent {login['email']!r} for {row['user_name']!r}, which keeps "
                f"{row['email']!r}",
                field=what,
            )
        )
    if updates:
        before = _user_dict(row)
        row = await store.update_user(conn, row, updates, seq=ctx.seq)
        changes = diff(before, _user_dict(row), USER_FIELDS)
    extra = []
    if claimed is not None:
        before_groups = sorted((await store.jit_member_groups(conn, row["id"])).values(), key=str.lower)
        if (
            await _sync_jit_groups(conn, ctx, cmd.tenant_id, row, claimed, failures, sync=True, events=extra)
            is not None
        ):
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
        notes=notes,
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
    events: list[EventSpec] | None = None,
) -> list[str] | None:
    """Make the user's JIT memberships equal the claim (``sync``) or add the claim's groups
    (a new user). Joins that break "one group per user" are not made: a failure for the
    audit trail instead. Returns the displayNames of the groups joined. ``events``
    collects group.created for the groups made here and the membership events."""
    made: list[Any] = []
    ids = await store.resolve_jit_groups(conn, tenant_id, list(claimed), created=made)
    states = {r["id"]: store.group_state(r).model_dump(mode="json") for r in made}
    if events is not None:
        events.extend(EventSpec("group.created", "Group", r["id"], dumps_json(states[r["id"]])) for r in made)
    claim_of = {gid: claim for claim, gid in ids.items()}
    current = await store.jit_member_groups(conn, user["id"]) if sync else {}
    join = [gid for gid in dict.fromkeys(ids.values()) if gid not in current]
    leave = [gid for gid in current if gid not in claim_of]
    if ctx.policy["one_group_per_user"]:
        member = await store.member_of(conn, user["id"])
        kept = {gid for gid, sources in member.items() if gid not in leave or "scim" in sources}
        _, refused = one_group_refusals(kept, join)
        if refused:
            join = [gid for gid in join if gid not in refused]
            failures.append(
                PermanentError(
                    "policy",
                    f"this tenant allows one group per user: {user['user_name']!r} was not added to "
                    f"{', '.join(repr(claim_of[g]) for g in refused)} (the sign-in itself went ahead)",
                    field="groups",
                )
            )
    for gid in join:
        added: list[uuid.UUID] = []
        await store.add_members(conn, tenant_id, gid, [user["id"]], "jit", added=added)
        if events is not None and added:
            events.append(member_event("added", states.get(gid), gid, user["id"], "jit"))
    left: list[uuid.UUID] = []
    await store.remove_user_from_groups(conn, user["id"], leave, "jit", removed=left)
    if events is not None:
        events.extend(member_event("removed", None, gid, user["id"], "jit") for gid in left)
    return [claim_of[g] for g in join]


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
