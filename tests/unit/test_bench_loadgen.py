"""The benchmark load generator's own HTTP/1.1 response parsing and statistics
(bench/loadgen.py): a wrong parser would make every benchmark figure wrong."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from urllib.parse import unquote

import pytest

pytestmark = pytest.mark.unit

_spec = importlib.util.spec_from_file_location("bench_loadgen", Path(__file__).parents[2] / "bench" / "loadgen.py")
assert _spec and _spec.loader
loadgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadgen)


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _conn() -> tuple[object, _Transport]:
    http = loadgen.Http()
    t = _Transport()
    http.connection_made(t)
    return http, t


def _feed(http: object, *parts: bytes) -> tuple[int, bytes]:
    fut = http.send(b"GET / HTTP/1.1\r\n\r\n")
    for p in parts:
        assert not fut.done()
        http.data_received(p)
    assert fut.done()
    return fut.result()


async def test_content_length_body_split_across_reads() -> None:
    http, _ = _conn()
    status, body = _feed(
        http,
        b"HTTP/1.1 201 Created\r\nContent-Type: application/scim+json\r\nContent-Le",
        b'ngth: 11\r\n\r\n{"id": ',
        b'"x"}',
    )
    assert status == 201
    assert json.loads(body) == {"id": "x"}


async def test_chunked_body() -> None:
    http, _ = _conn()
    status, body = _feed(
        http, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"
    )
    assert (status, body) == (200, b"hello world")


async def test_no_body_and_connection_close() -> None:
    http, t = _conn()
    status, body = _feed(http, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    assert (status, body) == (204, b"")
    assert t.closed and http.closed


async def test_server_closing_mid_response_fails_the_request() -> None:
    http, _ = _conn()
    fut = http.send(b"GET / HTTP/1.1\r\n\r\n")
    http.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    http.connection_lost(None)
    with pytest.raises(ConnectionError):
        await fut


def test_percentiles_are_nearest_rank() -> None:
    values = sorted(float(i) for i in range(1, 101))
    assert loadgen.pct(values, 50) == 50.0
    assert loadgen.pct(values, 99) == 99.0
    assert loadgen.pct([7.0], 99) == 7.0


def test_stats_count_only_the_measured_window() -> None:
    stats = loadgen.Stats(10.0, 20.0)
    stats.add("create", 9.9, 10.5, True)  # started in the warm-up
    stats.add("create", 11.0, 11.2, True)
    stats.add("create", 19.9, 20.1, True)  # ended after the deadline
    stats.add("create", 12.0, 12.1, False, "500", "boom")
    assert stats.lat == {"create": [pytest.approx(0.2)]}
    assert stats.errors == {"create:500": 1}
    assert stats.outside == 2


def test_request_bodies_are_entra_shaped() -> None:
    assert unquote(loadgen.by_name('a"b@x.test')) == 'userName eq "a"b@x.test"'
    patch = json.loads(loadgen.patch_body(3))
    assert [op["op"] for op in patch["Operations"]] == ["Replace", "Replace"]
    user = json.loads(loadgen.user_body("u@x.test", 1))
    assert user["userName"] == "u@x.test" and user["emails"][0]["type"] == "work"
