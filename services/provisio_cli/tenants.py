"""`provisio tenant …` and `provisio scim-token …`."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import typer

from provisio_lib.tokens import generate_token, hash_token

from .context import CliError, database, print_rows, tenant_id

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
            tid = uuid.uuid4()
            try:
                await conn.execute(
                    "INSERT INTO tenants (id, name, deprovision) VALUES ($1, $2, $3)", tid, name, deprovision
                )
            except asyncpg.UniqueViolationError:
                raise CliError(f"tenant {name!r} already exists") from None
            except asyncpg.CheckViolationError:
                raise CliError(
                    f"invalid tenant name {name!r} or --deprovision {deprovision!r}: names are 1-63 "
                    "lowercase letters, digits and dashes; deprovision is deactivate or delete"
                ) from None
            return tid

    tid = asyncio.run(go())
    typer.echo(f"created tenant {name}")
    typer.echo(str(tid))


@tenant_app.command("list")
def tenant_list(as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """List tenants with their policies."""

    async def go() -> list[dict[str, object]]:
        async with database() as conn:
            rows = await conn.fetch(
                """SELECT t.id, t.name, t.deprovision, t.one_group_per_user, t.immutable_user_name,
                          coalesce(t.rate_limit_per_s::text, 'default') AS rate_limit, t.created_at,
                          (SELECT count(*) FROM users u WHERE u.tenant_id = t.id) AS users,
                          (SELECT count(*) FROM scim_tokens k WHERE k.tenant_id = t.id AND k.revoked_at IS NULL) AS tokens
                   FROM tenants t ORDER BY t.name"""
            )
            return [dict(r) for r in rows]

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
    if deprovision is not None and deprovision not in ("deactivate", "delete"):
        raise CliError("--deprovision must be deactivate or delete")
    rate = _rate_limit(rate_limit)

    async def go() -> None:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            await conn.execute(
                """UPDATE tenants SET deprovision = coalesce($2, deprovision),
                       one_group_per_user = coalesce($3, one_group_per_user),
                       immutable_user_name = coalesce($4, immutable_user_name),
                       rate_limit_per_s = CASE WHEN $5 THEN $6::integer ELSE rate_limit_per_s END
                   WHERE id = $1""",
                tid,
                deprovision,
                one_group_per_user,
                immutable_user_name,
                rate_limit is not None,
                rate,
            )

    asyncio.run(go())
    typer.echo(f"updated tenant {tenant}")


def _rate_limit(raw: str | None) -> int | None:
    """--rate-limit: a whole number of requests per second (0: unlimited), or 'default'
    (NULL: the gateway's PROVISIO_SCIM_RATE_LIMIT_PER_S)."""
    if raw is None or raw.strip().lower() == "default":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise CliError(
            f"--rate-limit must be a whole number of requests per second or 'default', not {raw!r}"
        ) from None
    if not 0 <= value <= 1_000_000:
        raise CliError("--rate-limit must be between 0 (unlimited) and 1000000")
    return value


@token_app.command("create")
def token_create(
    tenant: str,
    name: str = typer.Option(None, "--name", help="Label, e.g. entra-prod (default: token-N)"),
) -> None:
    """Create a SCIM token. The token is the last line of output and is shown only once."""

    async def go() -> tuple[str, str]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            label = name
            if not label:
                n = await conn.fetchval("SELECT count(*) FROM scim_tokens WHERE tenant_id = $1", tid)
                label = f"token-{n + 1}"
            token = generate_token()
            try:
                await conn.execute(
                    "INSERT INTO scim_tokens (id, tenant_id, label, token_hash) VALUES ($1, $2, $3, $4)",
                    uuid.uuid4(),
                    tid,
                    label,
                    hash_token(token),
                )
            except asyncpg.UniqueViolationError:
                raise CliError(f"tenant {tenant!r} already has an active token labelled {label!r}") from None
            return label, token

    label, token = asyncio.run(go())
    typer.echo(f"created SCIM token {label!r} for tenant {tenant}; store it now, it is not shown again:", err=False)
    typer.echo(token)


@token_app.command("list")
def token_list(tenant: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """List a tenant's tokens (labels and dates, never the tokens)."""

    async def go() -> list[dict[str, object]]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            rows = await conn.fetch(
                """SELECT label, created_at, last_used_at, revoked_at,
                          CASE WHEN revoked_at IS NULL THEN 'active' ELSE 'revoked' END AS status
                   FROM scim_tokens WHERE tenant_id = $1 ORDER BY created_at""",
                tid,
            )
            return [dict(r) for r in rows]

    print_rows(
        asyncio.run(go()),
        ["label", "status", "created_at", "last_used_at", "revoked_at"],
        as_json=as_json,
        title=f"SCIM tokens of {tenant}",
    )


@token_app.command("revoke")
def token_revoke(tenant: str, label: str) -> None:
    """Revoke a tenant's active token by label; it stops working at once."""

    async def go() -> int:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            status = await conn.execute(
                "UPDATE scim_tokens SET revoked_at = now() WHERE tenant_id = $1 AND label = $2 AND revoked_at IS NULL",
                tid,
                label,
            )
            return int(status.split()[-1])

    if asyncio.run(go()) == 0:
        raise CliError(f"tenant {tenant!r} has no active token labelled {label!r}")
    typer.echo(f"revoked SCIM token {label!r} of tenant {tenant}")
