"""The pages a browser sees: errors (readable, no secrets) and the POST-binding form."""

from __future__ import annotations

from html import escape

from aiohttp import web

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}}.ref{{color:#666;font-size:.85rem}}</style></head>
<body><h1>{title}</h1><p>{message}</p>{extra}</body></html>
"""


RETRY_AFTER_S = 5


def error_page(
    status: int, message: str, *, reference: str | None = None, title: str = "Sign-in failed"
) -> web.Response:
    extra = (
        f'<p class="ref">If you contact support, give this reference: <code>{escape(reference)}</code></p>'
        if reference
        else ""
    )
    body = _PAGE.format(title=escape(title), message=escape(message), extra=extra)
    headers = {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    }
    if status == 503:  # every "try again" page says when (RFC 9110 §10.2.3)
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return web.Response(status=status, text=body, content_type="text/html", headers=headers)


def post_form(html: str) -> web.Response:
    """pysaml2's auto-submitting form for IdPs that take AuthnRequests by HTTP-POST only."""
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})
