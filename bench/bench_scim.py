"""SCIM throughput and latency: Provisio beside a straight-to-Postgres aiohttp baseline,
scim2-server (gunicorn) and django-scim2 (gunicorn, Postgres), with one load generator,
in one run. Also the load generator's own ceiling against an aiohttp hello world.

    .venv/bin/python bench/bench_scim.py                       # full run (see --help)
    .venv/bin/python bench/bench_scim.py --duration 1 --repeats 1 --concurrency 1,32   # smoke

Phases: create, get (filter userName eq), patch (Entra shape), mixed (Entra-like sync
cycle: lookup, create, patch, group member add), at each concurrency; each cell repeated
``--repeats`` times, the rounds interleaved across systems so that the shared machine's
noise hits every system alike; medians are reported. Writes
bench/results/scim-<stamp>.json (and scim-latest.json) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BENCH,
    PEERS_VENV,
    PY,
    ROOT,
    Bench,
    CpuMeter,
    Service,
    create_database,
    create_plain_database,
    delete_redis_prefix,
    drop_database,
    finish_profiles,
    free_port,
    log,
    machine_info,
    make_tenant,
    median_of,
    provisio_env,
    run_loadgen,
    start_profiles,
    workdir,
    write_results,
)

PHASES = ("create", "get", "patch", "mixed")
SYSTEMS = ("provisio", "baseline", "scim2-server", "django-scim2")


def ensure_peers() -> None:
    """Create bench/.venv-peers with the pinned peers if it is missing."""
    if (PEERS_VENV / "bin" / "gunicorn").exists():
        return
    log("creating bench/.venv-peers (scim2-server, django-scim2, gunicorn)")

    # The product venv's interpreter, so the peers run on the same Python.
    base = subprocess.run(
        [PY, "-c", "import sys; print(sys._base_executable)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run([base, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run(
        [str(PEERS_VENV / "bin" / "pip"), "install", "-q", "-r", str(BENCH / "peers" / "requirements.txt")], check=True
    )


async def create_groups(base: str, token: str, n: int, tag: str) -> list[str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/scim+json"}
    ids = []
    async with aiohttp.ClientSession(headers=headers) as s:
        for i in range(n):
            body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": f"bench-{tag}-{i}"}
            async with s.post(f"{base}/Groups", json=body) as r:
                text = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"group create on {base}: {r.status} {text[:300]}")
                ids.append(json.loads(text)["id"])
    return ids


async def create_baseline_groups(dsn: str, tenant: Any, n: int) -> list[str]:
    import uuid

    import asyncpg

    conn = await asyncpg.connect(dsn)
    ids = [uuid.uuid4() for _ in range(n)]
    await conn.executemany(
        "INSERT INTO groups (id, tenant_id, display_name) VALUES ($1, $2, $3)",
        [(g, tenant, f"bench-baseline-{i}") for i, g in enumerate(ids)],
    )
    await conn.close()
    return [str(g) for g in ids]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="1,32,128")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--groups", type=int, default=20, help="groups per system for the mixed phase")
    ap.add_argument("--provisioners", type=int, default=1, help="provisioner processes")
    ap.add_argument("--peer-workers", type=int, default=2, help="gunicorn workers of django-scim2")
    ap.add_argument("--peer-threads", type=int, default=4, help="gunicorn threads per worker (both peers)")
    ap.add_argument("--tag", default="scim", help="results file name prefix")
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy each Provisio process during each Provisio cell: collapsed stacks in DIR",
    )
    ap.add_argument("--keep", action="store_true", help="keep the database and Redis keys (debugging)")
    args = ap.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]
    systems = [s for s in args.systems.split(",") if s]
    phases = [p for p in args.phases.split(",") if p]
    peers = [s for s in systems if s in ("scim2-server", "django-scim2")]
    if peers:
        ensure_peers()

    info = machine_info()
    b = Bench("scim")
    log(f"database {b.db}, redis prefix {b.prefix}")
    services: dict[str, Service] = {}
    dj_db = f"{b.db}_django"
    results: dict[str, Any] = {"machine": info, "args": vars(args), "cells": [], "hello": []}
    with workdir("scim") as tmp:
        dsn = await create_database(b.db)
        try:
            _, prov_token = await make_tenant(dsn, "bench-provisio")
            base_tid, base_token = await make_tenant(dsn, "bench-baseline")
            peer_token = "bench-peer-token"
            penv = provisio_env(dsn, b.prefix)

            hello_port = free_port()
            services["hello"] = Service(
                "hello", [PY, str(BENCH / "servers.py"), "hello", "--port", str(hello_port)], penv, hello_port
            ).start(tmp)
            targets: dict[str, dict[str, Any]] = {}
            for system, sfx in (("provisio", ""), ("provisio-asyncio", "-aio")):
                if system not in systems:
                    continue
                # provisio-asyncio: the same services on asyncio's own loop instead of uvloop
                # (PROVISIO_EVENT_LOOP=asyncio), own tenant and Redis prefix, same rounds.
                run = [PY, "-m"]
                env = penv if not sfx else {**provisio_env(dsn, b.prefix + "aio"), "PROVISIO_EVENT_LOOP": "asyncio"}
                token = prov_token if not sfx else (await make_tenant(dsn, "bench-provisio-aio"))[1]
                port = free_port()
                services[f"scim-gateway{sfx}"] = Service(
                    f"scim-gateway{sfx}",
                    [*run, "scim_gateway"],
                    {
                        **env,
                        "PROVISIO_SCIM_PORT": str(port),
                        "PROVISIO_SCIM_HOST": "127.0.0.1",
                        "PROVISIO_SCIM_RATE_LIMIT_PER_S": "0",
                    },
                    port,
                ).start(tmp)
                for i in range(args.provisioners):
                    services[f"provisioner{sfx}-{i}"] = Service(
                        f"provisioner{sfx}-{i}", [*run, "provisioner"], {**env, "PROVISIO_HEALTH_PORT": "0"}
                    ).start(tmp)
                services[f"auditor{sfx}"] = Service(
                    f"auditor{sfx}", [*run, "auditor"], {**env, "PROVISIO_HEALTH_PORT": "0"}
                ).start(tmp)
                targets[system] = {"base": f"http://127.0.0.1:{port}/scim/v2", "token": token}
            if "baseline" in systems:
                port = free_port()
                services["baseline"] = Service(
                    "baseline", [PY, str(BENCH / "servers.py"), "baseline", "--port", str(port)], penv, port
                ).start(tmp)
                targets["baseline"] = {"base": f"http://127.0.0.1:{port}/scim/v2", "token": base_token}
            gunicorn = str(PEERS_VENV / "bin" / "gunicorn")
            if "scim2-server" in systems:
                port = free_port()
                env = {**os.environ, "SCIM2_BENCH_TOKEN": peer_token}
                services["scim2-server"] = Service(
                    "scim2-server",
                    [
                        gunicorn,
                        "-w",
                        "1",
                        "-k",
                        "gthread",
                        "--threads",
                        str(args.peer_threads),
                        "-b",
                        f"127.0.0.1:{port}",
                        "bench.peers.scim2_server_app:application",
                    ],
                    env,
                    port,
                    cwd=str(ROOT),
                ).start(tmp)
                targets["scim2-server"] = {"base": f"http://127.0.0.1:{port}/v2", "token": peer_token}
            if "django-scim2" in systems:
                port = free_port()
                dj_dsn = await create_plain_database(dj_db)
                env = {**os.environ, "SCIM2_BENCH_TOKEN": peer_token, "PEER_DATABASE_URL": dj_dsn}
                cwd = str(BENCH / "peers" / "django_scim")
                migrate = Service(
                    "django-migrate", [str(PEERS_VENV / "bin" / "python"), "manage.py", "migrate", "-v0"], env, cwd=cwd
                ).start(tmp)
                if migrate.proc is not None and migrate.proc.wait(120) != 0:
                    raise RuntimeError(f"django migrate failed:\n{Path(migrate.log_path).read_text()[-2000:]}")
                services["django-scim2"] = Service(
                    "django-scim2",
                    [
                        gunicorn,
                        "-w",
                        str(args.peer_workers),
                        "-k",
                        "gthread",
                        "--threads",
                        str(args.peer_threads),
                        "-b",
                        f"127.0.0.1:{port}",
                        "peerapp.wsgi:application",
                    ],
                    env,
                    port,
                    cwd=cwd,
                ).start(tmp)
                targets["django-scim2"] = {"base": f"http://127.0.0.1:{port}/scim/v2", "token": peer_token}

            for name, t in targets.items():
                if name == "baseline":
                    t["groups"] = await create_baseline_groups(dsn, base_tid, args.groups)
                else:
                    t["groups"] = await create_groups(t["base"], t["token"], args.groups, name)
                t["ids"] = os.path.join(tmp, f"ids-{name}.jsonl")
            log(f"started: {', '.join(services)}")
            svc_list = list(services.values())

            async def cell(system: str, phase: str, conc: int, rnd: int) -> dict[str, Any]:
                t = targets[system]
                spec = {
                    "base": t["base"],
                    "token": t["token"],
                    "phase": phase,
                    "concurrency": conc,
                    "duration": args.duration,
                    "warmup": args.warmup,
                    "groups": t["groups"],
                    "run_id": f"{system[:4]}{phase[:2]}{rnd}c{conc}",
                }
                if phase == "create" or phase == "mixed":
                    spec["ids_out"] = t["ids"]
                if phase in ("get", "patch"):
                    spec["ids_in"] = t["ids"]
                spies = []
                if args.profile and system.startswith("provisio"):
                    # Only the stack under test (provisio or provisio-asyncio's "-aio" processes).
                    mine = {
                        n: sv
                        for n, sv in services.items()
                        if n.startswith(("scim-gateway", "provisioner", "auditor"))
                        and ("-aio" in n) == system.endswith("asyncio")
                    }
                    spies = start_profiles(args.profile, mine, f"{phase}-c{conc}-r{rnd}", args.duration + args.warmup)
                started = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.warmup)
                with CpuMeter(svc_list) as meter:
                    res = await run_loadgen(spec)
                for s in svc_list:
                    s.sample()
                res.update(system=system, round=rnd, cpu=meter.by)
                if system.startswith("provisio") and phase != "get":
                    res["pipeline_latency"] = await pipeline_latency(dsn, started, dt.datetime.now(dt.UTC))
                if spies:
                    res["profile"] = finish_profiles(spies)
                log(
                    f"{system:13} {phase:6} c={conc:<3} r{rnd}: {res['rps']:>8} req/s  p50 {res['p50_ms']:>7} ms"
                    f"  p99 {res['p99_ms']:>8} ms  errors {res['errors']}"
                )
                if res["errors"]:
                    log(f"   errors: {res['error_kinds']} e.g. {list(res['error_samples'].values())[:1]}")
                return res

            # The load generator's own ceiling: a hello world answers as fast as aiohttp can.
            for rnd in range(args.repeats):
                for conc in concs:
                    spec = {
                        "base": f"http://127.0.0.1:{hello_port}",
                        "phase": "hello",
                        "concurrency": conc,
                        "duration": args.duration,
                        "warmup": args.warmup,
                    }
                    with CpuMeter(svc_list) as meter:
                        res = await run_loadgen(spec)
                    res.update(system="hello", round=rnd, cpu=meter.by)
                    results["hello"].append(res)
                    log(
                        f"hello         c={conc:<3} r{rnd}: {res['rps']:>8} req/s  p99 {res['p99_ms']} ms"
                        f"  (load generator CPU {res['loadgen_cpu_s']} s)"
                    )

            for rnd in range(args.repeats):
                for phase in phases:
                    for conc in concs:
                        for system in targets:
                            results["cells"].append(await cell(system, phase, conc, rnd))

            results["memory"] = {}
            for s in svc_list:
                s.sample()
                results["memory"][s.name] = {
                    "peak_rss_mb_sampled": round(s.peak_rss_mb, 1),
                    "vmhwm_mb_by_process": {str(k): round(v, 1) for k, v in s.hwm_mb().items()},
                }
            results["summary"] = summarize(results, concs, phases, list(targets))
        finally:
            codes = {s.name: s.stop() for s in services.values()}
            for s in services.values():
                if s.proc is not None and s.proc.returncode not in (0, -15, None):
                    log(f"{s.name} exited {s.proc.returncode}; log tail:\n{Path(s.log_path).read_text()[-1500:]}")
            results["exit_codes"] = codes
            if not args.keep:
                await drop_database(b.db)
                await drop_database(dj_db)
                n = await delete_redis_prefix(b.prefix) + await delete_redis_prefix(b.prefix + "uv")
                log(f"dropped {b.db}, {dj_db}; deleted {n} Redis keys")
    path = write_results(args.tag, results)
    log(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps(results.get("summary", {}), indent=1))


async def pipeline_latency(dsn: str, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """From the audit trail: time from the gateway accepting a command (occurred_at) to
    the provisioner's commit (latency_ms), by operation, for the commands of one cell."""
    import asyncpg

    await asyncio.sleep(1.0)  # let the auditor catch up with the cell's last outcomes
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT operation, count(*) AS n,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
               FROM audit_log WHERE occurred_at >= $1 AND occurred_at < $2 GROUP BY operation""",
            start,
            end,
        )
    finally:
        await conn.close()
    return {
        r["operation"]: {"n": r["n"], "p50_ms": round(r["p50"] or 0, 2), "p99_ms": round(r["p99"] or 0, 2)}
        for r in rows
    }


def summarize(results: dict[str, Any], concs: list[int], phases: list[str], systems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"hello": {}, "phases": {}}
    for conc in concs:
        runs = [r for r in results["hello"] if r["concurrency"] == conc]
        for r in runs:
            # The load generator's CPU per request (warm-up included on both sides).
            total = r["ok"] * (r["duration_s"] + results["args"]["warmup"]) / r["duration_s"]
            r["loadgen_us_per_req"] = 1e6 * r["loadgen_cpu_s"] / max(total, 1)
        out["hello"][conc] = {
            "rps": median_of(runs, "rps"),
            "p99_ms": median_of(runs, "p99_ms"),
            "loadgen_cpu_s": median_of(runs, "loadgen_cpu_s"),
            "loadgen_us_per_req": median_of(runs, "loadgen_us_per_req"),
        }
    for phase in phases:
        for conc in concs:
            row: dict[str, Any] = {}
            for system in systems:
                runs = [
                    r
                    for r in results["cells"]
                    if r["system"] == system and r["phase"] == phase and r["concurrency"] == conc
                ]
                if not runs:
                    continue
                row[system] = {k: median_of(runs, k) for k in ("rps", "p50_ms", "p99_ms")}
                row[system]["errors"] = sum(r["errors"] for r in runs)
                row[system]["requests"] = sum(r["ok"] for r in runs)
                cpu_keys = set().union(*(r["cpu"].keys() for r in runs))
                # CPU seconds per 1,000 successful requests, by process (median over rounds);
                # "loadgen" is the load generator's own.
                for r in runs:
                    r["cpu"]["loadgen"] = r.get("loadgen_cpu_s", 0)
                row[system]["cpu_s_per_1k"] = {
                    k: median_of([{"v": 1000 * r["cpu"].get(k, 0) / max(r["ok"], 1)} for r in runs], "v")
                    for k in sorted(cpu_keys | {"loadgen"})
                    if k not in ("wall", "hello")
                }
                if phase == "mixed":
                    ops = set().union(*(r["per_op"].keys() for r in runs))
                    row[system]["per_op"] = {
                        op: {
                            k: median_of([r["per_op"][op] for r in runs if op in r["per_op"]], k)
                            for k in ("rps", "p50_ms", "p99_ms")
                        }
                        for op in sorted(ops)
                    }
            p = row.get("provisio", {}).get("rps")
            if p:
                if row.get("baseline", {}).get("rps"):
                    row["provisio_vs_baseline"] = round(p / row["baseline"]["rps"], 2)
                peer_best = max((row[s]["rps"] or 0 for s in ("scim2-server", "django-scim2") if s in row), default=0)
                if peer_best:
                    row["provisio_vs_best_peer"] = round(p / peer_best, 2)
            out["phases"][f"{phase}@{conc}"] = row
    return out


if __name__ == "__main__":
    asyncio.run(main())
