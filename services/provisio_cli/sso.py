"""`provisio sso …`: SAML SSO connections (several per tenant, one per IdP)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import typer
from pydantic import Field

from provisio_lib import sso
from provisio_lib.settings import CommonSettings
from provisio_lib.sso_presets import PRESETS
from provisio_lib.tokens import generate_token, hash_token

from .context import CliError, database, load_cli_settings, print_rows, tenant_id

app = typer.Typer(help="SAML SSO connections: add, update, show, list, remove, enable, disable.", no_args_is_help=True)

SECRET_PREFIX = "pas_"  # Provisio app secret (code exchange at POST /saml/token)


class SsoCliSettings(CommonSettings):
    saml_public_url: str = Field(default="http://127.0.0.1:8082", pattern=r"^https?://[^\s]+$")


GROUPS_ABSENT_HELP = (
    "What a login without a groups claim means (IdPs omit it when the user has no groups): "
    "auto (no groups once this connection has sent one), none, or unchanged"
)


def _check_groups_absent(value: str | None) -> None:
    if value is not None and value not in sso.GROUPS_ABSENT:
        raise CliError(f"unknown --groups-absent-means {value!r}; choose one of: {', '.join(sso.GROUPS_ABSENT)}")


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


def _new_secret() -> tuple[str, bytes]:
    secret = SECRET_PREFIX + generate_token().removeprefix("prv_")
    return secret, hash_token(secret)


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
    _check_groups_absent(groups_absent)
    if preset not in PRESETS:
        raise CliError(f"unknown --preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if jit not in sso.JIT_MODES:
        raise CliError(f"unknown --jit {jit!r}; choose one of: {', '.join(sso.JIT_MODES)}")
    if app_url is not None and not app_url.startswith(("https://", "http://")):
        raise CliError(f"--app-url {app_url!r} must be an http(s) URL")
    try:
        amap = sso.attribute_map(preset, sso.parse_map_options(map_))
        required = sso.check_required(require, amap)
    except sso.MappingError as err:
        raise CliError(str(err)) from None
    raw = _read_metadata(metadata)
    try:
        info = sso.parse_idp_metadata(raw)
    except sso.MetadataError as err:
        raise CliError(f"invalid IdP metadata: {err}") from None
    s = _settings()

    async def go() -> tuple[str, str]:
        async with database(s) as conn:
            tid = await tenant_id(conn, tenant)
            tname = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", tid)
            key_pem, cert_pem = sso.generate_sp_keypair(f"provisio {tname}/{name}")
            secret, secret_hash = _new_secret()
            try:
                await conn.execute(
                    """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata,
                           jit_mode, app_url, allow_idp_initiated, attribute_map, required_attributes,
                           sp_cert_pem, sp_key_pem, app_secret_hash, groups_absent)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
                    uuid.uuid4(),
                    tid,
                    name,
                    preset,
                    info.entity_id,
                    raw.decode("utf-8", "replace"),
                    jit,
                    app_url,
                    allow_idp_initiated,
                    amap,
                    required,
                    cert_pem,
                    key_pem,
                    secret_hash,
                    groups_absent,
                )
            except asyncpg.UniqueViolationError:
                raise CliError(f"tenant {tenant!r} already has an SSO connection named {name!r}") from None
            except asyncpg.CheckViolationError:
                raise CliError(f"invalid connection name {name!r}: 1-63 lowercase letters, digits and dashes") from None
            return tname, secret

    tname, secret = asyncio.run(go())
    urls = sso.sp_urls(s.saml_public_url, tname, name)
    typer.echo(f"created SSO connection {name} for tenant {tname} (IdP {info.entity_id}, JIT {jit})")
    for line in _url_lines(urls):
        typer.echo(line)
    typer.echo("app secret for POST /saml/token (store it now, it is not shown again):")
    typer.echo(secret)


def _url_lines(urls: sso.SpUrls) -> list[str]:
    return [
        f"SP entity ID:     {urls.entity_id}",
        f"ACS URL:          {urls.acs}",
        f"JIT login URL:    {urls.login}",
        f"SP metadata URL:  {urls.metadata}",
    ]


async def _connection(conn: asyncpg.Connection, tenant: str, name: str) -> dict[str, Any]:
    tid = await tenant_id(conn, tenant)
    row = await conn.fetchrow(
        """SELECT c.*, t.name AS tenant_name FROM sso_connections c JOIN tenants t ON t.id = c.tenant_id
           WHERE c.tenant_id = $1 AND c.name = $2""",
        tid,
        name.strip().lower(),
    )
    if row is None:
        raise CliError(f"tenant {tenant!r} has no SSO connection named {name!r} (see `provisio sso list {tenant}`)")
    return dict(row)


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
    _check_groups_absent(groups_absent)
    if jit is not None and jit not in sso.JIT_MODES:
        raise CliError(f"unknown --jit {jit!r}; choose one of: {', '.join(sso.JIT_MODES)}")
    if app_url is not None and not app_url.startswith(("https://", "http://")):
        raise CliError(f"--app-url {app_url!r} must be an http(s) URL")
    raw = _read_metadata(metadata) if metadata else None
    info = None
    if raw is not None:
        try:
            info = sso.parse_idp_metadata(raw)
        except sso.MetadataError as err:
            raise CliError(f"invalid IdP metadata: {err}") from None

    async def go() -> None:
        async with database() as conn:
            row = await _connection(conn, tenant, name)
            amap = {k: list(v) for k, v in row["attribute_map"].items()}
            try:
                for field, claim in sso.parse_map_options(map_).items():
                    amap[field] = sso.attribute_map(row["preset"], {field: claim})[field]
                required = (
                    sso.check_required(require, amap) if require is not None else list(row["required_attributes"])
                )
            except sso.MappingError as err:
                raise CliError(str(err)) from None
            if info is not None and info.entity_id != row["idp_entity_id"]:
                raise CliError(
                    f"the new metadata is for IdP {info.entity_id!r}, not this connection's "
                    f"{row['idp_entity_id']!r}; add a new connection instead"
                )
            await conn.execute(
                """UPDATE sso_connections SET idp_metadata = coalesce($2, idp_metadata),
                       jit_mode = coalesce($3, jit_mode), app_url = coalesce($4, app_url),
                       allow_idp_initiated = coalesce($5, allow_idp_initiated), attribute_map = $6,
                       required_attributes = $7, groups_absent = coalesce($8, groups_absent), updated_at = now()
                   WHERE id = $1""",
                row["id"],
                raw.decode("utf-8", "replace") if raw is not None else None,
                jit,
                app_url,
                allow_idp_initiated,
                amap,
                required,
                groups_absent,
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
            rows = await conn.fetch(
                """SELECT name, preset, jit_mode AS jit, idp_entity_id, app_url, allow_idp_initiated, enabled,
                          created_at
                   FROM sso_connections WHERE tenant_id = $1 ORDER BY name""",
                tid,
            )
            return [dict(r) for r in rows]

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
            row = await _connection(conn, tenant, name)
            await conn.execute("DELETE FROM sso_connections WHERE id = $1", row["id"])

    asyncio.run(go())
    typer.echo(f"removed SSO connection {name.strip().lower()} of tenant {tenant}")


@app.command("secret")
def secret(tenant: str, name: str) -> None:
    """Issue a new app secret for the code exchange (the old one stops working)."""

    async def go() -> str:
        async with database() as conn:
            row = await _connection(conn, tenant, name)
            value, digest = _new_secret()
            await conn.execute(
                "UPDATE sso_connections SET app_secret_hash = $2, updated_at = now() WHERE id = $1", row["id"], digest
            )
            return value

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
    try:
        added = [sso.normalize_domain(d) for d in add_]
        removed = [sso.normalize_domain(d) for d in remove_]
    except sso.MappingError as err:
        raise CliError(str(err)) from None

    async def go() -> tuple[list[str], list[tuple[str, str]]]:
        async with database() as conn, conn.transaction():
            row = await _connection(conn, tenant, name)
            current = [d for d in row["verified_domains"] if d not in removed]
            current += [d for d in dict.fromkeys(added) if d not in current]
            # A domain verified for two connections of a tenant makes both authoritative
            # for the same users: allowed (one IdP migrating to another), but said.
            others = await conn.fetch(
                """SELECT name, d FROM sso_connections, unnest(verified_domains) AS d
                   WHERE tenant_id = $1 AND id <> $2 AND d = ANY($3::text[])""",
                row["tenant_id"],
                row["id"],
                added,
            )
            if added or removed:
                await conn.execute(
                    "UPDATE sso_connections SET verified_domains = $2, updated_at = now() WHERE id = $1",
                    row["id"],
                    current,
                )
            return current, [(r["name"], r["d"]) for r in others]

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
    through this connection then sign in as that user."""
    if not name_id.strip() or len(name_id) > 512:
        raise CliError("NAMEID must be 1-512 characters")

    async def go() -> str:
        async with database() as conn, conn.transaction():
            row = await _connection(conn, tenant, name)
            found = await conn.fetchrow(
                "SELECT id, user_name FROM users WHERE tenant_id = $1 AND (lower(user_name) = lower($2) OR id::text = $2)",
                row["tenant_id"],
                user.strip(),
            )
            if found is None:
                raise CliError(f"tenant {tenant!r} has no user {user!r}")
            taken = await conn.fetchval(
                "SELECT u.user_name FROM user_identities i JOIN users u ON u.id = i.user_id "
                "WHERE i.connection_id = $1 AND i.name_id = $2 AND i.user_id <> $3",
                row["id"],
                name_id,
                found["id"],
            )
            if taken:
                raise CliError(f"NameID {name_id!r} of {name} is linked to {taken!r}; unlink it first")
            await conn.execute(
                """INSERT INTO user_identities (tenant_id, connection_id, name_id, user_id, linked_by)
                   VALUES ($1, $2, $3, $4, 'cli')
                   ON CONFLICT (connection_id, user_id) DO UPDATE SET name_id = EXCLUDED.name_id,
                       linked_by = 'cli', linked_at = now()""",
                row["tenant_id"],
                row["id"],
                name_id,
                found["id"],
            )
            return str(found["user_name"])

    user_name = asyncio.run(go())
    typer.echo(f"linked NameID {name_id!r} of {name.strip().lower()} to user {user_name}")


@app.command("unlink")
def unlink(tenant: str, name: str, name_id: str) -> None:
    """Remove the link of a NameID: its next login is matched anew (and refused where the
    connection is not authoritative for the user its claims name)."""

    async def go() -> int:
        async with database() as conn:
            row = await _connection(conn, tenant, name)
            status = await conn.execute(
                "DELETE FROM user_identities WHERE connection_id = $1 AND name_id = $2", row["id"], name_id
            )
            return int(status.split()[-1])

    if not asyncio.run(go()):
        raise CliError(f"NameID {name_id!r} is not linked on {name.strip().lower()}")
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
            await sso_test.enable(conn, await tenant_id(conn, tenant), name, actor="cli", force=force)

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
            await sso_test.disable(conn, await tenant_id(conn, tenant), name, actor="cli")

    asyncio.run(go())
    typer.echo(f"disabled SSO connection {name.strip().lower()} of tenant {tenant}")
