"""Markdown tables from the latest results in bench/results/, for BENCHMARKS.md.

.venv/bin/python bench/report.py > /tmp/tables.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SYSTEMS = ("provisio", "provisio-asyncio", "baseline", "scim2-server", "django-scim2")


def load(kind: str) -> dict[str, Any] | None:
    path = RESULTS / f"{kind}-latest.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine(m: dict[str, Any]) -> str:
    return (
        f"{m['date_utc']} UTC · {m['nproc']} cores, {m['cpu_model']}, {m['ram_gb']} GB RAM · "
        f"commit `{m['git_commit']}`"
        f"{' (+ uncommitted: ' + ', '.join(m['git_dirty_code']) + ')' if m.get('git_dirty_code') else ''} · "
        f"Python {m['python']}, PostgreSQL {m['postgres']}, Redis {m['redis']} · "
        f"load average at start {m['load_avg_at_start']}\n\n`{m['command']}`"
    )


def fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and nd == 0:
        return f"{v:,.0f}"
    return f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}"


def scim(d: dict[str, Any]) -> str:
    s = d["summary"]
    out = [
        f"### SCIM phases\n\n{machine(d['machine'])}\n",
        f"Medians of {d['args']['repeats']} rounds of {d['args']['duration']} s per cell "
        f"(after {d['args']['warmup']} s warm-up), rounds interleaved across systems.\n",
    ]
    systems = [x for x in SYSTEMS if any(x in row for row in s["phases"].values())]
    head = "| phase | clients | " + " | ".join(f"{x} req/s (p50 / p99 ms)" for x in systems)
    head += " | Provisio ÷ baseline | Provisio ÷ best peer |"
    out += [head, "|" + "---|" * (len(systems) + 4)]
    for key, row in s["phases"].items():
        phase, conc = key.split("@")
        cells = []
        for x in systems:
            r = row.get(x)
            if not r:
                cells.append("–")
                continue
            err = f", **{r['errors']} errors**" if r.get("errors") else ""
            cells.append(f"{fmt(r['rps'])} ({fmt(r['p50_ms'], 1)} / {fmt(r['p99_ms'], 1)}{err})")
        out.append(
            f"| {phase} | {conc} | "
            + " | ".join(cells)
            + f" | {fmt(row.get('provisio_vs_baseline'), 2)} | {fmt(row.get('provisio_vs_best_peer'), 2)} |"
        )
    out.append("\nLoad generator ceiling (same load generator against an aiohttp hello world, same run):\n")
    out += [
        "| clients | hello-world req/s | p99 ms | load generator CPU per request (µs) | → its own ceiling on one core |",
        "|---|---|---|---|---|",
    ]
    for c, r in s["hello"].items():
        us = r.get("loadgen_us_per_req")
        out.append(
            f"| {c} | {fmt(r['rps'])} | {fmt(r['p99_ms'], 2)} | {fmt(us, 1)} | "
            f"{fmt(1e6 / us) + ' req/s' if us else '–'} |"
        )
    out.append("\nCPU seconds per 1,000 successful requests, by process (Provisio; median over rounds):\n")
    procs = sorted({k for row in s["phases"].values() for k in row.get("provisio", {}).get("cpu_s_per_1k", {})})
    procs = [
        p
        for p in procs
        if p.startswith(("scim-gateway", "provisioner", "auditor", "postgres", "redis", "loadgen")) and "-uv" not in p
    ] + ["machine_busy"]
    out += ["| phase | clients | " + " | ".join(procs) + " |", "|" + "---|" * (len(procs) + 2)]
    for key, row in s["phases"].items():
        cpu = row.get("provisio", {}).get("cpu_s_per_1k")
        if cpu:
            phase, conc = key.split("@")
            out.append(f"| {phase} | {conc} | " + " | ".join(fmt(cpu.get(p), 2) for p in procs) + " |")
    out.append("\nCPU seconds per 1,000 requests of each system's own processes (+ Postgres, shared), at 32 clients:\n")
    out += ["| phase | " + " | ".join(systems) + " |", "|" + "---|" * (len(systems) + 1)]
    own = {
        "provisio": ("scim-gateway", "provisioner", "auditor"),
        "baseline": ("baseline",),
        "scim2-server": ("scim2-server",),
        "django-scim2": ("django-scim2",),
    }
    for key, row in s["phases"].items():
        if not key.endswith("@32"):
            continue
        cells = []
        for x in systems:
            cpu = row.get(x, {}).get("cpu_s_per_1k") or {}
            prefixes = own.get(x, ("scim-gateway-uv", "provisioner-uv", "auditor-uv"))
            mine = sum(
                v or 0 for k, v in cpu.items() if k.startswith(prefixes) and ("-uv" in k) == (x == "provisio-asyncio")
            )
            cells.append(f"{mine:.2f} (+{cpu.get('postgres') or 0:.2f})" if cpu else "–")
        out.append(f"| {key.split('@')[0]} | " + " | ".join(cells) + " |")
    out.append("\nMixed phase, per operation at 32 clients (req/s, p50 / p99 ms):\n")
    ops = ("lookup", "create", "patch", "member")
    out += ["| system | " + " | ".join(ops) + " |", "|" + "---|" * (len(ops) + 1)]
    for x in systems:
        per = s["phases"].get("mixed@32", {}).get(x, {}).get("per_op") or {}
        if per:
            out.append(
                f"| {x} | "
                + " | ".join(
                    f"{fmt(per[o]['rps'])} ({fmt(per[o]['p50_ms'], 1)} / {fmt(per[o]['p99_ms'], 1)})"
                    if o in per
                    else "–"
                    for o in ops
                )
                + " |"
            )
    lat: dict[str, list[dict[str, Any]]] = {}
    for c in d["cells"]:
        if c["system"] == "provisio" and c.get("pipeline_latency"):
            lat.setdefault(f"{c['phase']}@{c['concurrency']}", []).append(c)
    if lat:
        out.append(
            "\nWhere a write's latency goes (Provisio, median over rounds): end to end at the client vs "
            "gateway accept → provisioner commit (`latency_ms` of the audit trail):\n"
        )
        out += ["| phase | clients | client p50 ms | accept→commit p50 ms (by operation) |", "|---|---|---|---|"]
        for key, cells in lat.items():
            phase, conc = key.split("@")
            ops: dict[str, list[float]] = {}
            for c in cells:
                for op, v in c["pipeline_latency"].items():
                    ops.setdefault(op, []).append(v["p50_ms"])
            p50 = sorted(c["p50_ms"] for c in cells)[len(cells) // 2]
            desc = ", ".join(f"{op} {sorted(v)[len(v) // 2]:.1f}" for op, v in sorted(ops.items()))
            out.append(f"| {phase} | {conc} | {p50:.1f} | {desc} |")
    if d.get("memory"):
        out.append("\nPeak RSS during the run (MB; VmHWM of each process; gunicorn: master + workers):\n")
        out += ["| process | peak RSS MB |", "|---|---|"]
        for name, m in d["memory"].items():
            v = m["vmhwm_mb_by_process"]
            out.append(f"| {name} | {' + '.join(f'{x:.0f}' for x in v.values()) or '–'} |")
    return "\n".join(out)


def sync(d: dict[str, Any]) -> str:
    a = d["args"]
    f = d.get("final", {})
    u = d.get("users_phase", {})
    g = d.get("groups_phase", {})
    out = [
        f"### Initial sync\n\n{machine(d['machine'])}\n",
        f"{a['users']:,} users, then {a['groups']:,} groups of {a['members']} members, {a['concurrency']} "
        f"concurrent SCIM clients, {a['provisioners']} provisioner process(es).\n",
        "| step | time s | requests | errors | p50 / p99 ms |",
        "|---|---|---|---|---|",
        f"| users (lookup + create each) | {fmt(d.get('users_s'), 1)} | {fmt(u.get('ok'))} | {u.get('errors')} | "
        f"{fmt(u.get('p50_ms'), 1)} / {fmt(u.get('p99_ms'), 1)} |",
        f"| groups (lookup + create + add members each) | {fmt((d.get('answered_s') or 0) - (d.get('users_s') or 0), 1)}"
        f" | {fmt(g.get('ok'))} | {g.get('errors')} | {fmt(g.get('p50_ms'), 1)} / {fmt(g.get('p99_ms'), 1)} |",
        f"| **all answered (every write committed)** | **{fmt(d.get('answered_s'), 1)}** | | | |",
        f"| audit trail drained | {fmt(d.get('audit_drained_s'), 1)} | | | |",
        f"\nUsers created per second: {a['users'] / d['users_s']:.0f}"
        + (
            f" (lookup p50/p99 {u['per_op']['lookup']['p50_ms']:.1f}/{u['per_op']['lookup']['p99_ms']:.1f} ms, "
            f"create p50/p99 {u['per_op']['create']['p50_ms']:.1f}/{u['per_op']['create']['p99_ms']:.1f} ms)"
            if u.get("per_op", {}).get("create")
            else ""
        )
        + ".",
        f"In Postgres afterwards: {f}. Peak RSS (MB): {d.get('vmhwm_mb')}.",
    ]
    s = d.get("samples") or []
    if s:
        out.append(
            f"Largest command backlog (lag + pending) sampled: "
            f"{max(x['commands_lag'] + x['commands_pending'] for x in s)}; largest audit backlog: "
            f"{max(x['audit_lag'] + x['audit_pending'] for x in s)}."
        )
    return "\n".join(out)


def saml(d: dict[str, Any]) -> str:
    s = d["summary"]
    out = [
        f"### SAML JIT logins\n\n{machine(d['machine'])}\n",
        "| clients | logins/s end to end | p50 ms | p99 ms | errors | ÷ plain pysaml2 |",
        "|---|---|---|---|---|---|",
    ]
    for c, r in s["e2e"].items():
        out.append(
            f"| {c} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 1)} | {fmt(r['p99_ms'], 1)} | {r['errors']} | "
            f"{fmt(r.get('vs_plain'), 1)} |"
        )
    out.append(
        f"\nPlain pysaml2 (`Saml2Client.parse_authn_request_response`, default `xmlsec1` backend, one "
        f"process, sequential), same run: **{fmt(s['plain_per_s'], 1)} verifications/s**."
    )
    if d.get("memory"):
        out.append(
            "Peak RSS (MB, VmHWM per process): "
            + ", ".join(
                f"{k} " + " + ".join(f"{x:.0f}" for x in v.get("vmhwm_mb_by_process", {"": v["vmhwm_mb"]}).values())
                for k, v in d["memory"].items()
            )
            + "."
        )
    a = d["args"]
    out.append(
        f"Gateway: {a.get('verify_threads')} verify threads, "
        f"verify processes {a.get('verify_processes') if a.get('verify_processes') is not None else 'default'}."
    )
    return "\n".join(out)


def scaling(d: dict[str, Any]) -> str:
    out = [f"### Scaling with provisioner processes\n\n{machine(d['machine'])}\n"]
    ks = sorted(d["e2e"], key=int)
    keys = sorted({key for k in ks for key in d["e2e"][k]})
    out += [
        "| provisioners | "
        + " | ".join(f"SCIM {k} req/s (p99 ms)" for k in keys)
        + " | worker only, commands/s | plain INSERT rows/s |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for k in ks:
        w = d.get("worker_only", {}).get(k, {})
        out.append(
            f"| {k} | "
            + " | ".join(f"{fmt(d['e2e'][k][key]['rps'])} ({fmt(d['e2e'][k][key]['p99_ms'], 0)})" for key in keys)
            + f" | {fmt(w.get('provisioner_per_s'))} | {fmt(w.get('baseline_insert_per_s'))} |"
        )
    return "\n".join(out)


def latency(d: dict[str, Any]) -> str:
    out = [
        f"### One write, traced (sequential requests, one client)\n\n{machine(d['machine'])}\n",
        "Mean ms per segment (see bench/bench_latency.py for what each covers):\n",
        "| operation | n | A gateway in | B encode + XADD | C → transaction start | D apply | "
        "E commit + publish | F reply → client | total (p50) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for op, r in d["summary"].items():
        segs = ("A_gateway_in", "B_encode_xadd", "C_to_transaction", "D_apply", "E_commit_publish", "F_reply_out")
        out.append(
            f"| {op} | {r['n']} | "
            + " | ".join(f"{r[k]['mean_ms']:.2f}" for k in segs)
            + f" | {r['total']['mean_ms']:.2f} ({r['total']['p50_ms']:.2f}) |"
        )
    return "\n".join(out)


def main() -> None:
    parts = []
    for kind, fn in (("scim", scim), ("latency", latency), ("sync", sync), ("saml", saml), ("scaling", scaling)):
        d = load(kind)
        if d is not None:
            parts.append(fn(d))
    print("\n\n".join(parts))


if __name__ == "__main__":
    main()
