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
import sys
from typing import Any
from uuid import UUID

import typer

# The logic lives in the layer the console shares; these are its historical names here.
from provisio_lib.admin.dlq import (
    AUDIT,
    COMMANDS,
    DeadLetter,
    _entry,
    _letters,
    _list_hint,
    _read_one,
    _replay,
    _replayed,
    _row,
    _stream,
    drop,
    parse_id,
    record_action,
)
from provisio_lib.topology import OUTCOMES_FIELD, Topology

from .context import CliError, actor, database, print_rows, redis, settings, tenant_id, topology

app = typer.Typer(
    help="Dead-lettered commands (and, with --audit, audit entries): list, show, replay, drop.", no_args_is_help=True
)

USAGE = 2
NOT_FOUND = 1


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
    entry: str = typer.Argument(
        ..., metavar="ID", help="<partition>:<entry-id> or audit:<partition>:<entry-id> from `dlq list`"
    ),
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
    print_rows(
        [{"field": k, "value": v} for k, v in row.items()],
        ["field", "value"],
        as_json=False,
        title=f"Dead letter {d.id}",
    )
    typer.echo(json.dumps(body, indent=2, default=str) if isinstance(body, dict | list) else body)


async def _audit(letters: list[tuple[DeadLetter, str]], action: str) -> None:
    """Each replay or drop in the audit trail with the operator (``cli:<OS user>``), as
    the console records its staff member's."""
    if not letters:
        return
    who = actor()
    async with database() as conn:
        for d, line in letters:
            await record_action(conn, d, action, staff_id=who, staff_email=who, notes=[f"dead letter {d.id}", line])


@app.command("replay")
def dlq_replay(
    entry: str | None = typer.Argument(
        None, metavar="[ID]", help="<partition>:<entry-id> (audit:… for the auditor's); or --all"
    ),
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
                line = _replayed(d, await _replay(r, topo, d))
                done.append(line)
            await _audit([(d, line)], "replay")
            return done, failed
        tid, _names = await _tenant_filter(tenant, topo)
        replayed: list[tuple[DeadLetter, str]] = []
        async with redis() as r:
            for d in await _letters(r, topo, kind, tid):
                try:
                    new = await _replay(r, topo, d)
                except CliError as err:
                    failed.append(str(err))
                    continue
                done.append(_replayed(d, new))
                replayed.append((d, done[-1]))
        await _audit(replayed, "replay")
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
def dlq_drop(
    entry: str = typer.Argument(..., metavar="ID", help="<partition>:<entry-id> or audit:<partition>:<entry-id>"),
) -> None:
    """Delete one dead letter for good (the command is not applied; the outcomes are not recorded)."""

    async def go() -> tuple[str, int]:
        topo = topology(settings())
        kind, partition, entry_id = parse_id(entry, topo)
        async with redis() as r:
            d = DeadLetter(partition, entry_id, {}, kind)
            found = await r.xrange(_stream(topo, kind, partition), min=entry_id, max=entry_id)
            if found:
                d = _entry(partition, found[0][0], found[0][1], kind)
            dropped = int(await drop(r, topo, kind, partition, entry_id))
        if dropped:
            await _audit([(d, f"dropped {entry}")], "drop")
        return kind, dropped

    kind, dropped = asyncio.run(go())
    if dropped == 0:
        raise CliError(f"no dead letter {entry} (see `{_list_hint(kind)}`)", NOT_FOUND)
    typer.echo(f"dropped {entry}")
