"""The provisioner's rules as one pure core: (current state, command, tenant policy) → Decision.

No I/O. ``apply.py`` loads the state a command needs, asks a ``decide_*`` function here
what to do, and writes what it says; every source (SCIM and JIT logins) goes through the
same functions, so each tenant rule is applied in one place:

- deprovision mode (delete or deactivate): ``decide_delete_user``;
- userName and email immutable: ``decide_replace_user`` (SCIM) and ``decide_login_update``
  (JIT), both through ``domain.immutable_change``;
- one group per user: ``member_adds_refusal`` (SCIM) and ``decide_login_groups`` (JIT),
  both through ``domain.one_group_refusals``;
- JIT field ownership (which fields a login may overwrite): ``JIT_OWNED_FIELDS``,
  ``decide_login_update``;
- adoption of an existing user by an unlinked login, ssoName routing, the groups claim:
  ``decide_login``.

A decision that refuses the whole command carries ``refused`` (a failure outcome, nothing
written); ``refusals`` are the policy failures of a command that otherwise goes ahead (a
JIT login whose group joins or email change the tenant forbids).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from provisio_lib.contract import Change, DeleteUser, JitLogin, ReplaceGroup, ReplaceUser, UserData

from .domain import (
    USER_FIELDS,
    PermanentError,
    adoption_basis,
    diff,
    groups_claim,
    immutable_change,
    jit_updates,
    one_group_refusals,
    primary_email,
    sso_name_refusal,
)

# A row as read from Postgres (asyncpg.Record) or built in a test: column → value.
Row = Mapping[str, Any]
Seq = tuple[int, int]

STALE = "stale: a newer change was applied first"
DEACTIVATED_NOT_DELETED = "deactivated instead of deleted"

# What a JIT login may overwrite on an existing user (mode "sync"), as the keys of an
# outcome's changes: the profile the IdP asserts, and name.formatted derived from it.
# userName, externalId, active, ssoName and SCIM's other attributes stay SCIM's.
JIT_OWNED_FIELDS = frozenset(
    {"given_name", "family_name", "display_name", "emails", "attributes.custom", "attributes.name"}
)


@dataclass(frozen=True, slots=True)
class Policy:
    """A tenant's provisioning policies (``provisio tenant policy``)."""

    deprovision: Literal["deactivate", "delete"] = "delete"
    one_group_per_user: bool = False
    immutable_user_name: bool = False

    @classmethod
    def of(cls, row: Row) -> Policy:
        return cls(
            deprovision=row["deprovision"],
            one_group_per_user=bool(row["one_group_per_user"]),
            immutable_user_name=bool(row["immutable_user_name"]),
        )


Action = Literal["none", "update", "deactivate", "delete"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What a command does to one resource. ``action`` "none" is an unchanged outcome;
    ``values`` are the columns an update writes; ``join``/``leave`` the member changes of
    a group replace (user ids)."""

    action: Action = "none"
    values: Mapping[str, Any] | None = None
    changes: Mapping[str, Change] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    refused: PermanentError | None = None
    refusals: tuple[PermanentError, ...] = ()
    join: tuple[uuid.UUID, ...] = ()
    leave: tuple[uuid.UUID, ...] = ()

    @property
    def result(self) -> Literal["applied", "unchanged", "failed"]:
        if self.refused is not None:
            return "failed"
        return "unchanged" if self.action == "none" else "applied"


def refuse(code: str, message: str, field: str | None = None) -> Decision:
    return Decision(refused=PermanentError(code, message, field=field))


def is_stale(row: Row, seq: Seq) -> bool:
    """A command accepted before the change the row holds (the streams' order): the
    row's newer state stays. (0, 0): no stream position (a test or a replay)."""
    return seq != (0, 0) and seq < (row["seq_ms"], row["seq_n"])


def user_values(data: UserData) -> dict[str, Any]:
    """The users columns of ``data`` (the primary email derived, RFC 7643 §2.4)."""
    emails = [e.model_dump(exclude_none=True) for e in data.emails]
    return {
        "user_name": data.user_name,
        "external_id": data.external_id,
        "active": data.active,
        "display_name": data.display_name,
        "given_name": data.given_name,
        "family_name": data.family_name,
        "email": primary_email(emails),
        "emails": emails,
        "sso_name": data.sso_name,
        "attributes": dict(data.attributes),
    }


def user_dict(row: Row) -> dict[str, Any]:
    """The fields an outcome's changes compare."""
    return {f: row[f] for f in (*USER_FIELDS, "attributes")}


def _version_refusal(what: str, row: Row, expected: int | None) -> Decision | None:
    if expected is not None and expected != row["version"]:
        return refuse("version_mismatch", f"{what} is at version {row['version']}, not {expected}")
    return None


def _immutable_refusal(policy: Policy, before: Row, after: Row) -> PermanentError | None:
    what = immutable_change(policy, before, after)
    if what is None:
        return None
    return PermanentError(
        "mutability", f"this tenant does not allow changing {what} (immutable userName policy)", field=what
    )


# --------------------------------------------------------------------------- users (SCIM)


def decide_replace_user(row: Row, p: ReplaceUser, seq: Seq, policy: Policy) -> Decision:
    """A full replace (SCIM PUT, or a PATCH the gateway applied): the expected version,
    then the stream order, then the tenant's immutable userName/email."""
    if refused := _version_refusal("user", row, p.expected_version):
        return refused
    if is_stale(row, seq):
        return Decision(notes=(STALE,))
    after_values = user_values(p.data)
    if err := _immutable_refusal(policy, row, after_values):
        return Decision(refused=err)
    before = user_dict(row)
    changes = diff(before, {**before, **{k: after_values[k] for k in (*USER_FIELDS, "attributes")}}, USER_FIELDS)
    return Decision("update", after_values, changes) if changes else Decision()


def decide_delete_user(row: Row, p: DeleteUser, policy: Policy) -> Decision:
    """Deprovision as the tenant says: delete the user, or deactivate it (the user and its
    history stay; deactivating an inactive user changes nothing)."""
    if refused := _version_refusal("user", row, p.expected_version):
        return refused
    if policy.deprovision == "deactivate":
        if not row["active"]:
            return Decision(notes=(DEACTIVATED_NOT_DELETED,))
        before = user_dict(row)
        return Decision(
            "deactivate",
            {"active": False},
            diff(before, {**before, "active": False}, USER_FIELDS),
            notes=(DEACTIVATED_NOT_DELETED,),
        )
    return Decision("delete", changes=diff(user_dict(row), None, ("user_name", "active")), notes=("deleted",))


# --------------------------------------------------------------------------- groups (SCIM)


def group_dict(row: Row) -> dict[str, Any]:
    return {"display_name": row["display_name"], "external_id": row["external_id"], "attributes": row["attributes"]}


def decide_replace_group(row: Row, p: ReplaceGroup, seq: Seq, scim_members: Iterable[uuid.UUID]) -> Decision:
    """A full replace of a group: its fields, and when members are given, the members SCIM
    manages (JIT memberships are not SCIM's to drop). ``join``/``leave`` are the member
    changes to write; their count goes into the changes once written."""
    if refused := _version_refusal("group", row, p.expected_version):
        return refused
    if is_stale(row, seq):
        return Decision(notes=(STALE,))
    changes = diff(
        group_dict(row),
        {"display_name": p.data.display_name, "external_id": p.data.external_id, "attributes": dict(p.data.attributes)},
        ("display_name", "external_id"),
    )
    join: tuple[uuid.UUID, ...] = ()
    leave: tuple[uuid.UUID, ...] = ()
    if p.data.members is not None:
        current = list(scim_members)
        wanted = list(dict.fromkeys(p.data.members))
        join = tuple(u for u in wanted if u not in set(current))
        leave = tuple(u for u in current if u not in set(wanted))
    return Decision("update" if changes or join or leave else "none", changes=changes, join=join, leave=leave)


def member_adds_refusal(
    group_id: uuid.UUID,
    user_ids: Sequence[uuid.UUID],
    known_users: Iterable[uuid.UUID],
    other_memberships: Iterable[Row],
    policy: Policy,
) -> PermanentError | None:
    """Why SCIM may not add ``user_ids`` to the group, or None. Unknown user ids are
    refused (RFC 7644 §3.5.2: invalidValue). Under "one group per user" (Splashtop teams;
    Okta Push Groups moves a user by adding before removing), a user already in another
    group is refused. ``other_memberships``: rows (user_id, group_id, user_name,
    display_name) of the users' memberships in other groups (read only under the policy)."""
    known = set(known_users)
    missing = [str(u) for u in user_ids if u not in known]
    if missing:
        return PermanentError(
            "invalid_value", f"member(s) not found in this tenant: {', '.join(missing[:10])}", field="members"
        )
    if not policy.one_group_per_user:
        return None
    rows = [r for r in other_memberships if r["group_id"] != group_id]
    kept: dict[uuid.UUID, set[uuid.UUID]] = {}
    for r in rows:
        kept.setdefault(r["user_id"], set()).add(r["group_id"])
    refused = {uid for uid, groups in kept.items() if one_group_refusals(groups, [group_id])[1]}
    clash = [r for r in rows if r["user_id"] in refused][:5]
    if not clash:
        return None
    who = ", ".join(f"{r['user_name']} (in {r['display_name']})" for r in clash)
    return PermanentError("policy", f"this tenant allows one group per user: {who}", field="members")


# --------------------------------------------------------------------------- JIT logins


@dataclass(frozen=True, slots=True)
class Connection:
    """An SSO connection, as the JIT rules need it."""

    id: uuid.UUID
    name: str
    verified_domains: tuple[str, ...] = ()
    groups_absent: str = "auto"
    groups_claim_seen: bool = False

    @classmethod
    def of(cls, row: Row) -> Connection:
        return cls(
            id=row["id"],
            name=row["name"],
            verified_domains=tuple(row["verified_domains"] or ()),
            groups_absent=row["groups_absent"],
            groups_claim_seen=bool(row["groups_claim_seen"]),
        )


@dataclass(frozen=True, slots=True)
class LoginState:
    """What a login's decision reads: the tenant's connections, the user linked to
    (connection, NameID), else the user the userName/email claim matches, and whether
    the connection holds another identity (NameID) of that matched user."""

    connections: tuple[Connection, ...]
    linked: Row | None = None
    matched: Row | None = None
    matched_linked_here: bool = False


@dataclass(frozen=True, slots=True)
class LoginDecision:
    """Who a login signs in as. ``user`` None with ``refused`` None: create ``new_user``.
    ``link``: write the (connection, NameID) link. ``claimed``: the groups the login's
    memberships follow (None: leave them). ``claim_seen``: remember that the connection
    sends a groups claim."""

    refused: PermanentError | None = None
    user: Row | None = None
    new_user: UserData | None = None
    link: bool = False
    claimed: tuple[str, ...] | None = None
    claim_seen: bool = False
    notes: tuple[str, ...] = ()


def decide_login(p: JitLogin, state: LoginState) -> LoginDecision:
    """A SAML login: the user linked to its identity, else the user its claim matches —
    adopted only where the connection is authoritative for it (domain.adoption_basis) —
    else a new user (JIT mode create/sync)."""
    notes = ["groups_overage"] if p.groups_overage else []
    this = next((c for c in state.connections if c.id == p.connection_id), None)
    if this is None:  # removed while the login was on its way
        return LoginDecision(
            refused=PermanentError(
                "policy", f"the SSO connection {p.connection_name!r} no longer exists", field="connection"
            )
        )
    names = [c.name for c in state.connections]
    row = state.linked if state.linked is not None else state.matched
    link = state.linked is None
    if row is not None and (refusal := sso_name_refusal(row["sso_name"], p.connection_name, names)):
        return LoginDecision(refused=PermanentError("policy", refusal, field="ssoName"))
    if row is not None and link:
        basis = adoption_basis(
            connection_name=p.connection_name,
            connection_names=names,
            verified_domains=this.verified_domains,
            linked_here=state.matched_linked_here,
            user_sso_name=row["sso_name"],
            user_email=row["email"],
            user_name=row["user_name"],
        )
        if basis is None:
            return LoginDecision(
                refused=PermanentError(
                    "not_linked",
                    f"this sign-in (NameID {p.name_id!r}) matches the existing user {row['user_name']!r}, but the "
                    f"connection {p.connection_name!r} is not authoritative for it (it did not create the user, the "
                    f"user's ssoName does not name it, the user's email domain is not verified for it, and the "
                    f"tenant has other SSO connections): an administrator must link the account",
                    field="name_id",
                )
            )
        notes.append(f"linked:{basis}")
    claimed = p.groups
    if p.groups is None and not p.groups_overage:
        claimed = groups_claim(None, this.groups_absent, this.groups_claim_seen)
    claim_seen = p.groups is not None and not this.groups_claim_seen
    if row is None:
        if p.mode == "off":
            return LoginDecision(
                refused=PermanentError(
                    "user_not_found",
                    f"no user {p.user_name!r} in this tenant and JIT is off for connection {p.connection_name!r}",
                )
            )
        return LoginDecision(
            new_user=new_jit_user(p),
            link=True,
            claimed=claimed,
            claim_seen=claim_seen,
            notes=(*notes, "created"),
        )
    if not row["active"]:
        return LoginDecision(refused=PermanentError("policy", f"user {row['user_name']!r} is deactivated"))
    return LoginDecision(user=row, link=link, claimed=claimed, claim_seen=claim_seen, notes=tuple(notes))


def new_jit_user(p: JitLogin) -> UserData:
    """The user a login creates: its claims, signing in through this connection."""
    return UserData(
        user_name=p.user_name,
        display_name=p.display_name,
        given_name=p.given_name,
        family_name=p.family_name,
        emails=({"value": p.email, "type": "work", "primary": True},) if p.email else (),  # type: ignore[arg-type]
        sso_name=p.connection_name,
        attributes={"custom": dict(p.custom)} if p.custom else {},
    )


def decide_login_update(row: Row, p: JitLogin, policy: Policy) -> Decision:
    """What a login changes on an existing user: nothing unless the connection's JIT mode
    is ``sync`` (off/create leave the user exactly as it is: Splashtop create-only); then
    the fields it owns (JIT_OWNED_FIELDS) that differ, except an email the tenant keeps
    (immutable userName covers email), which is a refusal beside a login that goes ahead."""
    if p.mode != "sync":
        return Decision()
    login = {
        "given_name": p.given_name,
        "family_name": p.family_name,
        "display_name": p.display_name,
        "email": p.email,
        "custom": p.custom,
    }
    updates = jit_updates(user_dict(row) | {"email": row["email"]}, login)
    refusals: tuple[PermanentError, ...] = ()
    if "emails" in updates:
        keep = {"user_name": row["user_name"], "email": row["email"]}
        if what := immutable_change(policy, keep, {**keep, "email": p.email}):
            # The login still signs in; the change the tenant forbids is not made, and says so.
            del updates["emails"]
            refusals = (
                PermanentError(
                    "mutability",
                    f"this tenant does not allow changing {what}: the identity provider sent {p.email!r} for "
                    f"{row['user_name']!r}, which keeps {row['email']!r}",
                    field=what,
                ),
            )
    if not updates:
        return Decision(refusals=refusals)
    before = user_dict(row)
    return Decision("update", updates, diff(before, {**before, **updates}, USER_FIELDS), refusals=refusals)


@dataclass(frozen=True, slots=True)
class GroupsDecision:
    """A login's JIT memberships: groups to join and leave (ids), and the refusal of
    joins that break "one group per user" (the login itself goes ahead). ``bump``: the
    groups whose version and lastModified move once their membership is written."""

    join: tuple[uuid.UUID, ...] = ()
    leave: tuple[uuid.UUID, ...] = ()
    refusals: tuple[PermanentError, ...] = ()
    bump: tuple[uuid.UUID, ...] = ()


def decide_login_groups(
    user_name: str,
    resolved: Mapping[str, uuid.UUID],
    current_jit: Iterable[uuid.UUID],
    policy: Policy,
    member_of: Mapping[uuid.UUID, set[str]] | None = None,
    made: Iterable[uuid.UUID] = (),
) -> GroupsDecision:
    """Make the user's JIT memberships equal the claim (``resolved``: claim → group id;
    ``current_jit``: the groups JIT made the user a member of, empty for a new user).
    Under "one group per user", ``member_of`` (every group of the user → the sources of
    its memberships) decides: a SCIM membership is kept whatever the claim says.

    A group's ETag covers its members (RFC 7644 §3.14), so every group joined or left
    gets a new version and lastModified, as a SCIM member PATCH gives it (``bump``) —
    except a group this login made (``made``): it is created with its member, as a SCIM
    POST with members is (version 1), and nobody saw it without."""
    claimed = set(resolved.values())
    current = list(current_jit)
    join = [gid for gid in dict.fromkeys(resolved.values()) if gid not in set(current)]
    leave = [gid for gid in current if gid not in claimed]
    refusals: tuple[PermanentError, ...] = ()
    if policy.one_group_per_user:
        member = member_of or {}
        kept = {gid for gid, sources in member.items() if gid not in leave or "scim" in sources}
        _, refused = one_group_refusals(kept, join)
        if refused:
            claim_of = {gid: claim for claim, gid in resolved.items()}
            join = [gid for gid in join if gid not in refused]
            refusals = (
                PermanentError(
                    "policy",
                    f"this tenant allows one group per user: {user_name!r} was not added to "
                    f"{', '.join(repr(claim_of[g]) for g in refused)} (the sign-in itself went ahead)",
                    field="groups",
                ),
            )
    fresh = set(made)
    bump = tuple(sorted({gid for gid in (*join, *leave) if gid not in fresh}))
    return GroupsDecision(tuple(join), tuple(leave), refusals, bump)
