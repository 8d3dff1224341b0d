"""SAML JIT logins end to end (ACS POST -> verified -> provisioned -> 303 with a code),
beside plain pysaml2 verifying the same responses with its default crypto backend
(the ``xmlsec1`` program), in the same run.

    .venv/bin/python bench/bench_saml.py --concurrency 1,32 --duration 5

Responses come from the SAML engineer's test IdP (tests/saml_idp.py), Entra ID's shape
(assertion signed, RSA-SHA256), one per login with a new NameID (each login creates a
user: JIT mode ``create``), IdP-initiated. They are signed before the timed part with an
in-process libxmlsec1 signer (bench only: forking ``xmlsec1`` per response would take
longer than the run). Writes bench/results/saml-<stamp>.json (and saml-latest.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from harness import (  # noqa: E402
    PY,
    ROOT,
    Bench,
    CpuMeter,
    Service,
    create_database,
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

CONNECTION = "bench-entra"


class InProcessSigner:
    """pysaml2 CryptoBackend.sign_statement on the xmlsec binding (bench only)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def sign_statement(self, statement: Any, node_name: str, key_file: str, node_id: Any) -> str:
        import xmlsec
        from lxml import etree

        raw = statement.encode() if isinstance(statement, str) else statement
        root = etree.fromstring(raw)
        xmlsec.tree.add_ids(root, ["ID"])
        node = root if root.get("ID") == node_id else root.xpath("//*[@ID=$id]", id=node_id)[0]
        sig = node.find("{http://www.w3.org/2000/09/xmldsig#}Signature")
        ctx = xmlsec.SignatureContext()
        ctx.key = xmlsec.Key.from_file(key_file, xmlsec.constants.KeyDataFormatPem)
        ctx.sign(sig)
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode()


async def prepare(dsn: str, tenant_id: Any, n: int, path: str, tmp: str) -> dict[str, Any]:
    from provisio_lib import db
    from saml_idp import b64  # type: ignore[import-not-found]
    from saml_setup import add_connection  # type: ignore[import-not-found]

    pool = await db.create_pool(dsn, min_size=1, max_size=2)
    try:
        setup = await add_connection(
            pool, tenant_id, CONNECTION, preset="entra", jit="create", allow_idp_initiated=True
        )
    finally:
        await pool.close()
    server = setup.idp.server(setup.sp_metadata)
    server.sec.crypto = InProcessSigner(server.sec.crypto)
    t0 = time.perf_counter()
    with open(path, "w") as f:
        for i in range(n):
            name = f"jit{i}-{os.getpid()}@acme.test"
            attrs = {
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress": [name],
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname": ["Jit"],
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname": [f"User{i}"],
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name": [name],
            }
            xml = setup.response(name_id=name, attributes=attrs)
            f.write(json.dumps({"b64": b64(xml)}) + "\n")
    log(f"signed {n} responses in {time.perf_counter() - t0:.1f}s")
    return {"tenant": setup.tenant, "connection": setup.name}


def plain_verify(args: argparse.Namespace) -> None:
    """Child process: plain pysaml2 (Saml2Client.parse_authn_request_response) over the
    responses, one after another, for --duration seconds; prints a JSON line."""
    from saml2 import BINDING_HTTP_POST

    from provisio_lib.settings import load_settings
    from saml_gateway.saml import Connection, SamlEngine
    from saml_gateway.settings import SamlSettings

    settings = load_settings(SamlSettings)

    async def row() -> Any:
        from provisio_lib import db

        conn = await db.connect(settings.database_url.get_secret_value())
        try:
            return await conn.fetchrow(
                """SELECT c.*, t.name AS tenant_name FROM sso_connections c JOIN tenants t ON t.id = c.tenant_id
                   WHERE c.name = $1""",
                CONNECTION,
            )
        finally:
            await conn.close()

    conn = Connection.from_row(asyncio.run(row()))
    engine = SamlEngine(
        public_url=settings.saml_public_url,
        skew_s=180,
        max_bytes=256 * 1024,
        backend=args.plain,
        xmlsec1_path="/usr/bin/xmlsec1",
    )
    client = engine.client(conn)
    with open(args.responses) as f:
        bodies = [json.loads(line)["b64"] for line in f]
    ok = errors = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    lat = []
    while time.perf_counter() - t0 < args.duration and ok + errors < len(bodies):
        t = time.perf_counter()
        try:
            resp = client.parse_authn_request_response(bodies[ok + errors], BINDING_HTTP_POST, outstanding={})
            if resp is None or resp.assertion is None:
                raise ValueError("no assertion")
            ok += 1
            lat.append(time.perf_counter() - t)
        except Exception as err:  # counted; the first one is shown
            if errors == 0:
                print(f"plain verify error: {err!r}", file=sys.stderr)
            errors += 1
    wall = time.perf_counter() - t0
    lat.sort()
    children = os.times()
    print(
        json.dumps(
            {
                "backend": args.plain,
                "verified": ok,
                "errors": errors,
                "per_s": round(ok / wall, 1),
                "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
                "cpu_s_self": round(time.process_time() - cpu0, 2),
                "cpu_s_children": round(children.children_user + children.children_system, 2),
                "wall_s": round(wall, 2),
            }
        )
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="not counted; long enough for verify processes (spawned on first use) to start",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-rate", type=int, default=250, help="logins/s the prepared responses can sustain per cell")
    ap.add_argument("--responses", type=int, default=0, help="signed responses to prepare (default: enough)")
    ap.add_argument("--verify-threads", type=int, default=4, help="PROVISIO_SAML_VERIFY_THREADS")
    ap.add_argument(
        "--verify-processes",
        type=int,
        default=None,
        help="PROVISIO_SAML_VERIFY_PROCESSES (unset: the gateway's default)",
    )
    ap.add_argument("--profile", metavar="DIR", help="py-spy each service during each cell (collapsed stacks)")
    ap.add_argument("--tag", default="saml")
    ap.add_argument("--plain", help=argparse.SUPPRESS)  # child mode: xmlsec1 | xmlsec
    ap.add_argument("--responses-file", dest="responses_path", help=argparse.SUPPRESS)
    return ap


async def main(args: argparse.Namespace) -> None:
    concs = [int(c) for c in args.concurrency.split(",")]
    # Enough single-use responses for the fastest plausible rate (replays are refused).
    # Signing costs ~3-4 ms each (pysaml2 builds the response), so not unlimited: up to
    # --max-rate logins/s per cell; a cell that runs out is flagged "exhausted".
    per_cell = int(max(concs) * 2 + args.max_rate * (args.duration + args.warmup + 0.5))
    need = args.responses or per_cell * (len(concs) * args.repeats + 2)

    info = machine_info()
    b = Bench("saml")
    services: list[Service] = []
    results: dict[str, Any] = {"machine": info, "args": vars(args), "e2e": [], "plain": []}
    with workdir("saml") as tmp:
        dsn = await create_database(b.db)
        try:
            tenant_id, _ = await make_tenant(dsn, "bench-saml")
            resp_path = os.path.join(tmp, "responses.jsonl")
            names = await prepare(dsn, tenant_id, need, resp_path, tmp)
            penv = provisio_env(dsn, b.prefix, saml_public_url="http://127.0.0.1:8082")
            port = free_port()
            services.append(
                Service(
                    "saml-gateway",
                    [PY, "-m", "saml_gateway"],
                    {
                        **penv,
                        "PROVISIO_SAML_PORT": str(port),
                        "PROVISIO_SAML_HOST": "127.0.0.1",
                        "PROVISIO_SAML_VERIFY_THREADS": str(args.verify_threads),
                        **(
                            {"PROVISIO_SAML_VERIFY_PROCESSES": str(args.verify_processes)}
                            if args.verify_processes is not None
                            else {}
                        ),
                    },
                    port,
                ).start(tmp)
            )
            services.append(
                Service("provisioner-0", [PY, "-m", "provisioner"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(tmp)
            )
            services.append(Service("auditor", [PY, "-m", "auditor"], {**penv, "PROVISIO_HEALTH_PORT": "0"}).start(tmp))
            # Split the responses into one file per (round, concurrency) cell: single use.
            with open(resp_path) as f:
                lines = f.readlines()
            cells = [(r, c) for r in range(args.repeats) for c in concs]
            per = len(lines) // (len(cells) + 2)
            chunks = {cell: lines[i * per : (i + 1) * per] for i, cell in enumerate(cells)}
            plain_lines = lines[len(cells) * per :]
            acs = f"/saml/{names['tenant']}/{names['connection']}/acs"
            for rnd in range(args.repeats):
                for conc in concs:
                    body_path = os.path.join(tmp, f"bodies-{rnd}-{conc}.jsonl")
                    with open(body_path, "w") as f:
                        for line in chunks[(rnd, conc)]:
                            f.write(json.dumps("SAMLResponse=" + quote(json.loads(line)["b64"], safe="")) + "\n")
                    spec = {
                        "base": f"http://127.0.0.1:{port}",
                        "phase": "post-bodies",
                        "path": acs,
                        "bodies": body_path,
                        "expect": [303],
                        "concurrency": conc,
                        "duration": args.duration,
                        "warmup": args.warmup,
                        "content_type": "application/x-www-form-urlencoded",
                    }
                    spies = start_profiles(
                        args.profile, {s.name: s for s in services}, f"saml-c{conc}-r{rnd}", args.duration + args.warmup
                    )
                    with CpuMeter(services) as meter:
                        res = await run_loadgen(spec)
                    for s in services:
                        s.sample()
                    res.update(round=rnd, cpu=meter.by)
                    if spies:
                        res["profile"] = finish_profiles(spies)
                    results["e2e"].append(res)
                    if res.get("exhausted"):
                        log("   WARNING: the prepared responses ran out before the deadline; raise --max-rate")
                    log(
                        f"saml e2e c={conc:<3} r{rnd}: {res['rps']} logins/s p50 {res['p50_ms']} ms p99 "
                        f"{res['p99_ms']} ms errors {res['errors']} {list(res['error_samples'].values())[:1]}"
                    )
                # Plain pysaml2 in the same round, on responses not used by the gateway.
                plain_path = os.path.join(tmp, f"plain-{rnd}.jsonl")
                with open(plain_path, "w") as f:
                    f.writelines(plain_lines)
                for backend in ("xmlsec1",):
                    out = subprocess.run(
                        [
                            PY,
                            str(Path(__file__)),
                            "--plain",
                            backend,
                            "--responses-file",
                            plain_path,
                            "--duration",
                            str(args.duration),
                        ],
                        env=penv,
                        capture_output=True,
                        text=True,
                        timeout=300,
                    )
                    if out.returncode != 0:
                        raise RuntimeError(f"plain verify failed: {out.stderr[-2000:]}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    res["round"] = rnd
                    results["plain"].append(res)
                    log(
                        f"plain pysaml2 ({backend}) r{rnd}: {res['per_s']} verifications/s "
                        f"(cpu self {res['cpu_s_self']} s, xmlsec1 children {res['cpu_s_children']} s)"
                    )
            results["memory"] = {
                s.name: {
                    "peak_rss_mb_sampled": round(s.peak_rss_mb, 1),
                    "vmhwm_mb": round(max(s.hwm_mb().values(), default=0), 1),
                    "vmhwm_mb_by_process": {str(k): round(v, 1) for k, v in s.hwm_mb().items()},
                }
                for s in services
            }
            summary: dict[str, Any] = {"e2e": {}, "plain_per_s": median_of(results["plain"], "per_s")}
            for conc in concs:
                runs = [r for r in results["e2e"] if r["concurrency"] == conc]
                summary["e2e"][conc] = {k: median_of(runs, k) for k in ("rps", "p50_ms", "p99_ms")}
                summary["e2e"][conc]["errors"] = sum(r["errors"] for r in runs)
                if summary["plain_per_s"]:
                    summary["e2e"][conc]["vs_plain"] = round(
                        (summary["e2e"][conc]["rps"] or 0) / summary["plain_per_s"], 2
                    )
            results["summary"] = summary
        finally:
            for s in services:
                s.stop()
            await drop_database(b.db)
            n = await delete_redis_prefix(b.prefix)
            log(f"dropped {b.db}; deleted {n} Redis keys")
    path = write_results(args.tag, results)
    log(f"wrote {path.relative_to(ROOT)}")
    print(json.dumps(results.get("summary"), indent=1))


if __name__ == "__main__":
    ns = parser().parse_args()
    if ns.plain:
        ns.responses = ns.responses_path
        plain_verify(ns)
    else:
        asyncio.run(main(ns))
