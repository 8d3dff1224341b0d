"""What `provisio dev` leaves in its folder (``.provisio/`` unless PROVISIO_DEV_DIR) for
the CLI and a second `provisio dev` to find the running stack.

- ``dev.lock``: held (flock) by the running `provisio dev`; the file holds its pid.
- ``dev.env``:  the stack's PROVISIO_* URLs, one ``NAME=value`` a line (written once the
  services are up, removed when it stops).
- ``demo-token``: the demo tenant's SCIM token (the database has only its hash).
- ``mail/``: what the auditor mailed, one ``.eml`` file per message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
from collections.abc import Mapping, MutableMapping
from pathlib import Path

DEFAULT_DIR = ".provisio"
LOCK_FILE = "dev.lock"
ENV_FILE = "dev.env"
TOKEN_FILE = "demo-token"
MAIL_DIR = "mail"
# What the CLI takes from a running stack: where its servers are, and the URLs it prints.
SHARED_VARS = (
    "PROVISIO_DATABASE_URL",
    "PROVISIO_REDIS_URL",
    "PROVISIO_REDIS_PREFIX",
    "PROVISIO_WEBHOOK_ALLOW_PRIVATE",
    "PROVISIO_SAML_PUBLIC_URL",
)


def dev_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get("PROVISIO_DEV_DIR") or DEFAULT_DIR)


class StackLock:
    """An exclusive flock on ``dev.lock``: the kernel drops it when the process dies, so a
    crashed `provisio dev` never leaves a stale lock behind."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                (self.path.parent / ENV_FILE).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def running_pid(folder: Path) -> int | None:
    """The pid of the `provisio dev` holding ``folder``'s lock, or None if none runs."""
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def write_env(folder: Path, values: Mapping[str, str]) -> Path:
    path = folder / ENV_FILE
    tmp = path.with_suffix(".tmp")
    # 0600: the URLs may carry a password (a PROVISIO_DATABASE_URL given to `provisio dev`).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in values.items())
    tmp.replace(path)
    return path


def read_env(folder: Path) -> dict[str, str]:
    try:
        text = (folder / ENV_FILE).read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.startswith("PROVISIO_"):
            out[name] = value
    return out


def export_lines(values: Mapping[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in values.items()]


def use_running_stack(environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Where PROVISIO_DATABASE_URL is unset and a `provisio dev` runs in the dev folder,
    put its URLs in ``environ`` (variables already set win) and return its env file."""
    environ = os.environ if environ is None else environ
    if environ.get("PROVISIO_DATABASE_URL"):
        return None
    folder = dev_dir(environ)
    if running_pid(folder) is None:
        return None
    values = read_env(folder)
    if not values:
        return None
    for name in SHARED_VARS:
        if name in values and not environ.get(name):
            environ[name] = values[name]
    return folder / ENV_FILE
