"""`provisio dlq …`: the dead letters of the command streams, and of the audit streams.

A dead letter is an entry of ``{prefix}:{pN}:commands:dlq`` written by the provisioner
(provisio_lib.delivery) after a command failed too often: ``__data__`` (the command
JSON), ``error``, ``deliveries``, ``failed_at``, ``stream``, ``entry_id``. Its id on the
command line is ``<partition>:<entry-id>``, e.g. ``3:1767225600000-0``.

The auditor writes ``{prefix}:{pN}:audit:dlq`` the same way, for audit entries it could
not record (undecodable, or refused by Postgres): the entry's outcome in ``__data__``, or a
batch's outcomes in ``__outcomes__``. Those are listed with ``--audit`` and named
``audit:<partition>:<entry-id>``.

Replay re-publishes the same command (same event_id, ``attempt`` + 1) to its command
stream, or the same outcomes to their audit stream, and deletes the dead letter, in one
MULTI (both keys share the partition's hash tag, so this works on Redis Cluster too). The
provisioner's inbox makes a replayed command apply at most once, even if it had in fact
been applied before it died; the audit trail's unique event key records an outcome once.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import typer

from provisio_lib.contract import Command, decode_command, encode
from provisio_lib.outcomes import entry_outcomes
from provisio_lib.topology import DATA_FIELD, OUTCOMES_FIELD, Topology

from .context import CliError, database, print_rows, redis, settings, tenant_id, topology

app = typer.Typer(help="Dead-lettered commands (and, with --audit, audit entries): list, show, replay, drop.",
                  no_args_is_help=True)

USAGE = 2
NOT_FOUND = 1
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
        return f"{self.partition}:{self.entry_id}" if self.kind == COMMANDS else f"{AUDIT}:{self.partition}:{self.entry_id}"

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
        raise CliError(f"bad dead-letter id {text!r}: expected <partition>:<entry-id>, e.g. 3:1767225600000-0 "
                       "(audit:<partition>:<entry-id> for the auditor's)", USAGE)
    partition = int(m.group(2))
    if partition >= topo.partitions:
        raise CliError(f"bad dead-letter id {text!r}: partition {partition} is not in 0..{topo.partitions - 1}", USAGE)
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
        raise CliError(f"no dead letter {name} (see `{_list_hint(kind)}`)", NOT_FOUND)
    found_id, fields = entries[0]
    return _entry(partition, found_id, fields, kind)


async def _tenant_filter(tenant: str | None, topo: Topology) -> tuple[UUID | None, dict[str, str]]:
    """The tenant asked for (if any) and tenant names for display. Names are best
    effort: `dlq list` must work while Postgres is down (often why commands died)."""
    names: dict[str, str] = {}
    tid: UUID | None = None
    try:
        tid = UUID(tenant) if tenant else None
    except ValueError:
        tid = None
    try:
        async with database() as conn:
            if tenant:
                tid = await tenant_id(conn, tenant)
            names = {str(r["id"]): r["name"] for r in await conn.fetch("SELECT id, name FROM tenants")}
    except CliError:
        if tenant and tid is None:
            raise
    return tid, names


def _row(d: DeadLetter, names: dict[str, str]) -> dict[str, Any]:
    deliveries = int(d.fields["deliveries"]) if d.fields.get("deliveries", "").isdigit() else d.fields.get("deliveries")
    common = {"deliveries": deliveries, "error": d.fields.get("error"), "stream": d.fields.get("stream"),
              "entry_id": d.fields.get("entry_id"), "kind": d.kind}
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


@app.command("list")
def dlq_list(
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant name or id"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines"),
    audit: bool = typer.Option(False, "--audit", help="The auditor's dead letters (audit entries it could not record)"),
) -> None:
    """List dead-lettered commands with their error and delivery count, oldest first;
    with --audit, the audit entries the auditor could not record."""
    kind = AUDIT if audit else COMMANDS

    async def go() -> tuple[list[dict[str, Any]], int]:
        topo = topology(settings())
        tid, names = await _tenant_filter(tenant, topo)
        async with redis() as r:
            letters = await _letters(r, topo, kind, tid)
            # Say so when the other kind has some: an operator who only knows `dlq list`
            # must not miss audit entries that never reached the audit trail.
            others = 0 if audit else sum([int(await r.xlen(s)) for s in topo.audit_dead_letter_streams()])
        return [_row(d, names) for d in letters], others

    rows, audit_letters = asyncio.run(go())
    what = "audit dead letters" if audit else "dead letters"
    if not rows:
        typer.echo(f"no {what}" + (f" for tenant {tenant}" if tenant else ""), err=True)
    elif as_json:
        print_rows(rows, list(rows[0]), as_json=True)
    else:
        for row in rows:
            err = row["error"] or ""
            row["error"] = err if len(err) <= 80 else err[:77] + "..."
        columns = ["id", "failed_at", "tenant", "type", "event_id", "deliveries", "error"]
        if audit:
            columns.insert(4, "outcomes")
        print_rows(rows, columns, as_json=False, title=f"{what.capitalize()} ({len(rows)})")
    if audit_letters:
        typer.echo(f"note: {audit_letters} audit dead letter(s) too: provisio dlq list --audit", err=True)


@app.command("show")
def dlq_show(
    entry: str = typer.Argument(..., metavar="ID", help="<partition>:<entry-id> or audit:<partition>:<entry-id> from `dlq list`"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object"),
) -> None:
    """Show one dead letter: its error, delivery count and the command (or the outcomes)."""

    async def go() -> DeadLetter:
        topo = topology(settings())
        kind, partition, entry_id = parse_id(entry, topo)
        async with redis() as r:
            return await _read_one(r, topo, kind, partition, entry_id)

    d = asyncio.run(go())
    row = _row(d, {})
    key = "command" if d.kind == COMMANDS else "outcomes"
    row[key] = (d.raw() or d.data) if d.kind == COMMANDS else (d.outcomes() or d.fields.get(OUTCOMES_FIELD, d.data))
    if as_json:
        sys.stdout.write(json.dumps(row, default=str) + "\n")
        return
    body = row.pop(key)
    row.pop("event_ids", None)
    print_rows([{"field": k, "value": v} for k, v in row.items()], ["field", "value"], as_json=False,
               title=f"Dead letter {d.id}")
    typer.echo(json.dumps(body, indent=2, default=str) if isinstance(body, dict | list) else body)


async def _replay(r: Any, topo: Topology, d: DeadLetter) -> str:
    """Re-publish one dead letter's command (or outcomes); return the new stream entry id."""
    if d.kind == AUDIT:
        return await _replay_audit(r, topo, d)
    cmd = d.command()
    if cmd is None:
        raise CliError(f"cannot replay {d.id}: its data is not a valid command (drop it with `provisio dlq drop {d.id}`)")
    if topo.partition_of(cmd.tenant_id) != d.partition:
        raise CliError(f"cannot replay {d.id}: its tenant belongs to partition {topo.partition_of(cmd.tenant_id)}")
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
        raise CliError(f"cannot replay {d.id}: its data is not valid outcomes (drop it with `provisio dlq drop {d.id}`)") from None
    field = OUTCOMES_FIELD if OUTCOMES_FIELD in d.fields else DATA_FIELD
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(topo.audit_stream(d.partition), {field: d.fields[field]}, maxlen=topo.maxlen, approximate=True)
        pipe.xdel(topo.audit_dead_letter_stream(d.partition), d.entry_id)
        new_id, _deleted = await pipe.execute()
    return _text(new_id)


def _replayed(d: DeadLetter, new: str) -> str:
    where = "" if d.kind == COMMANDS else " on the audit stream"
    return f"replayed {d.id} as {d.partition}:{new}{where}"


@app.command("replay")
def dlq_replay(
    entry: str | None = typer.Argument(None, metavar="[ID]", help="<partition>:<entry-id> (audit:… for the auditor's); or --all"),
    replay_all: bool = typer.Option(False, "--all", help="Every dead letter (of --tenant, if given)"),
    tenant: str | None = typer.Option(None, "--tenant", help="With --all: only this tenant's"),
    audit: bool = typer.Option(False, "--audit", help="With --all: the auditor's dead letters"),
) -> None:
    """Send dead-lettered commands through the normal path again (applied at most once),
    or the auditor's dead letters back to the audit stream (recorded at most once).

    Same event id, attempt + 1: the provisioner's inbox answers a command it already
    applied instead of applying it twice."""
    if bool(entry) == replay_all:
        raise CliError("give one dead-letter ID or --all", USAGE)
    if tenant and not replay_all:
        raise CliError("--tenant goes with --all", USAGE)
    if audit and not replay_all:
        raise CliError("--audit goes with --all (an audit dead letter's ID starts with audit:)", USAGE)
    kind = AUDIT if audit else COMMANDS

    async def go() -> tuple[list[str], list[str]]:
        topo = topology(settings())
        done: list[str] = []
        failed: list[str] = []
        if entry:
            async with redis() as r:
                d = await _read_one(r, topo, *parse_id(entry, topo))
                done.append(_replayed(d, await _replay(r, topo, d)))
            return done, failed
        tid, _names = await _tenant_filter(tenant, topo)
        async with redis() as r:
            for d in await _letters(r, topo, kind, tid):
                try:
                    new = await _replay(r, topo, d)
                except CliError as err:
                    failed.append(str(err))
                    continue
                done.append(_replayed(d, new))
        return done, failed

    done, failed = asyncio.run(go())
    for line in done:
        typer.echo(line)
    for line in failed:
        typer.echo(f"error: {line}", err=True)
    if not done and not failed:
        what = "audit dead letters" if audit else "dead letters"
        typer.echo(f"no {what} to replay" + (f" for tenant {tenant}" if tenant else ""), err=True)
    if failed:
        raise typer.Exit(1)


@app.command("drop")
def dlq_drop(entry: str = typer.Argument(..., metavar="ID", help="<partition>:<entry-id> or audit:<partition>:<entry-id>")) -> None:
    """Delete one dead letter for good (the command is not applied; the outcomes are not recorded)."""

    async def go() -> tuple[str, int]:
        topo = topology(settings())
        kind, partition, entry_id = parse_id(entry, topo)
        async with redis() as r:
            return kind, int(await r.xdel(_stream(topo, kind, partition), entry_id))

    kind, dropped = asyncio.run(go())
    if dropped == 0:
        raise CliError(f"no dead letter {entry} (see `{_list_hint(kind)}`)", NOT_FOUND)
    typer.echo(f"dropped {entry}")
