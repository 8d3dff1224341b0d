"""Refusals the gateway answers itself, in the audit trail (issue 13 §5).

A 400 on a body, a schema or a tenant policy, a 413 or a 429 never becomes a command,
so the provisioner never records it; support saw only Entra's provisioning log. The
gateway publishes a failed ``Outcome`` (error code ``refused``, the token's label as
source, ``notes`` = ``refused:http_<status>`` and the scimType) straight to the tenant's
audit stream, which the auditor already records, as the SAML gateway does for refused
logins.

Bounded: per (tenant, status) and gateway process at most ``BURST`` records, then one
every ``1 / RATE`` seconds; the refusals in between are counted and the next record
says how many (``suppressed:<n>``). A flood of bad requests costs one Redis write per
recorded refusal and never grows the trail without bound. Only writes are recorded
(POST/PUT/PATCH/DELETE on Users and Groups): they are what an IdP's provisioning log
shows failing; a refused read changes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from provisio_lib.contract import ErrorInfo, Outcome, Source

RATE_PER_S = 1 / 6  # ten records a minute per tenant and status, after the burst
BURST = 20.0
_MAX_KEYS = 10_000
RECORDED_STATUSES = frozenset({400, 413, 415, 429})
_WRITES = {"POST": "create", "PUT": "replace", "PATCH": "replace", "DELETE": "delete"}


class RefusalSampler:
    """Token bucket per key; ``admit`` says whether to record and how many were skipped."""

    def __init__(self, rate: float = RATE_PER_S, burst: float = BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[Any, tuple[float, float, int]] = {}  # key -> tokens, last, suppressed

    def admit(self, key: Any, now: float | None = None) -> int | None:
        """None: do not record (counted); else record, with the number skipped before it."""
        now = time.monotonic() if now is None else now
        tokens, last, skipped = self._buckets.get(key, (self.burst, now, 0))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now, skipped + 1)
            return None
        if len(self._buckets) >= _MAX_KEYS and key not in self._buckets:
            self._buckets.clear()  # bounded memory; worst case a few extra records
        self._buckets[key] = (tokens - 1.0, now, 0)
        return skipped


def refused_operation(method: str, rel_path: str) -> tuple[str, str, uuid.UUID | None] | None:
    """(command type, resource type, resource id) of a write to /Users or /Groups, else
    None. ``rel_path`` is the path after the base (``/Users/<id>``)."""
    verb = _WRITES.get(method)
    if verb is None:
        return None
    parts = [p for p in rel_path.split("/") if p]
    if not parts or parts[0] not in ("Users", "Groups") or len(parts) > 2:
        return None
    if len(parts) == 2 and parts[1].startswith("."):
        return None  # .search is a read
    if (len(parts) == 1) != (verb == "create"):
        return None
    rid = None
    if len(parts) == 2:
        try:
            rid = uuid.UUID(parts[1])
        except ValueError:
            return None
    kind = "user" if parts[0] == "Users" else "group"
    return f"{kind}.{verb}", "User" if kind == "user" else "Group", rid


def refusal_outcome(
    *,
    tenant_id: uuid.UUID,
    source: Source,
    correlation_id: str,
    occurred_at: datetime,
    operation: tuple[str, str, uuid.UUID | None],
    status: int,
    detail: str,
    scim_type: str | None,
    body: Any,
    suppressed: int,
) -> Outcome:
    command_type, resource_type, resource_id = operation
    notes = [f"refused:http_{status}"]
    if scim_type:
        notes.append(f"scimType:{scim_type}")
    if suppressed:
        notes.append(f"suppressed:{suppressed}")  # similar refusals not recorded since the last one
    user_name = None
    if resource_type == "User" and isinstance(body, Mapping):
        raw = next((v for k, v in body.items() if isinstance(k, str) and k.lower() == "username"), None)
        if isinstance(raw, str) and raw:
            user_name = raw[:512]
    return Outcome(
        event_id=uuid.uuid4(),
        command_type=command_type,  # type: ignore[arg-type]
        tenant_id=tenant_id,
        source=source,
        correlation_id=correlation_id,
        occurred_at=occurred_at,
        result="failed",
        error=ErrorInfo(code="refused", message=f"the SCIM gateway answered {status}: {detail}"[:1000]),
        resource_type=resource_type,  # type: ignore[arg-type]
        resource_id=resource_id,
        user_name=user_name,
        notes=tuple(notes),
    )
