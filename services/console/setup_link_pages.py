"""Support staff's pages for a tenant's setup links (the staff console, not the
customer's ``/setup`` wizard): ``/tenants/<tenant>/setup-links``.

Everyone signed in sees the list — prefix (never the token), scopes, who made it, when,
its expiry, its state and what its setup session did (from the audit trail). Admins
create a link (the URL is in that one answer only, as `provisio setup-link create`
prints it once) and revoke one after a confirmation page. Both go through
provisio_lib.admin.setup_links, the code of the CLI, so the limits (scopes, 1 minute to
30 days) are the CLI's; each change is audited with the staff member (kind ``staff``,
her account id, her email as the label). Every link is looked up with the tenant of the
URL: another tenant's link id is not found.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote
from uuid import UUID

import aiohttp_jinja2
from aiohttp import web

from provisio_lib.admin import audit as audit_admin
from provisio_lib.admin import setup_links
from provisio_lib.admin.errors import AdminError

from .app import CID, NOTICES, POOL, SETTINGS, PageError, _admin_only, _base, _uuid, log

WHAT = "create or revoke setup links"
# The expiry choices of the form; any CLI duration (e.g. 45m) may be typed instead.
EXPIRY_CHOICES = ("1h", "1d", "7d", "14d", "30d")


def _list_url(tenant: str) -> str:
    return f"/tenants/{quote(tenant, safe='')}/setup-links"


def _link_id(request: web.Request) -> UUID:
    link_id = _uuid(request.match_info["link"])
    if link_id is None:
        raise PageError(404, f"No setup link {request.match_info['link']!r}: a link's id is a UUID.")
    return link_id


async def _tenant(request: web.Request, conn: Any) -> tuple[UUID, str]:
    """The URL's tenant (name or id) and its name; unknown: 404 (AdminError code 1)."""
    tid = await audit_admin.resolve_tenant(conn, request.match_info["tenant"])
    name = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", tid)
    return tid, str(name)


async def _list_context(request: web.Request, conn: Any, tid: UUID) -> dict[str, Any]:
    links = await setup_links.list_links(conn, tid)
    activity = await setup_links.session_activity(
        conn, tid, [link.prefix for link in links if link.redeemed_at is not None]
    )
    return {"links": links, "activity": activity}


async def list_page(request: web.Request) -> web.StreamResponse:
    async with request.app[POOL].acquire() as conn:
        tid, name = await _tenant(request, conn)
        context = await _list_context(request, conn, tid)
    return aiohttp_jinja2.render_template(
        "setup_links.html",
        request,
        {
            **context,
            "tenant": name,
            "notice": NOTICES.get(request.query.get("notice", "")),
            "form": {"scopes": list(setup_links.SCOPES), "expires": "7d"},
            "expiry_choices": EXPIRY_CHOICES,
            **_base(request),
        },
    )


async def create(request: web.Request) -> web.StreamResponse:
    """Create a link; the answer shows its URL, once (a 200, not a redirect: the URL must
    never sit in a Location header, the history or a log)."""
    session = _admin_only(request, WHAT)
    form = await request.post()
    scopes = [str(v) for v in form.getall("scope", [])]
    expires = str(form.get("expires") or "").strip()[:20]
    async with request.app[POOL].acquire() as conn:
        tid, name = await _tenant(request, conn)
        try:
            ttl = setup_links.parse_ttl(expires)
            parsed = setup_links.parse_scopes(",".join(scopes))
        except AdminError as err:
            # The form again, with the reason and what was entered.
            context = await _list_context(request, conn, tid)
            return aiohttp_jinja2.render_template(
                "setup_links.html",
                request,
                {
                    **context,
                    "tenant": name,
                    "error": str(err),
                    "form": {"scopes": scopes, "expires": expires},
                    "expiry_choices": EXPIRY_CHOICES,
                    **_base(request),
                },
                status=400,
            )
        link, token = await setup_links.create(
            conn,
            tid,
            scopes=parsed,
            ttl=ttl,
            actor=str(session.staff_id),
            actor_label=session.email,
            correlation_id=request[CID],
        )
    log.info("console_setup_link_created", tenant=name, link=link.prefix, staff=session.email)
    url = f"{request.app[SETTINGS].base_url()}/setup/open/{token}"
    return aiohttp_jinja2.render_template(
        "setup_link_created.html", request, {"tenant": name, "link": link, "url": url, **_base(request)}
    )


async def revoke_confirm(request: web.Request) -> web.StreamResponse:
    _admin_only(request, WHAT)
    link_id = _link_id(request)
    async with request.app[POOL].acquire() as conn:
        tid, name = await _tenant(request, conn)
        link = await setup_links.get(conn, tid, link_id)
    return aiohttp_jinja2.render_template(
        "setup_link_revoke.html", request, {"tenant": name, "link": link, **_base(request)}
    )


async def revoke(request: web.Request) -> web.StreamResponse:
    session = _admin_only(request, WHAT)
    link_id = _link_id(request)
    form = await request.post()
    if form.get("confirm") != "yes":
        raise PageError(400, "Tick the box to confirm revoking the setup link.")
    async with request.app[POOL].acquire() as conn:
        tid, name = await _tenant(request, conn)
        # By id within the URL's tenant: another tenant's link is not found, never revoked.
        link = await setup_links.revoke(
            conn,
            str(link_id),
            actor=str(session.staff_id),
            tid=tid,
            actor_label=session.email,
            correlation_id=request[CID],
        )
    already = link.revoked_at is not None  # the state before this request
    log.info("console_setup_link_revoked", tenant=name, link=link.prefix, staff=session.email, already=already)
    raise web.HTTPSeeOther(f"{_list_url(name)}?notice={'link-revoked-already' if already else 'link-revoked'}")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/tenants/{tenant}/setup-links", list_page)
    r.add_post("/tenants/{tenant}/setup-links", create)
    r.add_get("/tenants/{tenant}/setup-links/{link}/revoke", revoke_confirm)
    r.add_post("/tenants/{tenant}/setup-links/{link}/revoke", revoke)


__all__ = ["add_routes"]
