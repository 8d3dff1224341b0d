"""Helpers for the auditor, notification and audit CLI tests: a running auditor in
process, a real SMTP server (aiosmtpd) in a thread, and outcome factories."""

from __future__ import annotations

import email
import email.policy
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from provisio_lib.contract import ErrorInfo, Outcome, Source, encode
from provisio_lib.topology import DATA_FIELD, Topology


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    """aiosmtpd handler: keeps every accepted message; can refuse the next N with 451."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refuse_next = 0
        self.refused = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_next > 0:
            self.refuse_next -= 1
            self.refused += 1
            return "451 4.3.0 Try again later"
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        msg["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(msg)
        return "250 Message accepted for delivery"

    def by_subject(self, part: str) -> list[Message]:
        return [m for m in self.messages if part in m["Subject"]]


class SmtpServer:
    """A real SMTP server on a fixed port that can be stopped and started again."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.inbox = Inbox()
        self._controller: Controller | None = None

    def start(self) -> SmtpServer:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def smtp_env(port: int) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_from": "provisio@test.example"}


@asynccontextmanager
async def running_auditor(**overrides: Any) -> AsyncIterator[Any]:
    """The auditor app, in process, on the environment's database and prefix."""
    from faststream import TestApp

    from auditor.app import create_app
    from auditor.settings import AuditorSettings
    from provisio_lib.settings import load_settings

    defaults: dict[str, Any] = {
        "health_port": 0,
        "claim_idle_ms": 1000,
        "notify_poll_s": 0.1,
        "notify_backoff_s": 0.2,
        "notify_backoff_max_s": 0.5,
        "smtp_host": "127.0.0.1",
        "smtp_port": free_port(),  # nothing listens unless the test says so
        "smtp_timeout_s": 2.0,
    }
    settings = load_settings(AuditorSettings, **{**defaults, **overrides})
    app = create_app(settings)
    # FastStream's TestApp runs the lifespan and starts the (real) broker, then stops
    # both; the app's on_shutdown marks the consumer as stopping first.
    async with TestApp(app):
        yield app


def make_outcome(
    tenant_id: uuid.UUID,
    *,
    result: str = "applied",
    code: str | None = None,
    message: str = "",
    user: str | None = "alice@acme.example",
    op: str = "user.create",
    source: Source | None = None,
    correlation_id: str | None = None,
    resource_id: uuid.UUID | None = None,
    **kw: Any,
) -> Outcome:
    return Outcome(
        event_id=kw.pop("event_id", uuid.uuid4()),
        command_type=op,  # type: ignore[arg-type]
        tenant_id=tenant_id,
        source=source or Source(kind="scim", id="tok", label="entra-prod"),
        correlation_id=correlation_id or f"corr-{uuid.uuid4().hex[:8]}",
        occurred_at=kw.pop("occurred_at", datetime.now(UTC)),
        result=result,  # type: ignore[arg-type]
        error=ErrorInfo(code=code, message=message or f"{code} failure") if code else None,  # type: ignore[arg-type]
        resource_type="User" if op.startswith(("user", "jit")) else "Group",
        resource_id=resource_id or uuid.uuid4(),
        user_name=user,
        latency_ms=1.5,
        **kw,
    )


async def publish(redis: Any, topology: Topology, *outcomes: Outcome) -> None:
    for o in outcomes:
        await redis.xadd(topology.audit_stream_for(o.tenant_id), {DATA_FIELD: encode(o)})
