"""Same-run A/B of two (or more) checkouts of Provisio: SCIM cells interleaved round by
round, medians, ratios against the first side.

Each side is a directory holding a checkout (``git worktree add DIR COMMIT``). Its services
(``scim_gateway``, ``provisioner``, ``auditor``) run from that directory's ``libs/`` and
``services/`` on one interpreter (this venv's, unless ``--python NAME=PATH``), so with the
same pinned libraries only the code differs. Each side gets its own database, migrated by
its own migrations, and its own Redis prefix; all sides are up for the whole run and are
measured in turn (order alternating A B / B A from round to round, so drift in the
machine's load hits both alike).

    git worktree add --detach /work/wt/fb-before b128684      # the commit before the outbox
    git worktree add --detach /work/wt/fb-outbox 423e600      # the outbox branch's tip
    .venv/bin/python bench/bench_ab.py --side before=/work/wt/fb-before \\
        --side outbox=/work/wt/fb-outbox --phases create --concurrency 32 --rounds 6

Reported per side: req/s, p50/p99 (medians of the rounds), CPU seconds per 1,000 requests
by process (gateway, provisioner, auditor, Postgres, Redis), and ratios against the first
side, both of the medians and as the median of each round's paired ratio. Writes
bench/results/ab-<stamp>.json (and ab-latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    ADMIN_DSN,
    PY,
    ROOT,
    Bench,
    CpuMeter,
    Service,
    delete_redis_prefix,
    drop_database,
    dsn_for,
    free_port,
    log,
    machine_info,
    make_tenant,
    median_of,
    provisio_env,
    run_loadgen,
    workdir,
    write_results,
)

# Applies the side's own migrations (the side's provisio_lib, via PYTHONPATH).
_MIGRATE = """
import asyncio, sys
import asyncpg
from provisio_lib import db
async def go():
    conn = await asyncpg.connect(sys.argv[1])
    try:
        done = await db.migrate(conn)
    finally:
        await conn.close()
    print(len(done))
asyncio.run(go())
"""


def side_pythonpath(path: Path) -> str:
    return os.pathsep.join([str(path / "libs"), str(path / "services"), str(path)])


def git_head(path: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


async def make_side_database(name: str, path: Path, python: str) -> str:
    import asyncpg

    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = dsn_for(name)
    env = {**os.environ, "PYTHONPATH": side_pythonpath(path)}
    proc = await asyncio.create_subprocess_exec(
        python, "-c", _MIGRATE, dsn, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"migrations of {path} failed: {err.decode()[-1500:]}")
    return dsn


def paired_ratio(cells: list[dict[str, Any]], side: str, ref: str, key: str) -> float | None:
    """Median over rounds of (side's value ÷ reference's value in the same round)."""
    by_round: dict[tuple[int, str], dict[str, float]] = {}
    for c in cells:
        v = c.get(key)
        if isinstance(v, int | float) and v:
            by_round.setdefault((c["round"], c["phase"]), {})[c["side"]] = v
    ratios = [r[side] / r[ref] for r in by_round.values() if side in r and ref in r]
    return round(statistics.median(ratios), 3) if ratios else None


def cpu_per_1k(cell: dict[str, Any], warmup: float) -> dict[str, float]:
    # The CPU window includes the warm-up, the count does not: scale the count to the window.
    ok = max(cell["ok"] * (cell["duration_s"] + warmup) / cell["duration_s"], 1)
    out = {k: round(1000 * v / ok, 3) for k, v in cell["cpu"].items() if k not in ("wall", "machine_busy")}
    out["stack"] = round(sum(v for k, v in out.items() if k in ("scim-gateway", "provisioner", "auditor")), 3)
    # Postgres: only this side's backends when measured (the server is shared).
    out["stack+db"] = round(out["stack"] + out.get("postgres_own", out.get("postgres", 0)), 3)
    return out


def summarize(cells: list[dict[str, Any]], sides: list[str], phases: list[str]) -> dict[str, Any]:
    ref = sides[0]
    out: dict[str, Any] = {}
    for phase in phases:
        row: dict[str, Any] = {}
        for side in sides:
            runs = [c for c in cells if c["side"] == side and c["phase"] == phase]
            if not runs:
                continue
            s: dict[str, Any] = {k: median_of(runs, k) for k in ("rps", "p50_ms", "p99_ms")}
            s["rounds_rps"] = [r["rps"] for r in runs]
            s["rounds_p99_ms"] = [r["p99_ms"] for r in runs]
            s["errors"] = sum(r["errors"] for r in runs)
            keys = set().union(*(r["cpu_per_1k"].keys() for r in runs))
            s["cpu_s_per_1k"] = {k: median_of([{"v": r["cpu_per_1k"].get(k, 0)} for r in runs], "v") for k in keys}
            if side != ref and ref in row:
                r0 = row[ref]
                s["vs_" + ref] = {
                    "rps_of_medians": round(s["rps"] / r0["rps"], 3) if r0["rps"] else None,
                    "rps_paired_median": paired_ratio(cells, side, ref, "rps"),
                    "p99_of_medians": round(s["p99_ms"] / r0["p99_ms"], 3) if r0["p99_ms"] else None,
                    "stack_cpu_per_req": round(s["cpu_s_per_1k"]["stack"] / r0["cpu_s_per_1k"]["stack"], 3)
                    if r0["cpu_s_per_1k"].get("stack")
                    else None,
                    "stack_db_cpu_per_req_paired_median": paired_ratio(cells, side, ref, "stack_db_cpu_per_1k"),
                    "stack_db_cpu_per_req": round(s["cpu_s_per_1k"]["stack+db"] / r0["cpu_s_per_1k"]["stack+db"], 3)
                    if r0["cpu_s_per_1k"].get("stack+db")
                    else None,
                }
            row[side] = s
        out[phase] = row
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", action="append", required=True, metavar="NAME=DIR", help="a checkout (2 or more)")
    ap.add_argument("--python", action="append", default=[], metavar="NAME=PATH", help="interpreter of a side")
    ap.add_argument("--phases", default="create", help="create, patch (patch uses the side's created users)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per cell")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument(
        "--rate",
        type=float,
        default=0,
        help="pace each cell at this many requests/s (0: closed loop); at a rate every side keeps up "
        "with, CPU per request compares the sides at the same batching",
    )
    ap.add_argument("--tag", default="ab")
    args = ap.parse_args()
    sides: dict[str, Path] = {}
    for item in args.side:
        name, _, path = item.partition("=")
        if not name or not path or not (Path(path) / "services" / "scim_gateway").is_dir():
            ap.error(f"--side {item!r}: expected NAME=DIR with a Provisio checkout in DIR")
        sides[name] = Path(path).resolve()
    if len(sides) < 2:
        ap.error("give at least two --side")
    pythons = {k: v for k, _, v in (p.partition("=") for p in args.python)}
    phases = [p for p in args.phases.split(",") if p]

    info = machine_info()
    info["sides"] = {n: {"dir": str(p), "commit": git_head(p), "python": pythons.get(n, PY)} for n, p in sides.items()}
    b = Bench("ab")
    described = ", ".join(f"{n}={v['commit']}" for n, v in info["sides"].items())
    log(f"A/B {described}; databases {b.db}_<side>")
    services: dict[str, list[Service]] = {}
    results: dict[str, Any] = {"machine": info, "args": vars(args), "cells": []}
    targets: dict[str, dict[str, Any]] = {}
    with workdir("ab") as tmp:
        try:
            for name, path in sides.items():
                python = pythons.get(name, PY)
                dsn = await make_side_database(f"{b.db}_{name}", path, python)
                _, token = await make_tenant(dsn, f"bench-ab-{name}")
                env = provisio_env(dsn, f"{b.prefix}{name}")
                env["PYTHONPATH"] = side_pythonpath(path)
                port = free_port()
                run = [python, "-m"]
                cwd = str(path)
                svcs = [
                    Service(
                        "scim-gateway",
                        [*run, "scim_gateway"],
                        {
                            **env,
                            "PROVISIO_SCIM_PORT": str(port),
                            "PROVISIO_SCIM_HOST": "127.0.0.1",
                            "PROVISIO_SCIM_RATE_LIMIT_PER_S": "0",
                            # Two sides' gateways would both take the operator port 9181.
                            "PROVISIO_SCIM_METRICS_PORT": "0",
                        },
                        port,
                        cwd=cwd,
                    ),
                    Service("provisioner", [*run, "provisioner"], {**env, "PROVISIO_HEALTH_PORT": "0"}, cwd=cwd),
                    Service("auditor", [*run, "auditor"], {**env, "PROVISIO_HEALTH_PORT": "0"}, cwd=cwd),
                ]
                logdir = os.path.join(tmp, name)
                os.makedirs(logdir, exist_ok=True)
                for s in svcs:
                    s.start(logdir)
                services[name] = svcs
                targets[name] = {
                    "base": f"http://127.0.0.1:{port}/scim/v2",
                    "token": token,
                    "ids": os.path.join(tmp, f"ids-{name}.jsonl"),
                }
            log(f"started {len(sides)} stacks")
            names = list(sides)
            for rnd in range(args.rounds):
                order = names if rnd % 2 == 0 else names[::-1]
                for phase in phases:
                    for name in order:
                        t = targets[name]
                        spec: dict[str, Any] = {
                            "base": t["base"],
                            "token": t["token"],
                            "phase": phase,
                            "concurrency": args.concurrency,
                            "duration": args.duration,
                            "warmup": args.warmup,
                            "run_id": f"ab{name[:6]}{phase[:2]}{rnd}",
                            "rate": args.rate,
                        }
                        if phase == "create":
                            spec["ids_out"] = t["ids"]
                        else:
                            spec["ids_in"] = t["ids"]
                        with CpuMeter(services[name], [f"{b.db}_{name}"]) as meter:
                            res = await run_loadgen(spec)
                        res.update(side=name, round=rnd, cpu=meter.by)
                        res["cpu_per_1k"] = cpu_per_1k(res, args.warmup)
                        res["stack_db_cpu_per_1k"] = res["cpu_per_1k"]["stack+db"]
                        results["cells"].append(res)
                        log(
                            f"{name:10} {phase:6} r{rnd}: {res['rps']:>8} req/s  p50 {res['p50_ms']:>7} ms"
                            f"  p99 {res['p99_ms']:>8} ms  stack CPU/1k {res['cpu_per_1k']['stack']:.3f} s"
                            f"  machine busy {meter.by['machine_busy']:.1f}/{meter.by['wall']:.1f} s"
                            f"  errors {res['errors']}"
                        )
            results["summary"] = summarize(results["cells"], names, phases)
        finally:
            for name, svcs in services.items():
                for s in svcs:
                    s.stop()
                    if s.proc is not None and s.proc.returncode not in (0, -15, None):
                        log(f"{name}/{s.name} exited {s.proc.returncode}: {Path(s.log_path).read_text()[-1500:]}")
            for name in sides:
                await drop_database(f"{b.db}_{name}")
                await delete_redis_prefix(f"{b.prefix}{name}")
    path = write_results(args.tag, results)
    log(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps(results.get("summary", {}), indent=1))


if __name__ == "__main__":
    asyncio.run(main())
