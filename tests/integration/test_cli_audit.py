import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from auditor.records import audit_row
from auditor.store import write_batch
from provisio_lib.contract import Source
from tests.conftest import make_tenant

from .audit_support import make_outcome, publish

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


async def store(pool, *outcomes):
    async with pool.acquire() as conn:
        await write_batch(conn, [audit_row(o) for o in outcomes], 60)


async def test_search_filters(env, pool):
    acme = await make_tenant(pool, name="acme")
    other = await make_tenant(pool, name="other")
    now = datetime.now(UTC)
    okta = Source(kind="saml", id=str(uuid.uuid4()), label="okta-sso")
    old = make_outcome(acme.id, user="Alice@acme.example", correlation_id="c-old")
    old = old.model_copy(update={"completed_at": now - timedelta(hours=3)})
    await store(
        pool,
        old,
        make_outcome(acme.id, user="alice@acme.example", correlation_id="c-a1"),
        make_outcome(acme.id, user="alice@acme.example", result="failed", code="policy", correlation_id="c-a2"),
        make_outcome(acme.id, user="bob@acme.example", op="jit.login", source=okta, correlation_id="c-b1"),
        make_outcome(other.id, user="alice@acme.example", correlation_id="c-o1"),
    )

    def ids(*args):
        res = cli("audit", "search", "--json", *args, env=env)
        assert res.returncode == 0, res.stderr
        return sorted(r["correlation_id"] for r in lines(res.stdout))

    assert ids("--tenant", "acme") == ["c-a1", "c-a2", "c-b1", "c-old"]
    assert ids("--tenant", "acme", "--user", "ALICE@acme.example") == ["c-a1", "c-a2", "c-old"]
    assert ids("--user", "alice@acme.example") == ["c-a1", "c-a2", "c-o1", "c-old"]
    assert ids("--tenant", "acme", "--failed") == ["c-a2"]
    assert ids("--connection", "okta-sso") == ["c-b1"]
    assert ids("--connection", okta.id) == ["c-b1"]
    assert ids("--correlation-id", "c-o1") == ["c-o1"]
    assert ids("--tenant", "acme", "--since", "1h") == ["c-a1", "c-a2", "c-b1"]
    assert ids("--tenant", str(acme.id), "--since", (now - timedelta(hours=4)).isoformat()) == [
        "c-a1",
        "c-a2",
        "c-b1",
        "c-old",
    ]
    assert len(ids("--tenant", "acme", "--limit", "2")) == 2

    failed = lines(cli("audit", "search", "--json", "--failed", env=env).stdout)[0]
    assert failed["tenant"] == "acme" and failed["error_code"] == "policy" and failed["operation"] == "user.create"

    table = cli("audit", "search", "--tenant", "acme", "--failed", env=env)
    assert table.returncode == 0 and "c-a2" in table.stdout and "policy" in table.stdout

    # One clear line and the right exit code.
    none = cli("audit", "search", "--tenant", "acme", "--correlation-id", "nope", env=env)
    assert (none.returncode, none.stderr.strip()) == (1, "error: no audit records match these filters")
    unknown = cli("audit", "search", "--tenant", "nope", env=env)
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "error: unknown tenant 'nope' (see `provisio tenant list`)",
    )
    bad = cli("audit", "search", "--since", "yesterday-ish", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad time expression 'yesterday-ish'")
    assert len(bad.stderr.strip().splitlines()) == 1


async def test_user_history_and_state(env, pool):
    acme = await make_tenant(pool, name="acme")
    uid, gid = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO users (id, tenant_id, user_name, display_name, created_by) VALUES ($1, $2, 'alice@acme.example', 'Alice', 'scim')",
            uid,
            acme.id,
        )
        await conn.execute(
            "INSERT INTO groups (id, tenant_id, display_name) VALUES ($1, $2, 'Engineering')", gid, acme.id
        )
        await conn.execute(
            "INSERT INTO memberships (tenant_id, group_id, user_id, source) VALUES ($1, $2, $3, 'scim')",
            acme.id,
            gid,
            uid,
        )
    now = datetime.now(UTC)
    saml = Source(kind="saml", id="c1", label="okta-sso")
    events = [
        make_outcome(acme.id, user="alice@acme.example", resource_id=uid, correlation_id="h1"),
        make_outcome(
            acme.id, user="alice@acme.example", op="jit.login", source=saml, resource_id=uid, correlation_id="h2"
        ),
        # An old name of the same user (renamed later): found by id.
        make_outcome(acme.id, user="alice.old@acme.example", op="user.replace", resource_id=uid, correlation_id="h0"),
        make_outcome(acme.id, user="bob@acme.example", correlation_id="other"),
    ]
    events = [e.model_copy(update={"completed_at": now - timedelta(minutes=10 - i)}) for i, e in enumerate(events)]
    events[2] = events[2].model_copy(update={"completed_at": now - timedelta(hours=1)})
    await store(pool, *events)

    res = cli("audit", "user", "acme", "ALICE@acme.example", "--json", env=env)
    assert res.returncode == 0, res.stderr
    out = lines(res.stdout)
    assert [r["correlation_id"] for r in out if r["kind"] == "event"] == ["h0", "h1", "h2"]  # oldest first
    state = out[-1]
    assert state["kind"] == "state" and state["user"]["display_name"] == "Alice"
    assert [g["display_name"] for g in state["groups"]] == ["Engineering"]

    table = cli("audit", "user", "acme", "alice@acme.example", env=env)
    assert table.returncode == 0 and "Engineering" in table.stdout and "saml:okta-sso" in table.stdout

    missing = cli("audit", "user", "acme", "nobody@acme.example", env=env)
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == "error: no user 'nobody@acme.example' in tenant 'acme', and no audit records for that name"
    )


async def test_tail_live_with_filters_and_ctrl_c(env, pool, redis, topology):
    acme = await make_tenant(pool, name="acme")
    other = await make_tenant(pool, name="other")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisio_cli",
        "audit",
        "tail",
        "--tenant",
        "acme",
        "--failed",
        "--json",
        "--count",
        "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Tail reads only what arrives after it starts: keep publishing until it has seen two.
    published = 0

    async def feed():
        nonlocal published
        while True:
            await publish(
                redis,
                topology,
                make_outcome(acme.id, correlation_id=f"ok-{published}"),
                make_outcome(acme.id, result="failed", code="policy", correlation_id=f"fail-{published}"),
                make_outcome(other.id, result="failed", code="policy", correlation_id=f"other-{published}"),
            )
            published += 1
            await asyncio.sleep(0.2)

    feeder = asyncio.create_task(feed())
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        stdout, stderr = await proc.communicate()
        raise AssertionError(f"tail did not finish: {stdout!r} {stderr!r}") from None
    finally:
        feeder.cancel()
    assert proc.returncode == 0, stderr.decode()
    got = lines(stdout.decode())
    assert len(got) == 2
    assert all(
        r["tenant"] == "acme" and r["result"] == "failed" and r["correlation_id"].startswith("fail-") for r in got
    )

    # Ctrl-C ends a tail with exit code 0 and no traceback.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "provisio_cli",
        "audit",
        "tail",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr


async def test_tenant_notify(env, pool):
    await make_tenant(pool, name="acme")
    shown = cli("tenant", "notify", "acme", env=env)
    assert shown.returncode == 0 and "no notification addresses" in shown.stdout
    res = cli("tenant", "notify", "acme", "--email", "a@b.example", "--email", "c@d.example", env=env)
    assert res.returncode == 0, res.stderr
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT notify_emails FROM tenants WHERE name = 'acme'") == [
            "a@b.example",
            "c@d.example",
        ]
    assert cli("tenant", "notify", "acme", env=env).stdout.strip() == "a@b.example, c@d.example"
    bad = cli("tenant", "notify", "acme", "--email", "not-an-address", env=env)
    assert (bad.returncode, bad.stderr.strip()) == (2, "error: not an email address: 'not-an-address'")
    assert cli("tenant", "notify", "acme", "--clear", env=env).returncode == 0
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT notify_emails FROM tenants WHERE name = 'acme'") == []
    unknown = cli("tenant", "notify", "nope", "--email", "a@b.example", env=env)
    assert unknown.returncode == 1 and "unknown tenant 'nope'" in unknown.stderr
