"""Calling webhook receivers: one aiohttp session whose resolver (``netguard_http.PinnedResolver``)
refuses the addresses webhooks may not reach at connection time — after DNS, so a name
that resolved to a public address when the endpoint was added and to 169.254.169.254 now
(DNS rebinding) is still refused — plus a timeout, an answer-size limit and no redirects
on every request."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import Field, field_validator

from . import netguard_http, webhooks
from .settings import CommonSettings

USER_AGENT = "Provisio-Webhooks/1"


class WebhookClientSettings(CommonSettings):
    """What calling a receiver needs; the dispatcher's and the CLI's settings (``PROVISIO_WEBHOOK_*``)."""

    webhook_allow_private: str = Field(
        default="none",
        pattern=r"^(none|loopback|private)$",
        description="Which non-public addresses webhook URLs may reach: none, loopback (127.0.0.0/8, ::1), "
        "or private (loopback and 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7). Link-local "
        "(169.254.0.0/16, fe80::/10), multicast and unspecified addresses are never reachable",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Time limit of one delivery: connect, send, answer"
    )
    webhook_max_answer_bytes: int = Field(
        default=64 * 1024, ge=256, description="At most this much of a receiver's answer is read"
    )
    webhook_excerpt_bytes: int = Field(
        default=512, ge=0, le=16384, description="How much of an answer is stored with the attempt"
    )

    @field_validator("webhook_allow_private", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def _refused(host: str, addresses: list[str]) -> OSError:
    # An OSError: aiohttp reports it as a connection error, recorded as the attempt's reason.
    return OSError(str(webhooks.refusal(host, addresses)))


def make_session(settings: WebhookClientSettings, *, per_host: int = 32) -> aiohttp.ClientSession:
    """One session for every delivery of a process: keep-alive connections reused across
    deliveries, at most ``per_host`` at once to one receiver (host and port), no proxy
    from the environment (it would bypass the address check)."""
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=per_host,
        # Keeps only the addresses the setting allows, and connects to those.
        resolver=netguard_http.PinnedResolver(settings.webhook_allow_private, _refused),
        ttl_dns_cache=10,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def check_url(url: str, allow: str) -> webhooks.Target:
    """Refuse a URL at `webhook add` (form, and where its name resolves now)."""
    target = webhooks.parse_url(url)
    if target.is_ip:
        webhooks.check_addresses(target.host, [target.host], allow)
        return target
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise webhooks.UrlRefused(f"cannot resolve {target.host}: {err}") from None
    webhooks.check_addresses(target.host, [str(i[4][0]) for i in infos], allow)
    return target


@functools.lru_cache(maxsize=4096)
def _refusal(url: str, allow: str) -> str | None:
    """Why ``url`` may not be called (its form, or a literal address: aiohttp does not
    resolve those, so the resolver's check never sees them), or None. Cached: pure."""
    try:
        target = webhooks.parse_url(url)
        if target.is_ip:
            webhooks.check_addresses(target.host, [target.host], allow)
    except webhooks.UrlRefused as err:
        return str(err)
    return None


@dataclass(frozen=True)
class Answer:
    """One attempt: ``ok`` is a 2xx answer; otherwise ``status`` (a non-2xx answer) or
    ``error`` (no answer: timeout, refused connection or address, TLS)."""

    ok: bool
    status: int | None
    latency_ms: float
    excerpt: str | None
    error: str | None
    attempted_at: datetime


async def post_event(
    session: aiohttp.ClientSession,
    url: str,
    event: dict[str, Any],
    secrets: list[str],
    settings: WebhookClientSettings,
    *,
    now: datetime | None = None,
) -> Answer:
    """Send one signed event; never raises for what the receiver or network does."""
    attempted_at = now or datetime.now(UTC)
    started = time.perf_counter()

    def done(ok: bool, status: int | None, excerpt: str | None, error: str | None) -> Answer:
        return Answer(ok, status, (time.perf_counter() - started) * 1000, excerpt, error, attempted_at)

    refused = _refusal(url, settings.webhook_allow_private)
    if refused is not None:
        return done(False, None, None, f"refused: {refused}")
    body = webhooks.body_bytes(event)
    headers = {
        "Content-Type": "application/json",
        **webhooks.signature_headers(event["id"], attempted_at, body, secrets),
    }
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s),
        ) as resp:
            raw = await resp.content.read(settings.webhook_max_answer_bytes)
            complete = resp.content.at_eof()
            if not complete:
                resp.close()  # do not drain an oversized answer: drop the connection
            status = resp.status
    except TimeoutError:
        return done(False, None, None, f"timeout after {settings.webhook_timeout_s:g} s")
    except aiohttp.ClientConnectorError as err:
        return done(False, None, None, f"connection failed: {err.os_error or err}")
    except (aiohttp.ClientError, OSError) as err:
        return done(False, None, None, f"{type(err).__name__}: {err}"[:500])
    text = webhooks.excerpt(raw, settings.webhook_excerpt_bytes)
    return done(200 <= status < 300, status, text, None)
