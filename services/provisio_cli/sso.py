"""`provisio sso …`: SAML SSO connections (several per tenant, one per IdP)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import typer
from pydantic import Field

from provisio_lib import sso
from provisio_lib.admin import connections, identities
from provisio_lib.settings import CommonSettings

from .context import CliError, actor, database, load_cli_settings, print_rows, tenant_id

app = typer.Typer(help="SAML SSO connections: add, update, show, list, remove, enable, disable.", no_args_is_help=True)

SECRET_PREFIX = connections.SECRET_PREFIX


class SsoCliSettings(CommonSettings):
    saml_public_url: str = Field(default="http://127.0.0.1:8082", pattern=r"^https?://[^\s]+$")


GROUPS_ABSENT_HELP = (
    "What a login without a groups claim means (IdPs omit it when the user has no groups): "
    "auto (no groups once this connection has sent one), none, or unchanged"
)


def _settings() -> SsoCliSettings:
    return load_cli_settings(SsoCliSettings)


def _read_metadata(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=15) as resp:  # noqa: S310 (scheme checked)
                data: bytes = resp.read(sso.MAX_METADATA_BYTES + 1)
        except Exception as err:
            raise CliError(f"cannot download metadata from {source}: {err}") from None
        return data
    path = Path(source)
    if not path.is_file():
        raise CliError(f"metadata file {source!r} not found (give a file path or an https:// URL)")
    return path.read_bytes()


@app.command("add")
def add(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    name: str = typer.Argument(..., help="Connection name: lowercase letters, digits, dashes"),
    metadata: str = typer.Option(..., "--metadata", help="IdP metadata: a file or an https:// URL"),
    preset: str = typer.Option(..., "--preset", help="entra, google, okta, jumpcloud or generic"),
    jit: str = typer.Option("create", "--jit", help="off (user must exist), create, or sync"),
    app_url: str | None = typer.Option(None, "--app-url", help="Where the browser goes after login, with ?code=…"),
    allow_idp_initiated: bool = typer.Option(False, "--allow-idp-initiated", help="Accept unsolicited responses"),
    map_: list[str] = typer.Option([], "--map", help="FIELD=CLAIM (repeatable): override a field or add a custom one"),
    require: list[str] = typer.Option([], "--require", help="FIELD (repeatable): refuse logins without it"),
    groups_absent: str = typer.Option("auto", "--groups-absent-means", help=GROUPS_ABSENT_HELP),
) -> None:
    """Add an SSO connection from the IdP's metadata; prints its URLs and the app secret."""
    name = name.strip().lower()
    connections.check_options(preset=preset, jit=jit, app_url=app_url, groups_absent=groups_absent)
    try:
        overrides = sso.parse_map_options(map_)
        sso.check_required(require, sso.attribute_map(preset, overrides))
    except sso.MappingError as err:
        raise CliError(str(err)) from None
    raw = _read_metadata(metadata)
    connections.parse_metadata(raw)
    s = _settings()

    async def go() -> connections.Created:
        async with database(s) as conn:
            tid = await tenant_id(conn, tenant)
            return await connections.add(
                conn,
                tid,
                name,
                metadata=raw,
                preset=preset,
                actor=actor(),
                jit=jit,
                app_url=app_url,
                allow_idp_initiated=allow_idp_initiated,
                overrides=overrides,
                required=require,
                groups_absent=groups_absent,
                enabled=True,  # an operator's connection works at once (a setup link's waits for a test)
                tenant_label=tenant,
            )

    created = asyncio.run(go())
    urls = sso.sp_urls(s.saml_public_url, created.tenant_name, name)
    typer.echo(
        f"created SSO connection {name} for tenant {created.tenant_name} (IdP {created.info.entity_id}, JIT {jit})"
    )
    for line in _url_lines(urls):
        typer.echo(line)
    typer.echo("app secret for POST /saml/token (store it now, it is not shown again):")
    typer.echo(created.secret)


def _url_lines(urls: sso.SpUrls) -> list[str]:
    return [
        f"SP entity ID:     {urls.entity_id}",
        f"ACS URL:          {urls.acs}",
        f"JIT login URL:    {urls.login}",
        f"SP metadata URL:  {urls.metadata}",
    ]


async def _connection(conn: asyncpg.Connection, tenant: str, name: str) -> dict[str, Any]:
    tid = await tenant_id(conn, tenant)
    return await connections.get(conn, tid, name, tenant_label=tenant)


@app.command("update")
def update(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    name: str = typer.Argument(..., help="Connection name"),
    metadata: str | None = typer.Option(None, "--metadata", help="New IdP metadata (certificate rollover)"),
    jit: str | None = typer.Option(None, "--jit", help="off, create or sync"),
    app_url: str | None = typer.Option(None, "--app-url", help="Where the browser goes after login"),
    allow_idp_initiated: bool | None = typer.Option(None, "--allow-idp-initiated/--no-idp-initiated"),
    map_: list[str] = typer.Option([], "--map", help="FIELD=CLAIM (repeatable), on top of the current map"),
    require: list[str] | None = typer.Option(None, "--require", help="FIELD (repeatable): replaces the list"),
    groups_absent: str | None = typer.Option(None, "--groups-absent-means", help=GROUPS_ABSENT_HELP),
) -> None:
    """Change a connection in place: the SP key, URLs and app secret stay, so the IdP and
    the app need no change (e.g. new IdP metadata when its signing certificate rolls over)."""
    connections.check_options(jit=jit, app_url=app_url, groups_absent=groups_absent)
    raw = _read_metadata(metadata) if metadata else None
    if raw is not None:
        connections.parse_metadata(raw)
    try:
        overrides = sso.parse_map_options(map_)
    except sso.MappingError as err:
        raise CliError(str(err)) from None

    async def go() -> None:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            await connections.update(
                conn,
                tid,
                name,
                actor=actor(),
                metadata=raw,
                jit=jit,
                app_url=app_url,
                allow_idp_initiated=allow_idp_initiated,
                overrides=overrides,
                required=require,
                groups_absent=groups_absent,
                tenant_label=tenant,
            )

    asyncio.run(go())
    typer.echo(f"updated SSO connection {name.strip().lower()} of tenant {tenant}")


@app.command("show")
def show(tenant: str, name: str, as_json: bool = typer.Option(False, "--json", help="One JSON object")) -> None:
    """Show a connection: the URLs to give the IdP and the app, JIT mode, attribute map."""
    s = _settings()

    async def go() -> dict[str, Any]:
        async with database(s) as conn:
            return await _connection(conn, tenant, name)

    row = asyncio.run(go())
    urls = sso.sp_urls(s.saml_public_url, row["tenant_name"], row["name"])
    info = {
        "tenant": row["tenant_name"],
        "name": row["name"],
        "sp_entity_id": urls.entity_id,
        "acs_url": urls.acs,
        "jit_login_url": urls.login,
        "sp_metadata_url": urls.metadata,
        "idp_entity_id": row["idp_entity_id"],
        "preset": row["preset"],
        "jit": row["jit_mode"],
        "app_url": row["app_url"],
        "allow_idp_initiated": row["allow_idp_initiated"],
        "attribute_map": row["attribute_map"],
        "required": list(row["required_attributes"]),
        "app_secret": "set" if row["app_secret_hash"] else "none (run `provisio sso secret`)",
        "verified_domains": list(row["verified_domains"]),
        "groups_absent_means": row["groups_absent"],
        "enabled": row["enabled"],
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    for line in _url_lines(urls):
        typer.echo(line)
    for key in (
        "idp_entity_id",
        "preset",
        "jit",
        "app_url",
        "allow_idp_initiated",
        "required",
        "app_secret",
        "enabled",
    ):
        typer.echo(f"{key + ':':<18}{info[key]}")
    typer.echo(f"{'verified domains:':<18}{', '.join(info['verified_domains']) or '(none)'}")
    typer.echo(f"{'groups absent:':<18}{info['groups_absent_means']}")
    typer.echo("attribute map:")
    for field, claims in info["attribute_map"].items():
        typer.echo(f"  {field} <- {' | '.join(claims)}")


@app.command("list")
def list_(tenant: str, as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """List a tenant's SSO connections."""

    async def go() -> list[dict[str, Any]]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await connections.list_connections(conn, tid)

    print_rows(
        asyncio.run(go()),
        ["name", "preset", "jit", "idp_entity_id", "app_url", "allow_idp_initiated", "enabled", "created_at"],
        as_json=as_json,
        title=f"SSO connections of {tenant}",
    )


@app.command("remove")
def remove(tenant: str, name: str) -> None:
    """Remove a connection: its logins are refused at once."""

    async def go() -> None:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            await connections.remove(conn, tid, name, actor=actor(), tenant_label=tenant)

    asyncio.run(go())
    typer.echo(f"removed SSO connection {name.strip().lower()} of tenant {tenant}")


@app.command("secret")
def secret(tenant: str, name: str) -> None:
    """Issue a new app secret for the code exchange (the old one stops working)."""

    async def go() -> str:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await connections.rotate_secret(conn, tid, name, actor=actor(), tenant_label=tenant)

    value = asyncio.run(go())
    typer.echo(f"new app secret for {name.strip().lower()} (store it now, it is not shown again):")
    typer.echo(value)


@app.command("domains")
def domains(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    name: str = typer.Argument(..., help="Connection name"),
    add_: list[str] = typer.Option([], "--add", help="DOMAIN (repeatable): verified for this connection"),
    remove_: list[str] = typer.Option([], "--remove", help="DOMAIN (repeatable)"),
) -> None:
    """Email domains verified for a connection: on a first sign-in it may take over an
    existing user whose email is in one of them (e.g. a user SCIM created). Without
    --add/--remove, list them."""

    async def go() -> tuple[list[str], list[tuple[str, str]]]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await connections.set_domains(
                conn, tid, name, actor=actor(), add=add_, remove=remove_, tenant_label=tenant
            )

    current, others = asyncio.run(go())
    for other, domain in others:
        typer.echo(f"note: {domain} is also verified for connection {other}")
    typer.echo(f"verified domains of {name.strip().lower()}: {', '.join(current) or '(none)'}")


@app.command("link")
def link(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    name: str = typer.Argument(..., help="Connection name"),
    user: str = typer.Argument(..., help="The user: userName or id"),
    name_id: str = typer.Argument(..., help="The NameID the IdP sends for this user"),
) -> None:
    """Link an IdP identity (this connection's NameID) to an existing user: its logins
    through this connection then sign in as that user. Audited with the operator."""
    identities.check_name_id(name_id)  # before connecting: a bad argument needs no database

    async def go() -> identities.Link:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await identities.link(conn, tid, name, user, name_id, actor=actor(), tenant_label=tenant)

    linked = asyncio.run(go())
    typer.echo(f"linked NameID {name_id!r} of {name.strip().lower()} to user {linked.user_name}")


@app.command("unlink")
def unlink(tenant: str, name: str, name_id: str) -> None:
    """Remove the link of a NameID: its next login is matched anew (and refused where the
    connection is not authoritative for the user its claims name). Audited with the operator."""

    async def go() -> str:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await identities.unlink(conn, tid, name, name_id, actor=actor(), tenant_label=tenant)

    asyncio.run(go())
    typer.echo(f"unlinked NameID {name_id!r} of {name.strip().lower()}")


@app.command("enable")
def enable(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    name: str = typer.Argument(..., help="Connection name"),
    force: bool = typer.Option(
        False, "--force", help="Enable without a passed test login of the current settings (audited)"
    ),
) -> None:
    """Switch a connection on: only after a passed test login of its current settings
    (the console's setup page), unless --force."""
    from provisio_lib.admin import sso_test

    async def go() -> None:
        async with database() as conn:
            await sso_test.enable(conn, await tenant_id(conn, tenant), name, actor=actor(), force=force)

    asyncio.run(go())
    typer.echo(f"enabled SSO connection {name.strip().lower()} of tenant {tenant}")


@app.command("disable")
def disable(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    name: str = typer.Argument(..., help="Connection name"),
) -> None:
    """Switch a connection off: its real logins are refused at once; test logins still run."""
    from provisio_lib.admin import sso_test

    async def go() -> None:
        async with database() as conn:
            await sso_test.disable(conn, await tenant_id(conn, tenant), name, actor=actor())

    asyncio.run(go())
    typer.echo(f"disabled SSO connection {name.strip().lower()} of tenant {tenant}")
