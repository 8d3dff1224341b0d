"""The SAML gateway's composition root and its HTTP handlers.

Routes (``{tenant}`` is the tenant's name, ``{connection}`` the connection's):

- ``GET  /saml/{tenant}/{connection}/metadata`` — SP metadata for the IdP admin;
- ``GET  /saml/{tenant}/{connection}/certificate`` — the SP certificate (PEM), for
  IdPs that take the encryption certificate as a file;
- ``GET  /saml/{tenant}/{connection}/login`` — the JIT login URL: an SP-initiated
  AuthnRequest (HTTP-Redirect), ``RelayState`` kept; the request id waits in Redis;
  with ``?test=<id>`` a test login (issue 14, see ``_test_login``);
- ``POST /saml/{tenant}/{connection}/acs`` — the ACS (HTTP-POST binding);
- ``POST /saml/token`` — the app exchanges the one-time ``code`` for the profile,
  authenticated with the connection's app secret (``Authorization: Bearer …``).

A login that passes every check becomes a ``JitLogin`` command; the handler waits for
the provisioner's outcome and then sends the browser (303) to the connection's app URL
with a one-time code. A refused login gets an error page and a failed ``Outcome`` on
the tenant's audit stream.

A test login (started by ``provisio_lib.admin.sso_test.start_test``) is verified by the
same code, then the provisioner does a dry run of the JIT login; the result goes to
``sso_test_logins`` and the browser back to the console. It provisions nothing, issues
no code and writes nothing to the audit stream. A disabled connection refuses real
logins and still runs test logins.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import multiprocessing
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from aiohttp import web
from cachetools import LRUCache
from pydantic import ValidationError
from redis.exceptions import RedisError

from provisio_lib import db
from provisio_lib.admin.audit import record_staff_action
from provisio_lib.admin.sso_test import Check, preview_from_outcome
from provisio_lib.code_exchange import ExchangeError, code_key, exchange_code
from provisio_lib.contract import Command, ErrorInfo, JitLogin, Outcome, Source, encode
from provisio_lib.logging import get_logger
from provisio_lib.observability import (
    OUTCOME_WAIT,
    SAML_LOGINS_ACCEPTED,
    SAML_LOGINS_REFUSED,
    add_health_routes,
    metrics_listener,
    postgres_check,
    redis_check,
    set_service_info,
)
from provisio_lib.outcomes import BrokerUnavailable, OutcomeTimeout, OutcomeWaiter
from provisio_lib.redis_client import connect_redis
from provisio_lib.topology import DATA_FIELD, Topology

from .limits import rate_limits
from .mapping import ClaimTooLong, MissingClaim, check_claims, map_claims
from .pages import error_page, post_form
from .saml import Connection, Refused, SamlEngine, VerifiedLogin, init_worker, verify_in_worker
from .settings import SamlSettings
from .testmode import RELAY_PREFIX, as_json, bounded_attributes, checks, encryption_algorithms, inspect_unverified

log = get_logger(__name__)

SETTINGS = web.AppKey("settings", SamlSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS: web.AppKey[Any] = web.AppKey("redis")
TOPOLOGY = web.AppKey("topology", Topology)
WAITER = web.AppKey("waiter", OutcomeWaiter)
ENGINE = web.AppKey("engine", SamlEngine)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
VERIFIER: web.AppKey[Any] = web.AppKey("verifier")  # runs verify(conn, saml_response) off the loop

_NAME = r"[a-z0-9][a-z0-9-]{0,62}"
MAX_RELAY_STATE = 80  # saml-bindings §3.4.3 / §3.5.3: RelayState MUST NOT exceed 80 bytes


_MAX_CONNECTIONS = 10_000  # cached (tenant, connection) lookups per process

# A test login may be started this long after the console created it.
TEST_START_TTL_S = 3600
DISABLED_MESSAGE = (
    "This sign-in method is not enabled yet. Its administrator must finish the test login "
    "on the setup page and enable it."
)


class ConnectionRegistry:
    """Connections by (tenant name, connection name), re-read after a short TTL so a
    removed or changed connection takes effect within seconds on every replica."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        # Least recently used out when full: unknown names (a scan) must not evict the
        # connections in use.
        self._cache: LRUCache[tuple[str, str], tuple[float, Connection | None]] = LRUCache(_MAX_CONNECTIONS)

    async def get(self, tenant: str, name: str) -> Connection | None:
        key = (tenant, name)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and hit[0] > now:
            return hit[1]
        row = await self.pool.fetchrow(
            """SELECT c.*, t.name AS tenant_name FROM sso_connections c JOIN tenants t ON t.id = c.tenant_id
               WHERE t.name = $1 AND c.name = $2""",
            tenant,
            name,
        )
        conn = Connection.from_row(row) if row else None
        self._cache[key] = (now + self.ttl_s, conn)
        return conn

    async def by_id(self, conn_id: uuid.UUID) -> Connection | None:
        row = await self.pool.fetchrow(
            """SELECT c.*, t.name AS tenant_name FROM sso_connections c JOIN tenants t ON t.id = c.tenant_id
               WHERE c.id = $1""",
            conn_id,
        )
        return Connection.from_row(row) if row else None


REGISTRY = web.AppKey("registry", ConnectionRegistry)


# --------------------------------------------------------------------------- keys


def _request_key(topo: Topology, request_id: str) -> str:
    return topo.key("saml", "req", request_id)


def _test_key(topo: Topology, test_id: uuid.UUID) -> str:
    """The AuthnRequest id of a test login's round trip (one at a time per test)."""
    return topo.key("saml", "test", str(test_id))


def _seen_key(topo: Topology, conn_id: uuid.UUID, assertion_id: str) -> str:
    digest = hashlib.sha256(assertion_id.encode()).hexdigest()
    return topo.key("saml", "seen", str(conn_id), digest)


def _code_key(topo: Topology, code: str) -> str:
    return code_key(topo, code)


def _correlation(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given[:128] if given and given.isprintable() else uuid.uuid4().hex


async def _connection(request: web.Request) -> Connection:
    conn = await request.app[REGISTRY].get(request.match_info["tenant"], request.match_info["connection"])
    if conn is None:
        raise web.HTTPNotFound(
            text=error_page(
                404,
                "There is no such SSO connection. Check the sign-in link you were given.",
                title="Unknown SSO connection",
            ).text,
            content_type="text/html",
        )
    return conn


async def _run(request: web.Request, fn: Any, *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[EXECUTOR], partial(fn, *args))


# --------------------------------------------------------------------------- handlers


async def metadata(request: web.Request) -> web.Response:
    conn = await _connection(request)
    xml = await _run(request, request.app[ENGINE].sp_metadata, conn)
    return web.Response(text=xml, content_type="application/samlmetadata+xml")


async def certificate(request: web.Request) -> web.Response:
    """The connection's SP certificate (PEM; also in the metadata as use="encryption"):
    the file Entra ID's "Token encryption" and Okta's "Encryption Certificate" ask for."""
    conn = await _connection(request)
    return web.Response(
        text=conn.sp_cert_pem,
        content_type="application/x-pem-file",
        headers={"Content-Disposition": f'attachment; filename="{conn.tenant_name}-{conn.name}.pem"'},
    )


async def login(request: web.Request) -> web.StreamResponse:
    conn = await _connection(request)
    if "test" in request.query:
        return await _test_login(request, conn, request.query["test"])
    if not conn.enabled:
        return error_page(403, DISABLED_MESSAGE, title="Sign-in not enabled yet")
    relay_state = request.query.get("RelayState", "")
    if len(relay_state.encode()) > MAX_RELAY_STATE:
        return error_page(400, f"RelayState is longer than {MAX_RELAY_STATE} bytes (SAML bindings §3.4.3).")
    if relay_state.startswith(RELAY_PREFIX):
        return error_page(400, f"A RelayState may not start with {RELAY_PREFIX!r} (it marks test logins).")
    return await _authn_request(request, conn, relay_state, str(conn.id))


async def _authn_request(
    request: web.Request, conn: Connection, relay_state: str, owner: str, test_id: uuid.UUID | None = None
) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    req_id, binding, info = await _run(request, request.app[ENGINE].authn_request, conn, relay_state)
    # Kept in Redis (not in process memory) so any replica can take the response, and
    # deleted on first use: an InResponseTo is good for one response only. ``owner`` is
    # the connection's id, and for a test login also the test's: a test request can never
    # be answered as a real login, nor a real one as a test.
    topo = request.app[TOPOLOGY]
    async with request.app[REDIS].pipeline(transaction=False) as pipe:
        pipe.set(_request_key(topo, req_id), owner, ex=settings.saml_request_ttl_s)
        if test_id is not None:
            pipe.set(_test_key(topo, test_id), req_id, ex=settings.saml_request_ttl_s)
        await pipe.execute()
    if binding.endswith("HTTP-Redirect"):
        location = dict(info["headers"])["Location"]
        raise web.HTTPFound(location, headers={"Cache-Control": "no-store"})
    return post_form(info["data"])


async def acs(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    correlation = _correlation(request)
    started = datetime.now(UTC)
    conn = await _connection(request)
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return await _refuse(
            request,
            conn,
            Refused("too_large", "The SAML response is larger than this service accepts.", 413),
            correlation,
            started,
        )
    saml_response = form.get("SAMLResponse")
    relay_state = form.get("RelayState") or ""
    if not isinstance(saml_response, str) or not isinstance(relay_state, str):
        return await _refuse(
            request, conn, Refused("malformed", "The login request carried no SAMLResponse.", 400), correlation, started
        )
    if len(relay_state.encode()) > MAX_RELAY_STATE:
        relay_state = ""
    if relay_state.startswith(RELAY_PREFIX):
        return await _test_acs(request, conn, saml_response, relay_state, correlation, started)
    if not conn.enabled:
        refused = Refused("disabled", DISABLED_MESSAGE, 403)
        return await _refuse(request, conn, refused, correlation, started)
    try:
        verified: VerifiedLogin = await app[VERIFIER](conn, saml_response)
        try:
            await _check_state(app, conn, verified)
        except RedisError as err:
            log.warning("saml_redis_unavailable", error=str(err), correlation_id=correlation)
            return error_page(
                503,
                "The sign-in service is temporarily unavailable. Please try again shortly.",
                reference=correlation,
                title="Please try again",
            )
        mapped = map_claims(
            conn.attribute_map, conn.required_attributes, verified.name_id, verified.name_id_format, verified.attributes
        )
        check_claims(mapped, verified.name_id)
    except Refused as refusal:
        return await _refuse(request, conn, refusal, correlation, started)
    except MissingClaim as missing:
        refused = Refused("missing_claim", str(missing), 400, user_name=verified.name_id, field=missing.field)
        return await _refuse(request, conn, refused, correlation, started, code="invalid_value")
    except ClaimTooLong as too_long:
        refused = Refused("claim_too_long", str(too_long), 400, user_name=verified.name_id[:512], field=too_long.field)
        return await _refuse(request, conn, refused, correlation, started, code="invalid_value")

    try:
        command = _jit_command(conn, verified, mapped, correlation, started)
    except ValidationError as err:
        # e.g. a NameID longer than the contract allows: the IdP's data, not our bug.
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "payload"
        refused = Refused("invalid_value", _unusable(err), 400, user_name=verified.name_id[:512], field=field)
        return await _refuse(request, conn, refused, correlation, started, code="invalid_value")
    t0 = time.perf_counter()
    try:
        outcome = await app[WAITER].submit(command, settings.saml_outcome_timeout_s)
    except OutcomeTimeout:
        OUTCOME_WAIT.labels(type="jit.login", result="timeout").observe(time.perf_counter() - t0)
        log.warning(
            "saml_outcome_timeout", tenant=conn.tenant_name, connection=conn.name, event_id=str(command.event_id)
        )
        return error_page(
            503,
            "Your sign-in was accepted but your account is still being set up. Please sign in again in a minute.",
            reference=correlation,
            title="Please try again",
        )
    except BrokerUnavailable:
        OUTCOME_WAIT.labels(type="jit.login", result="unavailable").observe(time.perf_counter() - t0)
        return error_page(
            503,
            "The sign-in service is temporarily unavailable. Please try again shortly.",
            reference=correlation,
            title="Please try again",
        )
    OUTCOME_WAIT.labels(type="jit.login", result="outcome").observe(time.perf_counter() - t0)
    if not outcome.ok or outcome.resource is None:
        # The provisioner recorded this failure in the audit stream itself.
        failure = outcome.error
        SAML_LOGINS_REFUSED.labels(reason=failure.code if failure else "failed").inc()
        if failure and failure.code == "user_not_found":
            message = "You have no account here yet, and this sign-in does not create accounts. Ask your administrator."
        elif failure and failure.code == "not_linked":
            # Issue 13 §1: an existing account is never taken over on a claim alone.
            message = (
                "An account with your name or email already exists, but it is not linked to this sign-in "
                "method. An administrator must link the account before you can sign in this way."
            )
        elif failure and failure.code in ("invalid_value", "policy", "uniqueness", "mutability"):
            message = f"Your account could not be set up: {failure.message}."
        else:  # internal errors and dead letters: details are in the audit trail, not here
            message = "Your account could not be set up. Please try again later or contact support."
        return error_page(
            403 if failure and failure.code in ("user_not_found", "policy", "not_linked") else 422,
            message,
            reference=correlation,
        )
    SAML_LOGINS_ACCEPTED.labels(mode=conn.jit_mode).inc()

    if not conn.app_url:
        return error_page(
            200,
            "You are signed in, but this connection has no application URL to continue to. "
            "Ask your administrator to set one (provisio sso add … --app-url).",
            title="Signed in",
            reference=correlation,
        )
    code = secrets.token_urlsafe(32)
    profile = _profile(conn, outcome.resource, verified, mapped.groups_overage, outcome.notes)
    await app[REDIS].set(
        _code_key(app[TOPOLOGY], code),
        json.dumps({"connection_id": str(conn.id), "profile": profile}),
        ex=settings.saml_code_ttl_s,
    )
    params = {"code": code}
    if relay_state:
        params["RelayState"] = relay_state
    raise web.HTTPSeeOther(_with_query(conn.app_url, params), headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------------- test logins


def _test_owner(conn: Connection, test_id: uuid.UUID) -> str:
    return f"{conn.id}:test:{test_id}"


def _test_page(status: int, message: str) -> web.Response:
    return error_page(status, message, title="Test sign-in")


async def _test_login(request: web.Request, conn: Connection, raw_id: str) -> web.StreamResponse:
    """Start the IdP round trip of a test login the console created (``sso_test_logins``,
    pending, for this connection). Works for a disabled connection: that is its use."""
    try:
        test_id = uuid.UUID(raw_id)
    except ValueError:
        return _test_page(400, "This test sign-in link is malformed. Start a new test from the setup page.")
    row = await request.app[POOL].fetchrow(
        "SELECT connection_id, status, created_at FROM sso_test_logins WHERE id = $1", test_id
    )
    if row is None or row["connection_id"] != conn.id:
        return _test_page(404, "There is no such test sign-in. Start a new test from the setup page.")
    if row["status"] != "pending":
        return _test_page(409, "This test sign-in is finished. Start a new test from the setup page.")
    if (datetime.now(UTC) - row["created_at"]).total_seconds() > TEST_START_TTL_S:
        return _test_page(410, "This test sign-in has expired. Start a new test from the setup page.")
    return await _authn_request(request, conn, f"{RELAY_PREFIX}{test_id}", _test_owner(conn, test_id), test_id)


async def _test_acs(
    request: web.Request, conn: Connection, saml_response: str, relay_state: str, correlation: str, started: datetime
) -> web.StreamResponse:
    """The ACS of a test login: the same verification as a real login, then the
    provisioner's dry run; the result is stored and the browser goes back to the console.
    Nothing else is written: no user, link, code, event or audit-stream outcome."""
    app = request.app
    settings = app[SETTINGS]
    try:
        test_id = uuid.UUID(relay_state.removeprefix(RELAY_PREFIX))
    except ValueError:
        return _test_page(400, "This test sign-in carries a malformed test id. Start a new test from the setup page.")
    # One response per test round trip: the key is taken by the first that arrives.
    if await app[REDIS].getdel(_test_key(app[TOPOLOGY], test_id)) is None:
        return _test_page(
            410, "This test sign-in has expired or was already completed. Start a new test from the setup page."
        )
    row = await app[POOL].fetchrow(
        "SELECT connection_id, status, return_to, created_by FROM sso_test_logins WHERE id = $1", test_id
    )
    if row is None or row["connection_id"] != conn.id or row["status"] != "pending":
        return _test_page(409, "This test sign-in is finished. Start a new test from the setup page.")

    received = inspect_unverified(saml_response, settings.saml_max_response_bytes)
    failure: Refused | None = None
    preview = None
    error: str | None = None
    try:
        verified: VerifiedLogin = await app[VERIFIER](conn, saml_response)
        await _check_state(app, conn, verified, _test_owner(conn, test_id))
        # What was received, now verified (the assertion decrypted, if it was encrypted).
        received = replace(
            received,
            issuer=verified.issuer,
            name_id=verified.name_id,
            name_id_format=verified.name_id_format,
            attributes=bounded_attributes(verified.attributes),
            signature_algorithms=list(verified.signature_algorithms) or received.signature_algorithms,
            encryption_algorithms=encryption_algorithms(
                saml_response, settings.saml_max_response_bytes, verified.name_id_encryption
            ),
        )
        mapped = map_claims(
            conn.attribute_map, conn.required_attributes, verified.name_id, verified.name_id_format, verified.attributes
        )
        received = replace(received, groups=list(mapped.groups or ()))
        check_claims(mapped, verified.name_id)
        command = _jit_command(conn, verified, mapped, correlation, started, dry_run=True)
    except Refused as refusal:
        failure = refusal
    except (MissingClaim, ClaimTooLong) as bad:
        failure = Refused("missing_claim" if isinstance(bad, MissingClaim) else "claim_too_long", str(bad), 400)
    except ValidationError as err:
        failure = Refused("invalid_value", _unusable(err), 400)
    found = checks(failure.reason, failure.message) if failure else checks()
    if failure is None:
        try:
            outcome = await app[WAITER].submit(command, settings.saml_outcome_timeout_s)
        except (OutcomeTimeout, BrokerUnavailable):
            error = "The provisioner did not answer in time, so what a real sign-in would do is unknown; try again."
            found.append(Check("preview", False, error))
        else:
            preview = preview_from_outcome(outcome)
            found.append(Check("preview", True))
    else:
        error = failure.message
        if not received.groups and received.attributes:
            received = replace(received, groups=_groups_of(conn, received))
    status = "failed" if error else "passed"
    async with app[POOL].acquire() as db_conn, db_conn.transaction():
        done = await db_conn.execute(
            """UPDATE sso_test_logins SET status = $2, received = $3::jsonb, checks = $4::jsonb, preview = $5::jsonb,
                   error = $6, completed_at = clock_timestamp(), tested_changed_at = $7
               WHERE id = $1 AND status = 'pending'""",
            test_id,
            status,
            as_json(received),
            as_json(found),
            as_json(preview),
            error,
            conn.changed_at,
        )
        if done.endswith(" 1"):
            await record_staff_action(
                db_conn,
                staff_id=row["created_by"],
                staff_email=row["created_by"],
                action="sso.test_login",
                tenant_id=conn.tenant_id,
                result="noop",  # a test changes nothing, and a failed one is no provisioning failure
                resource_type="SsoConnection",
                notes=[f"connection {conn.name}", f"test {test_id}", f"test {status}"],
                correlation_id=correlation,
                error_message=error,
            )
    log.info(
        "saml_test_login", tenant=conn.tenant_name, connection=conn.name, status=status, correlation_id=correlation
    )
    raise web.HTTPSeeOther(_with_query(row["return_to"], {"test": str(test_id)}), headers={"Cache-Control": "no-store"})


def _jit_command(
    conn: Connection,
    verified: VerifiedLogin,
    mapped: Any,
    correlation: str,
    started: datetime,
    *,
    dry_run: bool = False,
) -> Command:
    """The ``jit.login`` command of a verified login (ValidationError: unusable values)."""
    return Command(
        type="jit.login",
        tenant_id=conn.tenant_id,
        source=Source(kind="saml", id=str(conn.id), label=conn.name),
        correlation_id=correlation,
        occurred_at=started,
        payload=JitLogin(
            connection_id=conn.id,
            connection_name=conn.name,
            mode=conn.jit_mode,  # type: ignore[arg-type]
            name_id=verified.name_id,
            user_name=mapped.user_name,
            email=mapped.email,
            given_name=mapped.given_name,
            family_name=mapped.family_name,
            display_name=mapped.display_name,
            custom=mapped.custom,
            groups=mapped.groups,
            groups_overage=mapped.groups_overage,
            session_index=verified.session_index,
            dry_run=dry_run,
        ),
    )


def _groups_of(conn: Connection, received: Any) -> list[str]:
    """The groups a refused test's (unverified) attributes name, read by the same mapping."""
    try:
        mapped = map_claims(
            conn.attribute_map, (), received.name_id or "-", received.name_id_format, received.attributes
        )
    except (MissingClaim, ClaimTooLong, ValueError):
        return []
    return list(mapped.groups or ())


def _unusable(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"The identity provider sent an unusable value for {field}: {first['msg']}."


async def _check_state(
    app: web.Application, conn: Connection, verified: VerifiedLogin, test_owner: str | None = None
) -> None:
    """The checks that need shared state: assertion replay and InResponseTo (Redis).
    ``test_owner``: what the request's key must hold for a test login (which must answer
    a request); a real login's holds the connection's id."""
    redis, topo = app[REDIS], app[TOPOLOGY]
    ttl = max(1, int((verified.expires_at - datetime.now(UTC)).total_seconds()) + 1)
    # SET NX: the first response with this assertion id wins, any later one (exact or
    # re-wrapped in a new response) is a replay, until the assertion expires anyway.
    fresh = await redis.set(_seen_key(topo, conn.id, verified.assertion_id), b"1", nx=True, ex=ttl)
    if not fresh:
        raise Refused(
            "replay", "This sign-in response was already used. Please sign in again.", user_name=verified.name_id
        )
    if verified.in_response_to:
        owner = await redis.getdel(_request_key(topo, verified.in_response_to))
        owner = owner.decode() if isinstance(owner, bytes) else owner
        if owner != (test_owner or str(conn.id)):
            raise Refused(
                "in_response_to",
                "This response answers a sign-in request this service did not make, "
                "made for another connection, or already answered.",
                user_name=verified.name_id,
            )
    elif test_owner is not None:
        raise Refused(
            "idp_initiated",
            "A test sign-in must start at the setup page: this response answers no request "
            "(it was started at the identity provider).",
            user_name=verified.name_id,
        )
    elif not conn.allow_idp_initiated:
        raise Refused(
            "idp_initiated",
            "Sign-ins started at the identity provider are not allowed for this "
            "connection; use the sign-in link of the application.",
            user_name=verified.name_id,
        )


def _profile(
    conn: Connection, resource: dict[str, Any], verified: VerifiedLogin, overage: bool, notes: tuple[str, ...]
) -> dict[str, Any]:
    """What the app gets for a code: the committed user (``UserState``) and its groups."""
    emails = resource.get("emails") or []
    email = next((e.get("value") for e in emails if e.get("primary")), emails[0].get("value") if emails else None)
    return {
        "tenant": conn.tenant_name,
        "tenant_id": str(conn.tenant_id),
        "connection": conn.name,
        "user_id": resource.get("id"),
        "user_name": resource.get("user_name"),
        "name_id": verified.name_id,
        "session_index": verified.session_index,
        "attributes": {
            "email": email,
            "given_name": resource.get("given_name"),
            "family_name": resource.get("family_name"),
            "display_name": resource.get("display_name"),
            "active": resource.get("active"),
            "custom": (resource.get("attributes") or {}).get("custom", {}),
        },
        "groups": [{"id": g.get("id"), "display_name": g.get("display_name")} for g in resource.get("groups") or []],
        "groups_overage": overage or "groups_overage" in notes,
    }


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


async def _refuse(
    request: web.Request, conn: Connection, refusal: Refused, correlation: str, started: datetime, code: str = "refused"
) -> web.Response:
    SAML_LOGINS_REFUSED.labels(reason=refusal.reason).inc()
    log.info(
        "saml_login_refused",
        tenant=conn.tenant_name,
        connection=conn.name,
        reason=refusal.reason,
        correlation_id=correlation,
    )
    outcome = Outcome(
        event_id=uuid.uuid4(),
        command_type="jit.login",
        tenant_id=conn.tenant_id,
        source=Source(kind="saml", id=str(conn.id), label=conn.name),
        correlation_id=correlation,
        occurred_at=started,
        result="failed",
        error=ErrorInfo(code=code, message=refusal.message, field=refusal.field),  # type: ignore[arg-type]
        resource_type="User",
        user_name=refusal.user_name[:512] if refusal.user_name else None,
        notes=(f"refused:{refusal.reason}",),
    )
    app = request.app
    try:
        await app[REDIS].xadd(
            app[TOPOLOGY].audit_stream_for(conn.tenant_id),
            {DATA_FIELD: encode(outcome)},
            maxlen=app[TOPOLOGY].maxlen,
            approximate=True,
        )
    except Exception as err:  # the page must still render; the log line keeps the record
        log.error("saml_audit_publish_failed", error=str(err), correlation_id=correlation)
    return error_page(refusal.status, refusal.message, reference=correlation)


async def token(request: web.Request) -> web.Response:
    """Code exchange (server to server). ``Authorization: Bearer <app secret>`` and a
    form or JSON body with ``code``. Errors follow RFC 6749 §5.2 (``invalid_grant``…)."""
    app = request.app
    auth = request.headers.get("Authorization", "")
    scheme, _, secret = auth.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return _token_error(401, "invalid_client", "Authorization: Bearer <app secret> is required")
    try:
        if request.content_type == "application/json":
            body = await request.json()
            code = body.get("code") if isinstance(body, dict) else None
        else:
            code = (await request.post()).get("code")
    except Exception:
        return _token_error(400, "invalid_request", "the body must be a form or JSON object with a code")

    async def secret_hash_of(connection_id: uuid.UUID) -> bytes | None:
        conn = await app[REGISTRY].by_id(connection_id)
        return bytes(conn.app_secret_hash) if conn is not None and conn.app_secret_hash is not None else None

    try:  # shared with the App API's POST /api/v1/saml/token (provisio_lib.code_exchange)
        profile = await exchange_code(app[REDIS], app[TOPOLOGY], code, secret.strip(), secret_hash_of)
    except ExchangeError as err:
        return _token_error(err.status, err.error, err.description)
    return web.json_response(profile, headers={"Cache-Control": "no-store"})


def _token_error(status: int, error: str, description: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="provisio-saml"'
    return web.json_response({"error": error, "error_description": description}, status=status, headers=headers)


# --------------------------------------------------------------------------- errors


# Worth a retry. asyncpg's QueryCanceledError (57014, a query past
# PROVISIO_SAML_STATEMENT_TIMEOUT_S) is an OperatorInterventionError, so it is one of these.
_UNAVAILABLE: tuple[type[BaseException], ...] = (*db.UNAVAILABLE_ERRORS, RedisError)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "text/html" and not request.path.startswith("/saml/token"):
            return error_page(exc.status, exc.reason or "Request refused.", title="Request refused")
        raise
    except asyncio.CancelledError:
        raise
    except _UNAVAILABLE as err:
        # Postgres or Redis down (connection registry, replay cache, one-time code), or a
        # query cancelled by PROVISIO_SAML_STATEMENT_TIMEOUT_S: the login can simply be
        # tried again once they are back.
        log.warning("saml_dependency_unavailable", error=str(err), path=request.path)
        if request.path.startswith("/saml/token"):
            return web.json_response(
                {"error": "temporarily_unavailable", "error_description": "try again shortly"},
                status=503,
                headers={"Retry-After": "5"},
            )
        return error_page(
            503, "The sign-in service is temporarily unavailable. Please try again shortly.", title="Try again shortly"
        )
    except Exception:
        # Never a stack trace to the browser; the log has it.
        ref = uuid.uuid4().hex
        log.exception("saml_unhandled_error", reference=ref, path=request.path)
        return error_page(500, "Something went wrong on our side.", reference=ref, title="Sign-in failed")


# --------------------------------------------------------------------------- app


def create_app(settings: SamlSettings) -> web.Application:
    # The ACS form is base64 (4/3 of the XML) plus RelayState; anything bigger is refused
    # by aiohttp before it is buffered.
    app = web.Application(
        client_max_size=settings.saml_max_response_bytes * 4 // 3 + 16 * 1024,
        middlewares=[error_middleware],
    )
    app[SETTINGS] = settings
    # pysaml2 logs whole SAML documents (names, emails, signatures) at ERROR level when
    # a check fails; our own refusal log line says what failed without the payload.
    logging.getLogger("saml2").setLevel(logging.CRITICAL)
    topology = Topology(prefix=settings.redis_prefix, partitions=settings.partitions, maxlen=settings.stream_maxlen)
    app[TOPOLOGY] = topology
    app.middlewares.append(rate_limits(settings, topology, lambda: app[REDIS]))  # per-address limits

    async def resources(app: web.Application) -> AsyncIterator[None]:
        set_service_info("saml_gateway")
        # statement_timeout on every connection of the pool, as the SCIM gateway does (a
        # startup parameter, no round trip): a stuck query never holds a login's connection
        # longer than this, so a slow database cannot take the whole pool.
        timeout_ms = int(settings.saml_statement_timeout_s * 1000)
        app[POOL] = await db.create_pool(
            settings.database_url.get_secret_value(),
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            server_settings={"statement_timeout": str(timeout_ms)} if timeout_ms else {},
        )
        async with app[POOL].acquire() as c:
            await db.check_schema(c)
        app[REDIS] = connect_redis(settings.redis_url.get_secret_value())
        app[WAITER] = OutcomeWaiter(app[REDIS], topology)
        await app[WAITER].start()
        app[EXECUTOR] = ThreadPoolExecutor(settings.saml_verify_threads, thread_name_prefix="saml-verify")
        engine_kwargs = dict(
            public_url=settings.saml_public_url,
            skew_s=settings.saml_clock_skew_s,
            max_bytes=settings.saml_max_response_bytes,
            backend=settings.saml_crypto_backend,
            xmlsec1_path=settings.saml_xmlsec1_path,
            schema_validator=settings.saml_schema_validator,
        )
        app[ENGINE] = SamlEngine(**engine_kwargs)  # type: ignore[arg-type]
        processes: ProcessPoolExecutor | None = None
        loop = asyncio.get_running_loop()
        if settings.saml_verify_processes:
            # spawn, not fork: this process already runs threads and open sockets.
            processes = ProcessPoolExecutor(
                settings.saml_verify_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(engine_kwargs,),
            )
            pool_ = processes

            async def verify(conn: Connection, saml_response: str) -> VerifiedLogin:
                return await loop.run_in_executor(pool_, verify_in_worker, conn, saml_response)
        else:
            engine = app[ENGINE]

            async def verify(conn: Connection, saml_response: str) -> VerifiedLogin:
                return await loop.run_in_executor(app[EXECUTOR], engine.verify_response, conn, saml_response)

        app[VERIFIER] = verify
        app[REGISTRY] = ConnectionRegistry(app[POOL], settings.saml_connection_cache_s)
        log.info("saml_gateway_ready", public_url=settings.saml_public_url, backend=settings.saml_crypto_backend)
        try:
            yield
        finally:
            await app[WAITER].stop()
            app[EXECUTOR].shutdown(wait=True, cancel_futures=True)
            if processes is not None:
                processes.shutdown(wait=True, cancel_futures=True)
            app[ENGINE].close()
            await app[REDIS].aclose()
            await app[POOL].close()

    app.cleanup_ctx.append(resources)
    checks = {"postgres": postgres_check(lambda: app[POOL]), "redis": redis_check(lambda: app[REDIS])}
    # /metrics only on the operator listener, never on the public port (issue 13 §5)
    add_health_routes(app, checks, metrics_route=False)
    app.cleanup_ctx.append(metrics_listener(settings.saml_host, settings.saml_metrics_port, checks))
    app.router.add_get(f"/saml/{{tenant:{_NAME}}}/{{connection:{_NAME}}}/metadata", metadata)
    app.router.add_get(f"/saml/{{tenant:{_NAME}}}/{{connection:{_NAME}}}/login", login)
    app.router.add_get(f"/saml/{{tenant:{_NAME}}}/{{connection:{_NAME}}}/certificate", certificate)
    app.router.add_post(f"/saml/{{tenant:{_NAME}}}/{{connection:{_NAME}}}/acs", acs)
    app.router.add_post("/saml/token", token)
    return app
