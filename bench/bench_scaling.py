"""Scaling with the number of provisioner processes (1, 2, 4):

- end to end: SCIM create and the mixed Entra-like sync through the gateway at
  ``--concurrency`` clients (bench_scim.py with ``--systems provisio --provisioners K``);
- worker only: bench/bench_provisioner.py (the lead's: creates published straight to the
  command streams, applied by K provisioner processes, beside a plain batched INSERT).

    .venv/bin/python bench/bench_scaling.py --workers 1,2,4

Writes bench/results/scaling-<stamp>.json (and scaling-latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    BENCH,
    PY,
    REDIS_URL,
    RESULTS,
    ROOT,
    Bench,
    create_plain_database,
    drop_database,
    log,
    machine_info,
    provisio_env,
    write_results,
)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--concurrency", default="128")
    ap.add_argument("--phases", default="create,mixed")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=20_000, help="commands for the worker-only run")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args), "e2e": {}, "worker_only": {}}
    for k in workers:
        log(f"end to end with {k} provisioner(s)")
        tag = f"scaling-e2e-{k}"
        subprocess.run(
            [
                PY,
                str(BENCH / "bench_scim.py"),
                "--systems",
                "provisio",
                "--phases",
                args.phases,
                "--concurrency",
                args.concurrency,
                "--duration",
                str(args.duration),
                "--repeats",
                str(args.repeats),
                "--provisioners",
                str(k),
                "--tag",
                tag,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        data = json.loads((RESULTS / f"{tag}-latest.json").read_text())
        results["e2e"][k] = {
            key: {
                "rps": row["provisio"]["rps"],
                "p99_ms": row["provisio"]["p99_ms"],
                "errors": row["provisio"]["errors"],
                "cpu_s_per_1k": row["provisio"]["cpu_s_per_1k"],
            }
            for key, row in data["summary"]["phases"].items()
        }
        (RESULTS / f"{tag}-latest.json").unlink()
        log(f"  {results['e2e'][k]}")
    for k in workers:
        b = Bench("prov")
        dsn = await create_plain_database(b.db)
        try:
            runs = []
            for _ in range(args.repeats):
                env = {**provisio_env(dsn, b.prefix), "PROVISIO_REDIS_URL": REDIS_URL}
                out = subprocess.run(
                    [PY, str(BENCH / "bench_provisioner.py"), "--n", str(args.n), "--workers", str(k)],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                )
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            rates = sorted(r["provisioner_per_s"] for r in runs)
            base = sorted(r["baseline_insert_per_s"] for r in runs)
            results["worker_only"][k] = {
                "provisioner_per_s": rates[len(rates) // 2],
                "baseline_insert_per_s": base[len(base) // 2],
                "runs": runs,
            }
            log(
                f"worker only, {k} provisioner(s): {results['worker_only'][k]['provisioner_per_s']} commands/s "
                f"(plain INSERT {results['worker_only'][k]['baseline_insert_per_s']}/s)"
            )
        finally:
            await drop_database(b.db)
    path = write_results("scaling", results)
    for p in RESULTS.glob("scaling-e2e-*-2*.json"):
        os.unlink(p)  # folded into the scaling file
    log(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
