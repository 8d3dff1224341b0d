"""`provisio audit …` (the audit trail for support staff) and `provisio tenant notify`.

- ``audit tail``: live, from the Redis audit streams (what the provisioner publishes);
- ``audit search``: from Postgres ``audit_log`` (what the auditor wrote), parameterised
  SQL only, served by the indexes of migrations 0001 and 0004;
- ``audit user``: one user's whole history across SCIM and SAML, oldest first, and the
  user's current state.

Exit codes: 0 found / done, 1 nothing found or unknown tenant/user, 2 bad arguments
(e.g. a time expression that does not parse).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import typer

from provisio_lib.admin.audit import SearchFilters, matches, outcome_row, parse_since, search_query
from provisio_lib.admin.audit import display as _display
from provisio_lib.admin.audit import read_stream as _read_stream
from provisio_lib.admin.audit import user_history as load_user_history
from provisio_lib.contract import Outcome

from .context import CliError, console, database, print_rows, redis, settings, tenant_id, topology
from .tenants import tenant_app

app = typer.Typer(help="The audit trail: live tail, search, one user's history.", no_args_is_help=True)

USAGE = 2  # exit code for arguments that do not parse (as click uses)
NOT_FOUND = 1

# --------------------------------------------------------------------------- pure helpers

_EMAIL = re.compile(r"^[^@\s,;<>\"']+@[^@\s,;<>\"']+$")


def valid_email(address: str) -> bool:
    return bool(_EMAIL.match(address))


TABLE_COLUMNS = ["completed_at", "tenant", "source", "operation", "user_name", "result", "error", "correlation_id"]
JSON_COLUMNS = [
    "completed_at",
    "occurred_at",
    "tenant",
    "tenant_id",
    "event_id",
    "source_kind",
    "source_id",
    "source_label",
    "operation",
    "resource_type",
    "resource_id",
    "user_name",
    "result",
    "error_code",
    "error_message",
    "correlation_id",
    "latency_ms",
    "changes",
    "notes",
]


# --------------------------------------------------------------------------- search


@app.command("search")
def search(
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant name or id"),
    user: str | None = typer.Option(None, "--user", help="userName (any letter case)"),
    connection: str | None = typer.Option(None, "--connection", help="SSO connection or SCIM token label (or id)"),
    correlation_id: str | None = typer.Option(None, "--correlation-id", help="Correlation id of a request"),
    since: str | None = typer.Option(None, "--since", help="30m, 2h, 7d, 1w or an ISO time"),
    failed: bool = typer.Option(False, "--failed", help="Failures only"),
    limit: int = typer.Option(50, "--limit", min=1, max=100_000, help="At most this many, newest first"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines"),
) -> None:
    """Search the audit trail in Postgres, newest first."""
    since_at = parse_since(since, datetime.now(UTC)) if since else None

    async def go() -> list[dict[str, Any]]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant) if tenant else None
            sql, args = search_query(SearchFilters(tid, user, connection, correlation_id, since_at, failed, limit))
            return [_display(dict(r)) for r in await conn.fetch(sql, *args)]

    rows = asyncio.run(go())
    if not rows:
        raise CliError("no audit records match these filters", NOT_FOUND)
    print_rows(rows, JSON_COLUMNS if as_json else TABLE_COLUMNS, as_json=as_json, title=f"Audit records ({len(rows)})")


# --------------------------------------------------------------------------- user


@app.command("user")
def user_history(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    username: str = typer.Argument(..., help="userName (any letter case)"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: events, then the state"),
) -> None:
    """One user's whole history across SCIM and SAML, oldest first, and current state."""

    async def go() -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[dict[str, Any]]]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            h = await load_user_history(conn, tid, username)
            return h.history, h.user, h.groups

    history, user, groups = asyncio.run(go())
    if not history and user is None:
        raise CliError(f"no user {username!r} in tenant {tenant!r}, and no audit records for that name", NOT_FOUND)
    if as_json:
        for r in history:
            sys.stdout.write(json.dumps({"kind": "event", **{c: r.get(c) for c in JSON_COLUMNS}}, default=str) + "\n")
        sys.stdout.write(json.dumps({"kind": "state", "user": user, "groups": groups}, default=str) + "\n")
        return
    cols = ["completed_at", "source", "operation", "result", "error", "correlation_id"]
    print_rows(history, cols, as_json=False, title=f"History of {username} in {tenant} (oldest first)")
    out = console()
    if user is None:
        out.print(f"Current state: no user {username!r} in tenant {tenant!r} (never created, or deleted).")
        return
    state = [{"field": k, "value": v} for k, v in user.items()]
    print_rows(state, ["field", "value"], as_json=False, title="Current state")
    if groups:
        print_rows(groups, ["display_name", "source", "added_at", "id"], as_json=False, title="Groups")
    else:
        out.print("Groups: none")


# --------------------------------------------------------------------------- tail


@app.command("tail")
def tail(
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant name or id"),
    failed: bool = typer.Option(False, "--failed", help="Failures only"),
    user: str | None = typer.Option(None, "--user", help="userName (any letter case)"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines"),
    count: int | None = typer.Option(None, "--count", min=1, help="Stop after this many records"),
) -> None:
    """Follow outcomes live from the audit streams (new ones only); Ctrl-C stops."""
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the loop took over signals: still exit 0
        asyncio.run(_tail(tenant, failed, user, as_json, count))


async def _tail(tenant: str | None, failed: bool, user: str | None, as_json: bool, count: int | None) -> None:
    s = settings()
    topo = topology(s)
    async with database(s) as conn:
        tid = await tenant_id(conn, tenant) if tenant else None
        names = {r["id"]: r["name"] for r in await conn.fetch("SELECT id, name FROM tenants")}
    streams = [topo.audit_stream_for(tid)] if tid else topo.audit_streams()
    queue: asyncio.Queue[Outcome] = asyncio.Queue(maxsize=10_000)
    out = console()
    # Ctrl-C / SIGTERM end the tail cleanly. Readers are never cancelled mid-XREAD (a
    # cancelled blocking read can leave redis-py waiting): they see `stop` within one
    # block interval and return.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with redis(s) as r:
        # One reader per stream (a cluster cannot XREAD keys of several hash slots at once),
        # each starting at the stream's current end.
        readers = [asyncio.create_task(_read_stream(r, st, queue, stop)) for st in streams]
        if not as_json:
            out.print(f"[dim]following {len(streams)} audit stream(s); Ctrl-C to stop[/dim]", highlight=False)
        shown = 0
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while (count is None or shown < count) and not stop.is_set():
                get = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait([get, stopped, *readers], return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    for task in done:
                        if task is not stopped:
                            task.result()  # a reader failed: raise its error
                    continue
                o = get.result()
                if not matches(o, tenant=tid, failed=failed, user=user):
                    continue
                row = outcome_row(o, names)
                if as_json:
                    sys.stdout.write(json.dumps(row, default=str) + "\n")
                    sys.stdout.flush()
                else:
                    out.print(_tail_line(row), highlight=False)
                shown += 1
        finally:
            stop.set()
            stopped.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _tail_line(row: dict[str, Any]) -> str:
    colour = {"failed": "red", "applied": "green"}.get(row["result"], "yellow")
    when = row["completed_at"].strftime("%H:%M:%S")
    error = f"  {row['error']}" if row["error"] else ""
    return (
        f"{when} {row['tenant']} {row['source']} {row['operation']} {row['user_name'] or '-'} "
        f"[{colour}]{row['result']}[/{colour}]{error}  ({row['correlation_id']})"
    )


# --------------------------------------------------------------------------- tenant notify


@tenant_app.command("notify")
def tenant_notify(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    emails: list[str] = typer.Option(None, "--email", help="Notification address (repeat for several)"),
    clear: bool = typer.Option(False, "--clear", help="Remove every address (no failure mails)"),
) -> None:
    """Set the addresses a tenant's failure mails go to; without --email, show them.

    --email replaces the whole list; repeat it for several addresses."""
    emails = [e.strip() for e in emails or [] if e.strip()]
    bad = [e for e in emails if not valid_email(e)]
    if bad:
        raise CliError(f"not an email address: {bad[0]!r}", USAGE)
    if clear and emails:
        raise CliError("use either --email or --clear", USAGE)

    async def go() -> Sequence[str]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            if emails or clear:
                unique = list(dict.fromkeys(emails))
                await conn.execute("UPDATE tenants SET notify_emails = $2 WHERE id = $1", tid, unique)
            return await conn.fetchval("SELECT notify_emails FROM tenants WHERE id = $1", tid)

    current = asyncio.run(go())
    if emails:
        typer.echo(f"failure notifications for {tenant} go to: {', '.join(current)}")
    elif clear:
        typer.echo(f"failure notifications for {tenant} are off (no addresses)")
    elif current:
        typer.echo(", ".join(current))
    else:
        typer.echo(f"tenant {tenant} has no notification addresses (set them with --email)")
