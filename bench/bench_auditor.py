"""Auditor throughput: audit rows/s written by the real auditor from the audit streams,
beside a plain batched insert of the same rows into a copy of audit_log (same indexes),
measured in the same run.

    PROVISIO_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
    PROVISIO_REDIS_URL=redis://127.0.0.1:6379/0 \\
    .venv/bin/python bench/bench_auditor.py --outcomes 20000 --repeat 3

It creates a scratch database (migrated) and a scratch Redis prefix, and removes both at
the end. Per repetition: N outcomes (spread over tenants and so over partitions; a
fraction of failures, which also queue notifications) are XADDed to the audit streams,
then an auditor is started in process and timed until audit_log holds N rows. The
baselines write the same rows with asyncpg's COPY (copy_records_to_table) and with
executemany, in batches of --batch-size, one transaction per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "libs"), str(ROOT / "services")]

import asyncpg  # noqa: E402

from auditor.records import COLUMNS, audit_row  # noqa: E402
from provisio_lib import db  # noqa: E402
from provisio_lib.contract import Change, ErrorInfo, Outcome, Source, encode  # noqa: E402
from provisio_lib.redis_client import connect_redis  # noqa: E402
from provisio_lib.topology import DATA_FIELD, Topology, ensure_groups  # noqa: E402


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def outcomes(n: int, tenants: list[uuid.UUID], failed_ratio: float) -> list[Outcome]:
    now = datetime.now(UTC)
    src = Source(kind="scim", id="bench-token", label="entra-prod")
    out = []
    every = int(1 / failed_ratio) if failed_ratio > 0 else 0
    for i in range(n):
        failed = bool(every) and i % every == 0
        out.append(
            Outcome(
                event_id=uuid.uuid4(),
                command_type="user.replace",
                tenant_id=tenants[i % len(tenants)],
                source=src,
                correlation_id=f"bench-{i}",
                occurred_at=now - timedelta(milliseconds=5),
                completed_at=now,
                result="failed" if failed else "applied",
                error=ErrorInfo(code="version_mismatch", message="stale expected_version") if failed else None,
                resource_type="User",
                resource_id=uuid.uuid4(),
                user_name=f"user{i}@bench.example",
                changes={} if failed else {"display_name": Change(before=f"U {i}", after=f"User {i}")},
                latency_ms=5.0,
            )
        )
    return out


async def count_rows(pool: asyncpg.Pool, table: str = "audit_log") -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))  # table is ours, not input


async def reset(pool: asyncpg.Pool, redis: object, topo: Topology) -> None:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE audit_log, notifications, notification_items, audit_log_bench")
    for s in topo.audit_streams():
        await redis.delete(s, s + ":dlq")  # type: ignore[attr-defined]
    await ensure_groups(redis, topo)


async def publish_all(redis: object, topo: Topology, items: list[Outcome]) -> None:
    pipe = redis.pipeline(transaction=False)  # type: ignore[attr-defined]
    for i, o in enumerate(items):
        pipe.xadd(topo.audit_stream_for(o.tenant_id), {DATA_FIELD: encode(o)})
        if i % 1000 == 999:
            await pipe.execute()
    await pipe.execute()


async def run_auditor(args: argparse.Namespace, n: int, pool: asyncpg.Pool) -> float:
    from auditor.app import create_app
    from auditor.settings import AuditorSettings
    from provisio_lib.settings import load_settings

    settings = load_settings(
        AuditorSettings,
        health_port=0,
        batch_size=args.batch_size,
        smtp_port=1,
        notify_poll_s=5.0,
        retention_days=0,
    )
    app = create_app(settings)
    async with app.lifespan_context():
        t0 = time.perf_counter()
        await app.start()
        try:
            while await count_rows(pool) < n:
                await asyncio.sleep(0.02)
            return time.perf_counter() - t0
        finally:
            app.context.get("consumer").stopping.set()
            await app.stop()


# Baselines use a plain asyncpg connection (jsonb as JSON text, asyncpg's own codec,
# which also has the binary format COPY needs).
async def baseline_copy(url: str, rows: list[tuple[object, ...]], batch: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.copy_records_to_table("audit_log_bench", records=rows[i : i + batch], columns=list(COLUMNS))
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def baseline_executemany(url: str, rows: list[tuple[object, ...]], batch: int) -> float:
    cols = ", ".join(COLUMNS)
    params = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
    sql = f"INSERT INTO audit_log_bench ({cols}) VALUES ({params})"
    conn = await asyncpg.connect(url)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.executemany(sql, rows[i : i + batch])
        return time.perf_counter() - t0
    finally:
        await conn.close()


def plain_rows(items: list[Outcome]) -> list[tuple[object, ...]]:
    out = []
    for o in items:
        r = audit_row(o)
        values = list(r.as_tuple())
        values[COLUMNS.index("notes")] = list(r.notes)
        out.append(tuple(values))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--failed-ratio", type=float, default=0.02)
    args = parser.parse_args()

    admin_url = os.environ.get("PROVISIO_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("PROVISIO_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"provisio_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_db(admin_url, name)
    os.environ.update(
        PROVISIO_DATABASE_URL=url,
        PROVISIO_REDIS_URL=redis_url,
        PROVISIO_REDIS_PREFIX=prefix,
        PROVISIO_PARTITIONS=str(args.partitions),
        PROVISIO_LOG_LEVEL="WARNING",
        PROVISIO_LOG_FORMAT="json",
    )
    from provisio_lib.logging import configure_logging

    configure_logging("WARNING", "console")
    topo = Topology(prefix=prefix, partitions=args.partitions)
    redis = connect_redis(redis_url)
    pool = None
    try:
        conn = await db.connect(url)
        await db.migrate(conn)
        await conn.execute("CREATE TABLE audit_log_bench (LIKE audit_log INCLUDING ALL)")
        tenants = [uuid.uuid4() for _ in range(args.tenants)]
        for i, t in enumerate(tenants):
            await conn.execute(
                "INSERT INTO tenants (id, name, notify_emails) VALUES ($1, $2, $3)",
                t,
                f"bench-{i}",
                ["ops@bench.example"],
            )
        await conn.close()
        pool = await db.create_pool(url, min_size=1, max_size=4)
        results: dict[str, list[float]] = {"auditor": [], "copy": [], "executemany": []}
        for rep in range(args.repeat):
            items = outcomes(args.outcomes, tenants, args.failed_ratio)
            rows = plain_rows(items)
            await reset(pool, redis, topo)
            await publish_all(redis, topo, items)
            secs = await run_auditor(args, args.outcomes, pool)
            results["auditor"].append(args.outcomes / secs)
            results["copy"].append(args.outcomes / await baseline_copy(url, rows, args.batch_size))
            async with pool.acquire() as c:
                await c.execute("TRUNCATE audit_log_bench")
            results["executemany"].append(args.outcomes / await baseline_executemany(url, rows, args.batch_size))
            print(
                f"rep {rep + 1}: auditor {results['auditor'][-1]:,.0f} rows/s, "
                f"COPY {results['copy'][-1]:,.0f} rows/s, executemany {results['executemany'][-1]:,.0f} rows/s",
                flush=True,
            )
        med = {k: statistics.median(v) for k, v in results.items()}
        print(
            f"\n{args.outcomes} outcomes x {args.repeat} (batch {args.batch_size}, {args.partitions} partitions, "
            f"{args.failed_ratio:.0%} failures)\n"
            f"median auditor (stream -> audit_log, end to end): {med['auditor']:,.0f} rows/s\n"
            f"median plain COPY of the same rows:               {med['copy']:,.0f} rows/s  "
            f"(auditor / COPY = {med['auditor'] / med['copy']:.2f})\n"
            f"median plain executemany of the same rows:        {med['executemany']:,.0f} rows/s  "
            f"(auditor / executemany = {med['auditor'] / med['executemany']:.2f})"
        )
    finally:
        if pool is not None:
            await pool.close()
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
