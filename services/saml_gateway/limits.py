"""Per-source-address limits of the SAML gateway's unauthenticated entry points (issue
13 §2), as one middleware so the handlers stay as they are:

- the login URL (``GET /saml/{tenant}/{connection}/login``): every call signs an
  AuthnRequest and stores a Redis key, so every call counts
  (``PROVISIO_SAML_LOGIN_PER_MIN``); over the limit: a readable 429 page;
- ``POST /saml/token``: failed exchanges (400/401: unknown code, wrong secret) count
  (``PROVISIO_SAML_FAILED_TOKEN_PER_MIN``); an address over the limit gets a JSON 429
  (RFC 6749 §5.2 error shape) before its code or secret is looked at.

Counters are in Redis (``provisio_lib.ratelimit.WindowLimiter``, one-minute fixed
windows), so the limits hold across replicas. The source address is the TCP peer, or
X-Forwarded-For from a proxy in ``PROVISIO_TRUSTED_PROXIES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from provisio_lib.logging import get_logger
from provisio_lib.ratelimit import WindowLimiter, parse_trusted_proxies, source_address
from provisio_lib.topology import Topology

from .pages import error_page
from .settings import SamlSettings

log = get_logger(__name__)


def rate_limits(settings: SamlSettings, topology: Topology, redis: Callable[[], Any]) -> Any:
    """The middleware; ``redis()`` gives the app's client once it is connected."""
    trusted = parse_trusted_proxies(settings.trusted_proxies)
    limiters: dict[str, WindowLimiter] = {}

    def limiter(scope: str, limit: int) -> WindowLimiter:
        found = limiters.get(scope)
        if found is None:
            found = limiters[scope] = WindowLimiter(redis(), topology.key("rl", scope), limit, 60)
        return found

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if request.match_info.http_exception is not None or not path.startswith("/saml/"):
            return await handler(request)
        if request.method == "GET" and path.endswith("/login") and settings.saml_login_per_min:
            address = source_address(request.remote, request.headers.get("X-Forwarded-For"), trusted)
            wait = limiter("saml-login", settings.saml_login_per_min).local_wait(address)
            if wait is None:
                wait = await limiter("saml-login", settings.saml_login_per_min).hit(address)
            if wait is not None:
                log.warning("saml_login_limited", source=address)
                page = error_page(
                    429,
                    "Too many sign-in attempts from your network. Please wait a minute and try again.",
                    title="Please wait",
                )
                page.headers["Retry-After"] = str(wait)
                return page
            return await handler(request)
        if request.method == "POST" and path == "/saml/token" and settings.saml_failed_token_per_min:
            failures = limiter("saml-token", settings.saml_failed_token_per_min)
            address = source_address(request.remote, request.headers.get("X-Forwarded-For"), trusted)
            wait = await failures.over(address)
            if wait is not None:
                log.warning("saml_token_limited", source=address)
                return web.json_response(
                    {
                        "error": "slow_down",
                        "error_description": "too many failed code exchanges from this address; retry later",
                    },
                    status=429,
                    headers={"Retry-After": str(wait), "Cache-Control": "no-store"},
                )
            response = await handler(request)
            if response.status in (400, 401):
                await failures.hit(address)
            return response
        return await handler(request)

    return middleware
