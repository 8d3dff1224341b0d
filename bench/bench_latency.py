"""Where one SCIM write's time goes: sequential requests (one client, nothing queued),
each traced through the pipeline from timestamps the pipeline already records:

  client sends                          (load generator clock)
  A  → Command.occurred_at              gateway: HTTP, auth, JSON, SCIM validation (and,
                                        for PATCH, reading the current user)
  B  → command stream entry id          encode + XADD (Redis's clock, 1 ms resolution)
  C  → inbox.applied_at                 provisioner: XREADGROUP wake-up, decode, BEGIN
                                        (Postgres now() = transaction start)
  D  → Outcome.completed_at             the statements of the apply
  E  → reply stream entry id            COMMIT, then XADD of the outcome
  F  → client receives                  gateway: XREAD wake-up, decode, response, HTTP

A batch of creates only is one statement whose outcome is made *before* it (the
provisioner's one-statement path): there D is slightly negative (the outcome's time
precedes the statement's now()) and E holds the whole INSERT + commit + XADD.

All on one host, so one clock. Stream ids have millisecond resolution: the means of B,
C and E are meaningful, single values are not.

    .venv/bin/python bench/bench_latency.py --n 300

Writes bench/results/latency-<stamp>.json (and latency-latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
from redis.asyncio import Redis

import loadgen
from harness import (
    PY,
    REDIS_URL,
    ROOT,
    Bench,
    Service,
    create_database,
    delete_redis_prefix,
    drop_database,
    free_port,
    log,
    machine_info,
    make_tenant,
    provisio_env,
    workdir,
    write_results,
)
from provisio_lib.outcomes import entry_outcomes
from provisio_lib.topology import DATA_FIELD, Topology

SEGMENTS = ("A_gateway_in", "B_encode_xadd", "C_to_transaction", "D_apply", "E_commit_publish", "F_reply_out")


def _ms(stream_id: bytes | str) -> float:
    """A stream entry id's time; +0.5 ms because Redis truncates to the millisecond, so the
    mean error over many entries is ~0 (single entries are still ±0.5 ms)."""
    s = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return (float(s.split("-")[0]) + 0.5) / 1000.0


def _ts(v: str) -> float:
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="requests per operation")
    ap.add_argument("--tag", default="latency")
    args = ap.parse_args()
    info = machine_info()
    b = Bench("lat")
    services: list[Service] = []
    results: dict[str, Any] = {"machine": info, "args": vars(args)}
    with workdir("lat") as tmp:
        dsn = await create_database(b.db)
        try:
            tenant, token = await make_tenant(dsn, "bench-latency")
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
            services.append(
                Service("provisioner-0", [PY, "-m", "provisioner"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(tmp)
            )
            services.append(Service("auditor", [PY, "-m", "auditor"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(tmp))
            loop = asyncio.get_running_loop()
            conn = await loadgen.Http.connect(loop, "127.0.0.1", port)
            head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/scim+json\r\n"

            async def send(method: str, path: str, body: bytes) -> tuple[int, bytes, float, float]:
                raw = f"{method} /scim/v2{path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
                t0 = time.time()
                status, data = await conn.send(raw)
                return status, data, t0, time.time()

            sent: dict[tuple[str, str], tuple[float, float]] = {}
            ids = []
            for i in range(args.n + 30):  # the first 30 warm up (connections, caches)
                status, data, t0, t1 = await send("POST", "/Users", loadgen.user_body(f"lat{i}-{b.id}@bench.test", i))
                assert status == 201, data[:300]
                uid = json.loads(data)["id"]
                ids.append(uid)
                if i >= 30:
                    sent[("user.create", uid)] = (t0, t1)
            for i, uid in enumerate(ids):
                status, data, t0, t1 = await send("PATCH", f"/Users/{uid}", loadgen.patch_body(i))
                assert status in (200, 204), data[:300]
                if i >= 30:
                    sent[("user.patch", uid)] = (t0, t1)
            conn.close()

            topo = Topology(prefix=b.prefix, partitions=8)
            redis = Redis.from_url(REDIS_URL)
            commands: dict[str, tuple[str, float, float]] = {}  # event_id -> (key, occurred, xadd)
            for _id, fields in await redis.xrange(topo.command_stream_for(tenant)):
                c = json.loads(fields[DATA_FIELD.encode()])
                key = ("user.create" if c["type"] == "user.create" else "user.patch", c["payload"]["user_id"])
                commands[c["event_id"]] = (json.dumps(key), _ts(c["occurred_at"]), _ms(_id))
            replies: dict[str, tuple[float, float]] = {}  # event_id -> (completed, reply xadd)
            async for stream in redis.scan_iter(match=f"{b.prefix}:{{r:*}}:replies"):
                for _id, fields in await redis.xrange(stream):
                    for o in entry_outcomes(fields):  # one outcome, or a batch's
                        replies[str(o.event_id)] = (o.completed_at.timestamp(), _ms(_id))
            await redis.aclose()
            db = await asyncpg.connect(dsn)
            applied = {
                str(r["event_id"]): r["applied_at"].timestamp()
                for r in await db.fetch("SELECT event_id, applied_at FROM inbox WHERE tenant_id = $1", tenant)
            }
            types = {
                str(r["event_id"]): r["type"]
                for r in await db.fetch("SELECT event_id, type FROM inbox WHERE tenant_id = $1", tenant)
            }
            await db.close()

            rows: dict[str, list[dict[str, float]]] = {}
            for ev, (key_json, occurred, xadd) in commands.items():
                key = tuple(json.loads(key_json))
                if key not in sent or ev not in replies or ev not in applied:
                    continue
                t0, t1 = sent[key]  # type: ignore[index]
                completed, reply = replies[ev]
                seg = {
                    "A_gateway_in": occurred - t0,
                    "B_encode_xadd": xadd - occurred,
                    "C_to_transaction": applied[ev] - xadd,
                    "D_apply": completed - applied[ev],
                    "E_commit_publish": reply - completed,
                    "F_reply_out": t1 - reply,
                    "total": t1 - t0,
                }
                rows.setdefault(f"{key[0]} ({types.get(ev)})", []).append({k: v * 1000 for k, v in seg.items()})
            summary = {}
            for op, segs in rows.items():
                summary[op] = {"n": len(segs)}
                for k in (*SEGMENTS, "total"):
                    vals = [s[k] for s in segs]
                    summary[op][k] = {
                        "mean_ms": round(statistics.fmean(vals), 2),
                        "p50_ms": round(statistics.median(vals), 2),
                    }
                log(f"{op}: " + ", ".join(f"{k} {v['mean_ms']:.2f}" for k, v in summary[op].items() if k != "n"))
            results["summary"] = summary
        finally:
            for s in services:
                s.stop()
            await drop_database(b.db)
            await delete_redis_prefix(b.prefix)
    path = write_results(args.tag, results)
    log(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
