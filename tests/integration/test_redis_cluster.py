"""The stream topology on a real 3-node Redis Cluster.

The cluster is started from this machine's ``redis-server`` binary (cluster mode is a
config flag) on free loopback ports in a temporary folder, and assembled with
``redis-cli --cluster create``. Provisio reaches it through a ``redis+cluster://`` URL,
as an operator would configure it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from provisio_lib.contract import Command, CreateUser, Outcome, Source, UserData, decode_command
from provisio_lib.observability import StreamStats, redis_check, render_metrics, run_checks
from provisio_lib.outcomes import OutcomeWaiter, publish_command, publish_reply
from provisio_lib.redis_client import connect_redis
from provisio_lib.topology import DATA_FIELD, PROVISIONER_GROUP, Topology, ensure_groups

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _cli(port: int, *args: str) -> str:
    return subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    if not REDIS_SERVER or not REDIS_CLI:
        pytest.skip("redis-server / redis-cli not installed (Debian package redis-server)")
    base = Path(tmp_path_factory.mktemp("redis-cluster"))
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(3):
            port = _free_cluster_port()
            node = base / str(port)
            node.mkdir()
            procs.append(
                subprocess.Popen(
                    [
                        REDIS_SERVER,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--dir",
                        str(node),
                        "--appendonly",
                        "no",
                        "--save",
                        "",
                        "--daemonize",
                        "no",
                        "--logfile",
                        str(node / "log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ports.append(port)
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                try:
                    if _cli(port, "PING").strip() == "PONG":
                        break
                except subprocess.CalledProcessError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node {port} did not start: {(base / str(port) / 'log').read_text()}")
                time.sleep(0.05)
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in _cli(p, "CLUSTER", "INFO") for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def cluster_url(cluster: list[int]) -> str:
    # A seed node is enough: redis-py discovers the others from CLUSTER SLOTS.
    return f"redis+cluster://127.0.0.1:{cluster[0]}"


@pytest.fixture
async def rc(cluster_url: str) -> AsyncIterator[Any]:
    client = connect_redis(cluster_url)
    await client.initialize()
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def running_auditor() -> AsyncIterator[Any]:
    """The auditor app in process, on the environment's database, Redis and prefix."""
    from faststream import TestApp

    from auditor.app import create_app
    from auditor.settings import AuditorSettings
    from provisio_lib.settings import load_settings

    app = create_app(load_settings(AuditorSettings, health_port=0, claim_idle_ms=1000))
    # FastStream's TestApp runs the lifespan and starts the (real) broker, then stops
    # both; the app's on_shutdown marks the consumer as stopping first.
    async with TestApp(app):
        yield app


def _command(tenant_id: uuid.UUID, **kw: Any) -> Command:
    return Command(
        tenant_id=tenant_id,
        source=Source(kind="cli", id="t", label="t"),
        correlation_id="corr-1",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=f"{uuid.uuid4().hex[:8]}@x.test")),
        **kw,
    )


def _tenant_in_partition(topo: Topology, partition: int) -> uuid.UUID:
    while True:
        t = uuid.uuid4()
        if topo.partition_of(t) == partition:
            return t


async def test_cluster_has_three_masters(rc):
    nodes = rc.get_primaries()
    assert len(nodes) == 3
    assert await rc.cluster_info() is not None


async def test_each_partition_lives_on_one_node_and_partitions_spread(rc):
    # The default partition count: what an operator gets without tuning.
    topo = Topology(prefix="provisio", partitions=8)
    owner_of_partition = {}
    for p in range(topo.partitions):
        keys = [topo.command_stream(p), topo.audit_stream(p), topo.dead_letter_stream(p)]
        slots = {rc.keyslot(k) for k in keys}
        assert len(slots) == 1, f"partition {p} streams hash to several slots: {keys}"
        # Cross-check with the server's own hashing.
        assert await rc.cluster_keyslot(keys[0]) == slots.pop()
        owner_of_partition[p] = rc.get_node_from_key(keys[0]).name
    assert len(set(owner_of_partition.values())) == 3, owner_of_partition


async def test_groups_publish_read_ack_through_the_cluster(rc):
    topo = Topology(prefix=f"t{uuid.uuid4().hex[:8]}", partitions=8, maxlen=1000)
    await ensure_groups(rc, topo)
    await ensure_groups(rc, topo)  # idempotent (BUSYGROUP from the owning node)
    # One command per partition: the writes really go to all three nodes.
    sent = {}
    for p in range(topo.partitions):
        cmd = _command(_tenant_in_partition(topo, p))
        await publish_command(rc, topo, cmd)
        sent[topo.command_stream(p)] = cmd
    nodes_written = set()
    for stream, cmd in sent.items():
        resp = await rc.xreadgroup(PROVISIONER_GROUP, "worker-1", {stream: ">"}, count=10)
        [(name, entries)] = resp
        assert name.decode() == stream
        [(entry_id, fields)] = entries
        assert decode_command(fields[DATA_FIELD.encode()]) == cmd
        assert await rc.xack(stream, PROVISIONER_GROUP, entry_id) == 1
        pending = await rc.xpending(stream, PROVISIONER_GROUP)
        assert pending["pending"] == 0
        nodes_written.add(rc.get_node_from_key(stream).name)
    assert len(nodes_written) == 3

    # Stream stats (the /metrics series KEDA-style scaling reads) work through the cluster.
    text = (await render_metrics(StreamStats.for_topology(rc, topo))).decode()
    for stream in sent:
        assert f'provisio_stream_length{{stream="{stream}"}} 1.0' in text
        assert f'provisio_stream_group_lag{{group="provisioner",stream="{stream}"}} 0.0' in text
    assert "provisio_stream_stats_up 1.0" in text
    assert await run_checks({"redis": redis_check(rc)}) == {"redis": "ok"}


async def test_outcome_waiter_round_trip_through_the_cluster(rc):
    topo = Topology(prefix=f"t{uuid.uuid4().hex[:8]}", partitions=8, maxlen=1000)
    await ensure_groups(rc, topo)
    waiter = OutcomeWaiter(rc, topo)
    await waiter.start()
    worker: asyncio.Task[None] | None = None

    async def fake_provisioner(n: int) -> None:
        """Stands in for the provisioner: read each command, reply with an Outcome."""
        done = 0
        while done < n:
            streams = {s: ">" for s in topo.command_streams()}
            # XREADGROUP over several streams must stay on one node in a cluster: read
            # each partition on its own, as the provisioner's subscribers do.
            for stream in streams:
                resp = await rc.xreadgroup(PROVISIONER_GROUP, "fake", {stream: ">"}, count=10, block=10)
                for _name, entries in resp or ():
                    for entry_id, fields in entries:
                        cmd = decode_command(fields[DATA_FIELD.encode()])
                        outcome = Outcome(
                            event_id=cmd.event_id,
                            command_type=cmd.type,
                            tenant_id=cmd.tenant_id,
                            source=cmd.source,
                            correlation_id=cmd.correlation_id,
                            occurred_at=cmd.occurred_at,
                            result="applied",
                            resource_type="User",
                            resource_id=cmd.payload.user_id,
                        )
                        assert cmd.reply_to == waiter.reply_to()
                        await publish_reply(rc, topo, outcome, cmd.reply_to)
                        await rc.xack(stream, PROVISIONER_GROUP, entry_id)
                        done += 1

    try:
        commands = [_command(_tenant_in_partition(topo, p % topo.partitions)) for p in range(12)]
        worker = asyncio.create_task(fake_provisioner(len(commands)))
        outcomes = await asyncio.wait_for(asyncio.gather(*(waiter.submit(c, timeout=10) for c in commands)), 20)
        await asyncio.wait_for(worker, 5)
    finally:
        await waiter.stop()
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(BaseException):
                await worker
    assert [o.event_id for o in outcomes] == [c.event_id for c in commands]
    assert all(o.result == "applied" for o in outcomes)
    # The reply stream has its own hash tag and expires when the gateway is gone.
    assert not await rc.exists(waiter.reply_to())


async def test_pipeline_on_the_cluster(cluster_url, database_url, pool, monkeypatch):
    """A CreateUser per partition -> the real provisioner (FastStream RedisClusterBroker)
    -> committed in Postgres -> Outcome back to the waiting gateway and, through the
    audit streams, to the real auditor's audit_log; a poison entry ends in its
    partition's dead-letter stream (MULTI within one hash tag)."""
    from tests.conftest import eventually, make_tenant, running_provisioner

    prefix = f"t{uuid.uuid4().hex[:8]}"
    for key, value in {
        "PROVISIO_DATABASE_URL": database_url,
        "PROVISIO_REDIS_URL": cluster_url,
        "PROVISIO_REDIS_PREFIX": prefix,
        "PROVISIO_PARTITIONS": "8",
        "PROVISIO_LOG_FORMAT": "json",
    }.items():
        monkeypatch.setenv(key, value)
    topo = Topology(prefix=prefix, partitions=8, maxlen=1000)
    rc = connect_redis(cluster_url)
    await rc.initialize()
    # One tenant per partition: the provisioner reads streams on all three nodes.
    tenants = {}
    while len(tenants) < topo.partitions:
        t = await make_tenant(pool)
        tenants.setdefault(topo.partition_of(t.id), t)
    waiter = OutcomeWaiter(rc, topo)
    try:
        async with running_provisioner(), running_auditor():
            await waiter.start()
            commands = [
                Command(
                    tenant_id=t.id,
                    source=Source(kind="scim", id="tok", label="test"),
                    correlation_id=f"c{p}",
                    payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=f"user{p}@cluster.test")),
                )
                for p, t in sorted(tenants.items())
            ]
            outcomes = await asyncio.wait_for(asyncio.gather(*(waiter.submit(c, timeout=20) for c in commands)), 30)
            poison_stream = topo.command_stream(3)
            await rc.xadd(poison_stream, {DATA_FIELD: b"{not json"})
            dlq = topo.dead_letter_stream(3)
            deadline = asyncio.get_running_loop().time() + 20
            while not await rc.xlen(dlq):
                assert asyncio.get_running_loop().time() < deadline, "poison entry never reached the DLQ"
                await asyncio.sleep(0.1)
            [(_entry_id, dead)] = await rc.xrange(dlq)

            async def audited() -> bool:
                async with pool.acquire() as conn:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM audit_log WHERE event_id = ANY($1::uuid[]) AND result = 'applied'",
                        [c.event_id for c in commands],
                    )
                return n == len(commands)

            await eventually(audited, timeout=20)
    finally:
        await waiter.stop()
        for key in topo.command_streams() + topo.audit_streams() + topo.dead_letter_streams():
            await rc.delete(key)
        await rc.aclose()

    assert [o.result for o in outcomes] == ["applied"] * len(commands), [o.error for o in outcomes]
    assert {o.event_id for o in outcomes} == {c.event_id for c in commands}
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT tenant_id, user_name FROM users WHERE user_name LIKE '%@cluster.test'")
    assert {(r["tenant_id"], r["user_name"]) for r in rows} == {
        (t.id, f"user{p}@cluster.test") for p, t in tenants.items()
    }
    assert dead[b"stream"].decode() == poison_stream
    assert b"undecodable" in dead[b"error"]


async def test_scim_gateway_on_the_cluster(cluster_url, database_url, pool, monkeypatch):
    """The SCIM gateway configured with a redis+cluster:// URL: a POST /Users is answered
    201 with the state the provisioner committed, through streams on the cluster."""
    from tests.conftest import make_tenant, running_provisioner
    from tests.integration.scim_helpers import USER, bearer, scim_client

    prefix = f"t{uuid.uuid4().hex[:8]}"
    for key, value in {
        "PROVISIO_DATABASE_URL": database_url,
        "PROVISIO_REDIS_URL": cluster_url,
        "PROVISIO_REDIS_PREFIX": prefix,
        "PROVISIO_PARTITIONS": "8",
        "PROVISIO_LOG_FORMAT": "json",
    }.items():
        monkeypatch.setenv(key, value)
    tenant = await make_tenant(pool)
    topo = Topology(prefix=prefix, partitions=8)
    try:
        async with running_provisioner(), scim_client() as client:
            resp = await client.post(
                "/scim/v2/Users",
                json={"schemas": [USER], "userName": "bob@cluster.test", "name": {"givenName": "Bob"}},
                headers=bearer(tenant.token),
            )
            body = await resp.json()
            assert resp.status == 201, body
            got = await client.get(f"/scim/v2/Users/{body['id']}", headers=bearer(tenant.token))
            assert got.status == 200
            assert (await got.json())["userName"] == "bob@cluster.test"
            ready = await client.get("/readyz")
            assert ready.status == 200, await ready.text()
    finally:
        rc = connect_redis(cluster_url)
        await rc.initialize()
        for key in topo.command_streams() + topo.audit_streams() + topo.dead_letter_streams():
            await rc.delete(key)
        await rc.aclose()
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM users WHERE tenant_id = $1 AND user_name = 'bob@cluster.test'", tenant.id
            )
            == 1
        )
