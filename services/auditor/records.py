"""Outcome → audit row. Pure: no I/O, tested without a database.

The provisioner already leaves secrets out of ``Outcome.changes``; this is the second
line of defence (the issue: "secrets and passwords never stored"), and it also removes
what Postgres refuses (NUL characters in text and jsonb), so one odd value cannot fail a
whole batch.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from provisio_lib.contract import Change, Outcome

REDACTED = "[redacted]"
# Attribute names whose values must never reach the audit trail (SCIM `password`,
# IdP client secrets, tokens in custom attributes).
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|credential|private_?key)", re.IGNORECASE)
_CHANGES: TypeAdapter[dict[str, Change]] = TypeAdapter(dict[str, Change])
MAX_MESSAGE = 2000
MAX_NOTES = 50

# Column order of AuditRow.as_tuple(), used by the batch insert.
COLUMNS = (
    "event_id",
    "occurred_at",
    "completed_at",
    "tenant_id",
    "source_kind",
    "source_id",
    "source_label",
    "operation",
    "resource_type",
    "resource_id",
    "user_name",
    "changes",
    "result",
    "error_code",
    "error_message",
    "notes",
    "correlation_id",
    "latency_ms",
)


@dataclass(frozen=True, slots=True)
class AuditRow:
    event_id: uuid.UUID
    occurred_at: datetime
    completed_at: datetime
    tenant_id: uuid.UUID
    source_kind: str
    source_id: str
    source_label: str
    operation: str
    resource_type: str | None
    resource_id: uuid.UUID | None
    user_name: str | None
    changes: str  # JSON text (cast to jsonb in SQL)
    result: str
    error_code: str | None
    error_message: str | None
    notes: tuple[str, ...]
    correlation_id: str
    latency_ms: float | None

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in COLUMNS)

    @property
    def key(self) -> tuple[uuid.UUID, str]:
        """The unique key of audit_log: a redelivered outcome has the same one."""
        return (self.event_id, self.result)


def _text(value: str | None, limit: int | None = None) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:limit] if limit and len(value) > limit else value


@functools.lru_cache(maxsize=4096)
def _is_secret(name: str) -> bool:
    # The same few attribute names come back in every outcome: search each one once.
    return _SECRET_NAME.search(name) is not None


def scrub(value: Any, *, secret: bool = False) -> Any:
    """Redact secret-named keys at any depth; drop NULs Postgres cannot store."""
    if secret:
        return None if value is None else REDACTED
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        return {_text(str(k)): scrub(v, secret=_is_secret(str(k))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _user_name(outcome: Outcome) -> str | None:
    if outcome.user_name:
        return outcome.user_name
    # Failures before the resource was read may carry the name only in the state.
    if outcome.resource_type == "User" and outcome.resource:
        name = outcome.resource.get("user_name")
        return name if isinstance(name, str) else None
    return None


def audit_row(outcome: Outcome) -> AuditRow:
    # All changes serialised in one pydantic call (not one per change), then scrubbed.
    dumped = _CHANGES.dump_python(outcome.changes, mode="json") if outcome.changes else {}
    changes = {name: scrub(change, secret=_is_secret(name)) for name, change in dumped.items()}
    # A redacted change still says *that* the field changed, never to what.
    for name, value in changes.items():
        if value == REDACTED:
            changes[name] = {"before": REDACTED, "after": REDACTED}
    error = outcome.error
    return AuditRow(
        event_id=outcome.event_id,
        occurred_at=outcome.occurred_at,
        completed_at=outcome.completed_at,
        tenant_id=outcome.tenant_id,
        source_kind=outcome.source.kind,
        source_id=_text(outcome.source.id) or "",
        source_label=_text(outcome.source.label) or "",
        operation=outcome.command_type,
        resource_type=outcome.resource_type,
        resource_id=outcome.resource_id,
        user_name=_text(_user_name(outcome), 512),
        changes=json.dumps(changes, separators=(",", ":"), default=str),
        result=outcome.result,
        error_code=error.code if error else None,
        error_message=_text(error.message, MAX_MESSAGE) if error else None,
        notes=tuple(_text(n, 500) or "" for n in outcome.notes[:MAX_NOTES]),
        correlation_id=_text(outcome.correlation_id, 128) or "",
        latency_ms=outcome.latency_ms,
    )


def unique_rows(outcomes: list[Outcome]) -> list[AuditRow]:
    """Rows for a batch, one per (event_id, result): a batch may hold a redelivery."""
    seen: set[tuple[uuid.UUID, str]] = set()
    rows = []
    for o in outcomes:
        row = audit_row(o)
        if row.key not in seen:
            seen.add(row.key)
            rows.append(row)
    return rows
