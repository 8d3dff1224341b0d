"""Webhook rules, pure: which URLs a webhook may call (its addresses judged by the rule
in ``netguard``), retry delays, the order in which deliveries may go out, signatures and
the wire body (docs/events.md, "Webhooks").

No I/O here: the dispatcher (services/webhook_dispatcher), the store
(``webhook_store``) and the HTTP client (``webhook_http``) apply these rules.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import random
import re
import secrets as _secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from .events_feed import type_patterns
from .netguard import address_allowed, classify_address

SECRET_PREFIX = "whsec_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NIL_KEY = uuid.UUID(int=0)  # order key of events without a resource
TEST_EVENT_TYPE = "webhook.test"
MAX_URL_LENGTH = 2048

# --------------------------------------------------------------------------- URLs and addresses


class UrlRefused(ValueError):
    """A webhook URL Provisio will not call (scheme, form, or the address it reaches)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # a name, or an IP address without brackets
    port: int
    is_ip: bool


def parse_url(url: str) -> Target:
    """Check a webhook URL's form: http or https, a host, no credentials, no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UrlRefused("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UrlRefused(f"not a valid URL: {err}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("only http:// and https:// URLs can receive webhooks")
    host = parts.hostname
    if not host:
        raise UrlRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL must not contain credentials (user:password@); verify the signature instead")
    if parts.fragment:
        raise UrlRefused("the URL must not contain a #fragment")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        is_ip = True
    except ValueError:
        is_ip = False
        # A decimal or hex IPv4 (http://2130706433/) resolves to an address: judged then.
    return Target(scheme, host, port or (443 if scheme == "https" else 80), is_ip)


def refusal(host: str, addresses: Sequence[str]) -> UrlRefused:
    """Why a webhook may not call ``host``, which resolved to ``addresses`` (none of them
    allowed by the setting, the rule of ``netguard``)."""
    if not addresses:
        return UrlRefused(f"{host} does not resolve to any address")
    kinds = sorted({classify_address(a) for a in addresses})
    return UrlRefused(
        f"{host} resolves to a {'/'.join(k.replace('_', '-') for k in kinds)} address "
        f"({', '.join(addresses[:3])}), which webhooks may not reach "
        "(PROVISIO_WEBHOOK_ALLOW_PRIVATE=loopback|private allows some)"
    )


def check_addresses(host: str, addresses: Iterable[str], allow: str) -> list[str]:
    """The addresses ``host`` resolved to that may be called; UrlRefused if none may."""
    addresses = list(addresses)
    ok = [a for a in addresses if address_allowed(a, allow)]
    if not ok:
        raise refusal(host, addresses)
    return ok


# --------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``3d``, ``250ms`` → seconds."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration (e.g. 30s, 15m, 24h, 3d)")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2) or "s"]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


# --------------------------------------------------------------------------- retries


def backoff_s(attempts: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before the next attempt after ``attempts`` failed ones (≥ 1): exponential
    (base, 2×base, 4×base …, at most ``cap_s``) with "equal jitter" — half fixed, half
    random — so endpoints that failed together do not retry in lockstep, and the delay
    never falls below half its step."""
    step = min(cap_s, base_s * 2 ** max(attempts - 1, 0))
    return float(step / 2 + rand() * step / 2)


def retry_or_dead(
    attempts: int,
    first_created: datetime,
    now: datetime,
    *,
    horizon_s: float,
    base_s: float,
    cap_s: float,
    rand: Callable[[], float] = random.random,
) -> datetime | None:
    """When to try a failed delivery again, or None: dead letter (the next attempt would
    start past the retry horizon, counted from when the delivery was created)."""
    delay = backoff_s(attempts, base_s, cap_s, rand)
    age = (now - first_created).total_seconds()
    if age + delay > horizon_s:
        return None
    return datetime.fromtimestamp(now.timestamp() + delay, UTC)


# --------------------------------------------------------------------------- order


@dataclass(frozen=True)
class Pending:
    """A pending delivery as the order rule sees it: its feed position (``position``
    sorts like the feed), its resource (``key``) and whether it is due now (not
    waiting for a retry, not leased to a sender in flight)."""

    id: int
    key: uuid.UUID
    position: tuple[int, int, int]
    due: bool


def sendable_chains(pending: Sequence[Pending]) -> list[list[int]]:
    """Which of an endpoint's pending deliveries may be sent now, as chains: the
    deliveries of one resource in feed order, to be sent one after the other (the next
    only once the previous was answered 2xx). A delivery may go only if every earlier
    pending delivery of its resource is due too (is in the same chain, ahead of it):
    one waiting for a retry or in flight holds back everything after it for that
    resource, and nothing for the others."""
    blocked: set[uuid.UUID] = set()
    chains: dict[uuid.UUID, list[int]] = {}
    for p in sorted(pending, key=lambda p: p.position):
        if p.key in blocked:
            continue
        if not p.due:
            blocked.add(p.key)
            continue
        chains.setdefault(p.key, []).append(p.id)
    return list(chains.values())


def order_key(resource_id: uuid.UUID | None) -> uuid.UUID:
    return resource_id if resource_id is not None else NIL_KEY


# --------------------------------------------------------------------------- secrets, signatures


def new_secret() -> str:
    """A signing secret in the form Standard Webhooks libraries take: ``whsec_`` and
    the base64 of 32 random bytes (the spec asks for 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(32)).decode()


def signing_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets that sign now: the current one, and the previous one until its
    overlap ends (a receiver that still has only the old secret keeps verifying)."""
    out = [secret]
    if previous and previous_expires_at is not None and previous_expires_at > now:
        out.append(previous)
    return out


def body_bytes(event: dict[str, Any]) -> bytes:
    """The wire body: the event as the events API returns it, compact JSON."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


@functools.lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def signature_headers(msg_id: str, timestamp: datetime, body: bytes, secrets: Sequence[str]) -> dict[str, str]:
    """Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature);
    one ``v1,<base64>`` per secret, space-separated, as the spec allows for rotation."""
    ts = timestamp.astimezone(UTC)
    payload = body.decode()
    sigs = [_signer(s).sign(msg_id, ts, payload) for s in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": " ".join(sigs),
    }


def excerpt(raw: bytes, limit: int) -> str:
    """The start of an answer, as text, for `webhook deliveries` and the test output."""
    text = raw[:limit].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > limit else "")


def test_event(
    endpoint_name: str, tenant_name: str | None, tenant_id: uuid.UUID | None, now: datetime
) -> dict[str, Any]:
    """The ping `provisio webhook test` sends: shaped like every event."""
    return {
        "id": str(uuid.uuid4()),
        "type": TEST_EVENT_TYPE,
        "tenant": tenant_name,
        "tenant_id": str(tenant_id) if tenant_id else None,
        "sequence": None,
        "occurred_at": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "source": {"kind": "cli", "label": "provisio webhook test"},
        "correlation_id": "webhook-test-" + uuid.uuid4().hex[:12],
        "resource_type": None,
        "resource_id": None,
        "data": {"endpoint": endpoint_name, "message": "a test event from Provisio; no directory change"},
    }


def event_patterns(raw: str | None) -> list[str] | None:
    """``--events user.*,group.member_added`` → LIKE patterns (None: every type)."""
    if raw is None or raw.strip() in ("", "*"):
        return None
    return type_patterns(raw)


def patterns_text(patterns: Sequence[str] | None) -> str:
    if not patterns:
        return "*"
    return ",".join(p.replace("%", "*").replace("\\_", "_") for p in patterns)


def duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Mail:
    subject: str
    text: str


def disabled_mail(
    *,
    endpoint: str,
    tenant: str,
    url: str,
    failing_since: datetime,
    disable_after_s: float,
    last_error: str | None,
) -> Mail:
    """The mail to a tenant's notify addresses when its endpoint was disabled."""
    subject = f"[Provisio] Webhook endpoint {endpoint!r} of tenant {tenant} was disabled"
    text = "\n".join(
        [
            f"Provisio stopped sending webhooks to the endpoint {endpoint!r} of tenant {tenant}:",
            "",
            f"  URL:           {url}",
            f"  failing since: {failing_since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
            f"  last error:    {last_error or '(none recorded)'}",
            "",
            f"Every delivery attempt failed for {duration_text(disable_after_s)} (no 2xx answer), so the",
            "endpoint was disabled. Nothing is lost: the events keep accumulating and are delivered,",
            "in order per resource, once the endpoint is enabled again.",
            "",
            "What to do: make the receiver answer 2xx (check that it is up, reachable from Provisio,",
            "and verifies signatures with the current secret), then:",
            "",
            f"  provisio webhook test {endpoint}",
            f"  provisio webhook enable {endpoint}",
            "",
            f"Recent attempts: provisio webhook deliveries {tenant} --failed",
        ]
    )
    return Mail(subject, text + "\n")
