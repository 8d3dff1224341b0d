"""Initial sync: N users, then G groups of M members each, created through the SCIM
gateway as Microsoft Entra ID's first provisioning cycle does (per user: GET
``filter=userName eq`` then POST; per group: GET ``filter=displayName eq``, POST, PATCH
``members`` Add), with ``--concurrency`` clients. Samples, every ``--sample`` seconds,
the command streams' consumer-group lag and pending count (provisioner), the audit
streams' (auditor), and the users/audit rows in Postgres: the lag curve.

    .venv/bin/python bench/bench_sync.py --users 100000 --groups 1000 --members 20
    .venv/bin/python bench/bench_sync.py --users 2000 --groups 20               # smoke

With ``--example-app``, Provisio's App API and webhook dispatcher run too, and the
example receiving application (``python -m examples.receiver``, its own database on the
same server) is subscribed to the tenant with ``provisio webhook add`` before the sync:
the run then also reports when the app holds every user (and every membership),
counted from the last SCIM answer — issue 12's "all 100k users within 30 s".

Writes bench/results/sync-<stamp>.json (and sync-latest.json).
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import asyncpg
from redis.asyncio import Redis

from harness import (
    PY,
    REDIS_URL,
    ROOT,
    Bench,
    CpuMeter,
    Service,
    create_database,
    delete_redis_prefix,
    drop_database,
    dsn_for,
    free_port,
    log,
    machine_info,
    make_tenant,
    provisio_env,
    run_loadgen,
    workdir,
    write_results,
)
from provisio_lib.topology import AUDITOR_GROUP, PROVISIONER_GROUP, Topology


async def group_lag(redis: Redis, streams: list[str], group: str) -> tuple[int, int, int]:
    """(lag, pending, length) summed over the streams for one consumer group."""
    lag = pending = length = 0
    for s in streams:
        try:
            for g in await redis.xinfo_groups(s):
                name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                if name == group:
                    lag += int(g.get("lag") or 0)
                    pending += int(g.get("pending") or 0)
            length += int(await redis.xlen(s))
        except Exception:  # stream not created yet
            continue
    return lag, pending, length


async def app_counts(conn: Any, tenant: str) -> tuple[int, int]:
    """Live users and present memberships the example app holds for ``tenant``."""
    users = await conn.fetchval("SELECT count(*) FROM users WHERE tenant = $1 AND NOT deleted", tenant)
    members = await conn.fetchval(
        "SELECT count(DISTINCT (group_id, user_id)) FROM memberships WHERE tenant = $1 AND present", tenant
    )
    return int(users), int(members)


async def sampler(
    dsn: str,
    topo: Topology,
    tenant: Any,
    every: float,
    stop: asyncio.Event,
    out: list[dict[str, Any]],
    services: list[Service],
    app_dsn: str | None = None,
    tenant_name: str = "",
) -> None:
    redis = Redis.from_url(REDIS_URL)
    conn = await asyncpg.connect(dsn)
    app_conn = await asyncpg.connect(app_dsn) if app_dsn else None
    t0 = time.monotonic()
    try:
        while True:
            cl, cp, clen = await group_lag(redis, topo.command_streams(), PROVISIONER_GROUP)
            al, ap, alen = await group_lag(redis, topo.audit_streams(), AUDITOR_GROUP)
            users = await conn.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", tenant)
            members = await conn.fetchval("SELECT count(*) FROM memberships WHERE tenant_id = $1", tenant)
            audited = await conn.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1", tenant)
            for s in services:
                s.sample()
            app_users, app_members = await app_counts(app_conn, tenant_name) if app_conn else (None, None)
            out.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "commands_lag": cl,
                    "commands_pending": cp,
                    "commands_len": clen,
                    "audit_lag": al,
                    "audit_pending": ap,
                    "audit_len": alen,
                    "users": users,
                    "memberships": members,
                    "audit_rows": audited,
                    "app_users": app_users,
                    "app_memberships": app_members,
                    "rss_mb": {s.name: round(s.rss_mb(), 1) for s in services},
                }
            )
            if len(out) % max(1, int(10 / every)) == 0:
                log(
                    f"  t={out[-1]['t']:.0f}s users={users} memberships={members} audit_rows={audited} "
                    f"command backlog={cl + cp} audit backlog={al + ap}"
                    + (f" app users={app_users} app memberships={app_members}" if app_conn else "")
                )
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        await conn.close()
        if app_conn is not None:
            await app_conn.close()
        await redis.aclose()


async def start_example_app(
    dsn: str, penv: dict[str, str], tmp: str, tenant: Any, tenant_name: str, app_dsn: str
) -> list[Service]:
    """App API, webhook dispatcher and examples/receiver, the app subscribed to the tenant
    (``provisio webhook add``; the secret is the last line printed) and backfilled (an
    empty tenant: the sync then arrives by webhook)."""
    from provisio_lib import api_keys

    conn = await asyncpg.connect(dsn)
    try:
        key = await api_keys.create_key(conn, "bench-sync", tenant)
    finally:
        await conn.close()
    api_port, app_port = free_port(), free_port()
    wenv = {**penv, "PROVISIO_WEBHOOK_ALLOW_PRIVATE": "loopback"}
    url = f"http://127.0.0.1:{app_port}/webhooks/provisio"
    out = subprocess.run(
        [PY, "-m", "provisio_cli", "webhook", "add", tenant_name, url, "--name", "bench-sync-app"],
        env=wenv,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(f"webhook add failed: {out.stdout[-500:]} {out.stderr[-1500:]}")
    secret = out.stdout.strip().splitlines()[-1]
    started = [
        Service(
            "app-api",
            [PY, "-m", "app_api"],
            {
                **penv,
                "PROVISIO_APP_API_PORT": str(api_port),
                "PROVISIO_APP_API_HOST": "127.0.0.1",
                "PROVISIO_APP_API_RATE_LIMIT_PER_S": "0",
            },
            api_port,
        ).start(tmp),
        Service("webhook-dispatcher", [PY, "-m", "webhook_dispatcher"], {**wenv, "PROVISIO_HEALTH_PORT": "0"}).start(
            tmp
        ),
    ]
    app = Service(
        "example-app",
        [PY, "-m", "examples.receiver"],
        {
            **penv,
            "RECEIVER_API_URL": f"http://127.0.0.1:{api_port}",
            "RECEIVER_API_KEY": key,
            "RECEIVER_WEBHOOK_SECRET": secret,
            "RECEIVER_DATABASE_URL": app_dsn,
            "RECEIVER_TENANTS": tenant_name,
            "RECEIVER_PORT": str(app_port),
        },
        app_port,
        cwd=str(ROOT),
    ).start(tmp)
    started.append(app)
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            async with s.get(f"http://127.0.0.1:{app_port}/healthz") as r:
                if r.status == 200:
                    return started
            await asyncio.sleep(0.1)
    raise RuntimeError("the example app did not finish its backfill in 60 s")


async def wait_for_app(
    app_dsn: str, tenant_name: str, users: int, memberships: int, t0: float, timeout: float
) -> dict[str, Any]:
    """Seconds since ``t0`` until the example app holds every user, then every membership."""
    conn = await asyncpg.connect(app_dsn)
    out: dict[str, Any] = {"all_users_s": None, "all_memberships_s": None}
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            u, m = await app_counts(conn, tenant_name)
            now = round(time.monotonic() - t0, 1)
            if out["all_users_s"] is None and u >= users:
                out["all_users_s"] = now
            if out["all_memberships_s"] is None and m >= memberships:
                out["all_memberships_s"] = now
            out.update(users=u, memberships=m)
            if out["all_users_s"] is not None and out["all_memberships_s"] is not None:
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--groups", type=int, default=1_000)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent SCIM clients")
    ap.add_argument("--provisioners", type=int, default=1)
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between lag samples")
    ap.add_argument("--drain-timeout", type=float, default=300, help="max wait for the auditor afterwards")
    ap.add_argument("--tag", default="sync")
    ap.add_argument(
        "--example-app",
        action="store_true",
        help="also run the App API, the webhook dispatcher and examples/receiver subscribed to the tenant",
    )
    ap.add_argument("--app-timeout", type=float, default=900, help="max wait for the example app afterwards")
    args = ap.parse_args()
    if args.example_app and args.tag == "sync":
        args.tag = "sync-exampleapp"  # sync-latest.json stays the plain sync the tables are made from

    info = machine_info()
    b = Bench("sync")
    log(f"database {b.db}, redis prefix {b.prefix}; {args.users} users, {args.groups}x{args.members} groups")
    services: list[Service] = []
    sampling: asyncio.Task[None] | None = None
    results: dict[str, Any] = {"machine": info, "args": vars(args), "samples": []}
    with workdir("sync") as tmp:
        dsn = await create_database(b.db)
        app_db = f"{b.db}_app"
        app_dsn = dsn_for(app_db) if args.example_app else None
        tenant_name = "bench-sync"
        try:
            tenant, token = await make_tenant(dsn, tenant_name)
            penv = provisio_env(dsn, b.prefix)
            port = free_port()
            services.append(
                Service(
                    "scim-gateway",
                    [PY, "-m", "scim_gateway"],
                    {
                        **penv,
                        "PROVISIO_SCIM_PORT": str(port),
                        "PROVISIO_SCIM_HOST": "127.0.0.1",
                        "PROVISIO_SCIM_RATE_LIMIT_PER_S": "0",
                    },
                    port,
                ).start(tmp)
            )
            for i in range(args.provisioners):
                services.append(
                    Service(f"provisioner-{i}", [PY, "-m", "provisioner"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(
                        tmp
                    )
                )
            services.append(Service("auditor", [PY, "-m", "auditor"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(tmp))
            if app_dsn:
                services.extend(await start_example_app(dsn, penv, tmp, tenant, tenant_name, app_dsn))
                log(f"example app subscribed to {tenant_name} ({app_db})")
            topo = Topology(prefix=b.prefix, partitions=8)
            base = f"http://127.0.0.1:{port}/scim/v2"
            ids = os.path.join(tmp, "ids.jsonl")
            stop = asyncio.Event()
            samples: list[dict[str, Any]] = results["samples"]
            sampling = asyncio.create_task(
                sampler(dsn, topo, tenant, args.sample, stop, samples, services, app_dsn, tenant_name)
            )
            t0 = time.monotonic()
            with CpuMeter(services) as cpu_users:
                users = await run_loadgen(
                    {
                        "base": base,
                        "token": token,
                        "phase": "sync-users",
                        "count": args.users,
                        "concurrency": args.concurrency,
                        "ids_out": ids,
                        "run_id": b.id,
                    },
                    timeout=3600,
                )
            t_users = time.monotonic() - t0
            log(f"users: {args.users} in {t_users:.1f}s ({users['per_op'] or users['rps']}) errors {users['errors']}")
            with CpuMeter(services) as cpu_groups:
                groups = await run_loadgen(
                    {
                        "base": base,
                        "token": token,
                        "phase": "sync-groups",
                        "count": args.groups,
                        "members": args.members,
                        "concurrency": args.concurrency,
                        "ids_in": ids,
                        "run_id": b.id,
                    },
                    timeout=3600,
                )
            t_answered = time.monotonic() - t0
            log(f"groups: {args.groups} in {t_answered - t_users:.1f}s errors {groups['errors']}")
            # Every write was answered after the provisioner committed it; the audit trail
            # may still be catching up: wait (bounded) for the auditor to drain.
            app_result: dict[str, Any] = {}
            if app_dsn:
                app_result = await wait_for_app(
                    app_dsn, tenant_name, args.users, args.groups * args.members, t0, args.app_timeout
                )
                for k in ("all_users_s", "all_memberships_s"):
                    if app_result.get(k) is not None:
                        app_result[k + "_after_last_answer"] = round(app_result[k] - t_answered, 1)
                        app_result[k + "_after_last_user_answer"] = round(app_result[k] - t_users, 1)
                log(f"example app: {app_result}")
            drained_at = None
            end = time.monotonic() + args.drain_timeout
            while time.monotonic() < end:
                await asyncio.sleep(args.sample)
                last = samples[-1] if samples else {}
                if last and last["audit_lag"] == 0 and last["audit_pending"] == 0 and last["commands_pending"] == 0:
                    drained_at = time.monotonic() - t0
                    break
            stop.set()
            await sampling
            conn = await asyncpg.connect(dsn)
            final = {
                "users": await conn.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", tenant),
                "groups": await conn.fetchval("SELECT count(*) FROM groups WHERE tenant_id = $1", tenant),
                "memberships": await conn.fetchval("SELECT count(*) FROM memberships WHERE tenant_id = $1", tenant),
                "audit_rows": await conn.fetchval("SELECT count(*) FROM audit_log WHERE tenant_id = $1", tenant),
                "inbox_rows": await conn.fetchval("SELECT count(*) FROM inbox WHERE tenant_id = $1", tenant),
            }
            await conn.close()
            results.update(
                {
                    "users_phase": users,
                    "groups_phase": groups,
                    "final": final,
                    "users_s": round(t_users, 1),
                    "answered_s": round(t_answered, 1),
                    "audit_drained_s": round(drained_at, 1) if drained_at else None,
                    "example_app": app_result or None,
                    "cpu_users": cpu_users.by,
                    "cpu_groups": cpu_groups.by,
                    "peak_rss_mb": {s.name: round(s.peak_rss_mb, 1) for s in services},
                    "vmhwm_mb": {s.name: round(max(s.hwm_mb().values(), default=0), 1) for s in services},
                }
            )
            log(f"done: all answered at {t_answered:.1f}s, audit drained at {drained_at}; final {final}")
        finally:
            if sampling is not None and not sampling.done():
                sampling.cancel()
                with contextlib.suppress(BaseException):
                    await sampling
            for s in services:
                s.stop()
            await drop_database(b.db)
            if app_dsn:
                await drop_database(app_db)
            n = await delete_redis_prefix(b.prefix)
            log(f"dropped {b.db}; deleted {n} Redis keys")
    path = write_results(args.tag, results)
    log(f"wrote {path.relative_to(ROOT)}")
    print(
        json.dumps(
            {
                k: results.get(k)
                for k in ("users_s", "answered_s", "audit_drained_s", "final", "example_app", "peak_rss_mb")
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
