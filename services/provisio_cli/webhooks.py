"""`provisio webhook …`: endpoints the webhook dispatcher delivers events to
(docs/app-integration.md, "Webhooks")."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import typer

from provisio_lib import events_feed, webhook_store, webhooks
from provisio_lib.webhook_http import WebhookClientSettings, check_url, make_session, post_event

from .context import CliError, database, load_cli_settings, print_rows, tenant_id

app = typer.Typer(
    help="Webhooks: endpoints that receive the identity events, their deliveries and replays.",
    no_args_is_help=True,
)


def _settings() -> WebhookClientSettings:
    return load_cli_settings(WebhookClientSettings)


def _default_name(tenant: str | None, url: str) -> str:
    host = urlsplit(url).hostname or "endpoint"
    base = f"{tenant or 'all'}-{host}"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "endpoint"
    return base[:54] + "-" + uuid.uuid4().hex[:6]


def _check_name(name: str) -> str:
    name = name.strip()
    if not webhooks.NAME_RE.match(name):
        raise CliError(f"invalid endpoint name {name!r}: 1-63 letters, digits, '.', '_' or '-'")
    return name


async def _endpoint(conn: Any, name: str) -> webhook_store.Endpoint:
    try:
        return await webhook_store.get_endpoint(conn, name.strip())
    except webhook_store.NoSuchEndpoint:
        raise CliError(f"no webhook endpoint named {name!r} (see `provisio webhook list`)") from None


@app.command("add")
def add(
    target: list[str] = typer.Argument(
        ..., metavar="[TENANT] URL", help="The tenant and the URL (only the URL with --all-tenants)"
    ),
    all_tenants: bool = typer.Option(False, "--all-tenants", help="Every tenant's events (no TENANT argument)"),
    events: str = typer.Option(None, "--events", help="Event types, e.g. user.*,group.* (default: every type)"),
    name: str = typer.Option(None, "--name", help="A name for the endpoint (default: derived from tenant and host)"),
) -> None:
    """Add an endpoint. Its signing secret is the last line of output and is shown only once."""
    if all_tenants:
        if len(target) != 1:
            raise CliError("with --all-tenants give only the URL: provisio webhook add --all-tenants URL")
        tenant, url = None, target[0]
    else:
        if len(target) != 2:
            raise CliError("give a tenant and a URL (provisio webhook add TENANT URL), or --all-tenants URL")
        tenant, url = target
    try:
        patterns = webhooks.event_patterns(events)
    except ValueError as err:
        raise CliError(f"--events: {err}") from None
    endpoint_name = _check_name(name) if name else _default_name(tenant, url)
    s = _settings()

    async def go() -> str:
        try:
            await check_url(url, s.webhook_allow_private)
        except webhooks.UrlRefused as err:
            raise CliError(f"refused URL: {err}") from None
        async with database() as conn:
            tid = await tenant_id(conn, tenant) if tenant else None
            try:
                return await webhook_store.add_endpoint(conn, endpoint_name, tid, url, patterns)
            except webhook_store.EndpointExists:
                raise CliError(f"a webhook endpoint is already named {endpoint_name!r}") from None

    secret = asyncio.run(go())
    scope = f"tenant {tenant}" if tenant else "every tenant"
    typer.echo(
        f"added webhook endpoint {endpoint_name!r} for {scope}: {url} (events: {webhooks.patterns_text(patterns)})"
    )
    typer.echo("its signing secret (Standard Webhooks); store it now, it is not shown again:")
    typer.echo(secret)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="JSON lines")) -> None:
    """List endpoints: scope, URL, status (disabled ones too), backlog and dead letters."""

    async def go() -> list[dict[str, Any]]:
        async with database() as conn:
            return await webhook_store.list_endpoints(conn)

    print_rows(
        asyncio.run(go()),
        [
            "name",
            "tenant",
            "url",
            "events",
            "status",
            "pending",
            "dead",
            "failing_since",
            "last_success_at",
            "disabled_reason",
            "rotation_overlap_until",
            "created_at",
        ],
        as_json=as_json,
        title="Webhook endpoints",
    )


@app.command("remove")
def remove(name: str) -> None:
    """Remove an endpoint, its pending deliveries and its history."""

    async def go() -> bool:
        async with database() as conn:
            return await webhook_store.remove_endpoint(conn, name.strip())

    if not asyncio.run(go()):
        raise CliError(f"no webhook endpoint named {name!r} (see `provisio webhook list`)")
    typer.echo(f"removed webhook endpoint {name!r}")


@app.command("enable")
def enable(name: str) -> None:
    """Enable a disabled endpoint: what waited is delivered, in order."""

    async def go() -> bool:
        async with database() as conn:
            return await webhook_store.set_enabled(conn, name.strip(), True)

    if not asyncio.run(go()):
        raise CliError(f"no webhook endpoint named {name!r} (see `provisio webhook list`)")
    typer.echo(f"enabled webhook endpoint {name!r}")


@app.command("disable")
def disable(name: str) -> None:
    """Stop delivering to an endpoint; events wait for `webhook enable`."""

    async def go() -> bool:
        async with database() as conn:
            return await webhook_store.set_enabled(conn, name.strip(), False)

    if not asyncio.run(go()):
        raise CliError(f"no webhook endpoint named {name!r} (see `provisio webhook list`)")
    typer.echo(f"disabled webhook endpoint {name!r}")


@app.command("test")
def test(name: str) -> None:
    """Send a signed `webhook.test` event now and print the receiver's answer."""
    s = _settings()

    async def go() -> Any:
        async with database() as conn:
            endpoint = await _endpoint(conn, name)
            now = datetime.now(UTC)
            event = webhooks.test_event(endpoint.name, endpoint.tenant_name, endpoint.tenant_id, now)
            session = make_session(s, per_host=1)
            try:
                answer = await post_event(session, endpoint.url, event, endpoint.secrets(now), s, now=now)
            finally:
                await session.close()
            await webhook_store.record_test_attempt(conn, endpoint, event, answer)
            return endpoint, answer

    endpoint, answer = asyncio.run(go())
    if answer.status is not None:
        typer.echo(f"{endpoint.url} answered HTTP {answer.status} in {answer.latency_ms:.0f} ms")
        typer.echo(answer.excerpt or "(empty answer)")
    else:
        typer.echo(f"{endpoint.url}: no answer after {answer.latency_ms:.0f} ms: {answer.error}")
    if not answer.ok:
        raise typer.Exit(1)


@app.command("rotate-secret")
def rotate_secret(
    name: str,
    overlap: str = typer.Option("24h", "--overlap", help="How long the old secret keeps signing too (e.g. 24h, 30m)"),
) -> None:
    """A new signing secret; both sign for the overlap. The new secret is the last line."""
    try:
        overlap_s = webhooks.parse_duration(overlap)
    except ValueError as err:
        raise CliError(f"--overlap: {err}") from None

    async def go() -> str:
        async with database() as conn:
            try:
                return await webhook_store.rotate_secret(conn, name.strip(), overlap_s)
            except webhook_store.NoSuchEndpoint:
                raise CliError(f"no webhook endpoint named {name!r} (see `provisio webhook list`)") from None

    secret = asyncio.run(go())
    typer.echo(
        f"new signing secret for {name!r}; the previous one also signs for {webhooks.duration_text(overlap_s)}. "
        "Store it now, it is not shown again:"
    )
    typer.echo(secret)


@app.command("deliveries")
def deliveries(
    tenant: str,
    failed: bool = typer.Option(False, "--failed", help="Only deliveries not delivered: dead letters and retries"),
    endpoint: str = typer.Option(None, "--endpoint", help="Only this endpoint"),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000),
    as_json: bool = typer.Option(False, "--json", help="JSON lines"),
) -> None:
    """A tenant's delivery attempts, newest first: status, latency, answer excerpt."""

    async def go() -> list[dict[str, Any]]:
        async with database() as conn:
            tid = await tenant_id(conn, tenant)
            return await webhook_store.list_attempts(conn, tid, failed=failed, endpoint=endpoint, limit=limit)

    print_rows(
        asyncio.run(go()),
        [
            "attempted_at",
            "endpoint",
            "event_type",
            "event_id",
            "delivery",
            "attempts",
            "status",
            "latency_ms",
            "excerpt",
            "error",
            "next_attempt_at",
        ],
        as_json=as_json,
        title=f"Webhook deliveries of {tenant}",
    )


@app.command("replay")
def replay(
    name: str,
    event: str = typer.Option(None, "--event", help="Resend this event (its id), e.g. a dead letter"),
    from_: str = typer.Option(
        None, "--from", help="Resend every event after this sequence (a feed cursor; '' or 0: the oldest retained)"
    ),
    dead: bool = typer.Option(False, "--dead", help="Resend every dead letter of the endpoint"),
) -> None:
    """Resend one event, every event after a cursor, or the dead letters."""
    if sum((event is not None, from_ is not None, dead)) != 1:
        raise CliError("give one of --event ID, --from SEQUENCE or --dead")
    event_id: uuid.UUID | None = None
    after: tuple[int, int] | None = None
    if event is not None:
        try:
            event_id = uuid.UUID(event.strip())
        except ValueError:
            raise CliError(f"--event: {event!r} is not an event id (a UUID)") from None
    if from_ is not None:
        raw = from_.strip()
        try:
            after = (0, 0) if raw in ("", "0") else events_feed.parse_sequence(raw)
        except events_feed.FeedCursorError as err:
            raise CliError(f"--from: {err}") from None

    async def go() -> int:
        async with database() as conn:
            endpoint = await _endpoint(conn, name)
            if event_id is not None:
                n = await webhook_store.replay_event(conn, endpoint, event_id)
                if n == 0:
                    raise CliError(f"no event {event_id} for this endpoint's tenant (pruned, or another tenant's)")
                return n
            if after is not None:
                return await webhook_store.replay_from(conn, endpoint, after)
            return await webhook_store.replay_dead(conn, endpoint)

    try:
        n = asyncio.run(go())
    except asyncpg.PostgresError as err:
        raise CliError(str(err)) from None
    typer.echo(f"queued {n} deliver{'y' if n == 1 else 'ies'} to {name!r}")
