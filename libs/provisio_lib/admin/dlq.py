"""Dead letters (of the command streams and of the audit streams): read, replay, drop.
Shared by `provisio dlq …` and the console's dead-letter pages; see
services/provisio_cli/dlq.py for what a dead letter is and why replay is safe.

Replay re-publishes the same command (same event_id, ``attempt`` + 1) to its command
stream, or the same outcomes to their audit stream, and deletes the dead letter, in one
MULTI (both keys share the partition's hash tag, so this works on Redis Cluster too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from provisio_lib.contract import Command, decode_command, encode
from provisio_lib.outcomes import entry_outcomes
from provisio_lib.topology import DATA_FIELD, OUTCOMES_FIELD, Topology

from .errors import NOT_FOUND, USAGE, AdminError

COMMANDS, AUDIT = "commands", "audit"
_ID = re.compile(r"^(?:(audit):)?(\d+):(\d+-\d+)$")


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    entry_id: str
    fields: dict[str, str]
    kind: str = COMMANDS

    @property
    def id(self) -> str:
        return (
            f"{self.partition}:{self.entry_id}"
            if self.kind == COMMANDS
            else f"{AUDIT}:{self.partition}:{self.entry_id}"
        )

    def outcomes(self) -> list[dict[str, Any]]:
        """An audit dead letter's outcomes as JSON objects (readable even when they do not
        validate against this version of the contract)."""
        try:
            if OUTCOMES_FIELD in self.fields:
                value = json.loads(self.fields[OUTCOMES_FIELD])
                return [o for o in value if isinstance(o, dict)] if isinstance(value, list) else []
            value = json.loads(self.data)
        except ValueError:
            return []
        return [value] if isinstance(value, dict) else []

    def tenants(self) -> list[str]:
        found = [self.tenant()] if self.kind == COMMANDS else [str(o.get("tenant_id") or "") for o in self.outcomes()]
        return [t for t in dict.fromkeys(found) if t]

    @property
    def data(self) -> str:
        return self.fields.get(DATA_FIELD, "")

    def command(self) -> Command | None:
        try:
            return decode_command(self.data)
        except Exception:
            return None

    def raw(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def tenant(self) -> str | None:
        t = self.raw().get("tenant_id")
        return str(t) if t else None


def parse_id(text: str, topo: Topology) -> tuple[str, int, str]:
    """(kind, partition, entry id) of ``<partition>:<entry-id>`` or ``audit:<partition>:<entry-id>``."""
    m = _ID.match(text.strip())
    if not m:
        raise AdminError(
            f"bad dead-letter id {text!r}: expected <partition>:<entry-id>, e.g. 3:1767225600000-0 "
            "(audit:<partition>:<entry-id> for the auditor's)",
            USAGE,
        )
    partition = int(m.group(2))
    if partition >= topo.partitions:
        raise AdminError(
            f"bad dead-letter id {text!r}: partition {partition} is not in 0..{topo.partitions - 1}", USAGE
        )
    return m.group(1) or COMMANDS, partition, m.group(3)


def _stream(topo: Topology, kind: str, partition: int) -> str:
    return topo.dead_letter_stream(partition) if kind == COMMANDS else topo.audit_dead_letter_stream(partition)


def _list_hint(kind: str) -> str:
    return "provisio dlq list" if kind == COMMANDS else "provisio dlq list --audit"


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _entry(partition: int, entry_id: Any, fields: dict[Any, Any], kind: str = COMMANDS) -> DeadLetter:
    return DeadLetter(partition, _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}, kind)


async def _read_all(r: Any, topo: Topology, partitions: list[int], kind: str = COMMANDS) -> list[DeadLetter]:
    found = []
    for p in partitions:
        for entry_id, fields in await r.xrange(_stream(topo, kind, p)):
            found.append(_entry(p, entry_id, fields, kind))
    return found


async def _read_one(r: Any, topo: Topology, kind: str, partition: int, entry_id: str) -> DeadLetter:
    entries = await r.xrange(_stream(topo, kind, partition), min=entry_id, max=entry_id)
    if not entries:
        name = DeadLetter(partition, entry_id, {}, kind).id
        raise AdminError(f"no dead letter {name} (see `{_list_hint(kind)}`)", NOT_FOUND)
    found_id, fields = entries[0]
    return _entry(partition, found_id, fields, kind)


def _row(d: DeadLetter, names: dict[str, str]) -> dict[str, Any]:
    deliveries = int(d.fields["deliveries"]) if d.fields.get("deliveries", "").isdigit() else d.fields.get("deliveries")
    common = {
        "deliveries": deliveries,
        "error": d.fields.get("error"),
        "stream": d.fields.get("stream"),
        "entry_id": d.fields.get("entry_id"),
        "kind": d.kind,
    }
    if d.kind == AUDIT:
        outcomes = d.outcomes()
        tenants = d.tenants()
        return {
            "id": d.id,
            "failed_at": d.fields.get("failed_at"),
            "tenant": ", ".join(names.get(t, t) for t in tenants) or None,
            "tenant_id": tenants[0] if len(tenants) == 1 else None,
            "type": ", ".join(dict.fromkeys(str(o["command_type"]) for o in outcomes if o.get("command_type"))) or None,
            "event_id": outcomes[0].get("event_id") if len(outcomes) == 1 else None,
            "outcomes": len(outcomes),
            "event_ids": [o.get("event_id") for o in outcomes],
            **common,
        }
    raw = d.raw()
    t = d.tenant()
    return {
        "id": d.id,
        "failed_at": d.fields.get("failed_at"),
        "tenant": names.get(t or "", t),
        "tenant_id": t,
        "type": raw.get("type"),
        "event_id": raw.get("event_id"),
        "correlation_id": raw.get("correlation_id"),
        "attempt": raw.get("attempt"),
        **common,
    }


async def _letters(r: Any, topo: Topology, kind: str, tid: UUID | None) -> list[DeadLetter]:
    """A kind's dead letters, of one tenant if ``tid``. (An audit entry may hold outcomes of
    several tenants of the same partition: it is listed for each of them.)"""
    partitions = [topo.partition_of(tid)] if tid else list(range(topo.partitions))
    letters = await _read_all(r, topo, partitions, kind)
    return letters if tid is None else [d for d in letters if str(tid) in d.tenants()]


async def _replay(r: Any, topo: Topology, d: DeadLetter) -> str:
    """Re-publish one dead letter's command (or outcomes); return the new stream entry id."""
    if d.kind == AUDIT:
        return await _replay_audit(r, topo, d)
    cmd = d.command()
    if cmd is None:
        raise AdminError(
            f"cannot replay {d.id}: its data is not a valid command (drop it with `provisio dlq drop {d.id}`)"
        )
    if topo.partition_of(cmd.tenant_id) != d.partition:
        raise AdminError(f"cannot replay {d.id}: its tenant belongs to partition {topo.partition_of(cmd.tenant_id)}")
    again = cmd.model_copy(update={"attempt": cmd.attempt + 1})
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(topo.command_stream(d.partition), {DATA_FIELD: encode(again)}, maxlen=topo.maxlen, approximate=True)
        pipe.xdel(topo.dead_letter_stream(d.partition), d.entry_id)
        new_id, _deleted = await pipe.execute()
    return _text(new_id)


async def _replay_audit(r: Any, topo: Topology, d: DeadLetter) -> str:
    """Put an audit dead letter's entry back on its audit stream, as it was."""
    try:
        entry_outcomes(d.fields)  # what the auditor will read: Outcomes, or it would fail again
    except Exception:
        raise AdminError(
            f"cannot replay {d.id}: its data is not valid outcomes (drop it with `provisio dlq drop {d.id}`)"
        ) from None
    field = OUTCOMES_FIELD if OUTCOMES_FIELD in d.fields else DATA_FIELD
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(topo.audit_stream(d.partition), {field: d.fields[field]}, maxlen=topo.maxlen, approximate=True)
        pipe.xdel(topo.audit_dead_letter_stream(d.partition), d.entry_id)
        new_id, _deleted = await pipe.execute()
    return _text(new_id)


def _replayed(d: DeadLetter, new: str) -> str:
    where = "" if d.kind == COMMANDS else " on the audit stream"
    return f"replayed {d.id} as {d.partition}:{new}{where}"


async def drop(r: Any, topo: Topology, kind: str, partition: int, entry_id: str) -> bool:
    """Delete one dead letter for good; False if there was none."""
    return int(await r.xdel(_stream(topo, kind, partition), entry_id)) > 0


# Public names for the console (the CLI keeps its historical private ones).
read_all, read_one, letters, replay, replayed, row = _read_all, _read_one, _letters, _replay, _replayed, _row


async def record_action(
    conn: Any,
    d: DeadLetter,
    action: str,
    *,
    staff_id: str,
    staff_email: str,
    notes: list[str],
    correlation_id: str = "",
) -> None:
    """The audit row of a replay or drop (console or CLI): who, which dead letter."""
    from uuid import UUID

    from .audit import record_staff_action

    tenants = d.tenants()
    try:
        tid = UUID(tenants[0]) if tenants else None
    except ValueError:
        tid = None
    r = _row(d, {})
    await record_staff_action(
        conn,
        staff_id=staff_id,
        staff_email=staff_email,
        action=f"dlq.{action}",
        tenant_id=tid,
        notes=notes,
        correlation_id=correlation_id,
        resource_type="DeadLetter",
        changes={
            "dead_letter": {
                "before": {"id": d.id, "type": r.get("type"), "event_id": r.get("event_id")},
                "after": None if action == "drop" else "replayed",
            }
        },
    )
