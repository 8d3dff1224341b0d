"""Sends due notifications over SMTP (aiosmtplib), from the rows in Postgres.

Each mail is claimed in its own transaction with ``FOR UPDATE SKIP LOCKED`` (so several
auditors share the work and never send the same row at once), sent while the claim is
held, and marked ``sent`` in that same transaction. A mail server that is down or
refuses leaves the row ``pending`` with ``attempts`` + 1 and a later ``next_attempt_at``
(exponential backoff): nothing is lost.

Residual at-least-once window: if the server has accepted the message (250 after DATA)
and this process dies, or loses Postgres, before the COMMIT that marks the row sent, the
row is still pending and the mail is sent again. The ``Message-ID`` is derived from the
notification id, so the repeat is recognisable as the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import aiosmtplib
import asyncpg

from provisio_lib.logging import get_logger
from provisio_lib.observability import EMAILS_FAILED, EMAILS_PENDING, EMAILS_SENT

from .digest import Failure, Mail, compose
from .settings import AuditorSettings

log = get_logger(__name__)

MAX_ITEMS = 2000  # failures fetched for one mail; the count covers all of them

_CLAIM = """
SELECT n.id, n.tenant_id, n.kind, n.window_start, n.window_end, n.attempts,
       n.subject AS prepared_subject, n.body AS prepared_body,
       t.name AS tenant_name, t.notify_emails
FROM notifications n JOIN tenants t ON t.id = n.tenant_id
WHERE n.status = 'pending' AND n.next_attempt_at <= clock_timestamp()
  -- A digest never overtakes the first mail of its window (still backing off).
  AND NOT (n.kind = 'digest' AND EXISTS (
      SELECT 1 FROM notifications f
      WHERE f.tenant_id = n.tenant_id AND f.window_start = n.window_start
        AND f.kind = 'first' AND f.status = 'pending'))
ORDER BY n.window_start, n.kind = 'digest', n.id
LIMIT 1
FOR UPDATE OF n SKIP LOCKED
"""

_ITEMS = """
SELECT a.id, a.completed_at, a.operation, a.source_label, a.user_name, a.resource_id,
       a.error_code, a.error_message, a.correlation_id
FROM notification_items i JOIN audit_log a ON a.id = i.audit_id
WHERE i.notification_id = $1
ORDER BY a.completed_at, a.id
LIMIT $2
"""


class SendError(Exception):
    """The mail server is unreachable or refused the message."""


Sender = Callable[[EmailMessage], Awaitable[None]]


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    sender: str
    tls: bool = False
    starttls: bool = False
    user: str | None = None
    password: str | None = None
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, s: AuditorSettings) -> SmtpConfig:
        return cls(
            host=s.smtp_host,
            port=s.smtp_port,
            sender=s.smtp_from,
            tls=s.smtp_tls,
            starttls=s.smtp_starttls,
            user=s.smtp_user,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            timeout_s=s.smtp_timeout_s,
        )


def smtp_sender(cfg: SmtpConfig) -> Sender:
    async def send(message: EmailMessage) -> None:
        try:
            _, response = await aiosmtplib.send(
                message,
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.user,
                password=cfg.password,
                use_tls=cfg.tls,
                start_tls=cfg.starttls,
                timeout=cfg.timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            raise SendError(f"{type(err).__name__}: {err}") from err
        log.info("mail_accepted", message_id=message["Message-ID"], response=response)

    return send


def build_message(
    mail: Mail, *, notification_id: int, sender: str, recipients: list[str], now: datetime
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = mail.subject
    msg["Date"] = format_datetime(now)
    domain = sender.rsplit("@", 1)[-1]
    # Stable per notification: a resend after a crash is the same message.
    msg["Message-ID"] = f"<provisio-notification-{notification_id}@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no auto-replies to this
    msg.set_content(mail.text)
    return msg


def backoff_s(attempts: int, base: float, cap: float) -> float:
    """Delay before attempt ``attempts + 1`` (attempts ≥ 1 failures so far)."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))


class Notifier:
    def __init__(self, pool: asyncpg.Pool, settings: AuditorSettings, sender: Sender | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.smtp = SmtpConfig.from_settings(settings)
        self.send = sender or smtp_sender(self.smtp)
        self.wake = asyncio.Event()
        self.counters = {"sent": 0, "failed_attempts": 0, "skipped": 0}

    async def run(self) -> None:
        """Until cancelled: send what is due, then sleep until woken or the next poll."""
        while True:
            try:
                await self.send_due()
                async with self.pool.acquire() as conn:
                    EMAILS_PENDING.set(
                        await conn.fetchval("SELECT count(*) FROM notifications WHERE status = 'pending'")
                    )
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("notifier_database_error", error=str(err))
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.notify_poll_s)

    async def send_due(self, limit: int = 100) -> int:
        """Send up to ``limit`` due notifications; stop at the first SMTP failure (the
        server is probably down: the others wait for their own next attempt)."""
        done = 0
        while done < limit:
            outcome = await self._send_one()
            if outcome is None or outcome == "failed":
                break
            done += 1
        return done

    async def _send_one(self) -> str | None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM)
            if row is None:
                return None
            nid = row["id"]
            recipients = [e for e in row["notify_emails"] if e]
            # A prepared mail (the webhook dispatcher's "endpoint disabled") carries its
            # own subject and text; failure mails are composed from their audit rows.
            prepared = row["prepared_body"] is not None
            items = [] if prepared else await conn.fetch(_ITEMS, nid, MAX_ITEMS)
            if not recipients or not (items or prepared):
                reason = "tenant has no notification addresses" if items or prepared else "failures purged by retention"
                await conn.execute(
                    "UPDATE notifications SET status = 'skipped', last_error = $2 WHERE id = $1", nid, reason
                )
                self.counters["skipped"] += 1
                log.info("notification_skipped", notification_id=nid, tenant=row["tenant_name"], reason=reason)
                return "skipped"
            if prepared:
                total = 0
                mail = Mail(subject=row["prepared_subject"] or "[Provisio] notification", text=row["prepared_body"])
            else:
                total = await conn.fetchval("SELECT count(*) FROM notification_items WHERE notification_id = $1", nid)
                mail = compose(
                    tenant=row["tenant_name"],
                    kind=row["kind"],
                    failures=[_failure(i) for i in items],
                    window_start=row["window_start"],
                    window_end=row["window_end"],
                    total=total,
                )
            message = build_message(
                mail, notification_id=nid, sender=self.smtp.sender, recipients=recipients, now=datetime.now(UTC)
            )
            try:
                await self.send(message)
            except SendError as err:
                attempts = row["attempts"] + 1
                delay = backoff_s(attempts, self.settings.notify_backoff_s, self.settings.notify_backoff_max_s)
                await conn.execute(
                    """UPDATE notifications SET attempts = $2, last_error = $3,
                           next_attempt_at = clock_timestamp() + make_interval(secs => $4)
                       WHERE id = $1""",
                    nid,
                    attempts,
                    str(err)[:2000],
                    delay,
                )
                self.counters["failed_attempts"] += 1
                EMAILS_FAILED.inc()
                log.warning(
                    "notification_send_failed", notification_id=nid, attempts=attempts, retry_in_s=delay, error=str(err)
                )
                return "failed"
            await conn.execute(
                """UPDATE notifications SET status = 'sent', sent_at = clock_timestamp(), attempts = attempts + 1,
                       recipients = $2, subject = $3, message_id = $4, last_error = NULL
                   WHERE id = $1""",
                nid,
                recipients,
                mail.subject,
                message["Message-ID"],
            )
            self.counters["sent"] += 1
            EMAILS_SENT.labels(kind=row["kind"]).inc()
            log.info(
                "notification_sent",
                notification_id=nid,
                tenant=row["tenant_name"],
                kind=row["kind"],
                failures=total,
                recipients=len(recipients),
            )
            return "sent"


def _failure(r: Any) -> Failure:
    return Failure(
        audit_id=r["id"],
        completed_at=r["completed_at"],
        operation=r["operation"],
        source_label=r["source_label"],
        user_name=r["user_name"],
        resource_id=r["resource_id"],
        error_code=r["error_code"],
        error_message=r["error_message"],
        correlation_id=r["correlation_id"],
    )
