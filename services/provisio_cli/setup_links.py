"""`provisio setup-link …`: one-time links that let a customer's IT admin set up SSO and
SCIM for their tenant in the console, without an account (provisio_lib.admin.setup_links)."""

from __future__ import annotations

import asyncio

import typer

from provisio_lib.admin import setup_links
from provisio_lib.settings import load_settings

from .context import actor, database, print_rows, tenant_id

app = typer.Typer(help="Self-serve setup links for a tenant's IT admin: create, list, revoke.", no_args_is_help=True)


def link_url(token: str) -> str:
    from console.settings import ConsoleSettings

    return f"{load_settings(ConsoleSettings).base_url()}/setup/open/{token}"


@app.command("create")
def create(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    expires: str = typer.Option("7d", "--expires", help="How long the link works: e.g. 30m, 12h, 7d (at most 30d)"),
    scope: str = typer.Option("sso,scim", "--scope", help="What the link may set up: sso, scim or sso,scim"),
) -> None:
    """Create a one-time setup link; the URL is the last line of output and is shown only
    once. Whoever opens it first can set up SSO and/or SCIM of this tenant until it expires."""
    ttl = setup_links.parse_ttl(expires)
    scopes = setup_links.parse_scopes(scope)

    async def go() -> tuple[setup_links.SetupLink, str]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await setup_links.create(conn, tid, scopes=scopes, ttl=ttl, actor=actor())

    link, token = asyncio.run(go())
    typer.echo(
        f"created setup link {link.prefix} (id {link.id}) for tenant {link.tenant_name}, "
        f"scope {','.join(link.scopes)}, expires {link.expires_at.isoformat(timespec='seconds')}"
    )
    typer.echo("it works once, in the first browser that opens it; send it to the tenant's IT admin:")
    typer.echo(link_url(token))


@app.command("list")
def list_(tenant: str, as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """A tenant's setup links (never the links themselves) and their status."""

    async def go() -> list[setup_links.SetupLink]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await setup_links.list_links(conn, tid)

    print_rows(
        [setup_links.describe(link) for link in asyncio.run(go())],
        ["prefix", "id", "scopes", "status", "created_by", "created_at", "expires_at", "redeemed_at", "revoked_at"],
        as_json=as_json,
        title=f"Setup links of {tenant}",
    )


@app.command("revoke")
def revoke(link: str = typer.Argument(..., help="The link's id or prefix (psl_…) shown at create")) -> None:
    """Revoke a setup link: it cannot be opened any more, and a setup session opened with
    it ends at once."""

    async def go() -> setup_links.SetupLink:
        async with database() as conn:
            return await setup_links.revoke(conn, link, actor=actor())

    done = asyncio.run(go())
    typer.echo(f"revoked setup link {done.prefix} of tenant {done.tenant_name}")
