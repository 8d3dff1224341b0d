import uuid

import pytest

from provisio_lib.contract import Command, CreateUser, Source, UserData, decode_command
from provisio_lib.outcomes import publish_command
from provisio_lib.topology import DATA_FIELD, PROVISIONER_GROUP, Topology, ensure_groups

pytestmark = pytest.mark.integration


async def test_groups_created_after_a_publish_still_see_it(redis, redis_prefix):
    topo = Topology(prefix=redis_prefix, partitions=2, maxlen=1000)
    tenant_id = uuid.uuid4()
    cmd = Command(
        tenant_id=tenant_id,
        source=Source(kind="cli", id="t", label="t"),
        correlation_id="c",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name="early@x.test")),
    )
    await publish_command(redis, topo, cmd)
    await ensure_groups(redis, topo)
    await ensure_groups(redis, topo)  # idempotent
    stream = topo.command_stream_for(tenant_id)
    resp = await redis.xreadgroup(PROVISIONER_GROUP, "c1", {stream: ">"}, count=10)
    [(_, entries)] = resp
    assert decode_command(entries[0][1][DATA_FIELD.encode()]) == cmd
    # Readable as plain JSON by a person with redis-cli.
    assert b'"user_name":"early@x.test"' in entries[0][1][DATA_FIELD.encode()]


async def test_streams_are_trimmed(redis, redis_prefix):
    topo = Topology(prefix=redis_prefix, partitions=1, maxlen=1000)
    tenant_id = uuid.uuid4()
    for i in range(3000):
        cmd = Command(
            tenant_id=tenant_id,
            source=Source(kind="cli", id="t", label="t"),
            correlation_id="c",
            payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=f"u{i}@x.test")),
        )
        await publish_command(redis, topo, cmd)
    assert await redis.xlen(topo.command_stream(0)) < 2000
