import json
import uuid
from datetime import UTC, datetime

import pytest

from auditor.records import REDACTED, audit_row, unique_rows
from provisio_lib.contract import Change, ErrorInfo, Outcome, Source

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def outcome(**kw):
    base = dict(
        event_id=uuid.uuid4(),
        command_type="user.replace",
        tenant_id=uuid.uuid4(),
        source=Source(kind="scim", id="tok-1", label="entra-prod"),
        correlation_id="corr-1",
        occurred_at=T0,
        completed_at=T0,
        result="applied",
        resource_type="User",
        resource_id=uuid.uuid4(),
        user_name="alice@acme.example",
        latency_ms=3.5,
    )
    base.update(kw)
    return Outcome(**base)


def test_row_carries_who_what_when_result():
    o = outcome(changes={"display_name": Change(before="Al", after="Alice")}, notes=("deactivated instead of deleted",))
    r = audit_row(o)
    assert (r.event_id, r.tenant_id, r.operation, r.result) == (o.event_id, o.tenant_id, "user.replace", "applied")
    assert (r.source_kind, r.source_id, r.source_label) == ("scim", "tok-1", "entra-prod")
    assert r.user_name == "alice@acme.example" and r.correlation_id == "corr-1" and r.latency_ms == 3.5
    assert json.loads(r.changes) == {"display_name": {"before": "Al", "after": "Alice"}}
    assert r.notes == ("deactivated instead of deleted",)
    assert r.error_code is None and r.error_message is None


def test_secrets_are_never_stored_at_any_depth():
    o = outcome(
        changes={
            "password": Change(before=None, after="hunter2"),
            "attributes": Change(before={}, after={"apiToken": "abc", "nested": {"clientSecret": "s3"}, "dept": "IT"}),
        }
    )
    stored = audit_row(o).changes
    assert "hunter2" not in stored and "abc" not in stored and "s3" not in stored
    changes = json.loads(stored)
    assert changes["password"] == {"before": REDACTED, "after": REDACTED}
    assert changes["attributes"]["after"]["dept"] == "IT"
    assert changes["attributes"]["after"]["apiToken"] == REDACTED


def test_failure_fields_and_postgres_unsafe_text():
    o = outcome(
        result="failed",
        error=ErrorInfo(code="uniqueness", message="userName taken\x00" + "x" * 5000),
        changes={"display_name": Change(before="a\x00b", after=None)},
    )
    r = audit_row(o)
    assert r.error_code == "uniqueness"
    assert "\x00" not in r.error_message and len(r.error_message) == 2000
    assert "\\u0000" not in r.changes


def test_user_name_falls_back_to_committed_state():
    o = outcome(user_name=None, resource={"user_name": "bob@acme.example"})
    assert audit_row(o).user_name == "bob@acme.example"
    assert audit_row(outcome(user_name=None, resource_type="Group", resource={"user_name": "x"})).user_name is None


def test_batch_rows_are_unique_per_event_and_result():
    o = outcome()
    redelivered = o.model_copy(update={"redelivered": True})
    failed_other = outcome(result="failed", error=ErrorInfo(code="internal", message="boom"))
    rows = unique_rows([o, redelivered, failed_other])
    assert [r.event_id for r in rows] == [o.event_id, failed_other.event_id]
