"""What every benchmark script shares: the machine's description, a throw-away database
and Redis prefix, service processes (started as operators start them, ``python -m ...``
with ``PROVISIO_*`` variables), the load generator as a child process, CPU and peak-RSS
accounting per process, and the results file.

Nothing here is imported by Provisio; it imports only ``provisio_lib`` (migrations).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
PY = sys.executable
PEERS_VENV = BENCH / ".venv-peers"
ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# ------------------------------------------------------------------ machine


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        # Uncommitted changes in what the services run (the benchmark runs the working tree).
        "git_dirty_code": [
            ln.split(maxsplit=1)[-1]
            for ln in git("status", "--porcelain", "--untracked-files=no", "--", "services", "libs").splitlines()
            if ln.strip()
        ],
        "python": platform.python_version(),
        "postgres": version(["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "SHOW server_version"]),
        "redis": _redis_version(),
        "command": " ".join([".venv/bin/python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]]),
    }


def _redis_version() -> str:
    try:
        out = subprocess.run(
            ["redis-cli", "-u", REDIS_URL, "INFO", "server"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in out.splitlines():
        if line.startswith("redis_version:"):
            return line.split(":", 1)[1].strip()
    return "?"


# ------------------------------------------------------------------ ports, db, redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def dsn_for(db: str) -> str:
    base = ADMIN_DSN.rsplit("/", 1)[0]
    return f"{base}/{db}"


async def create_database(name: str) -> str:
    import asyncpg

    from provisio_lib import db

    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = dsn_for(name)
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
    return dsn


async def create_plain_database(name: str) -> str:
    import asyncpg

    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return dsn_for(name)


async def drop_database(name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await admin.close()


async def delete_redis_prefix(prefix: str) -> int:
    from redis.asyncio import Redis

    r = Redis.from_url(REDIS_URL)
    n = 0
    try:
        batch = []
        async for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                n += await r.delete(*batch)
                batch = []
        if batch:
            n += await r.delete(*batch)
    finally:
        await r.aclose()
    return n


async def make_tenant(dsn: str, name: str, **policy: Any) -> tuple[uuid.UUID, str]:
    """A tenant and a SCIM token, as ``provisio tenant create`` / ``token create`` make them."""
    import asyncpg

    from provisio_lib.tokens import generate_token, hash_token

    conn = await asyncpg.connect(dsn)
    try:
        tid = uuid.uuid4()
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", tid, name)
        for k, v in policy.items():
            await conn.execute(f"UPDATE tenants SET {k} = $2 WHERE id = $1", tid, v)
        token = generate_token()
        await conn.execute(
            "INSERT INTO scim_tokens (id, tenant_id, label, token_hash) VALUES ($1, $2, $3, $4)",
            uuid.uuid4(),
            tid,
            "bench",
            hash_token(token),
        )
        return tid, token
    finally:
        await conn.close()


# ------------------------------------------------------------------ processes


@dataclass
class Service:
    """One server process (and, for gunicorn, its workers)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int | None = None
    cwd: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""
    peak_rss_mb: float = 0.0  # max over samples of (own RSS + children's), and VmHWM of each

    def start(self, logdir: str, timeout: float = 60.0) -> Service:
        self.log_path = os.path.join(logdir, f"{self.name}.log")
        # The child gets its own copy of the descriptor; this process needs none after the start.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        if self.port:
            try:
                wait_port(self.port, timeout, self.proc)
            except Exception:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; last log lines:\n{tail(self.log_path)}") from None
        return self

    def processes(self) -> list[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_mb(self) -> float:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def hwm_mb(self) -> dict[int, float]:
        """Peak RSS (VmHWM) of each process of this service, by pid."""
        out = {}
        for p in self.processes():
            with contextlib.suppress(OSError, psutil.Error), open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[p.pid] = int(line.split()[1]) / 1024
        return out

    def sample(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def provisio_env(dsn: str, prefix: str, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIO_")}
    env.update(
        {
            "PROVISIO_DATABASE_URL": dsn,
            "PROVISIO_REDIS_URL": REDIS_URL,
            "PROVISIO_REDIS_PREFIX": prefix,
            "PROVISIO_PARTITIONS": "8",
            "PROVISIO_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "PROVISIO_LOG_FORMAT": "json",
            # Passed through for experiments (e.g. PROVISIO_EVENT_LOOP=asyncio); default uvloop.
            "PROVISIO_EVENT_LOOP": os.environ.get("PROVISIO_EVENT_LOOP", "uvloop"),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "libs"), str(ROOT / "services"), str(ROOT)]),
        }
    )
    env.update({f"PROVISIO_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def system_cpu() -> dict[str, dict[int, float]]:
    """CPU seconds used so far by each Postgres and Redis process, by pid. (The servers are
    shared: other databases' backends count too; that is noise, visible as such.)"""
    out: dict[str, dict[int, float]] = {"postgres": {}, "redis": {}}
    for p in psutil.process_iter(["name", "cpu_times"]):
        name = p.info["name"] or ""
        t = p.info["cpu_times"]
        if t is None:
            continue
        if name.startswith("postgres"):
            out["postgres"][p.pid] = t.user + t.system
        elif name.startswith("redis-server") or name.startswith("valkey"):
            out["redis"][p.pid] = t.user + t.system
    return out


def backend_cpu(databases: list[str]) -> dict[int, float]:
    """CPU seconds used so far by the Postgres backends connected to these databases, by
    pid (their process title names the database): our own share of the shared server."""
    out: dict[int, float] = {}
    if not databases:
        return out
    marks = [f" {d} " for d in databases]
    for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        if not (p.info["name"] or "").startswith("postgres") or p.info["cpu_times"] is None:
            continue
        title = " ".join(p.info["cmdline"] or []) + " "
        if any(m in title for m in marks):
            t = p.info["cpu_times"]
            out[p.pid] = t.user + t.system
    return out


class CpuMeter:
    """CPU seconds per component over a window: our services, Postgres, Redis, machine;
    with ``databases``, also ``postgres_own``: only the backends of those databases (the
    server is shared, so ``postgres`` counts other users' queries too)."""

    def __init__(self, services: list[Service], databases: list[str] | None = None) -> None:
        self.services = services
        self.databases = databases or []

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.s0 = {s.name: s.cpu_s() for s in self.services}
        self.b0 = backend_cpu(self.databases)
        self.x0 = system_cpu()
        self.m0 = psutil.cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.by = {s.name: round(s.cpu_s() - self.s0[s.name], 2) for s in self.services}
        x1 = system_cpu()
        # Per pid, so a backend that exits in the window does not make the sum go backwards.
        self.by.update({k: round(sum(v - self.x0[k].get(pid, 0.0) for pid, v in x1[k].items()), 2) for k in x1})
        if self.databases:
            b1 = backend_cpu(self.databases)
            self.by["postgres_own"] = round(sum(v - self.b0.get(pid, 0.0) for pid, v in b1.items()), 2)
        m1 = psutil.cpu_times()
        busy = (m1.user + m1.system + m1.nice + getattr(m1, "softirq", 0) + getattr(m1, "irq", 0)) - (
            self.m0.user + self.m0.system + self.m0.nice + getattr(self.m0, "softirq", 0) + getattr(self.m0, "irq", 0)
        )
        self.by["machine_busy"] = round(busy, 2)
        self.by["wall"] = round(self.wall, 2)


def start_profiles(
    directory: str | None, services: dict[str, Service], label: str, seconds: float
) -> list[tuple[str, str, subprocess.Popen[bytes]]]:
    """py-spy (sampling, 100 Hz, --nonblocking, collapsed stacks) on each service for a cell."""
    if not directory:
        return []
    os.makedirs(directory, exist_ok=True)
    spy = str(Path(PY).with_name("py-spy"))
    out = []
    for name, svc in services.items():
        if svc.proc is None:
            continue
        path = os.path.join(directory, f"{label}-{name}.txt")
        p = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(svc.proc.pid),
                "--duration",
                str(int(seconds + 0.999)),
                "--rate",
                os.environ.get("BENCH_PROFILE_HZ", "100"),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out.append((name, path, p))
    return out


# What a sample's stack is doing, first match wins (the leaf frame for syscalls and idle).
_KINDS: list[tuple[str, Any]] = [
    (
        "socket send/recv (syscall)",
        lambda fr: fr[-1].startswith(
            (
                "_SelectorSocketTransport.write",
                "socket.send",
                "_SelectorSocketTransport._read_ready__data_received",
                "UVStream",
                "UVSocket",
            )
        ),
    ),
    ("event loop idle", lambda fr: fr[-1].startswith(("EpollSelector.select", "Loop.run_forever"))),
    ("xmlsec/lxml", lambda fr: any(("xmlsec" in x or "lxml" in x) for x in fr[-3:])),
    ("pydantic", lambda fr: any("pydantic/" in x for x in fr)),
    ("json", lambda fr: any("json/" in x for x in fr)),
    ("asyncpg", lambda fr: any("asyncpg" in x for x in fr)),
    ("redis-py", lambda fr: any("redis/" in x for x in fr)),
    ("pysaml2", lambda fr: any("saml2/" in x for x in fr)),
    ("aiohttp", lambda fr: any("aiohttp/" in x for x in fr)),
    ("faststream", lambda fr: any("faststream/" in x for x in fr)),
    ("logging", lambda fr: any(("structlog/" in x or "logging/" in x) for x in fr)),
    ("prometheus", lambda fr: any("prometheus_client" in x for x in fr)),
]
_OURS = (
    "scim_gateway/",
    "saml_gateway/",
    "provisioner/",
    "auditor/",
    "app_api/",
    "webhook_dispatcher/",
    "provisio_lib/",
)


def finish_profiles(spies: list[tuple[str, str, subprocess.Popen[bytes]]]) -> dict[str, Any]:
    """Wait for py-spy; per process: samples (on CPU, 100 Hz), the share of samples by
    kind (syscall, idle loop, library), and the deepest Provisio frame of each sample."""
    summary: dict[str, Any] = {}
    for name, path, p in spies:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
        kinds: dict[str, int] = {}
        ours: dict[str, int] = {}
        total = 0
        try:
            with open(path) as f:
                for line in f:
                    stack, _, count = line.rstrip().rpartition(" ")
                    if not count.isdigit():
                        continue
                    n = int(count)
                    total += n
                    fr = stack.split(";")
                    kind = next((k for k, pred in _KINDS if pred(fr)), "other")
                    kinds[kind] = kinds.get(kind, 0) + n
                    frame = next((x for x in reversed(fr) if any(o in x for o in _OURS)), "(none)")
                    ours[frame] = ours.get(frame, 0) + n
        except OSError:
            continue
        if not total:
            continue
        summary[name] = {
            "samples": total,
            "by_kind": {k: round(v / total, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "deepest_provisio_frame": [
                [k, round(v / total, 3)] for k, v in sorted(ours.items(), key=lambda kv: -kv[1])[:10]
            ],
            "file": path,
        }
    return summary


async def run_loadgen(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run bench/loadgen.py as its own process; its result JSON, with its own CPU time."""
    proc = await asyncio.create_subprocess_exec(
        PY, str(BENCH / "loadgen.py"), json.dumps(spec), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    limit = timeout or (float(spec.get("duration", 60)) + float(spec.get("warmup", 0.5)) + 120)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"load generator exceeded {limit}s for {spec.get('phase')}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if isinstance(r.get(key), int | float) and r[key] == r[key]]
    return round(statistics.median(vals), 2) if vals else None


def write_results(kind: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    latest = RESULTS / f"{kind}-latest.json"
    latest.write_text(path.read_text())
    return path


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[str]:
    """A temporary directory for service logs and id lists; removed afterwards unless
    BENCH_KEEP_LOGS is set (failures print the log tails before it goes)."""
    d = tempfile.mkdtemp(prefix=f"provisio-bench-{prefix}-")
    try:
        yield d
    finally:
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(d, ignore_errors=True)


@dataclass
class Bench:
    """A run's throw-away names: database ``provisio_bench_<id>``, Redis prefix ``bench<id>``."""

    tag: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def db(self) -> str:
        return f"provisio_bench_{self.tag}_{self.id}"

    @property
    def prefix(self) -> str:
        return f"bench{self.tag}{self.id}"


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class XidWatch:
    """Samples, every ``every`` s, the oldest transaction holding a transaction id anywhere
    in the Postgres cluster (``pg_stat_activity.backend_xid``). The event feed shows a row
    only once every transaction with a lower xid has ended, and xids are cluster-wide: a
    long writing transaction in *any* database (another application, another helper's
    tests) holds back the feed. Used to explain slow samples of feed latencies."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.samples: list[tuple[float, str | None, float]] = []  # (time.time(), datname, age s)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(ADMIN_DSN)
        try:
            while True:
                row = await conn.fetchrow(
                    """SELECT datname, extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age
                       FROM pg_stat_activity WHERE backend_xid IS NOT NULL ORDER BY xact_start LIMIT 1"""
                )
                self.samples.append((time.time(), row["datname"] if row else None, row["age"] if row else 0.0))
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    def start(self) -> XidWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def held_between(self, t0: float, t1: float, min_age: float, own_db: str) -> dict[str, float]:
        """Other databases whose writing transaction was at least ``min_age`` s old at some
        sample in [t0, t1]: datname → the oldest age seen."""
        out: dict[str, float] = {}
        for t, db, age in self.samples:
            if t0 <= t <= t1 and db and db != own_db and age >= min_age:
                out[db] = max(out.get(db, 0.0), round(age, 3))
        return out

    def share_held(self, min_age: float, own_db: str) -> float:
        """Share of samples in which another database held an xid at least ``min_age`` s old."""
        if not self.samples:
            return 0.0
        n = sum(1 for _t, db, age in self.samples if db and db != own_db and age >= min_age)
        return round(n / len(self.samples), 4)
