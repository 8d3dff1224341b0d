"""Self-serve setup for a customer's IT admin: the ``/setup/…`` pages.

A setup link (`provisio setup-link create`) is opened once at ``/setup/open/<token>``:
that redeems it (provisio_lib.admin.setup_links) into a setup session whose id travels in
a signed cookie of that browser only (HttpOnly; SameSite=Lax so that it comes back on
the redirect from the SAML gateway after a test login, which a cross-site IdP started;
every form carries the session's CSRF token). The session sees its one tenant and its
scopes: every query below is keyed by the session's tenant id, never by anything in the
URL, so a tampered URL finds nothing.

Pages: the overview, the SSO wizard (IdP → values to paste → metadata, mapping, JIT →
a disabled connection), the test sign-in and its result, enabling, and SCIM (token
create/rotate, the base URL, the steps, the tenant's provisioning log). Every change goes
through provisio_lib.admin, audited as ``setup:<link prefix>``.
"""

from __future__ import annotations

import hmac
import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import aiohttp_jinja2
from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from provisio_lib import sso
from provisio_lib.admin import audit as audit_admin
from provisio_lib.admin import connections, setup_links, sso_test
from provisio_lib.admin import tokens as tokens_admin
from provisio_lib.admin.advice import advice
from provisio_lib.admin.errors import AdminError
from provisio_lib.sso_presets import PRESETS, STANDARD_FIELDS

from . import setup_guides
from .app import POOL, SETTINGS, PageError, _check_form, _https, _render_form, _secure, log
from .security import FORM_COOKIE

SETUP_COOKIE = "provisio_setup"
_SALT = "provisio-console-setup"
SETUP_SESSION: web.RequestKey[setup_links.SetupSession] = web.RequestKey("setup_session")
SIGNER = web.AppKey("setup_signer", URLSafeTimedSerializer)
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Fields the mapping form offers (the preset's, minus the overage claim: not mapped by hand).
MAP_FIELDS = tuple(f for f in STANDARD_FIELDS if f not in ("user_name", "groups_overage"))
NOTICES = {
    "created": "The connection is saved. It is switched off until a test sign-in passes: test it now.",
    "enabled": "The connection is on: your users can sign in through it.",
    "disabled": "The connection is off: sign-ins through it are refused (test sign-ins still work).",
    "updated": "The connection is updated. Test it again before it can be switched on.",
}
ENDED = (
    "Your setup session has ended: the setup link expired or was revoked, or this browser did not open it. "
    "Ask your Provisio contact for a new link."
)


# --------------------------------------------------------------------------- session


def _signer(request: web.Request) -> URLSafeTimedSerializer:
    return request.app[SIGNER]


def is_setup_path(path: str) -> bool:
    return path == "/setup" or path.startswith("/setup/")


@web.middleware
async def setup_sessions(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every /setup page but /setup/open/… needs a live setup session, and every POST its
    CSRF token (synchroniser token, as the staff pages)."""
    path = request.path
    if not is_setup_path(path) or path.startswith("/setup/open/"):
        return await handler(request)
    raw = request.cookies.get(SETUP_COOKIE)
    session = None
    if raw and len(raw) < 512:
        try:
            # The link (checked below) bounds the session; the signature only needs to be fresh.
            session_id = _signer(request).loads(raw, max_age=int(setup_links.MAX_TTL.total_seconds()) + 86400)
        except BadSignature:
            session_id = None
        if isinstance(session_id, str):
            async with request.app[POOL].acquire() as conn:
                session = await setup_links.load_session(conn, session_id)
    if session is None:
        raise PageError(401, ENDED)
    request[SETUP_SESSION] = session
    if request.method == "POST":
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf_token") or "").encode(), session.csrf_token.encode()):
            raise PageError(
                403,
                "This form has expired or did not come from this setup page (CSRF check failed). "
                "Go back, reload the page and try again.",
            )
    return await handler(request)


def _need(request: web.Request, scope: str) -> setup_links.SetupSession:
    session = request[SETUP_SESSION]
    if not session.allows(scope):
        what = {"sso": "single sign-on (SSO)", "scim": "SCIM provisioning"}[scope]
        raise PageError(403, f"This setup link does not include {what}. Ask your Provisio contact for one that does.")
    return session


def _render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    session = request[SETUP_SESSION]
    resp = aiohttp_jinja2.render_template(
        template,
        request,
        {"setup": session, "csrf": session.csrf_token, "me": None, "path": request.path, **context},
        status=status,
    )
    return resp


def _saml_url(request: web.Request) -> str:
    return request.app[SETTINGS].saml_public_url.rstrip("/")


def _scim_url(request: web.Request) -> str:
    s = request.app[SETTINGS]
    return f"{s.scim_public_url.rstrip('/')}/scim/v2"


# --------------------------------------------------------------------------- open, overview


def _refuse(reason: str) -> PageError:
    return PageError(404 if reason == "unknown" else 410, setup_links.REFUSALS[reason])


async def open_page(request: web.Request) -> web.StreamResponse:
    """The link's landing page: says what it is for and asks to start. Opening changes
    nothing — mail and chat link scanners fetch URLs, and must not spend the link — the
    button (a POST) does."""
    token = request.match_info["token"]
    async with request.app[POOL].acquire() as conn:
        reason = await setup_links.refusal(conn, token)
        if reason is not None:
            log.info("setup_link_refused", reason=reason)
            raise _refuse(reason)
        tenant = await setup_links.tenant_of(conn, token)
    return _render_form(request, "setup/open.html", {"tenant": tenant})


async def open_link(request: web.Request) -> web.StreamResponse:
    """Redeem the link (first time only), set the setup cookie and leave the capability
    URL at once (it must not stay in the address bar or the history)."""
    token = request.match_info["token"]
    form = await request.post()
    _check_form(request, form)
    async with request.app[POOL].acquire() as conn:
        try:
            session, session_id = await setup_links.redeem(conn, token)
        except setup_links.LinkRefused as err:
            log.info("setup_link_refused", reason=err.reason)
            raise _refuse(err.reason) from None
    log.info("setup_link_redeemed", tenant=session.tenant_name, link=session.prefix)
    resp = web.HTTPSeeOther("/setup")
    max_age = max(60, int((session.expires_at - datetime.now(UTC)).total_seconds()))
    resp.set_cookie(
        SETUP_COOKIE,
        _signer(request).dumps(session_id),
        max_age=max_age,
        path="/setup",
        httponly=True,
        samesite="Lax",
        secure=_https(request),
    )
    resp.del_cookie(FORM_COOKIE, path="/")
    _secure(resp)
    return resp


async def overview(request: web.Request) -> web.StreamResponse:
    session = request[SETUP_SESSION]
    conns: list[dict[str, Any]] = []
    tokens: list[dict[str, Any]] = []
    async with request.app[POOL].acquire() as conn:
        if session.allows("sso"):
            conns = await connections.list_connections(conn, session.tenant_id)
        if session.allows("scim"):
            tokens = [t for t in await tokens_admin.list_tokens(conn, session.tenant_id) if t["status"] == "active"]
    return _render(request, "setup/overview.html", {"connections": conns, "tokens": tokens})


# --------------------------------------------------------------------------- SSO wizard


def _check_name(name: str) -> str:
    name = name.strip().lower()
    if not _NAME.match(name):
        raise PageError(400, "A connection name is 1-63 lowercase letters, digits and dashes (e.g. entra).")
    return name


def _idp(request: web.Request, value: str | None) -> str:
    idp = (value or "").strip()
    if idp not in setup_guides.IDPS:
        raise PageError(400, f"Choose one of: {', '.join(setup_guides.IDPS.values())}.")
    return idp


def _values(request: web.Request, tenant: str, name: str) -> dict[str, str]:
    urls = sso.sp_urls(_saml_url(request), tenant, name)
    return {
        "entity_id": urls.entity_id,
        "acs": urls.acs,
        "metadata": urls.metadata,
        "login": urls.login,
        "certificate": f"{_saml_url(request)}/saml/{tenant}/{name}/certificate",
        "scim": _scim_url(request),
    }


async def sso_choose(request: web.Request) -> web.StreamResponse:
    _need(request, "sso")
    return _render(request, "setup/sso_choose.html", {"idps": setup_guides.IDPS})


async def sso_new(request: web.Request, *, error: str | None = None, form: Any = None) -> web.StreamResponse:
    session = _need(request, "sso")
    src = form if form is not None else request.query
    idp = _idp(request, src.get("idp"))
    name = _check_name(str(src.get("name") or idp))
    values = _values(request, session.tenant_name, name)
    defaults = sso.attribute_map(idp)
    return _render(
        request,
        "setup/sso_new.html",
        {
            "idp": idp,
            "idp_label": setup_guides.IDPS[idp],
            "name": name,
            "values": values,
            "steps": setup_guides.fill(setup_guides.SSO_STEPS[idp], values),
            "fields": MAP_FIELDS,
            "defaults": {f: ", ".join(defaults.get(f, ())) for f in MAP_FIELDS},
            "jit_modes": sso.JIT_MODES,
            "error": error,
            "form": form or {},
        },
        status=400 if error else 200,
    )


async def _metadata_from_form(request: web.Request, form: Any) -> bytes:
    """The IdP metadata the admin gave: an uploaded file, a URL (fetched here, guarded
    against server-side request forgery), or the values typed by hand."""
    source = str(form.get("source") or "")
    if source == "file":
        upload = form.get("metadata_file")
        if not isinstance(upload, web.FileField):
            raise AdminError("choose the IdP's metadata file to upload")
        data = upload.file.read(sso.MAX_METADATA_BYTES + 1)
        if not data:
            raise AdminError("the uploaded metadata file is empty")
        return data
    if source == "url":
        url = str(form.get("metadata_url") or "").strip()
        if not url:
            raise AdminError("enter the URL of the IdP's metadata")
        return await connections.fetch_metadata(url, allow_private=request.app[SETTINGS].console_metadata_allow_private)
    if source == "manual":
        return connections.manual_metadata(
            str(form.get("idp_entity_id") or ""), str(form.get("idp_sso_url") or ""), str(form.get("idp_cert") or "")
        )
    raise AdminError("choose how to give the IdP's metadata: a file, a URL, or by hand")


def _mapping(form: Any, preset: str) -> tuple[dict[str, str], list[str]]:
    """Overrides of the preset's map (a field left as the preset shows it keeps the
    preset's list of names) and the required fields."""
    defaults = sso.attribute_map(preset if preset in PRESETS else "generic")
    overrides: dict[str, str] = {}
    for f in MAP_FIELDS:
        claim = str(form.get(f"map_{f}") or "").strip()[:512]
        # One claim per field by hand; left as the preset shows it, the preset's list stays.
        if claim and claim != ", ".join(defaults.get(f, ())):
            overrides[f] = claim
    required = [f for f in ("email", "given_name", "family_name", "display_name", "groups") if form.get(f"req_{f}")]
    return overrides, required


async def sso_create(request: web.Request) -> web.StreamResponse:
    session = _need(request, "sso")
    form = await request.post()
    idp = _idp(request, str(form.get("idp") or ""))
    name = _check_name(str(form.get("name") or ""))
    jit = str(form.get("jit") or "create")
    try:
        metadata = await _metadata_from_form(request, form)
        overrides, required = _mapping(form, idp)
        async with request.app[POOL].acquire() as conn:
            await connections.add(
                conn,
                session.tenant_id,
                name,
                metadata=metadata,
                preset=idp,
                actor=session.actor,
                jit=jit,
                overrides=overrides,
                required=required,
                enabled=False,  # switched on only after a passed test sign-in (sso_test.enable)
            )
    except AdminError as err:
        return await sso_new(request, error=str(err), form=form)
    log.info("setup_connection_created", tenant=session.tenant_name, connection=name, link=session.prefix)
    raise web.HTTPSeeOther(f"/setup/sso/{name}?notice=created")


async def _connection(request: web.Request) -> dict[str, Any]:
    session = _need(request, "sso")
    name = request.match_info["name"]
    if not _NAME.match(name):
        raise PageError(404, "There is no such connection.")
    async with request.app[POOL].acquire() as conn:
        try:
            return await connections.get(conn, session.tenant_id, name)
        except AdminError:
            raise PageError(404, f"Your organisation has no SSO connection named {name!r}.") from None


async def sso_show(request: web.Request) -> web.StreamResponse:
    session = request[SETUP_SESSION]
    row = await _connection(request)
    values = _values(request, session.tenant_name, row["name"])
    preset = row["preset"] if row["preset"] in setup_guides.SSO_STEPS else "generic"
    async with request.app[POOL].acquire() as conn:
        last = await conn.fetchrow(
            """SELECT id, status, completed_at FROM sso_test_logins WHERE tenant_id = $1 AND connection_id = $2
               ORDER BY created_at DESC LIMIT 1""",
            session.tenant_id,
            row["id"],
        )
    return _render(
        request,
        "setup/sso_show.html",
        {
            "c": row,
            "values": values,
            "idp_label": setup_guides.IDPS.get(row["preset"], row["preset"]),
            "steps": setup_guides.fill(setup_guides.SSO_STEPS[preset], values),
            "last": dict(last) if last else None,
            "notice": NOTICES.get(request.query.get("notice", "")),
            "error": None,
        },
    )


async def sso_edit(request: web.Request, *, error: str | None = None, form: Any = None) -> web.StreamResponse:
    row = await _connection(request)
    current = {f: ", ".join(row["attribute_map"].get(f, ())) for f in MAP_FIELDS}
    if form is None:
        form = {f"req_{f}": "1" for f in row["required_attributes"]}
    return _render(
        request,
        "setup/sso_edit.html",
        {
            "c": row,
            "editing": True,
            "idp_label": setup_guides.IDPS.get(row["preset"], row["preset"]),
            "fields": MAP_FIELDS,
            "defaults": current,
            "current_jit": row["jit_mode"],
            "error": error,
            "form": form,
        },
        status=400 if error else 200,
    )


async def sso_update(request: web.Request) -> web.StreamResponse:
    """Change the metadata (same IdP), mapping, required attributes or JIT mode through
    ``connections.update``: a passed test of the old settings no longer enables it."""
    session = request[SETUP_SESSION]
    row = await _connection(request)
    form = await request.post()
    try:
        metadata = None if str(form.get("source") or "keep") == "keep" else await _metadata_from_form(request, form)
        overrides, required = _mapping(form, row["preset"])
        # Custom fields (an operator's `--map department=…`) are not on this form: kept.
        for field, claims in row["attribute_map"].items():
            if field not in STANDARD_FIELDS and claims:
                overrides.setdefault(field, claims[0])
        async with request.app[POOL].acquire() as conn:
            await connections.update(
                conn,
                session.tenant_id,
                row["name"],
                actor=session.actor,
                metadata=metadata,
                jit=str(form.get("jit") or row["jit_mode"]),
                overrides=overrides,
                required=required,
                replace_map=True,
            )
    except AdminError as err:
        return await sso_edit(request, error=str(err), form=form)
    raise web.HTTPSeeOther(f"/setup/sso/{row['name']}?notice=updated")


async def sso_test_start(request: web.Request) -> web.StreamResponse:
    session = request[SETUP_SESSION]
    row = await _connection(request)
    s = request.app[SETTINGS]
    return_to = f"{s.base_url()}/setup/sso/{row['name']}/result"
    async with request.app[POOL].acquire() as conn:
        start = await sso_test.start_test(
            conn,
            session.tenant_id,
            row["name"],
            return_to=return_to,
            actor=session.actor,
            settings=sso_test.TestLoginSettings(saml_public_url=_saml_url(request), console_public_url=s.base_url()),
        )
    # A page with a link, not a redirect: the CSP's form-action 'self' would stop a form
    # submission redirected to the gateway and on to the IdP. console.js follows the
    # link at once; without JavaScript it is one click.
    return _render(request, "setup/sso_test_go.html", {"c": row, "login_url": start.login_url})


async def sso_result(request: web.Request) -> web.StreamResponse:
    session = request[SETUP_SESSION]
    row = await _connection(request)
    try:
        test_id = UUID(request.query.get("test", ""))
    except ValueError:
        raise PageError(404, "There is no such test sign-in.") from None
    async with request.app[POOL].acquire() as conn:
        result = await sso_test.get_result(conn, session.tenant_id, test_id)
    if result is None or result.connection_name != row["name"]:
        raise PageError(404, "There is no such test sign-in.")
    return _render(request, "setup/sso_result.html", {"c": row, "r": result})


async def sso_switch(request: web.Request) -> web.StreamResponse:
    session = request[SETUP_SESSION]
    row = await _connection(request)
    action = request.match_info["action"]
    async with request.app[POOL].acquire() as conn:
        try:
            if action == "enable":
                await sso_test.enable(conn, session.tenant_id, row["name"], actor=session.actor)
            else:
                await sso_test.disable(conn, session.tenant_id, row["name"], actor=session.actor)
        except AdminError as err:
            raise PageError(409, str(err)) from None
    raise web.HTTPSeeOther(f"/setup/sso/{row['name']}?notice={action}d")


# --------------------------------------------------------------------------- SCIM


async def _scim_context(request: web.Request) -> dict[str, Any]:
    session = _need(request, "scim")
    async with request.app[POOL].acquire() as conn:
        tokens = [t for t in await tokens_admin.list_tokens(conn, session.tenant_id) if t["status"] == "active"]
        rows = await audit_admin.search(conn, audit_admin.SearchFilters(tenant_id=session.tenant_id, limit=50))
    log_rows = [
        dict(r, advice=advice(r.get("error_code")) if r.get("result") == "failed" else None)
        for r in rows
        if r.get("source_kind") in ("scim", "saml")
    ]
    values = {"scim": _scim_url(request)}
    return {
        "tokens": tokens,
        "log": log_rows,
        "scim_url": values["scim"],
        "steps": {k: setup_guides.fill(v, values) for k, v in setup_guides.SCIM_STEPS.items()},
        "new_token": None,
        "new_label": None,
    }


async def scim_page(request: web.Request) -> web.StreamResponse:
    return _render(request, "setup/scim.html", await _scim_context(request))


async def scim_token(request: web.Request) -> web.StreamResponse:
    """Create a token, or rotate one (form field ``rotate``: its label). The token is in
    this answer only (not a redirect: it must never be in a URL)."""
    session = _need(request, "scim")
    form = await request.post()
    rotate = str(form.get("rotate") or "").strip()
    async with request.app[POOL].acquire() as conn:
        if rotate:
            label = rotate
            token = await tokens_admin.rotate(conn, session.tenant_id, rotate, actor=session.actor)
        else:
            label, token = await tokens_admin.create(
                conn, session.tenant_id, None, actor=session.actor, default_prefix="setup"
            )
    log.info("setup_scim_token", tenant=session.tenant_name, label=label, rotated=bool(rotate), link=session.prefix)
    ctx = await _scim_context(request)
    ctx.update(new_token=token, new_label=label, rotated=bool(rotate))
    return _render(request, "setup/scim.html", ctx)


def add_routes(app: web.Application, secret: str) -> None:
    app[SIGNER] = URLSafeTimedSerializer(secret, salt=_SALT)
    r = app.router
    r.add_get("/setup/open/{token}", open_page)
    r.add_post("/setup/open/{token}", open_link)
    r.add_get("/setup", overview)
    r.add_get("/setup/sso", sso_choose)
    r.add_get("/setup/sso/new", sso_new)
    r.add_post("/setup/sso/new", sso_create)
    r.add_get("/setup/sso/{name}", sso_show)
    r.add_get("/setup/sso/{name}/edit", sso_edit)
    r.add_post("/setup/sso/{name}/edit", sso_update)
    r.add_post("/setup/sso/{name}/test", sso_test_start)
    r.add_get("/setup/sso/{name}/result", sso_result)
    r.add_post("/setup/sso/{name}/{action:enable|disable}", sso_switch)
    r.add_get("/setup/scim", scim_page)
    r.add_post("/setup/scim/token", scim_token)


__all__ = ["add_routes", "is_setup_path", "setup_sessions"]
