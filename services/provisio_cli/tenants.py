"""`provisio tenant …` and `provisio scim-token …`: thin wrappers of provisio_lib.admin
(tenants, tokens), the layer the console calls too."""

from __future__ import annotations

import asyncio
import uuid

import typer

from provisio_lib.admin import tenants as tenants_admin
from provisio_lib.admin import tokens as tokens_admin

from .context import CliError, actor, database, print_rows, tenant_id

tenant_app = typer.Typer(help="Tenants: create, list, policies.", no_args_is_help=True)
token_app = typer.Typer(help="SCIM bearer tokens: create, list, revoke.", no_args_is_help=True)


@tenant_app.command("create")
def tenant_create(
    name: str = typer.Argument(..., help="Short name: lowercase letters, digits, dashes"),
    deprovision: str = typer.Option(
        "delete", help="On SCIM DELETE: delete (RFC 7644 §3.6) or deactivate (keep the user, active=false)"
    ),
) -> None:
    """Create a tenant; prints its id."""
    name = name.strip().lower()

    async def go() -> uuid.UUID:
        async with database() as conn:
            return await tenants_admin.create(conn, name, deprovision, actor=actor())

    tid = asyncio.run(go())
    typer.echo(f"created tenant {name}")
    typer.echo(str(tid))


@tenant_app.command("list")
def tenant_list(as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """List tenants with their policies."""

    async def go() -> list[dict[str, object]]:
        async with database() as conn:
            return await tenants_admin.list_tenants(conn)

    rows = asyncio.run(go())
    print_rows(
        rows,
        [
            "name",
            "id",
            "users",
            "tokens",
            "deprovision",
            "one_group_per_user",
            "immutable_user_name",
            "rate_limit",
            "created_at",
        ],
        as_json=as_json,
        title="Tenants",
    )


@tenant_app.command("policy")
def tenant_policy(
    tenant: str,
    deprovision: str | None = typer.Option(None, help="deactivate or delete"),
    one_group_per_user: bool | None = typer.Option(None, "--one-group-per-user/--many-groups-per-user"),
    immutable_user_name: bool | None = typer.Option(None, "--immutable-user-name/--mutable-user-name"),
    rate_limit: str | None = typer.Option(
        None,
        "--rate-limit",
        metavar="N",
        help="SCIM requests per second for this tenant, per gateway process (0: unlimited; "
        "'default': PROVISIO_SCIM_RATE_LIMIT_PER_S)",
    ),
) -> None:
    """Set a tenant's provisioning policies (Splashtop team rules); workers apply them within 5 s."""
    if deprovision is not None and deprovision not in tenants_admin.DEPROVISION:
        raise CliError("--deprovision must be deactivate or delete")
    tenants_admin.parse_rate_limit(rate_limit)  # before connecting: a bad value is a usage error

    async def go() -> None:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            await tenants_admin.set_policy(
                conn,
                tid,
                actor=actor(),
                deprovision=deprovision,
                one_group_per_user=one_group_per_user,
                immutable_user_name=immutable_user_name,
                rate_limit=rate_limit,
            )

    asyncio.run(go())
    typer.echo(f"updated tenant {tenant}")


@token_app.command("create")
def token_create(
    tenant: str,
    name: str = typer.Option(None, "--name", help="Label, e.g. entra-prod (default: token-N)"),
) -> None:
    """Create a SCIM token. The token is the last line of output and is shown only once."""

    async def go() -> tuple[str, str]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await tokens_admin.create(conn, tid, name, actor=actor())

    label, token = asyncio.run(go())
    typer.echo(f"created SCIM token {label!r} for tenant {tenant}; store it now, it is not shown again:", err=False)
    typer.echo(token)


@token_app.command("list")
def token_list(tenant: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """List a tenant's tokens (labels and dates, never the tokens)."""

    async def go() -> list[dict[str, object]]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await tokens_admin.list_tokens(conn, tid)

    print_rows(
        asyncio.run(go()),
        ["label", "status", "created_at", "last_used_at", "revoked_at"],
        as_json=as_json,
        title=f"SCIM tokens of {tenant}",
    )


@token_app.command("revoke")
def token_revoke(tenant: str, label: str) -> None:
    """Revoke a tenant's active token by label; it stops working at once."""

    async def go() -> bool:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await tokens_admin.revoke(conn, tid, label, actor=actor())

    if not asyncio.run(go()):
        raise CliError(f"tenant {tenant!r} has no active token labelled {label!r}")
    typer.echo(f"revoked SCIM token {label!r} of tenant {tenant}")
