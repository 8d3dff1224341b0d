"""`provisio api-key …`: keys of the App API (docs/app-integration.md)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import typer

from provisio_lib import api_keys

from .context import CliError, database, print_rows, tenant_id

app = typer.Typer(help="App API keys: create, list, revoke.", no_args_is_help=True)


@app.command("create")
def key_create(
    name: str = typer.Option(..., "--name", help="A name for the key, e.g. backend-prod"),
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant (default: every tenant)"),
) -> None:
    """Create an API key. The key is the last line of output and is shown only once."""

    async def go() -> str:
        async with database() as conn:
            tid: uuid.UUID | None = await tenant_id(conn, tenant) if tenant else None
            try:
                return await api_keys.create_key(conn, name.strip(), tid)
            except api_keys.KeyExists:
                raise CliError(f"an active API key is already named {name!r}") from None
            except asyncpg.CheckViolationError:
                raise CliError(f"invalid key name {name!r}: 1-63 letters, digits, '.', '_' or '-'") from None

    key = asyncio.run(go())
    scope = f"tenant {tenant}" if tenant else "every tenant"
    typer.echo(f"created API key {name!r} for {scope}; store it now, it is not shown again:")
    typer.echo(key)


@app.command("list")
def key_list(as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """List API keys (names, scope and dates, never the keys)."""

    async def go() -> list[dict[str, object]]:
        async with database() as conn:
            return await api_keys.list_keys(conn)

    print_rows(
        asyncio.run(go()),
        ["name", "tenant", "status", "created_at", "last_used_at", "revoked_at"],
        as_json=as_json,
        title="API keys",
    )


@app.command("revoke")
def key_revoke(name: str) -> None:
    """Revoke an API key; the App API refuses it within seconds (its key cache, 5 s)."""

    async def go() -> bool:
        async with database() as conn:
            return await api_keys.revoke_key(conn, name.strip())

    if not asyncio.run(go()):
        raise CliError(f"no active API key named {name!r} (see `provisio api-key list`)")
    typer.echo(f"revoked API key {name!r}")
