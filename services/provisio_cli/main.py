"""The CLI's composition root: sub-apps are registered here, errors become one line."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import typer
import typer.core

from provisio_lib import db
from provisio_lib.settings import SettingsError
from provisio_lib.topology import ensure_groups

from . import apikeys, audit, dlq, scim_schema, setup_links, sso, staff, webhooks
from .context import CliError, database, redis, settings, topology
from .tenants import tenant_app, token_app

# typer 0.29 prints a type for every option in the help, <bool> for flags (and --help)
# too; a flag's name already says it (`--seed / --no-seed`). tests/unit/test_cli_help.py
# notices if a typer upgrade changes this method.
_option_type = typer.core.TyperOption.display_type_rich


def _flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _option_type(self, ctx)


typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app = typer.Typer(
    name="provisio",
    help="Provisio: SAML JIT and SCIM 2.0 provisioning. Operator commands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(tenant_app, name="tenant")
app.add_typer(token_app, name="scim-token")
app.add_typer(scim_schema.app, name="scim-schema")
app.add_typer(sso.app, name="sso")
app.add_typer(audit.app, name="audit")
app.add_typer(dlq.app, name="dlq")
app.add_typer(apikeys.app, name="api-key")
app.add_typer(staff.app, name="staff")
app.add_typer(webhooks.app, name="webhook")
app.add_typer(setup_links.app, name="setup-link")

SERVICES = {
    "scim": "scim_gateway",
    "saml": "saml_gateway",
    "provisioner": "provisioner",
    "auditor": "auditor",
    "app-api": "app_api",
    "console": "console",
    "webhook-dispatcher": "webhook_dispatcher",
}


@app.command()
def migrate() -> None:
    """Apply database migrations and create the Redis streams and consumer groups."""

    async def go() -> list[str]:
        s = settings()
        async with database(s, check=False) as conn:
            try:
                done = await db.migrate(conn)
            except db.SchemaError as err:
                raise CliError(str(err)) from None
        async with redis(s) as r:
            await ensure_groups(r, topology(s))
        return [f"{m.version:04d}_{m.name}" for m in done]

    done = asyncio.run(go())
    typer.echo("applied: " + ", ".join(done) if done else "database schema is current")


@app.command()
def serve(service: str = typer.Argument(..., help="scim, saml, app-api or console")) -> None:
    """Run a gateway, the App API or the web console in the foreground (the container command)."""
    _exec_service(service, ("scim", "saml", "app-api", "console"))


@app.command()
def work(service: str = typer.Argument(..., help="provisioner, auditor or webhook-dispatcher")) -> None:
    """Run a worker in the foreground (the container command)."""
    _exec_service(service, ("provisioner", "auditor", "webhook-dispatcher"))


def _exec_service(service: str, allowed: tuple[str, ...]) -> None:
    if service not in allowed:
        raise CliError(f"unknown service {service!r}; choose one of: {', '.join(allowed)}")
    module = SERVICES[service]
    # Replace this process, so the service gets SIGTERM from the container runtime directly.
    os.execv(sys.executable, [sys.executable, "-m", module])


@app.command()
def dev(
    data_dir: str = typer.Option(".provisio", envvar="PROVISIO_DEV_DIR", help="Embedded servers' data"),
    seed: bool = typer.Option(True, help="Create the demo tenant and its SCIM token (kept across restarts)"),
) -> None:
    """Run the whole stack in the foreground: embedded Postgres/Redis where no URL is set."""
    from .dev import run_dev

    code = run_dev(data_dir, seed=seed)
    if code:
        raise typer.Exit(code)


def run() -> None:
    try:
        app()
    except (CliError, SettingsError) as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(getattr(err, "code", 1) or 1)
    except KeyboardInterrupt:
        sys.exit(130)
