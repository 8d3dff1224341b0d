"""The fast paths equal the careful path (services/provisioner/planner.py), on generated
batches: hypothesis draws sequences of SCIM commands — creates, replaces (PUT and the
PATCHes the gateway sends as versioned replaces), deletes, group creates, replaces and
member changes, duplicates in a batch and redeliveries, userNames that clash by letter
case, tenant policies on and off — and JIT logins among them, and each sequence is applied twice, on two databases
cloned from the same template: by a provisioner that takes the planner's paths and by
one forced onto the careful path. Both must leave the same rows (users, groups,
memberships, inbox, events, ids and timestamps aside where the database mints them) and
announce the same outcomes (ids a JIT login mints named by a placeholder)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisio_lib import db
from provisio_lib.contract import (
    ChangeGroupMembers,
    Command,
    CreateGroup,
    CreateUser,
    DeleteGroup,
    DeleteUser,
    GroupData,
    JitLogin,
    ReplaceGroup,
    ReplaceUser,
    Source,
    UserData,
    encode,
)
from provisio_lib.delivery import Delivery
from provisio_lib.outcomes import entry_outcomes
from provisio_lib.topology import DATA_FIELD, Topology
from provisioner.worker import Provisioner
from tests.conftest import with_database

pytestmark = pytest.mark.integration

# Users 0-3 and groups 0-2 exist (made by the first two batches, see ``materialise``); user
# 4 and group 3 may be made by a drawn create, or be missing.
USERS, GROUPS, SEEDED_USERS, SEEDED_GROUPS = 5, 4, 4, 3
DISPLAY = (None, "Ann", "Bob")
# Group claims of JIT logins: seeded groups by name in any letter case, and a new group.
CLAIMS = ("Group 0", "group 1", "GROUP 2", "New")
# How a command names its resource: its own name, the same in other letters (one name to
# SCIM, RFC 7643 §4.1.1 caseExact false), or the next one's (a clash).
NAMING = ("own",) * 8 + ("case", "next")
EMAIL = ("own",) * 6 + ("none", "new")
# Minted by the database or the clock: not part of what the paths decide.
VOLATILE = frozenset({"created_at", "updated_at", "completed_at", "occurred_at", "latency_ms", "applied_at"})

# mostly resources that exist: a command refused sends its whole batch to the careful path
user_ix = st.sampled_from((*range(SEEDED_USERS), *range(SEEDED_USERS), *range(USERS)))
group_ix = st.sampled_from((*range(SEEDED_GROUPS), *range(SEEDED_GROUPS), *range(GROUPS)))
members = st.lists(user_ix, max_size=3)
replace_user = st.tuples(
    st.just("replace_user"),
    user_ix,
    st.sampled_from(NAMING),
    st.sampled_from(EMAIL),
    st.sampled_from(DISPLAY),
    st.sampled_from((None,) * 6 + (1, 2)),  # If-Match / the PATCH's version
    st.sampled_from((True, True, True, False)),
)

op = st.one_of(
    # full replaces, the commonest command of a sync, and a burst of them (Entra's PATCHes
    # of many users: the one-transaction path writes them with one UPDATE)
    replace_user,
    replace_user,
    st.tuples(st.just("burst"), st.lists(replace_user, min_size=2, max_size=4, unique_by=lambda o: o[1])),
    st.tuples(st.just("burst"), st.lists(replace_user, min_size=2, max_size=4, unique_by=lambda o: o[1])),
    st.tuples(st.just("members"), group_ix, members, members),
    st.tuples(st.just("members"), group_ix, members, members),
    # mostly new ones; an existing id is a clash
    st.tuples(st.just("create_user"), st.sampled_from((4, 4, 4, 0)), st.sampled_from(NAMING), st.sampled_from(EMAIL)),
    st.tuples(st.just("delete_user"), user_ix),
    st.tuples(st.just("create_group"), st.sampled_from((3, 3, 3, 0)), st.sampled_from(NAMING), members),
    st.tuples(st.just("replace_group"), group_ix, st.sampled_from(NAMING), st.none() | members),
    st.tuples(st.just("delete_group"), group_ix),
    # a SAML login of a user (sync: its names and JIT groups follow the claims; create:
    # an existing user is left alone); a claim naming no group makes one
    st.tuples(
        st.just("jit"),
        user_ix,
        st.sampled_from(("sync", "sync", "create")),
        st.sampled_from((None, "Zed")),
        st.none() | st.lists(st.sampled_from(CLAIMS), max_size=2, unique=True),
    ),
    # the k-th command drawn before, sent again (same event id): a redelivery, or a
    # duplicate when it lands in the same batch
    st.tuples(st.just("again"), st.integers(0, 30)),
)
# Each command with the position its stream accepted it at (ms offset): commands reach the
# provisioner out of that order when a worker claims another's pending entries, and a
# replace accepted before the row's last change is stale.
batches = st.lists(st.lists(st.tuples(op, st.integers(10, 50)), min_size=1, max_size=5), min_size=1, max_size=5)
policies = st.fixed_dictionaries(
    {
        "deprovision": st.sampled_from(("delete", "deactivate")),
        "one_group_per_user": st.booleans(),
        "immutable_user_name": st.booleans(),
    }
)

SCIM = Source(kind="scim", id="tok", label="entra")


def connection_id(tenant_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(tenant_id, "connection")


async def add_tenant(pool: asyncpg.Pool, tenant_id: uuid.UUID, policy: dict[str, Any] | None = None) -> None:
    """The tenant and its one SSO connection (JIT logins name it)."""
    policy = policy or {"deprovision": "delete", "one_group_per_user": False, "immutable_user_name": False}
    await pool.execute(
        """INSERT INTO tenants (id, name, deprovision, one_group_per_user, immutable_user_name)
           VALUES ($1, $2, $3, $4, $5)""",
        tenant_id,
        f"t-{tenant_id.hex[:8]}",
        policy["deprovision"],
        policy["one_group_per_user"],
        policy["immutable_user_name"],
    )
    await pool.execute(
        """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata)
           VALUES ($1, $2, 'okta', 'okta', 'https://idp.test/', '<md/>')""",
        connection_id(tenant_id),
        tenant_id,
    )


async def minted(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> dict[str, str]:
    """Placeholders for the ids a JIT login minted (random, so different in each
    database): a user by its userName, a group by its displayName (unique per tenant)."""
    known_users = {str(uuid.uuid5(tenant_id, f"user-{i}")) for i in range(USERS)}
    known_groups = {str(uuid.uuid5(tenant_id, f"group-{g}")) for g in range(GROUPS)}
    names: dict[str, str] = {}
    for r in await conn.fetch("SELECT id, user_name FROM users WHERE tenant_id = $1", tenant_id):
        if str(r["id"]) not in known_users:
            names[str(r["id"])] = f"jit-user:{r['user_name'].lower()}"
    for r in await conn.fetch("SELECT id, display_name FROM groups WHERE tenant_id = $1", tenant_id):
        if str(r["id"]) not in known_groups:
            names[str(r["id"])] = f"jit-group:{r['display_name'].lower()}"
    return names


def renamed(value: Any, names: dict[str, str]) -> Any:
    """``value`` with each id in ``names`` replaced."""
    if isinstance(value, str | uuid.UUID):
        return names.get(str(value), value)
    if isinstance(value, dict):
        return {k: renamed(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [renamed(v, names) for v in value]
    return value


async def comparable(conn: asyncpg.Connection, tenant_id: uuid.UUID, announced: list[Any]) -> tuple[Any, Any]:
    """The announced outcomes and the rows, minted ids replaced (rows ordered by id are
    sorted again)."""
    names = await minted(conn, tenant_id)
    state = renamed(await rows(conn, tenant_id), names)
    for table in ("users", "groups", "memberships"):
        state[table].sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return renamed(announced, names), state


def materialise(tenant_id: uuid.UUID, drawn: list[list[tuple[Any, int]]]) -> list[list[tuple[Command, str]]]:
    """Commands from the drawn operations; ids derived from the tenant's (each example its
    own tenant in the same two databases, so ids never clash across examples), each with
    its stream entry id."""

    def uid(i: int) -> uuid.UUID:
        return uuid.uuid5(tenant_id, f"user-{i}")

    def gid(i: int) -> uuid.UUID:
        return uuid.uuid5(tenant_id, f"group-{i}")

    def user_name(i: int, naming: str) -> str:
        return {"own": f"user{i}@acme.test", "case": f"USER{i}@Acme.test", "next": f"user{(i + 1) % USERS}@acme.test"}[
            naming
        ]

    def emails(i: int, email: str) -> Any:
        value = {"own": f"user{i}@acme.test", "new": f"new{i}@acme.test", "none": None}[email]
        return ({"value": value, "primary": True},) if value else ()

    def group_name(g: int, naming: str) -> str:
        return {"own": f"Group {g}", "case": f"GROUP {g}", "next": f"Group {(g + 1) % GROUPS}"}[naming]

    seed_users = [(("create_user", i, "own", "own"), i) for i in range(SEEDED_USERS)]
    # one member each, so that "one group per user" holds at the start
    seed_groups = [(("create_group", g, "own", [g]), SEEDED_USERS + g) for g in range(SEEDED_GROUPS)]
    sent: list[Command] = []
    out: list[list[tuple[Command, str]]] = []
    n = 0
    for drawn_batch in [seed_users, seed_groups, *drawn]:
        batch = [(o, offset) for b, offset in drawn_batch for o in (b[1] if b[0] == "burst" else [b])]
        cmds: list[tuple[Command, str]] = []
        for o, offset in batch:
            n += 1
            entry_id = f"{1_700_000_000_000 + offset}-{n}"
            kind = o[0]
            payload: Any
            if kind == "again":
                if not sent:
                    continue
                cmds.append((sent[o[1] % len(sent)], entry_id))
                continue
            if kind == "create_user":
                _, u, naming, email = o
                payload = CreateUser(
                    user_id=uid(u), data=UserData(user_name=user_name(u, naming), emails=emails(u, email))
                )
            elif kind == "replace_user":
                _, u, naming, email, display, version, active = o
                data = UserData(
                    user_name=user_name(u, naming), emails=emails(u, email), display_name=display, active=active
                )
                payload = ReplaceUser(user_id=uid(u), data=data, expected_version=version)
            elif kind == "delete_user":
                payload = DeleteUser(user_id=uid(o[1]))
            elif kind == "create_group":
                _, g, naming, ms = o
                data = GroupData(display_name=group_name(g, naming), members=tuple(uid(m) for m in ms))
                payload = CreateGroup(group_id=gid(g), data=data)
            elif kind == "replace_group":
                _, g, naming, ms = o
                data = GroupData(
                    display_name=group_name(g, naming), members=None if ms is None else tuple(uid(m) for m in ms)
                )
                payload = ReplaceGroup(group_id=gid(g), data=data)
            elif kind == "jit":
                _, u, mode, given, claims = o
                payload = JitLogin(
                    connection_id=connection_id(tenant_id),
                    connection_name="okta",
                    mode=mode,
                    name_id=f"n{u}",
                    user_name=user_name(u, "own"),
                    given_name=given,
                    groups=None if claims is None else tuple(claims),
                )
            elif kind == "members":
                _, g, add, remove = o
                payload = ChangeGroupMembers(
                    group_id=gid(g), add=tuple(uid(m) for m in add), remove=tuple(uid(m) for m in remove)
                )
            else:
                payload = DeleteGroup(group_id=gid(o[1]))
            k = len(sent)
            cmd = Command(
                event_id=uuid.uuid5(tenant_id, f"event-{k}"),
                tenant_id=tenant_id,
                source=SCIM,
                correlation_id=f"c-{k}",
                payload=payload,
            )
            sent.append(cmd)
            cmds.append((cmd, entry_id))
        if cmds:
            out.append(cmds)
    return out


class _Announced:
    """A stand-in for the Redis pipeline the worker announces a batch on: keeps the
    audit stream's outcomes."""

    def __init__(self) -> None:
        self.outcomes: list[Any] = []

    def xadd(self, stream: str, fields: dict[Any, Any], **_: Any) -> None:
        self.outcomes.extend(entry_outcomes(fields))

    def expire(self, *_: Any) -> None:
        pass

    def publish(self, *_: Any) -> None:
        pass


def stable(value: Any) -> Any:
    """JSON-ish ``value`` without what the database or the clock minted."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return stable(json.loads(value))
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list | tuple):
        return [stable(v) for v in value]
    return value


async def apply(worker: Provisioner, tenant_id: uuid.UUID, sequence: list[list[tuple[Command, str]]]) -> list[Any]:
    announced: list[Any] = []
    for batch in sequence:
        deliveries = [
            Delivery(f"cmds:{tenant_id}", entry_id, {DATA_FIELD.encode(): encode(cmd)}) for cmd, entry_id in batch
        ]
        verdicts = await worker.handle(deliveries)
        assert not verdicts.retry and not verdicts.dead, (verdicts.retry, verdicts.dead)
        pipe = _Announced()
        assert verdicts.publish is not None
        verdicts.publish(pipe)
        announced.append([stable(o.model_dump(mode="json")) for o in pipe.outcomes])
    return announced


async def rows(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> dict[str, Any]:
    queries = {
        "users": """SELECT id, user_name, external_id, active, display_name, given_name, family_name, email,
                           emails, sso_name, attributes, version, created_by, seq_ms, seq_n
                    FROM users WHERE tenant_id = $1 ORDER BY id""",
        "groups": """SELECT id, display_name, external_id, attributes, version, created_by, seq_ms, seq_n
                     FROM groups WHERE tenant_id = $1 ORDER BY id""",
        "memberships": "SELECT group_id, user_id, source FROM memberships WHERE tenant_id = $1 ORDER BY 1, 2, 3",
        "inbox": "SELECT event_id, type, outcome FROM inbox WHERE tenant_id = $1 ORDER BY event_id",
        "events": """SELECT type, resource_type, resource_id, command_id, source, correlation_id, data, changes
                     FROM events WHERE tenant_id = $1 ORDER BY id""",
    }
    return {name: stable([dict(r) for r in await conn.fetch(sql, tenant_id)]) for name, sql in queries.items()}


@pytest.fixture
async def two_pools(database_url: str, template_database: str, _servers: dict[str, str]) -> AsyncIterator[Any]:
    """The test's database (fast paths) and a second clone of the template (careful)."""
    admin = await asyncpg.connect(_servers["postgres"])
    name = f"provisio_t_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    fast = await db.create_pool(database_url, min_size=1, max_size=2)
    careful = await db.create_pool(with_database(_servers["postgres"], name), min_size=1, max_size=2)
    try:
        yield fast, careful
    finally:
        await fast.close()
        await careful.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=batches, policy=policies)
async def test_fast_paths_equal_the_careful_path(
    two_pools: Any, drawn: list[list[tuple[Any, int]]], policy: dict[str, Any]
) -> None:
    fast_pool, careful_pool = two_pools
    topology = Topology(prefix="planner", partitions=1)
    fast = Provisioner(topology, pool=fast_pool)
    careful = Provisioner(topology, pool=careful_pool, fast_paths=False)
    tenant_id = uuid.uuid4()
    for p in (fast_pool, careful_pool):
        await add_tenant(p, tenant_id, policy)
    sequence = materialise(tenant_id, drawn)

    fast_out = await apply(fast, tenant_id, sequence)
    careful_out = await apply(careful, tenant_id, sequence)
    async with fast_pool.acquire() as a, careful_pool.acquire() as b:
        fast_out, fast_rows = await comparable(a, tenant_id, fast_out)
        careful_out, careful_rows = await comparable(b, tenant_id, careful_out)
    assert fast_out == careful_out
    assert fast_rows == careful_rows
    # the careful provisioner never took a fast path; the other did whenever it could
    assert careful.paths["one_statement"] == careful.paths["one_transaction"] == 0
    assert fast.paths["careful"] == sum(fast.fallbacks.values())


async def test_the_fast_paths_are_taken_and_a_fallback_is_counted(two_pools: Any) -> None:
    """The property above would hold trivially if every batch fell back: here a plain
    batch takes its fast path, and a clash falls back, counted with its reason."""
    from provisio_lib.observability import REGISTRY

    fast_pool, _ = two_pools
    worker = Provisioner(Topology(prefix="planner", partitions=1), pool=fast_pool)
    tenant_id = uuid.uuid4()
    await fast_pool.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", tenant_id, f"t-{tenant_id.hex[:8]}")

    def fallbacks(reason: str) -> float:
        return REGISTRY.get_sample_value("provisio_provisioner_fast_path_fallbacks_total", {"reason": reason}) or 0.0

    before = fallbacks("unique_violation")
    seed_users, seed_groups = materialise(tenant_id, [])
    await apply(worker, tenant_id, [seed_users, seed_groups])
    assert worker.paths == {"one_statement": 1, "one_transaction": 1, "careful": 0}
    # new event ids for two of the creates: their userNames are taken now
    clash = [(c.model_copy(update={"event_id": uuid.uuid4()}), e) for c, e in seed_users[:2]]
    [out] = await apply(worker, tenant_id, [clash])
    assert [o["error"]["code"] for o in out] == ["uniqueness", "uniqueness"]
    assert worker.paths["careful"] == 1 and worker.fallbacks == {"unique_violation": 1}
    assert fallbacks("unique_violation") == before + 1


async def test_a_jit_login_in_a_fast_batch_is_seen_by_the_commands_after_it(two_pools: Any) -> None:
    """A JIT login changes a user and groups in the middle of a batch: the commands after
    it in the one-transaction path see its changes as the careful path does — the user's
    new version (a replace made against the old one is refused) and the groups' new
    versions (RFC 7644 §3.14: a member change is a new group version)."""
    fast_pool, careful_pool = two_pools
    topology = Topology(prefix="planner", partitions=1)
    fast = Provisioner(topology, pool=fast_pool)
    careful = Provisioner(topology, pool=careful_pool, fast_paths=False)
    tenant_id = uuid.uuid4()
    for p in (fast_pool, careful_pool):
        await add_tenant(p, tenant_id)
    seed_users, seed_groups = materialise(tenant_id, [])
    user0, user2 = seed_users[0][0].payload, seed_users[2][0].payload
    group1 = seed_groups[1][0].payload
    assert isinstance(user0, CreateUser) and isinstance(user2, CreateUser) and isinstance(group1, CreateGroup)

    def command(payload: Any) -> Command:
        return Command(tenant_id=tenant_id, source=SCIM, correlation_id="c", payload=payload)

    login = JitLogin(
        connection_id=connection_id(tenant_id),
        connection_name="okta",
        mode="sync",
        name_id="n0",
        user_name=user0.data.user_name,
        given_name="Zed",
        groups=("group 1", "New"),
    )
    batch = [
        (command(ChangeGroupMembers(group_id=group1.group_id, add=(user2.user_id,))), "1700000000100-1"),
        (command(login), "1700000000100-2"),
        (command(ReplaceUser(user_id=user0.user_id, data=user0.data, expected_version=1)), "1700000000100-3"),
        (command(ChangeGroupMembers(group_id=group1.group_id, remove=(user2.user_id,))), "1700000000100-4"),
    ]
    outs, states = [], []
    for worker, pool in ((fast, fast_pool), (careful, careful_pool)):
        announced = await apply(worker, tenant_id, [seed_users, seed_groups, batch])
        async with pool.acquire() as conn:
            out, state = await comparable(conn, tenant_id, announced)
        outs.append(out)
        states.append(state)
    assert outs[0] == outs[1]
    assert states[0] == states[1]
    jit, stale, last = outs[0][2][1], outs[0][2][2], outs[0][2][3]
    assert jit["result"] == "applied" and jit["resource"]["version"] == 2
    assert stale["result"] == "failed" and stale["error"]["code"] == "version_mismatch"
    # Group 1: 1 (made) → 2 (SCIM add) → 3 (the login joins) → 4 (SCIM remove).
    assert last["resource"]["version"] == 4
    groups = {g["display_name"]: g for g in states[0]["groups"]}
    assert groups["New"]["version"] == 1, "made with its member, as a SCIM POST with members"
    assert groups["Group 1"]["version"] == 4 and groups["Group 0"]["version"] == 1
    assert fast.fallbacks == {"refused:version_mismatch": 1}
