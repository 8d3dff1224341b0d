from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from provisio_cli.audit import SearchFilters, matches, parse_since, search_query, valid_email
from provisio_cli.context import CliError
from provisio_cli.dlq import parse_id
from provisio_lib.contract import ErrorInfo, Outcome, Source
from provisio_lib.topology import Topology

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        (" 7d ", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(weeks=1)),
        ("45s", NOW - timedelta(seconds=45)),
        ("2026-04-30T08:00", datetime(2026, 4, 30, 8, 0, tzinfo=UTC)),
        ("2026-04-30T08:00:00Z", datetime(2026, 4, 30, 8, 0, tzinfo=UTC)),
        ("2026-04-30T10:00:00+02:00", datetime(2026, 4, 30, 8, 0, tzinfo=UTC)),
    ],
)
def test_parse_since(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "1y", "-1h", "1.5h", "h"])
def test_parse_since_refuses_with_usage_code(text):
    with pytest.raises(CliError) as err:
        parse_since(text, NOW)
    assert err.value.code == 2 and "bad time expression" in str(err.value)


def test_search_query_is_parameterised():
    tid = uuid4()
    nasty = "x'; DROP TABLE audit_log; --"
    sql, args = search_query(SearchFilters(tid, nasty, "okta", "corr", NOW, True, 10))
    assert nasty not in sql and "okta" not in sql
    assert args == [tid, nasty, "okta", "corr", NOW, 10]
    assert "a.tenant_id = $1" in sql and "lower(a.user_name) = lower($2)" in sql
    assert "(a.source_label = $3 OR a.source_id = $3)" in sql and "a.correlation_id = $4" in sql
    assert "a.completed_at >= $5" in sql and "a.result = 'failed'" in sql and sql.endswith("LIMIT $6")
    bare, bare_args = search_query(SearchFilters())
    assert "WHERE" not in bare and bare_args == [50]


def test_tail_filters():
    t = uuid4()
    o = Outcome(
        event_id=uuid4(),
        command_type="user.create",
        tenant_id=t,
        source=Source(kind="scim", id="1", label="x"),
        correlation_id="c",
        occurred_at=NOW,
        result="failed",
        error=ErrorInfo(code="policy", message="m"),
        user_name="Alice@Acme",
    )
    assert matches(o, tenant=t, failed=True, user="alice@acme")
    assert not matches(o, tenant=uuid4(), failed=False, user=None)
    assert not matches(o, tenant=None, failed=False, user="bob")
    assert not matches(o.model_copy(update={"result": "applied", "error": None}), tenant=None, failed=True, user=None)


def test_email_and_dlq_id_checks():
    assert valid_email("a@b") and valid_email("ops+alerts@acme.example")
    assert not valid_email("nope") and not valid_email("a@b, c@d") and not valid_email("<a@b>")
    topo = Topology(prefix="p", partitions=8)
    assert parse_id("3:1767225600000-0", topo) == ("commands", 3, "1767225600000-0")
    assert parse_id("audit:3:1767225600000-0", topo) == ("audit", 3, "1767225600000-0")
    for bad in ("3", "x:1-0", "3:abc", "8:1-0", "audit:8:1-0", "commands:3:1-0", "audit:3"):
        with pytest.raises(CliError) as err:
            parse_id(bad, topo)
        assert err.value.code == 2


@pytest.mark.parametrize(
    ("actor", "kind"),
    [
        ("cli", "cli"),
        ("cli:alice", "cli"),
        ("cli:alice@corp.example", "cli"),  # sssd's fully qualified OS user names
        ("setup:psl_AbCdEf012345", "setup"),
        ("ada@example.com", "staff"),
        (str(uuid4()), "staff"),  # the console records a staff member by account id
        ("client:x", "staff"),
        ("setupx", "staff"),
    ],
)
def test_actor_kind(actor, kind):
    from provisio_lib.admin.audit import actor_kind

    assert actor_kind(actor) == kind


@pytest.mark.parametrize(
    ("kind", "label", "source"),
    [
        ("cli", "cli:alice", "cli:alice"),
        ("cli", "cli", "cli"),
        ("setup", "setup:psl_x", "setup:psl_x"),
        ("staff", "ada@example.com", "staff:ada@example.com"),
        ("staff", "cli:odd@example.com", "staff:cli:odd@example.com"),  # the kind is never hidden
        ("scim", "entra-prod", "scim:entra-prod"),
    ],
)
def test_display_names_the_source_kind_once(kind, label, source):
    from provisio_lib.admin.audit import display

    assert display({"source_kind": kind, "source_label": label})["source"] == source
