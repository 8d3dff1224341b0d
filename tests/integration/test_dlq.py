import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

from provisio_lib.contract import Command, CreateUser, Source, UserData, decode_command, encode
from provisio_lib.outcomes import entry_outcomes
from provisio_lib.topology import DATA_FIELD
from tests.conftest import eventually, make_tenant

pytestmark = pytest.mark.integration


def cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


def lines(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def env(service_env):
    return {**os.environ, **service_env, "COLUMNS": "200"}


def create_user(tenant_id, user_name):
    return Command(
        tenant_id=tenant_id,
        source=Source(kind="scim", id="tok", label="entra-prod"),
        correlation_id=f"corr-{uuid.uuid4().hex[:6]}",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=user_name)),
    )


async def dead_letter(
    redis, topology, tenant_id, data: bytes | dict, error="boom: database refused", deliveries=5, audit=False
):
    """A DLQ entry as provisio_lib.delivery writes it: the provisioner's, or with ``audit``
    the auditor's (``data``: the entry's fields, e.g. ``__outcomes__``)."""
    p = topology.partition_of(tenant_id)
    if audit:
        source, dlq, group = topology.audit_stream(p), topology.audit_dead_letter_stream(p), "auditor"
    else:
        source, dlq, group = topology.command_stream(p), topology.dead_letter_stream(p), "provisioner"
    entry = await redis.xadd(
        dlq,
        {
            **(data if isinstance(data, dict) else {DATA_FIELD: data}),
            "error": error,
            "deliveries": str(deliveries),
            "failed_at": datetime.now(UTC).isoformat(),
            "stream": source,
            "entry_id": "1-0",
            "group": group,
        },
    )
    return f"{'audit:' if audit else ''}{p}:{entry.decode()}"


async def test_list_show_replay_drop(env, pool, redis, topology):
    acme = await make_tenant(pool, name="acme")
    other = await make_tenant(pool, name="other")
    c1, c2, c3 = (
        create_user(acme.id, "a1@acme.example"),
        create_user(acme.id, "a2@acme.example"),
        create_user(other.id, "o@x.example"),
    )
    id1 = await dead_letter(redis, topology, acme.id, encode(c1), error="deadlock detected", deliveries=5)
    id2 = await dead_letter(redis, topology, acme.id, encode(c2))
    id3 = await dead_letter(redis, topology, other.id, encode(c3))
    bad = await dead_letter(redis, topology, acme.id, b"{not json", error="undecodable")

    listed = cli("dlq", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["id"]: r for r in lines(listed.stdout)}
    assert set(rows) == {id1, id2, id3, bad}
    assert rows[id1]["tenant"] == "acme" and rows[id1]["event_id"] == str(c1.event_id)
    assert rows[id1]["error"] == "deadlock detected" and rows[id1]["deliveries"] == 5
    assert rows[id1]["type"] == "user.create"
    mine = lines(cli("dlq", "list", "--tenant", "acme", "--json", env=env).stdout)
    assert {r["id"] for r in mine} == {id1, id2}  # the undecodable one has no tenant to match
    table = cli("dlq", "list", env=env)
    assert table.returncode == 0 and id1 in table.stdout and "deadlock detected" in table.stdout

    shown = cli("dlq", "show", id1, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    one = json.loads(shown.stdout)
    assert one["command"]["event_id"] == str(c1.event_id) and one["deliveries"] == 5

    # Replay one: the same command (same event id, attempt + 1) is back on its stream.
    replayed = cli("dlq", "replay", id1, env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"replayed {id1} as ")
    stream = topology.command_stream_for(acme.id)
    commands = [decode_command(f[DATA_FIELD.encode()]) for _, f in await redis.xrange(stream)]
    assert [(c.event_id, c.attempt) for c in commands] == [(c1.event_id, 1)]
    assert commands[0].payload == c1.payload
    assert id1 not in {r["id"] for r in lines(cli("dlq", "list", "--json", env=env).stdout)}

    # --all --tenant: only that tenant's.
    many = cli("dlq", "replay", "--all", "--tenant", "acme", env=env)
    assert (many.returncode, many.stderr) == (0, ""), many.stderr
    assert many.stdout.startswith(f"replayed {id2} as ")
    assert {r["id"] for r in lines(cli("dlq", "list", "--json", env=env).stdout)} == {id3, bad}

    # --all: what cannot be replayed is reported (exit 1) and stays, the rest goes.
    rest = cli("dlq", "replay", "--all", env=env)
    assert rest.returncode == 1
    assert f"replayed {id3} as " in rest.stdout
    assert f"error: cannot replay {bad}: its data is not a valid command" in rest.stderr
    assert {r["id"] for r in lines(cli("dlq", "list", "--json", env=env).stdout)} == {bad}
    other_stream = [
        decode_command(f[DATA_FIELD.encode()]) for _, f in await redis.xrange(topology.command_stream_for(other.id))
    ]
    assert c3.event_id in {c.event_id for c in other_stream}

    assert cli("dlq", "drop", bad, env=env).returncode == 0
    again = cli("dlq", "drop", bad, env=env)
    assert (again.returncode, again.stderr.strip()) == (1, f"error: no dead letter {bad} (see `provisio dlq list`)")
    empty = cli("dlq", "list", env=env)
    assert empty.returncode == 0 and empty.stderr.strip() == "no dead letters"

    missing = cli("dlq", "show", "0:1-1", env=env)
    assert (missing.returncode, missing.stderr.strip()) == (1, "error: no dead letter 0:1-1 (see `provisio dlq list`)")
    malformed = cli("dlq", "show", "nope", env=env)
    assert malformed.returncode == 2 and "expected <partition>:<entry-id>" in malformed.stderr
    out_of_range = cli("dlq", "drop", "99:1-1", env=env)
    assert out_of_range.returncode == 2 and "partition 99 is not in 0..3" in out_of_range.stderr
    neither = cli("dlq", "replay", env=env)
    assert neither.returncode == 2 and neither.stderr.strip() == "error: give one dead-letter ID or --all"
    unknown = cli("dlq", "list", "--tenant", "nope", env=env)
    assert unknown.returncode == 1 and "unknown tenant 'nope'" in unknown.stderr


async def test_replay_is_applied_at_most_once(env, pool, redis, topology, provisioner):
    acme = await make_tenant(pool, name="acme")
    cmd = create_user(acme.id, "replayed@acme.example")
    # It was applied before it was dead-lettered (e.g. the worker died after commit):
    # a replay must not apply it again — and a second replay neither.
    await redis.xadd(topology.command_stream_for(acme.id), {DATA_FIELD: encode(cmd)})
    audit = topology.audit_stream_for(acme.id)

    async def outcomes():
        return [o for _, f in await redis.xrange(audit) for o in entry_outcomes(f)]

    await eventually(lambda: _n(outcomes, 1))
    for _ in range(2):
        did = await dead_letter(redis, topology, acme.id, encode(cmd))
        res = cli("dlq", "replay", did, env=env)
        assert res.returncode == 0, res.stderr
    seen = await eventually(lambda: _n(outcomes, 3))
    # Applied once; every later delivery answered from the inbox. Delivery is at least
    # once: now and then (also before this test's code changed) one replay is read twice,
    # and its second answer is one more redelivered outcome, never a second apply.
    assert {o.event_id for o in seen} == {cmd.event_id}, seen
    assert [o.redelivered for o in seen][:1] == [False] and all(o.redelivered for o in seen[1:]), seen
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM users WHERE tenant_id = $1 AND user_name = 'replayed@acme.example'", acme.id
            )
            == 1
        )


async def _n(get, n):
    got = await get()
    return got if len(got) >= n else None


async def test_audit_dead_letters_list_show_replay_drop(env, pool, redis, topology):
    """Audit entries the auditor could not record are visible to `provisio dlq` (--audit,
    ids audit:<p>:<entry>), go back to their audit stream on replay, and are recorded once."""
    from provisio_lib.outcomes import outcome_fields

    from .audit_support import make_outcome, running_auditor

    acme = await make_tenant(pool, name="acme")
    other = await make_tenant(pool, name="other")
    outcomes = [make_outcome(acme.id, user=f"a{i}@acme.example") for i in range(2)]
    good = await dead_letter(
        redis,
        topology,
        acme.id,
        outcome_fields([encode(o) for o in outcomes]),
        error="audit row refused by Postgres: value too long",
        audit=True,
    )
    bad = await dead_letter(
        redis,
        topology,
        other.id,
        {"__outcomes__": b'[{"not": "an outcome"}]'},
        error="undecodable outcome: 1 validation error",
        audit=True,
    )

    # The commands' list says there are audit dead letters too.
    plain = cli("dlq", "list", env=env)
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.splitlines() == [
        "no dead letters",
        "note: 2 audit dead letter(s) too: provisio dlq list --audit",
    ]

    rows = {r["id"]: r for r in lines(cli("dlq", "list", "--audit", "--json", env=env).stdout)}
    assert set(rows) == {good, bad}
    assert rows[good]["kind"] == "audit" and rows[good]["tenant"] == "acme" and rows[good]["outcomes"] == 2
    assert rows[good]["event_ids"] == [str(o.event_id) for o in outcomes] and rows[good]["type"] == "user.create"
    assert rows[good]["error"] == "audit row refused by Postgres: value too long" and rows[good]["deliveries"] == 5
    assert rows[bad]["tenant"] is None and rows[bad]["type"] is None
    assert {r["id"] for r in lines(cli("dlq", "list", "--audit", "--tenant", "acme", "--json", env=env).stdout)} == {
        good
    }
    table = cli("dlq", "list", "--audit", env=env)
    assert table.returncode == 0 and good in table.stdout and "Audit dead letters (2)" in table.stdout

    shown = json.loads(cli("dlq", "show", good, "--json", env=env).stdout)
    assert [o["event_id"] for o in shown["outcomes"]] == [str(o.event_id) for o in outcomes]
    readable = cli("dlq", "show", good, env=env)
    assert (
        readable.returncode == 0
        and "value too long" in readable.stdout
        and str(outcomes[1].event_id) in readable.stdout
    )

    # Not outcomes: refused, and it stays.
    refused = cli("dlq", "replay", bad, env=env)
    assert refused.returncode == 1 and f"cannot replay {bad}: its data is not valid outcomes" in refused.stderr
    # Valid: back on its audit stream as it was, and gone from the dead letters.
    replayed = cli("dlq", "replay", good, env=env)
    assert replayed.returncode == 0, replayed.stderr
    p = topology.partition_of(acme.id)
    assert replayed.stdout.startswith(f"replayed {good} as {p}:") and replayed.stdout.strip().endswith(
        "on the audit stream"
    )
    [(_, fields)] = await redis.xrange(topology.audit_stream(p))
    assert [o.event_id for o in entry_outcomes(fields)] == [o.event_id for o in outcomes]
    assert {r["id"] for r in lines(cli("dlq", "list", "--audit", "--json", env=env).stdout)} == {bad}

    # The auditor records them, once.
    async with running_auditor():

        async def recorded():
            async with pool.acquire() as conn:
                # The outcomes' rows (the replay itself is audited too, as source cli).
                n = await conn.fetchval(
                    "SELECT count(*) FROM audit_log WHERE tenant_id = $1 AND source_kind NOT IN ('cli', 'staff')",
                    acme.id,
                )
            return n == 2

        await eventually(recorded, timeout=15)

    assert cli("dlq", "drop", bad, env=env).returncode == 0
    again = cli("dlq", "drop", bad, env=env)
    assert (again.returncode, again.stderr.strip()) == (
        1,
        f"error: no dead letter {bad} (see `provisio dlq list --audit`)",
    )
    empty = cli("dlq", "list", "--audit", env=env)
    assert empty.returncode == 0 and empty.stderr.strip() == "no audit dead letters"
    nothing = cli("dlq", "replay", "--all", "--audit", env=env)
    assert nothing.returncode == 0 and nothing.stderr.strip() == "no audit dead letters to replay"
    lone = cli("dlq", "replay", "--audit", env=env)
    assert lone.returncode == 2
