"""The load generator: one process, N concurrent SCIM clients, one keep-alive connection each.

Run by the benchmark scripts as a separate process (so its CPU is its own and visible),
with a JSON spec on the command line; prints one JSON result line. Each client loops
until the deadline; only requests that start after the warm-up and end before the
deadline are counted, so start-up and tail effects stay out of the rates.

    python bench/loadgen.py '{"base": "http://127.0.0.1:8081/scim/v2", "token": "...",
                              "phase": "create", "concurrency": 32, "duration": 5}'

Phases (bodies as Microsoft Entra ID sends them, see Microsoft's "Develop and plan
provisioning for a SCIM endpoint"):
  create  POST /Users with a unique userName                        (expect 201)
  get     GET /Users?filter=userName eq "<existing>"                (expect 200, 1 result)
  patch   PATCH /Users/<id>, Entra's op "Replace" on name parts      (expect 200/204)
  mixed   per user, as an Entra sync cycle: lookup (200, 0 results), create (201),
          patch (200/204), add to a group (PATCH /Groups/<id> op "Add" members; 200/204)
  hello   GET /hello (the load generator's own ceiling against a hello-world server)

``rate`` (requests/s, all clients together) paces the load instead of sending as fast as
answers come back; ``times_out`` (create) writes each userName with its POST's wall-clock
start and end, for latencies another process measures (e.g. a webhook's arrival).

The ids made by ``create`` are written to ``ids_out`` (JSON lines), which ``get`` and
``patch`` read back (``ids_in``); each client owns a disjoint slice of them, so two
clients never PATCH the same user at once.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

SCIM = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def by_name(name: str) -> str:
    return quote(f'userName eq "{name}"', safe="")


def user_body(name: str, n: int) -> bytes:
    # The attributes Entra ID's default mapping sends on create.
    return json.dumps(
        {
            "schemas": [USER],
            "externalId": str(uuid.uuid4()),
            "userName": name,
            "active": True,
            "displayName": f"Bench User {n}",
            "name": {"givenName": "Bench", "familyName": f"User{n}", "formatted": f"Bench User{n}"},
            "emails": [{"primary": True, "type": "work", "value": name}],
        }
    ).encode()


def patch_body(n: int) -> bytes:
    # Entra ID capitalises op names ("Replace"): RFC 7644 §3.5.2 says they are case-insensitive.
    return json.dumps(
        {
            "schemas": [PATCH_OP],
            "Operations": [
                {"op": "Replace", "path": "name.givenName", "value": f"Given{n}"},
                {"op": "Replace", "path": "name.familyName", "value": f"Family{n}"},
            ],
        }
    ).encode()


def member_body(user_id: str) -> bytes:
    return json.dumps(
        {
            "schemas": [PATCH_OP],
            "Operations": [{"op": "Add", "path": "members", "value": [{"value": user_id}]}],
        }
    ).encode()


class Stats:
    def __init__(self, t_start: float, t_end: float) -> None:
        self.t_start, self.t_end = t_start, t_end
        self.lat: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.error_samples: dict[str, str] = {}
        self.outside = 0

    def add(self, op: str, t0: float, t1: float, ok: bool, why: str = "", sample: str = "") -> None:
        if t0 < self.t_start or t1 > self.t_end:
            self.outside += 1
            return
        if ok:
            self.lat.setdefault(op, []).append(t1 - t0)
        else:
            key = f"{op}:{why}"
            self.errors[key] = self.errors.get(key, 0) + 1
            self.error_samples.setdefault(key, sample[:300])


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))  # nearest rank
    return sorted_values[i]


def summary(values: list[float], window: float) -> dict[str, Any]:
    v = sorted(values)
    return {
        "ok": len(v),
        "rps": round(len(v) / window, 1),
        "p50_ms": round(pct(v, 50) * 1000, 2),
        "p90_ms": round(pct(v, 90) * 1000, 2),
        "p99_ms": round(pct(v, 99) * 1000, 2),
        "max_ms": round(v[-1] * 1000, 2) if v else None,
    }


class Http(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time.

    Hand-written because aiohttp's client measured as the bottleneck on this machine
    (~6,000 req/s against a hello world, a whole core); this does only what a load
    generator needs: write a request, read status, Content-Length or chunked body.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    @classmethod
    async def connect(cls, loop: asyncio.AbstractEventLoop, host: str, port: int) -> Http:
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf.clear()
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17 : j if j >= 0 else len(head)])
            if len(self.buf) - start < length:
                return
            body = bytes(self.buf[start : start + length])
        elif b"\r\ntransfer-encoding: chunked" in head:
            body_parts = []
            pos = start
            while True:
                k = self.buf.find(b"\r\n", pos)
                if k < 0:
                    return
                size = int(bytes(self.buf[pos:k]).split(b";")[0], 16)
                if size == 0:
                    if self.buf.find(b"\r\n", k + 2) < 0:
                        return
                    break
                if len(self.buf) < k + 2 + size + 2:
                    return
                body_parts.append(bytes(self.buf[k + 2 : k + 2 + size]))
                pos = k + 2 + size + 2
            body = b"".join(body_parts)
        else:
            body = b""  # 204/304, or a body delimited by close (not used by our servers)
        if b"\r\nconnection: close" in head:
            self.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    base = spec["base"].rstrip("/")
    phase = spec["phase"]
    conc = int(spec["concurrency"])
    duration = float(spec.get("duration", 0))
    warmup = float(spec.get("warmup", 0.5))
    run_id = spec.get("run_id") or uuid.uuid4().hex[:8]
    ids: list[tuple[str, str]] = []
    if spec.get("ids_in"):
        with open(spec["ids_in"]) as f:
            ids = [tuple(json.loads(line)) for line in f if line.strip()]  # type: ignore[misc]
        if len(ids) < conc and phase in ("get", "patch"):
            raise SystemExit(f"need at least {conc} users in {spec['ids_in']}, have {len(ids)}")
    groups: list[str] = spec.get("groups", [])
    bodies: list[bytes] = []
    if spec.get("bodies"):  # post-bodies: one single-use body per request (e.g. SAML responses)
        with open(spec["bodies"]) as f:
            bodies = [json.loads(line).encode() for line in f if line.strip()]
    expect = tuple(spec.get("expect", [200]))
    created: list[tuple[str, str]] = []
    exhausted: list[int] = []  # clients that ran out of single-use bodies before the deadline

    parsed = urlsplit(base)
    host, port, prefix = parsed.hostname or "127.0.0.1", parsed.port or 80, parsed.path
    fixed = f"Host: {host}:{port}\r\nAccept: {SCIM}\r\n"
    if spec.get("token"):
        fixed += f"Authorization: Bearer {spec['token']}\r\n"
    form = spec.get("content_type", SCIM)
    req_timeout = float(spec.get("timeout", 30))
    loop = asyncio.get_running_loop()
    now = time.perf_counter  # uvloop's loop.time() ticks in whole milliseconds
    t0 = now()
    count = int(spec.get("count", 0))  # sync phases: a fixed amount of work, no deadline
    if count:
        warmup, duration = 0.0, float("inf")
    stats = Stats(t0 + warmup, t0 + warmup + duration)
    deadline = stats.t_end
    members = int(spec.get("members", 20))
    conns: list[Http | None] = [None] * conc
    # Paced load: the clients together start at most ``rate`` requests per second, each
    # taking the next free slot (0 = as fast as the answers come back).
    rate = float(spec.get("rate", 0))
    next_slot = [0]
    # Per created user: userName and the wall-clock start and end of its POST (``time.time()``,
    # one clock for every process here), for latencies measured by another process.
    times: list[tuple[str, float, float, bool]] | None = [] if spec.get("times_out") else None

    async def request(w: int, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = conns[w]
        if conn is None or conn.closed:
            conn = conns[w] = await Http.connect(loop, host, port)
        head = f"{method} {prefix}{path} HTTP/1.1\r\n{fixed}"
        if body is not None:
            head += f"Content-Type: {form}\r\nContent-Length: {len(body)}\r\n"
        status, data = await asyncio.wait_for(conn.send(head.encode() + b"\r\n" + (body or b"")), req_timeout)
        return status, data

    async def call(
        w: int,
        op: str,
        method: str,
        path: str,
        body: bytes | None,
        ok_status: tuple[int, ...],
        check: bytes | None = None,
    ) -> bytes | None:
        t = now()
        try:
            status, data = await request(w, method, path, body)
        except Exception as err:  # connection refused/reset, timeout: an error, counted
            c = conns[w]
            if c is not None:
                c.close()
            stats.add(op, t, now(), False, type(err).__name__, repr(err))
            return None
        t1 = now()
        if status not in ok_status:
            stats.add(op, t, t1, False, str(status), data.decode(errors="replace"))
            return None
        if check is not None and check not in data.replace(b" ", b""):
            stats.add(op, t, t1, False, "unexpected-body", data.decode(errors="replace"))
            return None
        stats.add(op, t, t1, True)
        return data

    async def client(w: int) -> None:
        n = 0
        mine = ids[w::conc] if ids else []
        my_bodies = bodies[w::conc]
        while now() < deadline:
            if rate:
                slot = t0 + next_slot[0] / rate
                next_slot[0] += 1
                if slot > now():
                    await asyncio.sleep(slot - now())
                if now() >= deadline:
                    return
            n += 1
            if phase == "hello":
                await call(w, "hello", "GET", "/hello", None, (200,))
            elif phase == "create":
                name = f"{run_id}-{w}-{n}@bench.test"
                tw = time.time()
                data = await call(w, "create", "POST", "/Users", user_body(name, n), (201,))
                if times is not None:
                    times.append((name, tw, time.time(), data is not None))
                if data is not None:
                    created.append((json.loads(data)["id"], name))
            elif phase == "get":
                _id, name = mine[n % len(mine)]
                url = "/Users?filter=" + by_name(name)
                await call(w, "get", "GET", url, None, (200,), b'"totalResults":1')
            elif phase == "patch":
                uid, _name = mine[n % len(mine)]
                await call(w, "patch", "PATCH", f"/Users/{uid}", patch_body(n), (200, 204))
            elif phase == "post-bodies":
                if n > len(my_bodies):
                    exhausted.append(w)
                    return
                await call(w, "post", "POST", spec["path"], my_bodies[n - 1], expect)
            elif phase == "sync-users":
                # Entra ID's initial cycle, per user: look it up by userName, then create it.
                i = w + (n - 1) * conc
                if i >= count:
                    return
                name = f"{run_id}-u{i}@bench.test"
                url = "/Users?filter=" + by_name(name)
                if await call(w, "lookup", "GET", url, None, (200,), b'"totalResults":0') is None:
                    continue
                data = await call(w, "create", "POST", "/Users", user_body(name, i), (201,))
                if data is not None:
                    created.append((json.loads(data)["id"], name))
            elif phase == "sync-groups":
                # Per group: look it up by displayName, create it empty, add its members in one
                # PATCH (op "Add", path "members", a list of values), as Entra ID does.
                j = w + (n - 1) * conc
                if j >= count:
                    return
                gname = f"{run_id}-g{j}"
                url = "/Groups?filter=" + quote(f'displayName eq "{gname}"', safe="")
                if await call(w, "lookup", "GET", url, None, (200,), b'"totalResults":0') is None:
                    continue
                body = json.dumps(
                    {
                        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                        "displayName": gname,
                        "externalId": str(uuid.uuid4()),
                        "members": [],
                    }
                ).encode()
                data = await call(w, "create", "POST", "/Groups", body, (201,))
                if data is None:
                    continue
                gid = json.loads(data)["id"]
                vals = [{"value": ids[(j * members + k) % len(ids)][0]} for k in range(members)]
                patch = json.dumps(
                    {"schemas": [PATCH_OP], "Operations": [{"op": "Add", "path": "members", "value": vals}]}
                ).encode()
                await call(w, "members", "PATCH", f"/Groups/{gid}", patch, (200, 204))
            elif phase == "mixed":
                name = f"{run_id}-{w}-{n}@bench.test"
                url = "/Users?filter=" + by_name(name)
                if await call(w, "lookup", "GET", url, None, (200,), b'"totalResults":0') is None:
                    continue
                data = await call(w, "create", "POST", "/Users", user_body(name, n), (201,))
                if data is None:
                    continue
                uid = json.loads(data)["id"]
                created.append((uid, name))
                await call(w, "patch", "PATCH", f"/Users/{uid}", patch_body(n), (200, 204))
                gid = groups[(w * 7919 + n) % len(groups)]
                await call(w, "member", "PATCH", f"/Groups/{gid}", member_body(uid), (200, 204))
            else:
                raise SystemExit(f"unknown phase {phase!r}")

    cpu0 = time.process_time()
    await asyncio.gather(*(client(w) for w in range(conc)))
    cpu = time.process_time() - cpu0
    for c in conns:
        if c is not None:
            c.close()

    elapsed = now() - t0
    if count:
        duration = elapsed
    all_lat = [x for v in stats.lat.values() for x in v]
    result: dict[str, Any] = {
        "phase": phase,
        "concurrency": conc,
        "duration_s": duration,
        **summary(all_lat, duration),
        "errors": sum(stats.errors.values()),
        "error_kinds": stats.errors,
        "error_samples": stats.error_samples,
        "per_op": {op: summary(v, duration) for op, v in stats.lat.items()} if len(stats.lat) > 1 else {},
        "loadgen_cpu_s": round(cpu, 2),
        "elapsed_s": round(elapsed, 3),
        "exhausted": bool(exhausted) and elapsed < warmup + duration,
    }
    if times is not None:
        with open(spec["times_out"], "w") as f:
            for item in times:
                f.write(json.dumps(item) + "\n")
    if spec.get("ids_out"):
        with open(spec["ids_out"], "a") as f:
            for item in created:
                f.write(json.dumps(item) + "\n")
    return result


def main() -> None:
    spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else json.load(sys.stdin)
    try:
        import uvloop  # the bench extra; without it, the stock loop (slower)

        result = uvloop.run(run(spec))
    except ImportError:
        result = asyncio.run(run(spec))
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # don't wait for lingering connections' cleanup


if __name__ == "__main__":
    main()
