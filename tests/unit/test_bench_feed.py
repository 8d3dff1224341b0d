"""The feed benchmarks' own logic (bench/bench_ab.py, bench/webhook_receiver.py): the A/B
ratios and the receiver's request parsing; a wrong one would make the figures wrong."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).parents[2] / "bench"


def _load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the scripts import harness/loadgen as siblings
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


ab = _load("bench_ab")
receiver = _load("webhook_receiver")


def _cell(side: str, rnd: int, rps: float, p99: float, stack_cpu: float) -> dict[str, object]:
    return {
        "side": side,
        "round": rnd,
        "phase": "create",
        "rps": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "errors": 0,
        "cpu_per_1k": {"stack": stack_cpu, "stack+db": stack_cpu + 0.5},
    }


def test_paired_ratio_is_the_median_of_same_round_ratios() -> None:
    # Round 1 is slow for both sides (the machine was busy): the paired ratio ignores it,
    # the ratio of medians does not.
    cells = [
        _cell("a", 0, 1000, 50, 1.0),
        _cell("b", 0, 900, 60, 1.1),
        _cell("a", 1, 400, 90, 1.0),
        _cell("b", 1, 360, 100, 1.1),
        _cell("a", 2, 1000, 50, 1.0),
        _cell("b", 2, 950, 55, 1.1),
    ]
    assert ab.paired_ratio(cells, "b", "a", "rps") == pytest.approx(0.9)
    out = ab.summarize(cells, ["a", "b"], ["create"])["create"]
    assert out["a"]["rps"] == 1000 and out["b"]["rps"] == 900
    assert out["b"]["vs_a"]["rps_of_medians"] == pytest.approx(0.9)
    assert out["b"]["vs_a"]["stack_cpu_per_req"] == pytest.approx(1.1)
    assert out["b"]["rounds_rps"] == [900, 360, 950]


def test_cpu_per_request_counts_the_warm_up_requests_too() -> None:
    # 1,000 requests counted in 8 s, CPU measured over 10 s (2 s warm-up): 1,250 requests.
    cell = {
        "ok": 1000,
        "duration_s": 8.0,
        "cpu": {"scim-gateway": 0.5, "provisioner": 0.75, "postgres": 5.0, "postgres_own": 0.25, "wall": 10.0},
    }
    out = ab.cpu_per_1k(cell, 2.0)
    assert out["scim-gateway"] == pytest.approx(0.4)
    assert out["stack"] == pytest.approx(1.0)
    # Only this side's Postgres backends count (the server is shared with other work).
    assert out["stack+db"] == pytest.approx(1.2)
    assert "wall" not in out


class _Transport:
    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data


def test_receiver_answers_each_post_and_keeps_headers_and_body(tmp_path: Path) -> None:
    receiver.Receiver.records = []
    proto = receiver.Receiver()
    t = _Transport()
    proto.connection_made(t)
    body = json.dumps({"id": "evt_1", "type": "user.created"}).encode()
    req = (
        b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Webhook-Id: msg_1\r\nwebhook-timestamp: 1700000000\r\nwebhook-signature: v1,abc=\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    # Two pipelined requests, split mid-header and mid-body.
    data = req + req
    for chunk in (data[:20], data[20:130], data[130:]):
        proto.data_received(chunk)
    assert t.written == receiver.NO_CONTENT * 2
    assert len(receiver.Receiver.records) == 2
    _, headers, got = receiver.Receiver.records[0]
    assert got == body
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,abc="}

    dump = tmp_path / "dump.jsonl"
    proto.data_received(f"GET /dump?path={dump} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert [json.loads(x["body"])["id"] for x in lines] == ["evt_1", "evt_1"]
    assert receiver.Receiver.records == []
    assert t.written.endswith(b'{"written": 2}')
