"""Provisioner throughput: N creates published straight to the command streams, one
provisioner process applying them; beside a baseline of the same rows written by a plain
batched INSERT (executemany) in the same run. Prints a JSON line.

    PROVISIO_DATABASE_URL=... PROVISIO_REDIS_URL=... .venv/bin/python bench/bench_provisioner.py --n 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

from provisio_lib import db
from provisio_lib.contract import Command, CreateUser, Source, UserData, encode
from provisio_lib.redis_client import connect_redis
from provisio_lib.topology import DATA_FIELD, Topology, ensure_groups


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--profile", help="write a py-spy flame graph (SVG) of the worker here")
    args = ap.parse_args()
    dsn = os.environ["PROVISIO_DATABASE_URL"]
    rurl = os.environ["PROVISIO_REDIS_URL"]
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    topo = Topology(prefix=prefix, partitions=8)
    conn = await db.connect(dsn)
    await db.migrate(conn)
    tenants = [uuid.uuid4() for _ in range(args.tenants)]
    for t in tenants:
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", t, f"b-{t.hex[:10]}")
    redis = connect_redis(rurl)
    await ensure_groups(redis, topo)

    # Baseline: the same rows, plain executemany in batches of 200.
    rows = [(uuid.uuid4(), tenants[i % len(tenants)], f"base{i}@{prefix}.test") for i in range(args.n)]
    t0 = time.perf_counter()
    for i in range(0, len(rows), 200):
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, $3)", rows[i : i + 200]
            )
    baseline_s = time.perf_counter() - t0

    src = Source(kind="cli", id="bench", label="bench")
    t0 = time.perf_counter()
    pipe = redis.pipeline(transaction=False)
    for i in range(args.n):
        t = tenants[i % len(tenants)]
        c = Command(
            tenant_id=t,
            source=src,
            correlation_id=f"b{i}",
            payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=f"u{i}@{prefix}.test")),
        )
        pipe.xadd(topo.command_stream_for(t), {DATA_FIELD: encode(c)})
        if i % 1000 == 999:
            await pipe.execute()
    await pipe.execute()
    publish_s = time.perf_counter() - t0

    env = {
        **os.environ,
        "PROVISIO_REDIS_PREFIX": prefix,
        "PROVISIO_PARTITIONS": "8",
        "PROVISIO_HEALTH_PORT": "0",
        "PROVISIO_LOG_LEVEL": "WARNING",
    }
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "provisioner"]
    if args.profile:
        cmd = [
            "py-spy",
            "record",
            "-o",
            args.profile,
            "-r",
            "200",
            *(["-f", "raw"] if args.profile.endswith(".txt") else []),
            "--",
            *cmd,
        ]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(args.workers)]
    first_at = None
    try:
        while True:
            n = await conn.fetchval("SELECT count(*) FROM inbox WHERE tenant_id = ANY($1::uuid[])", tenants)
            if n and first_at is None:
                first_at, first_n = time.perf_counter(), n
            if n >= args.n:
                break
            await asyncio.sleep(0.1)
        apply_s = time.perf_counter() - first_at
        apply_n = args.n - first_n
    finally:
        for p in procs:
            p.send_signal(2 if args.profile else 15)
        for p in procs:
            p.wait(20)
    print(
        json.dumps(
            {
                "bench": "provisioner",
                "n": args.n,
                "workers": args.workers,
                "publish_per_s": round(args.n / publish_s),
                "provisioner_per_s": round(apply_n / apply_s),
                "baseline_insert_per_s": round(args.n / baseline_s),
                "ratio_vs_baseline": round((apply_n / apply_s) / (args.n / baseline_s), 3),
                "note": "provisioner rate measured from its first commit (start-up excluded)",
            }
        )
    )
    for t in tenants:
        await conn.execute("DELETE FROM tenants WHERE id = $1", t)
    await conn.execute("DELETE FROM inbox WHERE tenant_id = ANY($1::uuid[])", tenants)
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
