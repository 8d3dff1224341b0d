"""A minimal, fast webhook receiver for the benchmarks: HTTP/1.1 keep-alive on uvloop,
answers every ``POST`` with ``204 No Content`` and records, per request, the time it
arrived (``time.time()``: the same clock in every process on the machine), the
Standard Webhooks headers and the body. Signatures are verified afterwards by the
benchmark (off the hot path), from the dump.

    python bench/webhook_receiver.py --port 9000

Control (not counted): ``GET /count`` → ``{"received": n}``; ``GET /dump?path=FILE``
writes the records as JSON lines (``t``, ``headers``, ``body``) and clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
KEEP = (b"webhook-id", b"webhook-timestamp", b"webhook-signature")


class Receiver(asyncio.Protocol):
    # Shared by every connection of the process (one receiver per process).
    records: ClassVar[list[tuple[float, dict[str, str], bytes]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].split(b"\r\n")
            length = 0
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name in KEEP:
                    headers[name.decode()] = value.strip().decode()
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            method, target = head[0].split(b" ")[:2]
            if method == b"POST":
                self.records.append((time.time(), headers, body))
                self.transport.write(NO_CONTENT)  # type: ignore[attr-defined]
            else:
                self.control(target.decode())

    def control(self, target: str) -> None:
        url = urlsplit(target)
        if url.path == "/dump":
            path = parse_qs(url.query)["path"][0]
            with open(path, "w") as f:
                for t, h, b in self.records:
                    f.write(json.dumps({"t": t, "headers": h, "body": b.decode()}) + "\n")
            out = {"written": len(self.records)}
            Receiver.records = []
        else:
            out = {"received": len(self.records)}
        payload = json.dumps(out).encode()
        self.transport.write(  # type: ignore[attr-defined]
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
