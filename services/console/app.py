"""Composition root of the web console: ``create_app(settings)``.

Pages are rendered on the server (aiohttp-jinja2, autoescape on for every template);
JavaScript only adds the live tail's streaming and copy buttons (static/console.js).
Every change a page makes goes through provisio_lib.admin, the layer the CLI calls,
and is recorded in the audit trail with the staff member who made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

from provisio_lib import db
from provisio_lib.admin import audit as audit_admin
from provisio_lib.admin import dlq as dlq_admin
from provisio_lib.admin import staff as staff_admin
from provisio_lib.admin.advice import advice
from provisio_lib.admin.errors import AdminError
from provisio_lib.logging import get_logger
from provisio_lib.observability import add_health_routes, postgres_check, redis_check, set_service_info
from provisio_lib.redis_client import connect_redis
from provisio_lib.sso import MAX_METADATA_BYTES, parse_idp_metadata
from provisio_lib.topology import Topology

from . import security
from .settings import ConsoleSettings

log = get_logger(__name__)

HERE = Path(__file__).parent
SETTINGS = web.AppKey("settings", ConsoleSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", object)
TOPOLOGY = web.AppKey("topology", Topology)
SIGNER = web.AppKey("signer", security.Signer)
LIMITER = web.AppKey("limiter", security.LoginLimiter)
CLOSING = web.AppKey("closing", asyncio.Event)  # set at shutdown: live tails end at once
SESSION: web.RequestKey[security.Session | None] = web.RequestKey("console_session")
CID = web.RequestKey("console_cid", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No inline script or style anywhere: the pages load /static/console.{js,css} only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The set-password URL is a capability: never send it to another site.
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Fixed messages a redirect may ask a page to show (never text from the URL).
NOTICES = {
    "password-set": "Your password is set. Sign in with it.",
    "logged-out": "You are signed out.",
    "replayed": "The dead letter was replayed: it is back on its stream and will be applied once.",
    "dropped": "The dead letter was dropped for good.",
    "expired": "Your session ended. Sign in again.",
    "link-revoked": "The setup link is revoked: it cannot be opened any more, and a setup session opened with it "
    "has ended.",
    "link-revoked-already": "That setup link was revoked already.",
}


class PageError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- middlewares


@web.middleware
async def errors_and_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; every error a readable page, never a traceback."""
    request[CID] = uuid.uuid4().hex
    try:
        response = await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            _secure(err)
            raise
        response = _error_page(
            request,
            err.status,
            {404: "There is no such page.", 405: "That method is not allowed here."}.get(err.status, err.reason),
        )
    except PageError as err:
        response = _error_page(request, err.status, err.message)
    except AdminError as err:
        response = _error_page(request, 404 if err.code == 1 else 400, str(err))
    except db.UNAVAILABLE_ERRORS as err:
        log.warning("database_unavailable", error=str(err), path=request.path)
        response = _error_page(request, 503, "The database is unavailable; try again in a moment.")
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path, correlation_id=request[CID])
        response = _error_page(request, 500, f"Something went wrong on our side; it was logged as {request[CID]}.")
    _secure(response)
    return response


def _secure(response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type in ("text/html", "text/event-stream"):
        response.headers.setdefault("Cache-Control", "no-store")


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    resp = aiohttp_jinja2.render_template(
        "error.html", request, {"status": status, "message": message, **_base(request)}, status=status
    )
    return resp


def _base(request: web.Request) -> dict[str, Any]:
    session = request.get(SESSION)
    return {"me": session, "csrf": session.csrf_token if session else "", "path": request.path}


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loads the staff session; pages other than login/set-password/health need one, and
    every POST needs the session's CSRF token (a pre-login form: its signed token)."""
    path = request.path
    # /setup pages have their own session (a setup link's), checked by setup.setup_sessions.
    public = path in ("/login", "/healthz", "/readyz", "/metrics", "/setup") or path.startswith(
        ("/static/", "/set-password/", "/setup/")
    )
    settings = request.app[SETTINGS]
    raw = request.cookies.get(security.SESSION_COOKIE)
    session_id = request.app[SIGNER].session_id(raw, settings.console_session_max_s)
    if session_id:
        async with request.app[POOL].acquire() as conn:
            request[SESSION] = await security.load_session(
                conn, session_id, idle_s=settings.console_session_idle_s, max_s=settings.console_session_max_s
            )
    if public:
        return await handler(request)
    session = request.get(SESSION)
    if session is None:
        notice = "?notice=expired" if raw else ""
        if request.method == "POST" or path.endswith("/events"):
            raise PageError(401, "Your session ended. Sign in again.")
        raise web.HTTPSeeOther("/login" + notice)
    if request.method == "POST":
        form = await request.post()
        if not security.csrf_ok(session, str(form.get("csrf_token") or "")):
            raise PageError(
                403,
                "This form has expired or did not come from the console (CSRF check failed). "
                "Go back, reload the page and try again.",
            )
    return await handler(request)


# --------------------------------------------------------------------------- login, set password, logout


def _form_guard(request: web.Request, response: web.StreamResponse | None = None) -> tuple[str, str]:
    """(nonce, token) for a pre-login form: the nonce in a cookie, the token in the form."""
    nonce = request.cookies.get(security.FORM_COOKIE) or security.new_nonce()
    return nonce, request.app[SIGNER].form_token(nonce)


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="Strict", secure=_https(request)
    )


def _https(request: web.Request) -> bool:
    public = request.app[SETTINGS].console_public_url
    return (public is not None and public.scheme == "https") or request.secure


def _render_form(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    nonce, token = _form_guard(request)
    resp = aiohttp_jinja2.render_template(
        template, request, {**context, "form_token": token, **_base(request)}, status=status
    )
    _set_cookie(request, resp, security.FORM_COOKIE, nonce, 3600)
    return resp


def _check_form(request: web.Request, form: Any) -> None:
    if not request.app[SIGNER].form_token_ok(
        str(form.get("form_token") or ""), request.cookies.get(security.FORM_COOKIE)
    ):
        raise PageError(
            403,
            "This form has expired or did not come from the console (CSRF check failed). "
            "Reload the page and try again.",
        )


async def login_page(request: web.Request) -> web.StreamResponse:
    if request.get(SESSION) is not None:
        raise web.HTTPSeeOther("/tenants")
    return _render_form(request, "login.html", {"notice": NOTICES.get(request.query.get("notice", "")), "email": ""})


async def login_post(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    _check_form(request, form)
    email = str(form.get("email") or "").strip()[:400]
    password = str(form.get("password") or "")
    address = request.remote or "unknown"
    limiter = request.app[LIMITER]
    if await limiter.is_locked(email, address):
        log.warning("console_login_locked", address=address)
        return _render_form(
            request,
            "login.html",
            {
                "error": "Too many failed sign-ins. Wait a few minutes, then try again (or ask an admin to reset "
                "your password).",
                "email": email,
            },
            status=429,
        )
    async with request.app[POOL].acquire() as conn:
        code = str(form.get("code") or "")[:20]
        staff = await staff_admin.verify_login(conn, email, password, code) if email and password else None
        if staff is None:
            await limiter.failed(email, address)
            log.info("console_login_failed", address=address)
            return _render_form(
                request, "login.html", {"error": "Wrong email, password or one-time code.", "email": email}, status=401
            )
        await limiter.succeeded(email, address)
        session_id = await security.create_session(conn, staff.id, address)
    log.info("console_login", staff=staff.email, role=staff.role)
    resp = web.HTTPSeeOther("/tenants")
    settings = request.app[SETTINGS]
    _set_cookie(
        request,
        resp,
        security.SESSION_COOKIE,
        request.app[SIGNER].session_cookie(session_id),
        settings.console_session_max_s,
    )
    resp.del_cookie(security.FORM_COOKIE, path="/")
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    session_id = request.app[SIGNER].session_id(
        request.cookies.get(security.SESSION_COOKIE), request.app[SETTINGS].console_session_max_s
    )
    if session_id:
        async with request.app[POOL].acquire() as conn:
            await security.end_session(conn, session_id)
    resp = web.HTTPSeeOther("/login?notice=logged-out")
    resp.del_cookie(security.SESSION_COOKIE, path="/")
    return resp


async def set_password_page(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    async with request.app[POOL].acquire() as conn:
        staff = await staff_admin.link_staff(conn, token)
    if staff is None:
        raise PageError(
            404, "This link has expired or was used already. Ask an admin for a new one (provisio staff reset EMAIL)."
        )
    return _render_form(request, "set_password.html", {"staff": staff, "min_length": staff_admin.MIN_PASSWORD})


async def set_password_post(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    form = await request.post()
    _check_form(request, form)
    password = str(form.get("password") or "")
    if password != str(form.get("password2") or ""):
        async with request.app[POOL].acquire() as conn:
            staff = await staff_admin.link_staff(conn, token)
        if staff is None:
            raise PageError(404, "This link has expired or was used already.")
        return _render_form(
            request,
            "set_password.html",
            {"staff": staff, "min_length": staff_admin.MIN_PASSWORD, "error": "The two passwords differ."},
            status=400,
        )
    async with request.app[POOL].acquire() as conn:
        try:
            staff = await staff_admin.set_password(conn, token, password)
        except AdminError as err:
            staff = await staff_admin.link_staff(conn, token)
            if staff is None:
                raise
            return _render_form(
                request,
                "set_password.html",
                {"staff": staff, "min_length": staff_admin.MIN_PASSWORD, "error": str(err)},
                status=400,
            )
        await audit_admin.record_staff_action(
            conn,
            staff_id=str(staff.id),
            staff_email=staff.email,
            action="staff.set_password",
            tenant_id=None,
            correlation_id=request[CID],
        )
    raise web.HTTPSeeOther("/login?notice=password-set")


# --------------------------------------------------------------------------- tenants


def _cert_expiry(metadata: str) -> tuple[datetime | None, str | None]:
    try:
        info = parse_idp_metadata(metadata)
    except Exception as err:  # shown, not fatal: the page is about finding such problems
        return None, str(err)[:200]
    return (min(info.cert_not_after) if info.cert_not_after else None), None


async def tenants_page(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        tenants = [
            dict(r)
            for r in await conn.fetch(
                """SELECT t.id, t.name,
                      (SELECT count(*) FROM audit_log a WHERE a.tenant_id = t.id AND a.result = 'failed'
                         AND a.completed_at > now() - interval '24 hours') AS failures_24h,
                      (SELECT count(*) FROM setup_links l WHERE l.tenant_id = t.id AND l.revoked_at IS NULL
                         AND l.expires_at > now()) AS setup_links_live,
                      last.completed_at AS last_scim_at, last.source_label AS last_scim_token
               FROM tenants t
               LEFT JOIN LATERAL (
                   SELECT a.completed_at, a.source_label FROM audit_log a
                   WHERE a.tenant_id = t.id AND a.source_kind = 'scim'
                   ORDER BY a.completed_at DESC LIMIT 1) last ON true
               ORDER BY t.name"""
            )
        ]
        conns = await conn.fetch(
            "SELECT tenant_id, name, preset, jit_mode, idp_metadata FROM sso_connections ORDER BY name"
        )
    by_tenant: dict[UUID, list[dict[str, Any]]] = {}
    now = datetime.now(UTC)
    for c in conns:
        expires, problem = _cert_expiry(c["idp_metadata"])
        by_tenant.setdefault(c["tenant_id"], []).append(
            {
                "name": c["name"],
                "preset": c["preset"],
                "jit_mode": c["jit_mode"],
                "cert_expires": expires,
                "cert_problem": problem,
                "cert_soon": expires is not None and expires - now < timedelta(days=30),
            }
        )
    dead = await _dead_letter_counts(request)
    for t in tenants:
        t["connections"] = by_tenant.get(t["id"], [])
        t["dead_letters"] = dead.get(str(t["id"]), 0)
    return aiohttp_jinja2.render_template("tenants.html", request, {"tenants": tenants, "now": now, **_base(request)})


async def _dead_letter_counts(request: web.Request) -> dict[str, int]:
    counts: dict[str, int] = {}
    topo = request.app[TOPOLOGY]
    r = request.app[REDIS]
    for kind in (dlq_admin.COMMANDS, dlq_admin.AUDIT):
        for d in await dlq_admin.read_all(r, topo, list(range(topo.partitions)), kind):
            for t in d.tenants():
                counts[t] = counts.get(t, 0) + 1
    return counts


# --------------------------------------------------------------------------- audit search and tail


def _filters_from_query(q: Any, tid: UUID | None, page_size: int) -> tuple[audit_admin.SearchFilters, int]:
    now = datetime.now(UTC)
    since = audit_admin.parse_since(q["since"], now) if q.get("since") else None
    until = audit_admin.parse_since(q["until"], now) if q.get("until") else None
    result = q.get("result") or None
    if result is not None and result not in audit_admin.RESULTS:
        raise PageError(400, f"unknown result {result!r}; choose one of: {', '.join(audit_admin.RESULTS)}")
    try:
        page = max(1, min(10_000, int(q.get("page") or 1)))
    except ValueError:
        raise PageError(400, "the page number must be a whole number") from None
    f = audit_admin.SearchFilters(
        tenant_id=tid,
        user=(q.get("user") or "").strip()[:512] or None,
        connection=(q.get("connection") or "").strip()[:200] or None,
        correlation_id=(q.get("correlation_id") or "").strip()[:128] or None,
        since=since,
        until=until,
        result=result,
        limit=page_size + 1,
        offset=(page - 1) * page_size,
    )
    return f, page


async def audit_page(request: web.Request) -> web.StreamResponse:
    q = request.query
    size = request.app[SETTINGS].console_page_size
    rows: list[dict[str, Any]] = []
    error = None
    page = 1
    async with request.app[POOL].acquire() as conn:
        tenants = [r["name"] for r in await conn.fetch("SELECT name FROM tenants ORDER BY name")]
        try:
            tid = await audit_admin.resolve_tenant(conn, q["tenant"]) if q.get("tenant") else None
            f, page = _filters_from_query(q, tid, size)
            rows = await audit_admin.search(conn, f)
        except AdminError as err:
            error = str(err)
    more = len(rows) > size
    rows = rows[:size]
    keep = {k: v for k, v in q.items() if k != "page" and v}
    return aiohttp_jinja2.render_template(
        "audit.html",
        request,
        {
            "rows": rows,
            "q": q,
            "tenants": tenants,
            "results": audit_admin.RESULTS,
            "error": error,
            "page": page,
            "prev_url": f"/audit?{urlencode({**keep, 'page': page - 1})}" if page > 1 else None,
            "next_url": f"/audit?{urlencode({**keep, 'page': page + 1})}" if more else None,
            **_base(request),
        },
    )


async def tail_page(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        tenants = [r["name"] for r in await conn.fetch("SELECT name FROM tenants ORDER BY name")]
    qs = urlencode({k: request.query[k] for k in ("tenant", "user", "result") if request.query.get(k)})
    return aiohttp_jinja2.render_template(
        "tail.html", request, {"tenants": tenants, "q": request.query, "qs": qs, **_base(request)}
    )


async def tail_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``outcome`` event (JSON) per new audit outcome."""
    q = request.query
    async with request.app[POOL].acquire() as conn:
        tid = await audit_admin.resolve_tenant(conn, q["tenant"]) if q.get("tenant") else None
        names = {r["id"]: r["name"] for r in await conn.fetch("SELECT id, name FROM tenants")}
    topo = request.app[TOPOLOGY]
    streams = [topo.audit_stream_for(tid)] if tid else topo.audit_streams()
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    _secure(resp)
    await resp.prepare(request)
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
    stop = asyncio.Event()
    r = request.app[REDIS]
    readers = [asyncio.create_task(audit_admin.read_stream(r, s, queue, stop)) for s in streams]
    failed = q.get("result") == "failed"
    user = (q.get("user") or "").strip() or None
    closing = request.app[CLOSING]
    try:
        await resp.write(b": connected\n\n")
        while not closing.is_set():
            get = asyncio.ensure_future(queue.get())
            closed = asyncio.ensure_future(closing.wait())
            done, _ = await asyncio.wait([get, closed], timeout=15, return_when=asyncio.FIRST_COMPLETED)
            closed.cancel()
            if get not in done:
                get.cancel()
                if not closing.is_set():
                    await resp.write(b": keep-alive\n\n")  # also notices a closed connection
                continue
            o = get.result()
            if not audit_admin.matches(o, tenant=tid, failed=failed, user=user):
                continue
            row = audit_admin.outcome_row(o, names)
            await resp.write(b"event: outcome\ndata: " + json.dumps(row, default=str).encode() + b"\n\n")
    except ConnectionResetError:
        pass  # the browser went away
    finally:
        stop.set()
        await asyncio.gather(*readers, return_exceptions=True)
    return resp


# --------------------------------------------------------------------------- user page


async def user_lookup(request: web.Request) -> web.StreamResponse:
    tenant = (request.query.get("tenant") or "").strip()
    user = (request.query.get("user") or "").strip()
    if not tenant or not user:
        raise PageError(400, "Give a tenant and a userName.")
    raise web.HTTPSeeOther(str(request.app.router["user"].url_for(tenant=tenant, user=user)))


async def user_page(request: web.Request) -> web.StreamResponse:
    tenant, username = request.match_info["tenant"], request.match_info["user"]
    async with request.app[POOL].acquire() as conn:
        tid = await audit_admin.resolve_tenant(conn, tenant)
        h = await audit_admin.user_history(conn, tid, username)
    if not h.history and h.user is None:
        raise PageError(404, f"No user {username!r} in tenant {tenant!r}, and no audit records for that name.")
    failures = [dict(row, advice=advice(row.get("error_code"))) for row in h.history if row.get("result") == "failed"]
    return aiohttp_jinja2.render_template(
        "user.html",
        request,
        {
            "tenant": tenant,
            "username": username,
            "h": h,
            "failures": failures,
            "state": [(k, v) for k, v in (h.user or {}).items()],
            **_base(request),
        },
    )


# --------------------------------------------------------------------------- dead letters


async def dlq_page(request: web.Request) -> web.StreamResponse:
    topo = request.app[TOPOLOGY]
    r = request.app[REDIS]
    async with request.app[POOL].acquire() as conn:
        names = {str(x["id"]): x["name"] for x in await conn.fetch("SELECT id, name FROM tenants")}
    letters = []
    for kind in (dlq_admin.COMMANDS, dlq_admin.AUDIT):
        letters += [dlq_admin.row(d, names) for d in await dlq_admin.letters(r, topo, kind, None)]
    return aiohttp_jinja2.render_template(
        "dlq.html",
        request,
        {"letters": letters, "notice": NOTICES.get(request.query.get("notice", "")), **_base(request)},
    )


async def _letter(request: web.Request) -> dlq_admin.DeadLetter:
    topo = request.app[TOPOLOGY]
    kind, partition, entry_id = dlq_admin.parse_id(request.match_info["id"], topo)
    return await dlq_admin.read_one(request.app[REDIS], topo, kind, partition, entry_id)


async def dlq_show(request: web.Request) -> web.StreamResponse:
    d = await _letter(request)
    body = (d.raw() or d.data) if d.kind == dlq_admin.COMMANDS else (d.outcomes() or d.data)
    return aiohttp_jinja2.render_template(
        "dlq_show.html",
        request,
        {
            "d": d,
            "row": dlq_admin.row(d, {}),
            "body": json.dumps(body, indent=2, default=str) if isinstance(body, dict | list) else body,
            **_base(request),
        },
    )


def _admin_only(request: web.Request, what: str) -> security.Session:
    """The session of an admin; any other role is refused (403) before anything changes.
    Every changing action of the console checks this (``what``: "replay dead letters")."""
    session = request[SESSION]
    assert session is not None  # the sessions middleware admits no page without one
    if not session.is_admin:
        raise PageError(403, f"Only admins can {what}. Ask an admin (your role: {session.role}).")
    return session


async def dlq_confirm(request: web.Request) -> web.StreamResponse:
    action = request.match_info["action"]
    _admin_only(request, f"{action} dead letters")
    d = await _letter(request)
    return aiohttp_jinja2.render_template(
        "dlq_confirm.html", request, {"d": d, "row": dlq_admin.row(d, {}), "action": action, **_base(request)}
    )


async def dlq_act(request: web.Request) -> web.StreamResponse:
    action = request.match_info["action"]
    session = _admin_only(request, f"{action} dead letters")
    form = await request.post()
    if form.get("confirm") != "yes":
        raise PageError(400, f"Tick the box to confirm the {action}.")
    d = await _letter(request)
    topo = request.app[TOPOLOGY]
    notes = [f"dead letter {d.id}"]
    if action == "replay":
        new = await dlq_admin.replay(request.app[REDIS], topo, d)
        notes.append(dlq_admin.replayed(d, new))
    else:
        if not await dlq_admin.drop(request.app[REDIS], topo, d.kind, d.partition, d.entry_id):
            raise PageError(404, f"No dead letter {d.id} (someone may have handled it already).")
    async with request.app[POOL].acquire() as conn:
        await dlq_admin.record_action(
            conn,
            d,
            action,
            staff_id=str(session.staff_id),
            staff_email=session.email,
            notes=notes,
            correlation_id=request[CID],
        )
    log.info("console_dlq_action", action=action, dead_letter=d.id, staff=session.email)
    raise web.HTTPSeeOther(f"/dead-letters?notice={'replayed' if action == 'replay' else 'dropped'}")


def _uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


async def index(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/tenants")


# --------------------------------------------------------------------------- the app


def _fmt_time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def _fmt_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return _fmt_time(value) if isinstance(value, datetime) else str(value)


def create_app(settings: ConsoleSettings) -> web.Application:
    from . import setup, setup_link_pages

    # Room for an uploaded IdP metadata file (at most 1 MiB) in the setup wizard's form.
    app = web.Application(
        middlewares=[errors_and_headers, sessions, setup.setup_sessions],
        client_max_size=MAX_METADATA_BYTES + 64 * 1024,
    )
    app[SETTINGS] = settings
    secret = settings.console_secret_key.get_secret_value() if settings.console_secret_key else None
    if secret is None:
        log.warning("console_secret_key_unset", effect="a random key: sessions end when this process restarts")
    secret = secret or secrets.token_urlsafe(48)
    app[SIGNER] = security.Signer(secret)
    setup.add_routes(app, secret)
    app[TOPOLOGY] = Topology(
        prefix=settings.redis_prefix, partitions=settings.partitions, maxlen=settings.stream_maxlen
    )
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    )
    env.filters["time"] = _fmt_time
    env.filters["value"] = _fmt_value

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await db.create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=settings.db_pool_max)
        try:
            async with pool.acquire() as conn:
                await db.check_schema(conn)
            redis = connect_redis(settings.redis_url.get_secret_value())
            app[POOL] = pool
            app[REDIS] = redis
            app[CLOSING] = asyncio.Event()
            app[LIMITER] = security.LoginLimiter(
                redis,
                settings.redis_prefix,
                per_account=settings.console_login_attempts,
                per_address=settings.console_login_address_attempts,
                window_s=settings.console_login_window_s,
            )
            purger = asyncio.create_task(_purge_loop(pool, settings))
            log.info("console_ready", url=settings.base_url())
            yield
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
            await redis.aclose()
        finally:
            await pool.close()

    app.cleanup_ctx.append(resources)

    async def closing(app: web.Application) -> None:
        app[CLOSING].set()

    app.on_shutdown.append(closing)
    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login_post)
    r.add_post("/logout", logout)
    r.add_get("/set-password/{token}", set_password_page)
    r.add_post("/set-password/{token}", set_password_post)
    r.add_get("/tenants", tenants_page)
    r.add_get("/audit", audit_page)
    r.add_get("/audit/tail", tail_page)
    r.add_get("/audit/tail/events", tail_events)
    r.add_get("/users", user_lookup)
    r.add_get("/tenants/{tenant}/users/{user:.+}", user_page, name="user")
    setup_link_pages.add_routes(app)
    r.add_get("/dead-letters", dlq_page)
    r.add_get("/dead-letters/{id}", dlq_show)
    r.add_get("/dead-letters/{id}/{action:replay|drop}", dlq_confirm)
    r.add_post("/dead-letters/{id}/{action:replay|drop}", dlq_act)
    r.add_static("/static", HERE / "static", append_version=True)
    add_health_routes(app, {"postgres": postgres_check(lambda: app[POOL]), "redis": redis_check(lambda: app[REDIS])})
    set_service_info("console")
    return app


async def _purge_loop(pool: asyncpg.Pool, settings: ConsoleSettings) -> None:
    while True:
        try:
            async with pool.acquire() as conn:
                await security.purge_sessions(
                    conn, idle_s=settings.console_session_idle_s, max_s=settings.console_session_max_s
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("session_purge_failed", error=str(err))
        await asyncio.sleep(600)


__all__ = ["create_app"]
