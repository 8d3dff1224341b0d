"""`provisio staff …`: the web console's support-staff accounts (provisio_lib.admin.staff).

``add`` and ``reset`` print the one-time set-password link as the last line of stdout,
so a script can take it with ``tail -n1``; the link is built on
PROVISIO_CONSOLE_PUBLIC_URL (http://localhost:8084 when unset).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import typer

from provisio_lib.admin.audit import record_staff_action
from provisio_lib.settings import load_settings

from .context import actor, database, print_rows

if TYPE_CHECKING:
    from provisio_lib.admin import staff as staff_admin

app = typer.Typer(help="Support-staff accounts of the web console: add, list, remove, reset.", no_args_is_help=True)


def _link(token: str) -> str:
    from console.settings import ConsoleSettings

    return f"{load_settings(ConsoleSettings).base_url()}/set-password/{token}"


async def _record(conn: object, s: staff_admin.Staff, action: str) -> None:
    # The CLI's operator is not a staff account: recorded as `cli:<OS user>` (source kind
    # cli), as every other CLI change, with the account acted on.
    who = actor()
    await record_staff_action(
        conn,
        staff_id=who,
        staff_email=who,
        action=action,
        tenant_id=None,
        notes=[f"staff {s.email} ({s.role})"],
    )


@app.command("add")
def staff_add(
    email: str = typer.Argument(..., help="The staff member's email (their login)"),
    role: str = typer.Option(
        ..., "--role", help="support (read the audit trail) or admin (also replay/drop dead letters)"
    ),
) -> None:
    """Create an account; print its one-time set-password link (last line)."""
    from provisio_lib.admin import staff as staff_admin  # argon2: loaded only by these commands

    link = _link("")  # settings first: a bad PROVISIO_CONSOLE_PUBLIC_URL fails before anything is written

    async def go() -> tuple[staff_admin.Staff, str]:
        async with database() as conn:
            s, token = await staff_admin.add(conn, email, role)
            await _record(conn, s, "staff.add")
            return s, token

    s, token = asyncio.run(go())
    typer.echo(
        f"added {s.email} ({s.role}); this link sets the password, works once and expires in "
        f"{int(staff_admin.LINK_TTL.total_seconds() // 3600)} hours:"
    )
    typer.echo(link + token)


@app.command("list")
def staff_list(as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """Every staff account with its role and whether its password is set."""
    from provisio_lib.admin import staff as staff_admin  # argon2: loaded only by these commands

    async def go() -> list[staff_admin.Staff]:
        async with database() as conn:
            return await staff_admin.list_staff(conn)

    rows = [
        {
            "email": s.email,
            "role": s.role,
            "password": "set" if s.has_password else "not set (link pending)",
            "created_at": s.created_at,
        }
        for s in asyncio.run(go())
    ]
    if not rows and not as_json:
        typer.echo("no staff accounts (add one: provisio staff add EMAIL --role admin)", err=True)
        return
    print_rows(rows, ["email", "role", "password", "created_at"], as_json=as_json, title=f"Staff ({len(rows)})")


@app.command("remove")
def staff_remove(email: str = typer.Argument(..., help="The staff member's email")) -> None:
    """Delete an account; its sessions end at once."""
    from provisio_lib.admin import staff as staff_admin  # argon2: loaded only by these commands

    async def go() -> staff_admin.Staff:
        async with database() as conn:
            s = await staff_admin.remove(conn, email)
            await _record(conn, s, "staff.remove")
            return s

    s = asyncio.run(go())
    typer.echo(f"removed {s.email}")


@app.command("reset")
def staff_reset(email: str = typer.Argument(..., help="The staff member's email")) -> None:
    """Clear the password, end the sessions, print a new one-time link (last line)."""
    from provisio_lib.admin import staff as staff_admin  # argon2: loaded only by these commands

    link = _link("")

    async def go() -> tuple[staff_admin.Staff, str]:
        async with database() as conn:
            s, token = await staff_admin.reset(conn, email)
            await _record(conn, s, "staff.reset")
            return s, token

    s, token = asyncio.run(go())
    typer.echo(
        f"reset {s.email}: password cleared, sessions ended; the new link works once and expires in "
        f"{int(staff_admin.LINK_TTL.total_seconds() // 3600)} hours:"
    )
    typer.echo(link + token)


@app.command("totp")
def staff_totp(
    email: str = typer.Argument(..., help="The staff member's email"),
    off: bool = typer.Option(False, "--off", help="Turn the second factor off"),
) -> None:
    """Turn on two-factor sign-in (TOTP, RFC 6238): prints the otpauth:// URI for an
    authenticator app as the last line. --off turns it off."""
    from provisio_lib.admin import staff as staff_admin

    async def go() -> tuple[staff_admin.Staff, str | None]:
        async with database() as conn:
            s, uri = await staff_admin.set_totp(conn, email, not off)
            await _record(conn, s, "staff.totp_off" if off else "staff.totp_on")
            return s, uri

    s, uri = asyncio.run(go())
    if uri is None:
        typer.echo(f"two-factor sign-in is off for {s.email}")
        return
    typer.echo(f"two-factor sign-in is on for {s.email}; add this to an authenticator app (shown once):")
    typer.echo(uri)
