"""Webhooks: one dispatcher's deliveries/s to a local receiver, and the latency from a
SCIM write to its webhook arriving, at a paced SCIM write rate.

    .venv/bin/python bench/bench_webhooks.py                                # defaults below
    .venv/bin/python bench/bench_webhooks.py --events 2000 --rounds 1 --latency-seconds 3   # smoke

Processes (real, as operators run them): ``scim_gateway``, ``provisioner``, ``auditor``,
``webhook_dispatcher`` (``PROVISIO_WEBHOOK_ALLOW_PRIVATE=loopback``), and the receiver
``bench/webhook_receiver.py`` (uvloop, answers 204, records arrival time, headers and
body; signatures are verified afterwards with ``standardwebhooks``, off the hot path).
Endpoints are added with ``python -m provisio_cli webhook add TENANT URL`` (its secret is
the last line it prints).

1. **Throughput** (``--rounds``): with the dispatcher stopped, an endpoint is added for a
   fresh tenant and the outbox gets ``--events`` events for that tenant: copies of real
   ``user.created`` rows written by the pipeline (``--seed-users`` users created through
   SCIM first), each with its own resource id (an initial sync: one event per user, so
   per-resource ordering never serialises them), in transactions of ``--copy-batch``
   rows. Then the dispatcher starts; deliveries/s = events ÷ (last arrival - first
   arrival), and also ÷ (last arrival - dispatcher start). CPU per 1,000 deliveries of
   the dispatcher, Postgres and the receiver.
2. **Latency**: the dispatcher running and an endpoint for another fresh tenant, the load
   generator creates users at ``--rate`` per second (paced, ``--clients`` connections)
   for ``--latency-seconds``; for each user: arrival at the receiver - start of its SCIM
   POST (wall clock, one clock on this machine). p50/p90/p99/max, after ``--warmup``.

Writes bench/results/webhooks-<stamp>.json (and webhooks-latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
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
from loadgen import pct

_COLUMNS = (
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
_JSONB = ("source", "data", "changes")


async def copy_events(dsn: str, src: uuid.UUID, dst: uuid.UUID, n: int, batch: int) -> None:
    """``n`` events for tenant ``dst``: copies of ``src``'s real outbox rows, each with a
    fresh resource id and command id, ``batch`` rows per transaction (one xid each)."""
    conn = await asyncpg.connect(dsn)
    try:
        cols = ", ".join(f"{c}::text" if c in _JSONB else c for c in _COLUMNS)
        rows = await conn.fetch(f"SELECT {cols} FROM events WHERE tenant_id = $1 ORDER BY xid, id", src)
        if not rows:
            raise RuntimeError("the pipeline wrote no events to copy")
        ph = ", ".join(f"${i + 1}::jsonb" if c in _JSONB else f"${i + 1}" for i, c in enumerate(_COLUMNS))
        stmt = f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({ph})"
        done = 0
        while done < n:
            chunk = []
            for k in range(min(batch, n - done)):
                r = dict(rows[(done + k) % len(rows)])
                r.update(tenant_id=dst, resource_id=uuid.uuid4(), command_id=uuid.uuid4())
                chunk.append(tuple(r[c] for c in _COLUMNS))
            async with conn.transaction():
                await conn.executemany(stmt, chunk)
            done += len(chunk)
    finally:
        await conn.close()


def add_endpoint(env: dict[str, str], tenant: str, url: str, name: str) -> str:
    """``provisio webhook add``; the signing secret is its last stdout line."""
    out = subprocess.run(
        [PY, "-m", "provisio_cli", "webhook", "add", tenant, url, "--name", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"webhook add failed: {out.stdout[-500:]} {out.stderr[-1500:]}")
    return out.stdout.strip().splitlines()[-1]


class ActiveQueries:
    """What the bench database's backends are busy with: ``pg_stat_activity`` sampled
    every ``every`` s, active queries counted by their first words (a poor man's
    pg_stat_statements, which this server does not load)."""

    def __init__(self, db: str, every: float = 0.02) -> None:
        self.db, self.every = db, every
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        from harness import ADMIN_DSN

        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT query FROM pg_stat_activity WHERE datname = $1 AND state = 'active'", self.db
                )
                self.samples += 1
                for r in rows:
                    key = " ".join((r["query"] or "").split())[:70]
                    self.counts[key] = self.counts.get(key, 0) + 1
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    def start(self) -> ActiveQueries:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:8]
        # Average number of backends busy with each statement while sampling.
        return {"samples": self.samples, "busy_backends": {k: round(v / max(self.samples, 1), 3) for k, v in top}}


def remove_endpoint(env: dict[str, str], name: str) -> None:
    out = subprocess.run(
        [PY, "-m", "provisio_cli", "webhook", "remove", name], env=env, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"webhook remove failed: {out.stdout[-500:]} {out.stderr[-1500:]}")


class ReceiverClient:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def count(self, s: aiohttp.ClientSession) -> int:
        async with s.get(f"{self.base}/count") as r:
            return int((await r.json())["received"])

    async def dump(self, s: aiohttp.ClientSession, path: str) -> list[dict[str, Any]]:
        async with s.get(f"{self.base}/dump", params={"path": path}) as r:
            await r.read()
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]


async def wait_for(
    rc: ReceiverClient, s: aiohttp.ClientSession, n: int, timeout: float, every: float = 0.1
) -> tuple[int, float]:
    """Poll the receiver until it holds ``n`` requests (or nothing arrives for ``timeout`` s)."""
    last, last_change = -1, time.monotonic()
    while True:
        got = await rc.count(s)
        if got >= n:
            return got, time.monotonic()
        if got != last:
            last, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > timeout:
            return got, time.monotonic()
        await asyncio.sleep(every)


def verify(records: list[dict[str, Any]], secret: str) -> dict[str, int]:
    """Standard Webhooks signatures of every record, with the package receivers use."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    wh = Webhook(secret)
    ok = bad = 0
    for rec in records:
        try:
            wh.verify(rec["body"], rec["headers"])
            ok += 1
        except WebhookVerificationError:
            bad += 1
    return {"verified": ok, "failed": bad}


def dispatcher_service(penv: dict[str, str]) -> Service:
    return Service(
        "webhook-dispatcher",
        [PY, "-m", "webhook_dispatcher"],
        {**penv, "PROVISIO_HEALTH_PORT": "0", "PROVISIO_WEBHOOK_ALLOW_PRIVATE": "loopback"},
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed-users", type=int, default=1000, help="users created through SCIM (real events)")
    ap.add_argument("--events", type=int, default=30_000, help="events per throughput round")
    ap.add_argument("--copy-batch", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=500.0, help="SCIM writes/s in the latency part")
    ap.add_argument("--clients", type=int, default=64, help="SCIM connections in the latency part")
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="latency samples of the first seconds left out")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the dispatcher during the first throughput round")
    ap.add_argument("--tag", default="webhooks")
    ap.add_argument(
        "--analyze-after-first",
        action="store_true",
        help="diagnostic: ANALYZE webhook_deliveries once the first delivery arrives (the dispatcher has fanned "
        "the backlog out by then), to measure the claims with fresh planner statistics",
    )
    args = ap.parse_args()

    info = machine_info()
    b = Bench("wh")
    log(f"database {b.db}, redis prefix {b.prefix}")
    services: list[Service] = []
    results: dict[str, Any] = {"machine": info, "args": vars(args), "throughput": [], "latency": None}
    with workdir("webhooks") as tmp:
        dsn = await create_database(b.db)
        dispatcher: Service | None = None
        try:
            seed_tid, token = await make_tenant(dsn, "bench-wh-seed")
            penv = provisio_env(dsn, b.prefix)
            penv["PROVISIO_WEBHOOK_ALLOW_PRIVATE"] = "loopback"
            scim_port, recv_port = free_port(), free_port()
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
            receiver = Service(
                "receiver", [PY, str(BENCH / "webhook_receiver.py"), "--port", str(recv_port)], penv, recv_port
            ).start(tmp)
            services.append(receiver)
            scim = f"http://127.0.0.1:{scim_port}/scim/v2"
            hook_url = f"http://127.0.0.1:{recv_port}/hook"
            rc = ReceiverClient(recv_port)
            session = aiohttp.ClientSession()
            try:
                if not args.skip_throughput:
                    fill = await run_loadgen(
                        {
                            "base": scim,
                            "token": token,
                            "phase": "sync-users",
                            "count": args.seed_users,
                            "concurrency": 32,
                            "run_id": b.id,
                        },
                        timeout=1800,
                    )
                    log(f"seeded {args.seed_users} users through SCIM, errors {fill['errors']}")
                for rnd in range(0 if args.skip_throughput else args.rounds):
                    tname = f"bench-wh-t{rnd}"
                    tid, _ = await make_tenant(dsn, tname)
                    secret = add_endpoint(penv, tname, hook_url, f"bench-t{rnd}")
                    await copy_events(dsn, seed_tid, tid, args.events, args.copy_batch)
                    dispatcher = dispatcher_service(penv)
                    t_start = time.time()
                    active = ActiveQueries(b.db).start()
                    with CpuMeter([dispatcher, receiver], [b.db]) as meter:
                        dispatcher.start(tmp)
                        services.append(dispatcher)
                        spies = []
                        if args.analyze_after_first:
                            await wait_for(rc, session, 1, timeout=30, every=0.02)
                            conn = await asyncpg.connect(dsn)
                            try:
                                await conn.execute("ANALYZE webhook_deliveries")
                            finally:
                                await conn.close()
                        if args.profile and rnd == 0:
                            await wait_for(rc, session, 1, timeout=30, every=0.02)  # started, not importing
                            spies = start_profiles(args.profile, {"dispatcher": dispatcher}, "deliveries", 8)
                        got, _ = await wait_for(rc, session, args.events, timeout=30)
                    busy = await active.stop()
                    if spies:
                        results["profile"] = finish_profiles(spies)
                    dispatcher.stop()
                    services.remove(dispatcher)
                    dispatcher = None
                    # One endpoint at a time: an idle endpoint's fan-out rescans the other
                    # tenants' newer events every poll (see BENCHMARKS.md), which would load
                    # the next rounds with this bench's leftovers.
                    remove_endpoint(penv, f"bench-t{rnd}")
                    recs = await rc.dump(session, os.path.join(tmp, f"t{rnd}.jsonl"))
                    times = sorted(r["t"] for r in recs)
                    ids = {r["headers"].get("webhook-id") for r in recs}
                    span = times[-1] - times[0] if len(times) > 1 else float("nan")
                    cell = {
                        "round": rnd,
                        "events": args.events,
                        "received": got,
                        "distinct_ids": len(ids),
                        "deliveries_per_s": round((len(times) - 1) / span, 1) if span == span and span else None,
                        "from_start_per_s": round(len(times) / (times[-1] - t_start), 1) if times else None,
                        "first_after_start_s": round(times[0] - t_start, 3) if times else None,
                        "cpu": meter.by,
                        "cpu_s_per_1k": {
                            k: round(1000 * meter.by.get(k, 0) / max(got, 1), 4)
                            for k in ("webhook-dispatcher", "postgres_own", "postgres", "receiver", "machine_busy")
                        },
                        "signatures": verify(recs, secret),
                        "postgres_busy_with": busy,
                    }
                    results["throughput"].append(cell)
                    log(
                        f"r{rnd}: {got}/{args.events} delivered, {cell['deliveries_per_s']} deliveries/s "
                        f"(first→last), {cell['from_start_per_s']}/s from the dispatcher's start; "
                        f"dispatcher CPU {meter.by.get('webhook-dispatcher')} s, postgres {meter.by.get('postgres')} s, "
                        f"machine busy {meter.by['machine_busy']}/{meter.by['wall']} s; {cell['signatures']}"
                    )

                if not args.skip_latency:
                    tname = "bench-wh-lat"
                    _, lat_token = await make_tenant(dsn, tname)
                    secret = add_endpoint(penv, tname, hook_url, "bench-lat")
                    dispatcher = dispatcher_service(penv).start(tmp)
                    services.append(dispatcher)
                    await asyncio.sleep(2.0)  # the dispatcher has loaded its endpoints
                    times_path = os.path.join(tmp, "times.jsonl")
                    watch = XidWatch().start()
                    with CpuMeter(services, [b.db]) as meter:
                        load = await run_loadgen(
                            {
                                "base": scim,
                                "token": lat_token,
                                "phase": "create",
                                "concurrency": args.clients,
                                "duration": args.latency_seconds,
                                "warmup": 0.0,
                                "rate": args.rate,
                                "times_out": times_path,
                                "run_id": f"{b.id}lat",
                            }
                        )
                        with open(times_path) as f:
                            sent = [json.loads(line) for line in f if line.strip()]
                        created = [x for x in sent if x[3]]
                        got, _ = await wait_for(rc, session, len(created), timeout=10)
                    await watch.stop()
                    recs = await rc.dump(session, os.path.join(tmp, "lat.jsonl"))
                    arrived: dict[str, float] = {}
                    for r in recs:
                        ev = json.loads(r["body"])
                        name = (ev.get("data") or {}).get("user_name")
                        if ev.get("type") == "user.created" and name and name not in arrived:
                            arrived[name] = r["t"]
                    t0 = min(x[1] for x in sent) + args.warmup
                    lat = sorted(
                        (arrived[name] - start) * 1000
                        for name, start, _end, ok in created
                        if ok and start >= t0 and name in arrived
                    )
                    scim_ms = sorted((end - start) * 1000 for _n, start, end, ok in created if ok and start >= t0)
                    missing = [n for n, _s, _e, ok in created if ok and n not in arrived]
                    slow = [
                        (start, arrived[name])
                        for name, start, _end, ok in created
                        if ok and start >= t0 and name in arrived and arrived[name] - start > 0.25
                    ]
                    explained = [watch.held_between(a - 0.05, z, 0.1, b.db) for a, z in slow]
                    span = max(x[1] for x in sent) - min(x[1] for x in sent)

                    def stats(v: list[float]) -> dict[str, Any]:
                        return {
                            "n": len(v),
                            "p50_ms": round(pct(v, 50), 2),
                            "p90_ms": round(pct(v, 90), 2),
                            "p99_ms": round(pct(v, 99), 2),
                            "max_ms": round(v[-1], 2) if v else None,
                        }

                    results["latency"] = {
                        "offered_rate": args.rate,
                        "achieved_rate": round(len(sent) / span, 1) if span else None,
                        "scim_errors": load["errors"],
                        "created": len(created),
                        "received": len(recs),
                        "missing": len(missing),
                        "write_to_webhook": stats(lat),
                        "scim_answer": stats(scim_ms),
                        "signatures": verify(recs, secret),
                        "cpu": meter.by,
                        # Slow samples against the cluster's writing transactions (XidWatch):
                        # the feed waits for any older xid, in any database.
                        "over_250ms": len(slow),
                        "over_250ms_with_other_db_xid_holder": sum(1 for e in explained if e),
                        "other_db_xid_holders_seen": sorted({d for e in explained for d in e})[:20],
                        "share_of_time_other_db_holds_xid_100ms": watch.share_held(0.1, b.db),
                    }
                    log(f"latency: {json.dumps({k: v for k, v in results['latency'].items() if k != 'cpu'})}")
            finally:
                await session.close()
            for s in services:
                s.sample()
            results["peak_rss_mb"] = {s.name: round(s.peak_rss_mb, 1) for s in services}
        finally:
            for s in services:
                s.stop()
            if dispatcher is not None and dispatcher not in services:
                dispatcher.stop()
            await drop_database(b.db)
            n = await delete_redis_prefix(b.prefix)
            log(f"dropped {b.db}; deleted {n} Redis keys")
    tp = results["throughput"]
    if tp:
        rates = sorted(c["deliveries_per_s"] for c in tp if c["deliveries_per_s"])
        results["summary"] = {
            "deliveries_per_s_median": rates[len(rates) // 2] if rates else None,
            "rounds": [c["deliveries_per_s"] for c in tp],
        }
    path = write_results(args.tag, results)
    log(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps({"summary": results.get("summary"), "latency": results.get("latency")}, indent=1, default=str))


if __name__ == "__main__":
    asyncio.run(main())
