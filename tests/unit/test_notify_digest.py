import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from auditor.digest import ADVICE, Failure, compose, group_causes
from auditor.notifier import backoff_s, build_message

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def failure(i, *, code="uniqueness", op="user.create", user=None, message=None, source="entra-prod"):
    return Failure(
        audit_id=i,
        completed_at=T0 + timedelta(seconds=i),
        operation=op,
        source_label=source,
        user_name=user if user is not None else f"user{i}@acme.example",
        resource_id=uuid.uuid4(),
        error_code=code,
        error_message=message or f"userName user{i}@acme.example is taken",
        correlation_id=f"corr-{i}",
    )


def test_first_mail_names_the_failure_and_the_window():
    mail = compose(
        tenant="acme", kind="first", failures=[failure(1)], window_start=T0, window_end=T0 + timedelta(minutes=15)
    )
    assert mail.subject == "[Provisio] acme: provisioning failed: user.create for user1@acme.example (uniqueness)"
    assert "first failure since 2026-03-01 12:00:00 UTC" in mail.text
    assert "collected into one digest" in mail.text
    assert "corr-1" in mail.text
    assert ADVICE["uniqueness"] in mail.text


def test_digest_counts_groups_by_cause_and_lists_ids():
    fs = [failure(i) for i in range(1, 6)]
    fs += [failure(10, code="policy", op="group.members", message="one group per user")]
    fs += [failure(11, code="policy", op="group.members", message="one group per user")]
    fs += [failure(12, code="not_found", op="user.replace", message="no user 42")]
    mail = compose(tenant="acme", kind="digest", failures=fs, window_start=T0, window_end=T0 + timedelta(minutes=15))
    assert mail.subject == "[Provisio] acme: 8 more provisioning failures in the last 15 min"
    text = mail.text
    assert "Failures: 8" in text
    assert "Operations: user.create × 5, group.members × 2, user.replace × 1" in text
    # Largest cause first; identical messages collapsed with a count.
    assert text.index("- uniqueness × 5") < text.index("- policy × 2") < text.index("- not_found × 1")
    assert "one group per user  (× 2)" in text
    for code in ("uniqueness", "policy", "not_found"):
        assert ADVICE[code] in text
    for cid in ("corr-1", "corr-10", "corr-12"):
        assert f"- {cid}" in text
    assert "provisio audit search --tenant acme --failed --since 2026-03-01T11:59:00Z" in text


def test_group_causes_orders_and_limits_messages():
    fs = [failure(i, message=f"m{i % 5}") for i in range(20)]
    fs.append(dataclasses.replace(failure(99), error_code=None, error_message=None))
    causes = group_causes(fs, max_messages=3)
    assert [(c.code, c.count) for c in causes] == [("uniqueness", 20), ("unknown", 1)]
    assert len(causes[0].messages) == 3 and all(n == 4 for _, n in causes[0].messages)
    assert causes[1].messages == (("(no message)", 1),)


def test_big_digest_lists_a_sample_but_counts_all():
    fs = [failure(i) for i in range(50)]
    mail = compose(
        tenant="acme",
        kind="digest",
        failures=fs,
        window_start=T0,
        window_end=T0 + timedelta(seconds=90),
        total=5000,
        max_listed=10,
    )
    assert "5000 more provisioning failures in the last 90 s" in mail.subject
    assert "Failures: 5000 (the first 50 listed)" in mail.text
    assert "and 40 more" in mail.text  # users beyond the first 10
    assert "- … and 40 more" in mail.text  # correlation ids beyond the first 10
    assert mail.text.count("\n- corr-") == 10


def test_several_failures_in_the_opening_batch():
    mail = compose(
        tenant="acme",
        kind="first",
        failures=[failure(1), failure(2, code="policy")],
        window_start=T0,
        window_end=T0 + timedelta(hours=1),
    )
    assert mail.subject == "[Provisio] acme: 2 provisioning failures (uniqueness …)"


def test_compose_refuses_an_empty_mail():
    with pytest.raises(ValueError):
        compose(tenant="acme", kind="digest", failures=[], window_start=T0, window_end=T0)


def test_message_headers_and_backoff():
    mail = compose(
        tenant="acme", kind="first", failures=[failure(1)], window_start=T0, window_end=T0 + timedelta(minutes=15)
    )
    msg = build_message(mail, notification_id=42, sender="provisio@ops.example", recipients=["a@b", "c@d"], now=T0)
    assert msg["Message-ID"] == "<provisio-notification-42@ops.example>"
    assert msg["To"] == "a@b, c@d" and msg["Auto-Submitted"] == "auto-generated"
    assert [backoff_s(n, 5, 600) for n in (1, 2, 3, 8, 20)] == [5, 10, 20, 600, 600]
