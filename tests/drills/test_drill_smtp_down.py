"""Drill 5: the mail server is down for a while.

The provisioner and the auditor run as processes; real commands fail (duplicate userNames)
for three tenants while nothing listens on the SMTP port. Mid-outage the auditor is killed
(SIGKILL) and another one started, and more failures arrive. Then a real SMTP server
(aiosmtpd) comes up on that port. Afterwards: every failure is reported in exactly one
mail (its correlation id in one mail, the failure counts add up), no mail twice, every
notification row sent, and the first mails show the retries they needed.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from typing import Any

import pytest

from provisio_lib.contract import Command, CreateUser, Source, UserData
from provisio_lib.embedded import free_port
from provisio_lib.outcomes import publish_command
from tests.conftest import make_tenant
from tests.integration.audit_support import SmtpServer

from .support import Clock, wait_for

pytestmark = [pytest.mark.drills, pytest.mark.integration]

WINDOW_S = 2.0
SOURCE = Source(kind="scim", id="drill", label="drill-5")


def create(tenant_id: uuid.UUID, name: str, cid: str) -> Command:
    return Command(
        tenant_id=tenant_id,
        source=SOURCE,
        correlation_id=cid,
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=name)),
    )


async def test_smtp_down_delays_mail_but_loses_and_doubles_none(procs, pool, redis, topology):
    clock = Clock()
    port = free_port()  # nothing listens here until the server starts
    smtp_settings: dict[str, Any] = {
        "notify_window_s": WINDOW_S,
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_from": "provisio@drill.test",
    }
    tenants = [await make_tenant(pool, notify_emails=[f"ops{i}@drill.test"]) for i in range(3)]
    await procs.provisioner()
    auditor = await procs.auditor(**smtp_settings)
    failing: dict[str, str] = {}  # correlation id → tenant's address

    async def duplicates(round_: int, n: int) -> None:
        for i, t in enumerate(tenants):
            for k in range(n):
                cid = f"drill5-r{round_}-t{i}-{k}"
                failing[cid] = f"ops{i}@drill.test"
                await publish_command(redis, topology, create(t.id, f"taken{i}@drill.test", cid))

    for i, t in enumerate(tenants):  # the users the duplicates collide with
        await publish_command(redis, topology, create(t.id, f"taken{i}@drill.test", f"drill5-ok-{i}"))
    await duplicates(1, 4)

    async def first_mails_failing() -> list[int]:
        async with pool.acquire() as conn:
            ids = await conn.fetch(
                "SELECT id FROM notifications WHERE status = 'pending' AND attempts >= 1 "
                "AND last_error IS NOT NULL AND kind = 'first'"
            )
        return [r["id"] for r in ids] if len(ids) == len(tenants) else []

    failed_first = await wait_for(first_mails_failing, 15, "first mails tried and failing while SMTP is down")
    clock.mark("mail failing")

    auditor.kill()  # the auditor dies during the outage: the pending mails are in Postgres
    await duplicates(2, 3)
    await procs.auditor(**smtp_settings)
    clock.mark("auditor killed and replaced")
    await asyncio.sleep(max(0.0, 5.0 - clock.marks[-1][1]))  # SMTP down ~5 s in all

    smtp = SmtpServer(port).start()
    procs.servers.append(smtp.stop)
    clock.mark("SMTP up")

    def seen() -> Counter[str]:
        text = "\n".join(m.get_payload(decode=True).decode() for m in smtp.inbox.messages)
        return Counter(c for c in re.findall(r"drill5-r\d-t\d-\d+", text))

    async def all_reported() -> bool:
        return set(seen()) == set(failing)

    await wait_for(
        all_reported,
        20,
        "every failure reported",
        diagnostics=lambda: f"missing {set(failing) - set(seen())}\n{procs.logs()}",
    )
    clock.mark("all failures mailed")
    await asyncio.sleep(WINDOW_S + 1.0)  # nothing more is owed: a late duplicate would show here

    counts = seen()
    assert set(counts.values()) == {1}, f"a failure reported twice: {counts}"
    ids = Counter(m["Message-ID"] for m in smtp.inbox.messages)
    assert set(ids.values()) == {1}
    for cid, to in failing.items():
        mail = next(m for m in smtp.inbox.messages if cid in m.get_payload(decode=True).decode())
        assert mail["X-Envelope-To"] == to  # each tenant's failures go to that tenant only
    per_tenant: Counter[str] = Counter()
    for m in smtp.inbox.messages:
        body = m.get_payload(decode=True).decode()
        found = re.search(r"^Failures: (\d+)", body, re.M)
        per_tenant[m["X-Envelope-To"]] += int(found.group(1)) if found else 1
    assert per_tenant == Counter(failing.values())

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, status, attempts FROM notifications")
    assert {r["status"] for r in rows} == {"sent"}
    # The mails seen failing were retried until sent (later ones may have gone at once).
    assert all(r["attempts"] >= 2 for r in rows if r["id"] in failed_first)
    print(f"drill 5: {clock}; {len(smtp.inbox.messages)} mails for {len(failing)} failures")
