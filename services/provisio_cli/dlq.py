"""`provisio dlq …`: the dead letters of the command streams.

A dead letter is an entry of ``{prefix}:{pN}:commands:dlq`` written by the provisioner
(provisio_lib.delivery) after a command failed too often: ``__data__`` (the command
JSON), ``error``, ``deliveries``, ``failed_at``, ``stream``, ``entry_id``. Its id on the
command line is ``<partition>:<entry-id>``, e.g. ``3:1767225600000-0``.

Replay re-publishes the same command (same event_id, ``attempt`` + 1) to its command
stream and deletes the dead letter, in one MULTI (both keys share the partition's hash
tag, so this works on Redis Cluster too). The provisioner's inbox makes a replayed
command apply at most once, even if it had in fact been applied before it died.
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
from provisio_lib.topology import DATA_FIELD, Topology

from .context import CliError, database, print_rows, redis, settings, tenant_id, topology

app = typer.Typer(help="Dead-lettered commands: list, show, replay, drop.", no_args_is_help=True)

USAGE = 2
NOT_FOUND = 1
_ID = re.compile(r"^(\d+):(\d+-\d+)$")


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    entry_id: str
    fields: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.entry_id}"

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


def parse_id(text: str, topo: Topology) -> tuple[int, str]:
    m = _ID.match(text.strip())
    if not m:
        raise CliError(f"bad dead-letter id {text!r}: expected <partition>:<entry-id>, e.g. 3:1767225600000-0", USAGE)
    partition = int(m.group(1))
    if partition >= topo.partitions:
        raise CliError(f"bad dead-letter id {text!r}: partition {partition} is not in 0..{topo.partitions - 1}", USAGE)
    return partition, m.group(2)


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _entry(partition: int, entry_id: Any, fields: dict[Any, Any]) -> DeadLetter:
    return DeadLetter(partition, _text(entry_id), {_text(k): _text(v) for k, v in fields.items()})


async def _read_all(r: Any, topo: Topology, partitions: list[int]) -> list[DeadLetter]:
    found = []
    for p in partitions:
        for entry_id, fields in await r.xrange(topo.dead_letter_stream(p)):
            found.append(_entry(p, entry_id, fields))
    return found


async def _read_one(r: Any, topo: Topology, partition: int, entry_id: str) -> DeadLetter:
    entries = await r.xrange(topo.dead_letter_stream(partition), min=entry_id, max=entry_id)
    if not entries:
        raise CliError(f"no dead letter {partition}:{entry_id} (see `provisio dlq list`)", NOT_FOUND)
    return _entry(partition, *entries[0])


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
        "deliveries": int(d.fields["deliveries"]) if d.fields.get("deliveries", "").isdigit() else d.fields.get("deliveries"),
        "error": d.fields.get("error"),
        "stream": d.fields.get("stream"),
        "entry_id": d.fields.get("entry_id"),
    }


@app.command("list")
def dlq_list(
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant name or id"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines"),
) -> None:
    """List dead-lettered commands with their error and delivery count, oldest first."""

    async def go() -> list[dict[str, Any]]:
        topo = topology(settings())
        tid, names = await _tenant_filter(tenant, topo)
        partitions = [topo.partition_of(tid)] if tid else list(range(topo.partitions))
        async with redis() as r:
            letters = await _read_all(r, topo, partitions)
        if tid is not None:
            letters = [d for d in letters if d.tenant() == str(tid)]
        return [_row(d, names) for d in letters]

    rows = asyncio.run(go())
    if not rows:
        typer.echo("no dead letters" + (f" for tenant {tenant}" if tenant else ""), err=True)
        return
    if as_json:
        print_rows(rows, list(rows[0]), as_json=True)
        return
    for row in rows:
        err = row["error"] or ""
        row["error"] = err if len(err) <= 80 else err[:77] + "..."
    print_rows(rows, ["id", "failed_at", "tenant", "type", "event_id", "deliveries", "error"],
               as_json=False, title=f"Dead letters ({len(rows)})")


@app.command("show")
def dlq_show(
    entry: str = typer.Argument(..., metavar="ID", help="<partition>:<entry-id> from `dlq list`"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object"),
) -> None:
    """Show one dead letter: its error, delivery count and the command."""

    async def go() -> DeadLetter:
        topo = topology(settings())
        partition, entry_id = parse_id(entry, topo)
        async with redis() as r:
            return await _read_one(r, topo, partition, entry_id)

    d = asyncio.run(go())
    row = _row(d, {})
    row["command"] = d.raw() or d.data
    if as_json:
        sys.stdout.write(json.dumps(row, default=str) + "\n")
        return
    command = row.pop("command")
    print_rows([{"field": k, "value": v} for k, v in row.items()], ["field", "value"], as_json=False,
               title=f"Dead letter {d.id}")
    typer.echo(json.dumps(command, indent=2, default=str) if isinstance(command, dict) else command)


async def _replay(r: Any, topo: Topology, d: DeadLetter) -> str:
    """Re-publish one dead letter's command; return the new command-stream entry id."""
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


@app.command("replay")
def dlq_replay(
    entry: str | None = typer.Argument(None, metavar="[ID]", help="<partition>:<entry-id>; or --all"),
    replay_all: bool = typer.Option(False, "--all", help="Every dead letter (of --tenant, if given)"),
    tenant: str | None = typer.Option(None, "--tenant", help="With --all: only this tenant's"),
) -> None:
    """Send dead-lettered commands through the normal path again (applied at most once).

    Same event id, attempt + 1: the provisioner's inbox answers a command it already
    applied instead of applying it twice."""
    if bool(entry) == replay_all:
        raise CliError("give one dead-letter ID or --all", USAGE)
    if tenant and not replay_all:
        raise CliError("--tenant goes with --all", USAGE)

    async def go() -> tuple[list[str], list[str]]:
        topo = topology(settings())
        done: list[str] = []
        failed: list[str] = []
        if entry:
            partition, entry_id = parse_id(entry, topo)
            async with redis() as r:
                d = await _read_one(r, topo, partition, entry_id)
                new = await _replay(r, topo, d)
                done.append(f"replayed {d.id} as {partition}:{new}")
            return done, failed
        tid, _names = await _tenant_filter(tenant, topo)
        partitions = [topo.partition_of(tid)] if tid else list(range(topo.partitions))
        async with redis() as r:
            for d in await _read_all(r, topo, partitions):
                if tid is not None and d.tenant() != str(tid):
                    continue
                try:
                    new = await _replay(r, topo, d)
                except CliError as err:
                    failed.append(str(err))
                    continue
                done.append(f"replayed {d.id} as {d.partition}:{new}")
        return done, failed

    done, failed = asyncio.run(go())
    for line in done:
        typer.echo(line)
    for line in failed:
        typer.echo(f"error: {line}", err=True)
    if not done and not failed:
        typer.echo("no dead letters to replay" + (f" for tenant {tenant}" if tenant else ""), err=True)
    if failed:
        raise typer.Exit(1)


@app.command("drop")
def dlq_drop(entry: str = typer.Argument(..., metavar="ID", help="<partition>:<entry-id>")) -> None:
    """Delete one dead letter for good (the command is not applied)."""

    async def go() -> int:
        topo = topology(settings())
        partition, entry_id = parse_id(entry, topo)
        async with redis() as r:
            return int(await r.xdel(topo.dead_letter_stream(partition), entry_id))

    if asyncio.run(go()) == 0:
        raise CliError(f"no dead letter {entry} (see `provisio dlq list`)", NOT_FOUND)
    typer.echo(f"dropped {entry}")
