"""`provisio scim-schema …`: a tenant's SCIM schema extensions (issue 13 §4).

Entra ID admins map attributes under their own extension URN
(``urn:ietf:params:scim:schemas:extension:<Name>:2.0:User:<attr>``); Splashtop's Entra
mapping sends ``urn:ietf:params:scim:schemas:extension:Splashtop:2.0:User:ssoName``.
Declaring the extension (an RFC 7643 §7 schema document, or a preset) makes the SCIM
gateway list it in that tenant's /Schemas and /ResourceTypes, type-check it, store it,
return it, filter and PATCH by its URN paths. The gateway sees a change within
``PROVISIO_SCIM_TOKEN_CACHE_S`` (5 s): it is read with the tenant's token.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import typer

from provisio_lib.scim_extensions import (
    PRESETS,
    UNDECLARED_DEFAULT,
    UNDECLARED_MODES,
    SchemaDocumentError,
    validate_schema_document,
)

from .context import CliError, database, print_rows, tenant_id

app = typer.Typer(
    help="SCIM schema extensions a tenant's IdP sends (Entra custom attributes, Splashtop ssoName).",
    no_args_is_help=True,
)

_MAX_FILE = 256 * 1024


def load_document(file: Path | None, preset: str | None) -> tuple[dict[str, Any], str | None]:
    """The schema document to declare, validated; CliError with what to fix."""
    if (file is None) == (preset is None):
        raise CliError("give exactly one of --file SCHEMA.json or --preset NAME")
    if preset is not None:
        name = preset.strip().lower()
        if name not in PRESETS:
            raise CliError(f"unknown preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
        return PRESETS[name], name
    assert file is not None
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {file}: {err.strerror or err}") from None
    if len(raw) > _MAX_FILE:
        raise CliError(f"{file} is larger than {_MAX_FILE // 1024} KiB; a schema document is small")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise CliError(f"{file} is not valid JSON: {err}") from None
    except RecursionError:
        raise CliError(f"{file} nests too deeply") from None
    try:
        validate_schema_document(doc)
    except SchemaDocumentError as err:
        raise CliError(f"{file}: {err}") from None
    return doc, None


@app.command("add")
def add(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    file: Path | None = typer.Option(None, "--file", help="An RFC 7643 §7 schema document (JSON) of a User extension"),
    preset: str | None = typer.Option(None, "--preset", help=f"A known extension: {', '.join(sorted(PRESETS))}"),
) -> None:
    """Declare a User schema extension for a tenant."""
    doc, preset_name = load_document(file, preset)
    urn = doc["id"]

    async def go() -> None:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            try:
                await conn.execute(
                    "INSERT INTO scim_schema_extensions (tenant_id, urn, preset, document) VALUES ($1, $2, $3, $4)",
                    tid,
                    urn,
                    preset_name,
                    doc,
                )
            except asyncpg.UniqueViolationError:
                raise CliError(
                    f"tenant {tenant!r} already declares {urn}; remove it first "
                    f"(provisio scim-schema remove {tenant} {urn})"
                ) from None

    asyncio.run(go())
    names = ", ".join(a["name"] for a in doc["attributes"])
    typer.echo(f"declared {urn} for tenant {tenant} ({names})")
    if preset_name == "splashtop":
        typer.echo("ssoName under this URN is stored as the user's Provisio ssoName")


@app.command("list")
def list_(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    as_json: bool = typer.Option(False, "--json", help="JSON lines"),
) -> None:
    """List a tenant's declared extensions and its undeclared-extension setting."""

    async def go() -> tuple[list[dict[str, Any]], str]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            rows = await conn.fetch(
                "SELECT urn, preset, document, created_at FROM scim_schema_extensions WHERE tenant_id = $1 ORDER BY urn",
                tid,
            )
            mode = await conn.fetchval("SELECT scim_undeclared_extensions FROM tenants WHERE id = $1", tid)
            out = []
            for r in rows:
                attrs = [
                    f"{a.get('name')}:{a.get('type')}{'[]' if a.get('multiValued') else ''}"
                    for a in (r["document"] or {}).get("attributes") or ()
                    if isinstance(a, dict)
                ]
                out.append(
                    {
                        "urn": r["urn"],
                        "preset": r["preset"],
                        "attributes": " ".join(attrs),
                        "created_at": r["created_at"],
                    }
                )
            return out, mode

    rows, mode = asyncio.run(go())
    print_rows(
        rows,
        ["urn", "preset", "attributes", "created_at"],
        as_json=as_json,
        title=f"SCIM schema extensions of {tenant}",
    )
    if not as_json:
        typer.echo(f"undeclared extensions: {mode}")


@app.command("remove")
def remove(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    urn: str = typer.Argument(..., help="The extension's URN"),
) -> None:
    """Remove a declared extension. Values already stored stay on the users (returned as
    sent) unless the tenant rejects undeclared extensions for new writes."""

    async def go() -> int:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            status = await conn.execute(
                "DELETE FROM scim_schema_extensions WHERE tenant_id = $1 AND lower(urn) = lower($2)", tid, urn.strip()
            )
            return int(status.split()[-1])

    if asyncio.run(go()) == 0:
        raise CliError(f"tenant {tenant!r} declares no extension {urn!r} (see provisio scim-schema list {tenant})")
    typer.echo(f"removed {urn.strip()} from tenant {tenant}")


@app.command("undeclared")
def undeclared(
    tenant: str = typer.Argument(..., help="Tenant name or id"),
    mode: str | None = typer.Argument(
        None,
        help=f"store (keep as sent and return it; the default, {UNDECLARED_DEFAULT}) or reject (400 naming the URN)",
    ),
) -> None:
    """Show or set what happens to extension data under a URN the tenant has not declared."""
    if mode is not None and mode.strip().lower() not in UNDECLARED_MODES:
        raise CliError(f"mode must be one of: {', '.join(UNDECLARED_MODES)}; got {mode!r}")

    async def go() -> str:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            if mode is not None:
                await conn.execute(
                    "UPDATE tenants SET scim_undeclared_extensions = $2 WHERE id = $1", tid, mode.strip().lower()
                )
            value: str = await conn.fetchval("SELECT scim_undeclared_extensions FROM tenants WHERE id = $1", tid)
            return value

    typer.echo(f"undeclared extensions for tenant {tenant}: {asyncio.run(go())}")
