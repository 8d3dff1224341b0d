import asyncio
from collections import Counter

import pytest

from auditor.notifier import Notifier
from auditor.records import audit_row
from auditor.settings import AuditorSettings
from auditor.store import write_batch
from provisio_lib.settings import load_settings
from tests.conftest import eventually, make_tenant

from .audit_support import SmtpServer, make_outcome, publish, running_auditor, smtp_env

pytestmark = pytest.mark.integration


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


async def _mails(inbox, n):
    return len(inbox.messages) >= n


async def test_first_failure_at_once_then_one_digest_per_window(service_env, pool, redis, topology, smtp):
    acme = await make_tenant(pool, notify_emails=["ops@acme.example", "it@acme.example"])
    window = 1.5
    async with running_auditor(notify_window_s=window, **smtp_env(smtp.port)):
        await publish(redis, topology, make_outcome(acme.id))  # a success: no mail
        first = make_outcome(
            acme.id,
            result="failed",
            code="uniqueness",
            user="alice@acme.example",
            correlation_id="corr-first",
            message="userName alice@acme.example is taken",
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await publish(redis, topology, first)
        await eventually(lambda: _mails(smtp.inbox, 1), timeout=5)
        assert loop.time() - t0 < window  # promptly, not at the end of the window
        later = [
            make_outcome(
                acme.id,
                result="failed",
                code="policy",
                op="group.members",
                user=f"u{i}@acme.example",
                message="one group per user",
                correlation_id=f"corr-later-{i}",
            )
            for i in range(4)
        ]
        later.append(
            make_outcome(
                acme.id,
                result="failed",
                code="not_found",
                op="user.replace",
                user="bob@acme.example",
                correlation_id="corr-later-nf",
                message="no such user",
            )
        )
        await publish(redis, topology, *later)
        await asyncio.sleep(window / 3)
        assert len(smtp.inbox.messages) == 1  # collected, not one mail per failure
        await eventually(lambda: _mails(smtp.inbox, 2), timeout=window + 5)
        await asyncio.sleep(0.5)

    assert len(smtp.inbox.messages) == 2
    mail1, digest = smtp.inbox.messages
    assert (
        mail1["Subject"]
        == f"[Provisio] {acme.name}: provisioning failed: user.create for alice@acme.example (uniqueness)"
    )
    assert mail1["X-Envelope-To"] == "ops@acme.example, it@acme.example"
    body1 = mail1.get_payload(decode=True).decode()
    assert "corr-first" in body1 and "userName alice@acme.example is taken" in body1

    assert digest["Subject"] == f"[Provisio] {acme.name}: 5 more provisioning failures in the last 1.5 s"
    body = digest.get_payload(decode=True).decode()
    assert "Operations: group.members × 4, user.replace × 1" in body
    assert "- policy × 4" in body and "one group per user  (× 4)" in body and "- not_found × 1" in body
    assert all(f"corr-later-{i}" in body for i in range(4)) and "corr-later-nf" in body
    assert "corr-first" not in body  # reported once, in the first mail
    assert "bob@acme.example" in body

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT kind, status, attempts FROM notifications ORDER BY id")
    assert [(r["kind"], r["status"], r["attempts"]) for r in rows] == [("first", "sent", 1), ("digest", "sent", 1)]


async def test_smtp_down_then_up_every_mail_exactly_once(service_env, pool, redis, topology):
    server = SmtpServer()  # port chosen, nothing listening yet
    tenants = [await make_tenant(pool, notify_emails=[f"ops{i}@example.test"]) for i in range(3)]
    async with running_auditor(notify_window_s=1.0, **smtp_env(server.port)):
        for t in tenants:
            await publish(redis, topology, make_outcome(t.id, result="failed", code="internal"))
        # Down: the mails stay pending, retried with backoff and their error recorded.
        await eventually(lambda: _all_tried(pool, 3), timeout=10)
        for t in tenants:  # more failures while down: they wait in the digests
            await publish(redis, topology, *(make_outcome(t.id, result="failed", code="policy") for _ in range(2)))
        await asyncio.sleep(0.3)
        server.start()
        try:
            await eventually(lambda: _mails(server.inbox, 6), timeout=15)
            await asyncio.sleep(0.5)
        finally:
            server.stop()
    # A restart (another auditor on the same database) sends nothing again.
    server.start()
    try:
        async with running_auditor(notify_window_s=1.0, **smtp_env(server.port)):
            await asyncio.sleep(1.0)
    finally:
        server.stop()
    ids = Counter(m["Message-ID"] for m in server.inbox.messages)
    assert len(ids) == 6 and set(ids.values()) == {1}
    to = Counter(m["X-Envelope-To"] for m in server.inbox.messages)
    assert to == {f"ops{i}@example.test": 2 for i in range(3)}
    for i in range(3):  # a digest never overtakes its window's first mail
        subjects = [m["Subject"] for m in server.inbox.messages if m["X-Envelope-To"] == f"ops{i}@example.test"]
        assert "provisioning failed: user.create" in subjects[0] and "2 more provisioning failures" in subjects[1]
    async with pool.acquire() as conn:
        status = await conn.fetch("SELECT status, attempts FROM notifications WHERE kind = 'first'")
    assert all(r["status"] == "sent" and r["attempts"] >= 2 for r in status)


async def _all_tried(pool, n):
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT attempts, last_error, status FROM notifications WHERE attempts > 0 AND status = 'pending'"
        )
    return len(rows) == n and all("onnect" in r["last_error"] or "refused" in r["last_error"].lower() for r in rows)


async def test_refusing_server_is_retried(service_env, pool, redis, topology, smtp):
    t = await make_tenant(pool, notify_emails=["ops@example.test"])
    smtp.inbox.refuse_next = 2  # 451 twice, then accept
    async with running_auditor(**smtp_env(smtp.port)):
        await publish(redis, topology, make_outcome(t.id, result="failed", code="internal"))
        await eventually(lambda: _mails(smtp.inbox, 1), timeout=10)
    assert smtp.inbox.refused == 2 and len(smtp.inbox.messages) == 1
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, attempts, last_error FROM notifications")
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 3, None)


async def test_two_notifiers_never_send_the_same_mail(service_env, pool, smtp):
    settings = load_settings(AuditorSettings, notify_window_s=60, **smtp_env(smtp.port))
    tenants = [await make_tenant(pool, notify_emails=[f"ops{i}@example.test"]) for i in range(12)]
    async with pool.acquire() as conn:
        for t in tenants:
            await write_batch(conn, [audit_row(make_outcome(t.id, result="failed", code="internal"))], 60)
    a, b = Notifier(pool, settings), Notifier(pool, settings)
    sent = await asyncio.gather(a.send_due(), b.send_due(), a.send_due())
    assert sum(sent) == 12
    ids = Counter(m["Message-ID"] for m in smtp.inbox.messages)
    assert len(ids) == 12 and set(ids.values()) == {1}


async def test_tenant_without_addresses_is_skipped_not_mailed(service_env, pool, smtp):
    settings = load_settings(AuditorSettings, **smtp_env(smtp.port))
    t = await make_tenant(pool)
    async with pool.acquire() as conn:
        await write_batch(conn, [audit_row(make_outcome(t.id, result="failed", code="internal"))], 60)
    assert await Notifier(pool, settings).send_due() == 1
    assert smtp.inbox.messages == []
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, last_error FROM notifications")
    assert row["status"] == "skipped" and row["last_error"] == "tenant has no notification addresses"
