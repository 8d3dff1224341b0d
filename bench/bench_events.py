"""The App API's event feed: events/s read in pages of 500, and the long-poll latency.

    .venv/bin/python bench/bench_events.py                                  # defaults below
    .venv/bin/python bench/bench_events.py --users 1000 --events 5000 --rounds 1 --polls 10   # smoke

1. Fill: ``--users`` users are created through the real pipeline (SCIM gateway → stream →
   provisioner, which writes one ``user.created`` row per user into the outbox in the
   change's transaction), as Entra ID's initial cycle does (lookup, then POST). If
   ``--events`` is larger, the outbox is topped up by copying those real rows (new ids,
   same tenant, type and data), in transactions of ``--copy-batch`` rows, so the feed has
   many transaction ids as the provisioner's batches make.
2. Read: ``--readers`` followers, each reading the whole feed from the start (empty
   ``after``) with ``limit=500`` over one keep-alive connection (aiohttp), parsing each
   page and following ``next_cursor``; readers >1 read the same feed at once. Events/s
   is the sum of the events read over the wall time of the slowest reader. ``--rounds``
   rounds, medians. CPU of the App API, Postgres and the reader itself per 1,000 events.
3. Long-poll: a request ``GET /api/v1/events?after=<last>&wait=10`` is waiting; a SCIM
   ``POST /Users`` is sent; latency = from the POST's start to the long-poll's answer
   carrying the new user's event (and from the SCIM answer to that). ``--polls`` samples,
   one at a time, with ``--poll-gap`` between them.

Writes bench/results/events-<stamp>.json (and events-latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg

from harness import (
    BENCH,
    PY,
    ROOT,
    Bench,
    CpuMeter,
    Service,
    XidWatch,
    create_database,
    delete_redis_prefix,
    drop_database,
    finish_profiles,
    free_port,
    log,
    machine_info,
    make_tenant,
    provisio_env,
    run_loadgen,
    start_profiles,
    workdir,
    write_results,
)
from loadgen import pct, user_body

_COPY_COLUMNS = (
    "tenant_id",
    "type",
    "occurred_at",
    "source",
    "correlation_id",
    "command_id",
    "resource_type",
    "resource_id",
    "data",
    "changes",
)


async def top_up(dsn: str, tenant: uuid.UUID, target: int, batch: int) -> int:
    """Copy the tenant's real outbox rows until it holds ``target``; one transaction per
    ``batch`` rows (each gets its own xid, as the provisioner's batches do)."""
    conn = await asyncpg.connect(dsn)
    try:
        have = await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant)
        # Text, so the jsonb columns go back in as they came out (no codec needed).
        cols = ", ".join(f"{c}::text" if c in ("source", "data", "changes") else c for c in _COPY_COLUMNS)
        rows = await conn.fetch(f"SELECT {cols} FROM events WHERE tenant_id = $1 ORDER BY xid, id", tenant)
        if not rows:
            raise RuntimeError("the pipeline wrote no events: nothing to copy")
        placeholders = ", ".join(
            f"${i + 1}::jsonb" if c in ("source", "data", "changes") else f"${i + 1}"
            for i, c in enumerate(_COPY_COLUMNS)
        )
        stmt = f"INSERT INTO events ({', '.join(_COPY_COLUMNS)}) VALUES ({placeholders})"
        i = 0
        while have < target:
            n = min(batch, target - have)
            chunk = [tuple(rows[(i + k) % len(rows)]) for k in range(n)]
            i += n
            async with conn.transaction():
                await conn.executemany(stmt, chunk)
            have += n
        await conn.execute("ANALYZE events")
        return int(have)
    finally:
        await conn.close()


async def read_feed(base: str, key: str, tenant: str, limit: int) -> dict[str, Any]:
    """One follower: the whole feed from the start, page by page."""
    conn = aiohttp.TCPConnector(limit=1)
    headers = {"Authorization": f"Bearer {key}"}
    page_ms: list[float] = []
    events = 0
    after = ""
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn, headers=headers) as s:
        while True:
            t = time.perf_counter()
            async with s.get(f"{base}/api/v1/events", params={"tenant": tenant, "after": after, "limit": limit}) as r:
                body = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"events page: {r.status} {body[:300]!r}")
            page = json.loads(body)
            page_ms.append((time.perf_counter() - t) * 1000)
            data = page["data"]
            if not data:
                break
            events += len(data)
            after = page["next_cursor"]
    wall = time.perf_counter() - t0
    page_ms.sort()
    return {
        "events": events,
        "pages": len(page_ms),
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall, 1),
        "page_p50_ms": round(pct(page_ms, 50), 2),
        "page_p99_ms": round(pct(page_ms, 99), 2),
        "reader_cpu_s": round(time.process_time() - cpu0, 3),
    }


async def long_polls(
    api: str, scim: str, key: str, token: str, tenant: str, n: int, gap: float, run_id: str, own_db: str
) -> dict[str, Any]:
    """Write → event returned by a waiting long-poll, one at a time; slow samples are
    checked against the cluster's writing transactions (``XidWatch``)."""
    watch = XidWatch().start()
    windows: list[tuple[float, float, float]] = []  # wall-clock write start, event, latency ms
    to_event: list[float] = []
    answer_to_event: list[float] = []
    scim_ms: list[float] = []
    misses = 0
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as api_s,
        aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
        ) as scim_s,
    ):
        # The cursor at the end of the feed now.
        after = ""
        while True:
            async with api_s.get(f"{api}/api/v1/events", params={"tenant": tenant, "after": after, "limit": 1000}) as r:
                page = await r.json()
            if not page["data"]:
                break
            after = page["next_cursor"]
        for i in range(n):
            name = f"{run_id}-poll{i}@bench.test"

            async def poll(cursor: str) -> tuple[float, list[dict[str, Any]]]:
                async with api_s.get(
                    f"{api}/api/v1/events", params={"tenant": tenant, "after": cursor, "limit": 500, "wait": 10}
                ) as r:
                    body = await r.json()
                return time.perf_counter(), body["data"]

            waiting = asyncio.create_task(poll(after))
            await asyncio.sleep(0.05)  # the long-poll has queried and is waiting
            t0 = time.perf_counter()
            w0 = time.time()
            async with scim_s.post(f"{scim}/Users", data=user_body(name, i)) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"SCIM create: {r.status}")
            t_answer = time.perf_counter()
            t_event, data = await waiting
            if not any(e["type"] == "user.created" and e["data"].get("user_name") == name for e in data):
                # Woken by something else (or the 1 s tick): not a sample of this write.
                misses += 1
            else:
                to_event.append((t_event - t0) * 1000)
                windows.append((w0, w0 + (t_event - t0), (t_event - t0) * 1000))
                answer_to_event.append((t_event - t_answer) * 1000)
                scim_ms.append((t_answer - t0) * 1000)
            if data:
                after = data[-1]["sequence"]
            await asyncio.sleep(gap)

    await watch.stop()
    slow = [(a, b, ms) for a, b, ms in windows if ms > 250]
    explained = [watch.held_between(a - 0.05, b, 0.1, own_db) for a, b, _ms in slow]

    def stats(v: list[float]) -> dict[str, Any]:
        v = sorted(v)
        return {
            "n": len(v),
            "p50_ms": round(pct(v, 50), 2),
            "p90_ms": round(pct(v, 90), 2),
            "p99_ms": round(pct(v, 99), 2),
            "max_ms": round(v[-1], 2) if v else None,
        }

    return {
        "write_to_event": stats(to_event),
        "scim_answer_to_event": stats(answer_to_event),
        "scim_answer": stats(scim_ms),
        "not_matched": misses,
        # Samples over 250 ms, and how many of them saw a transaction of another database
        # holding an xid for >= 100 ms in their window (the feed waits for it, see XidWatch).
        "over_250ms": len(slow),
        "over_250ms_with_other_db_xid_holder": sum(1 for e in explained if e),
        "other_db_xid_holders_seen": sorted({d for e in explained for d in e})[:20],
        "share_of_time_other_db_holds_xid_100ms": watch.share_held(0.1, own_db),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000, help="users created through SCIM (real events)")
    ap.add_argument("--events", type=int, default=100_000, help="events in the feed (real rows copied)")
    ap.add_argument("--copy-batch", type=int, default=200, help="rows per transaction when topping up")
    ap.add_argument("--limit", type=int, default=500, help="page size")
    ap.add_argument("--readers", default="1,4", help="concurrent followers per cell")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--polls", type=int, default=100, help="long-poll latency samples")
    ap.add_argument("--poll-gap", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=32, help="SCIM clients while filling")
    ap.add_argument("--tag", default="events")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the App API while one reader follows the feed")
    ap.add_argument("--profile-seconds", type=float, default=8.0)
    ap.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the same-run yardsticks (servers.py feed-sql and feed-static)",
    )
    ap.add_argument(
        "--api-side",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also serve the feed from the App API of another checkout (git worktree add DIR COMMIT), "
        "on the same database, in the same rounds: a same-run A/B (app-api@NAME)",
    )
    args = ap.parse_args()
    readers = [int(x) for x in args.readers.split(",") if x]
    api_sides = [(n, Path(d).resolve()) for n, _, d in (s.partition("=") for s in args.api_side)]

    info = machine_info()
    b = Bench("events")
    log(f"database {b.db}, redis prefix {b.prefix}")
    services: list[Service] = []
    results: dict[str, Any] = {"machine": info, "args": vars(args), "reads": []}
    with workdir("events") as tmp:
        dsn = await create_database(b.db)
        try:
            tenant_name = "bench-events"
            tid, token = await make_tenant(dsn, tenant_name)
            from provisio_lib import api_keys

            conn = await asyncpg.connect(dsn)
            try:
                key = await api_keys.create_key(conn, "bench", tid)
            finally:
                await conn.close()
            penv = provisio_env(dsn, b.prefix)
            scim_port, api_port = free_port(), free_port()
            services.append(
                Service(
                    "scim-gateway",
                    [PY, "-m", "scim_gateway"],
                    {
                        **penv,
                        "PROVISIO_SCIM_PORT": str(scim_port),
                        "PROVISIO_SCIM_HOST": "127.0.0.1",
                        "PROVISIO_SCIM_RATE_LIMIT_PER_S": "0",
                    },
                    scim_port,
                ).start(tmp)
            )
            services.append(
                Service("provisioner", [PY, "-m", "provisioner"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(tmp)
            )
            services.append(Service("auditor", [PY, "-m", "auditor"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(tmp))
            api = Service(
                "app-api",
                [PY, "-m", "app_api"],
                {
                    **penv,
                    "PROVISIO_APP_API_PORT": str(api_port),
                    "PROVISIO_APP_API_HOST": "127.0.0.1",
                    "PROVISIO_APP_API_RATE_LIMIT_PER_S": "0",
                },
                api_port,
            ).start(tmp)
            services.append(api)
            scim = f"http://127.0.0.1:{scim_port}/scim/v2"
            base = f"http://127.0.0.1:{api_port}"

            t0 = time.monotonic()
            fill = await run_loadgen(
                {
                    "base": scim,
                    "token": token,
                    "phase": "sync-users",
                    "count": args.users,
                    "concurrency": args.concurrency,
                    "run_id": b.id,
                },
                timeout=3600,
            )
            log(f"filled {args.users} users through SCIM in {time.monotonic() - t0:.1f}s, errors {fill['errors']}")
            t1 = time.monotonic()
            total = await top_up(dsn, tid, args.events, args.copy_batch)
            log(f"feed holds {total} events (topped up in {time.monotonic() - t1:.1f}s)")
            results["fill"] = {
                "users_via_scim": args.users,
                "scim_errors": fill["errors"],
                "events": total,
                "copied": max(0, total - args.users),
            }

            # The yardsticks, same run: the feed's query rendered to JSON by Postgres and
            # concatenated (feed-sql), and one real page served from memory (feed-static).
            systems: dict[str, str] = {"app-api": base}
            for side, path in api_sides:
                port = free_port()
                env = {
                    **api.env,
                    "PROVISIO_APP_API_PORT": str(port),
                    "PROVISIO_APP_API_METRICS_PORT": "0",
                    "PYTHONPATH": os.pathsep.join([str(path / "libs"), str(path / "services"), str(path)]),
                }
                services.append(Service(f"app-api@{side}", [PY, "-m", "app_api"], env, port, cwd=str(path)).start(tmp))
                systems[f"app-api@{side}"] = f"http://127.0.0.1:{port}"
            if args.baselines:
                page_file = os.path.join(tmp, "page.json")
                params = {"tenant": tenant_name, "limit": args.limit}
                async with (
                    aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s0,
                    s0.get(f"{base}/api/v1/events", params=params) as r,
                ):
                    Path(page_file).write_bytes(await r.read())
                for kind in ("feed-sql", "feed-static"):
                    port = free_port()
                    argv = [PY, str(BENCH / "servers.py"), kind, "--port", str(port)]
                    if kind == "feed-static":
                        argv += ["--page", page_file, "--pages", str(total // args.limit)]
                    services.append(Service(kind, argv, penv, port).start(tmp))
                    systems[kind] = f"http://127.0.0.1:{port}"
            for rnd in range(args.rounds):
                order = list(systems) if rnd % 2 == 0 else list(systems)[::-1]
                for k in readers:
                    for system in order:
                        with CpuMeter(services, [b.db]) as meter:
                            t = time.perf_counter()
                            runs = await asyncio.gather(
                                *(read_feed(systems[system], key, tenant_name, args.limit) for _ in range(k))
                            )
                            wall = time.perf_counter() - t
                        events = sum(r["events"] for r in runs)
                        cell = {
                            "system": system,
                            "round": rnd,
                            "readers": k,
                            "events": events,
                            "wall_s": round(wall, 3),
                            "events_per_s": round(events / wall, 1),
                            "page_p50_ms": round(statistics.median(r["page_p50_ms"] for r in runs), 2),
                            "page_p99_ms": max(r["page_p99_ms"] for r in runs),
                            "cpu": meter.by,
                            "cpu_s_per_1k_events": {
                                **{
                                    n: round(1000 * meter.by.get(n, 0) / max(events, 1), 4)
                                    for n in (system, "postgres_own", "postgres", "machine_busy")
                                },
                                "reader": round(1000 * sum(r["reader_cpu_s"] for r in runs) / max(events, 1), 4),
                            },
                            "per_reader": runs,
                        }
                        if system != "feed-static" and any(r["events"] != total for r in runs):
                            cell["incomplete"] = [r["events"] for r in runs]
                        results["reads"].append(cell)
                        log(
                            f"r{rnd} {system:11} readers={k}: {cell['events_per_s']:>9} events/s"
                            f"  page p50 {cell['page_p50_ms']} ms p99 {cell['page_p99_ms']} ms"
                            f"  server CPU {meter.by.get(system)} s, own postgres {meter.by.get('postgres_own')} s,"
                            f" machine busy {meter.by['machine_busy']}/{meter.by['wall']} s"
                        )

            def pick(system: str, k: int) -> list[dict[str, Any]]:
                return [c for c in results["reads"] if c["system"] == system and c["readers"] == k]

            results["summary"] = {}
            for k in readers:
                for system in systems:
                    cells = pick(system, k)
                    results["summary"][f"{system} readers={k}"] = {
                        "events_per_s": statistics.median(c["events_per_s"] for c in cells),
                        "rounds": [c["events_per_s"] for c in cells],
                        "page_p50_ms": statistics.median(c["page_p50_ms"] for c in cells),
                        "page_p99_ms": statistics.median(c["page_p99_ms"] for c in cells),
                        "server_cpu_s_per_1k": statistics.median(c["cpu_s_per_1k_events"][system] for c in cells),
                        "postgres_own_cpu_s_per_1k": statistics.median(
                            c["cpu_s_per_1k_events"]["postgres_own"] for c in cells
                        ),
                    }
                    if system != "app-api":
                        paired = [
                            a["events_per_s"] / o["events_per_s"]
                            for a, o in zip(pick("app-api", k), cells, strict=True)
                            if o["events_per_s"]
                        ]
                        results["summary"][f"app-api ÷ {system} readers={k}"] = round(statistics.median(paired), 3)
            if args.profile:
                spies = start_profiles(args.profile, {"app-api": api}, "events-read", args.profile_seconds)
                end = time.monotonic() + args.profile_seconds
                while time.monotonic() < end:
                    await read_feed(base, key, tenant_name, args.limit)
                results["profile"] = finish_profiles(spies)
                log(f"profile: {json.dumps(results['profile'])[:1500]}")
            if args.polls:
                lp = await long_polls(base, scim, key, token, tenant_name, args.polls, args.poll_gap, b.id, b.db)
                results["summary"]["long_poll"] = lp
                log(f"long-poll: {lp}")
            for s in services:
                s.sample()
            results["peak_rss_mb"] = {s.name: round(s.peak_rss_mb, 1) for s in services}
        finally:
            for s in services:
                s.stop()
            await drop_database(b.db)
            n = await delete_redis_prefix(b.prefix)
            log(f"dropped {b.db}; deleted {n} Redis keys")
    path = write_results(args.tag, results)
    log(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps(results.get("summary", {}), indent=1))


if __name__ == "__main__":
    asyncio.run(main())
