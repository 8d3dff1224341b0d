"""The webhook rules (provisio_lib.webhooks): addresses, retries, order, signatures."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from provisio_lib import webhooks
from provisio_lib.webhooks import Pending, UrlRefused

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("93.184.216.34", "public"),
        ("2606:2800:220:1:248:1893:25c8:1946", "public"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # RFC 6598 carrier-grade NAT
        ("fd00::1", "private"),  # IPv6 unique local (fc00::/7)
        ("169.254.169.254", "link_local"),  # cloud metadata
        ("fe80::1", "link_local"),
        ("fe80::1%eth0", "link_local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: judged by the IPv4 address
        ("::ffff:169.254.169.254", "link_local"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a9fe:a9fe", "link_local"),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", "link_local"),  # 6to4 of 169.254.169.254
        ("192.0.2.10", "reserved"),  # documentation
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_classify_address(address, kind):
    assert webhooks.classify_address(address) == kind


@pytest.mark.parametrize(
    ("allow", "reachable"),
    [
        ("none", {"public"}),
        ("loopback", {"public", "loopback"}),
        ("private", {"public", "loopback", "private"}),
        ("nonsense", {"public"}),
    ],
)
def test_what_each_setting_allows(allow, reachable):
    samples = {
        "public": "93.184.216.34",
        "loopback": "127.0.0.1",
        "private": "10.0.0.1",
        "link_local": "169.254.169.254",
        "multicast": "224.0.0.1",
        "unspecified": "0.0.0.0",
        "reserved": "240.0.0.1",
    }
    assert {k for k, a in samples.items() if webhooks.address_allowed(a, allow)} == reachable


def test_check_addresses_keeps_only_the_allowed_ones_or_refuses():
    # A name resolving to a public and a private address (DNS rebinding tries this):
    # only the public one is dialled.
    assert webhooks.check_addresses("h.example", ["10.0.0.1", "93.184.216.34"], "none") == ["93.184.216.34"]
    with pytest.raises(UrlRefused, match="link-local"):
        webhooks.check_addresses("metadata.example", ["169.254.169.254"], "private")
    with pytest.raises(UrlRefused, match="does not resolve"):
        webhooks.check_addresses("h.example", [], "none")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "only http"),
        ("file:///etc/passwd", "only http"),
        ("gopher://127.0.0.1:6379/_PING", "only http"),
        ("http:///nohost", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com/a b", "whitespace"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://" + "a" * 3000 + ".com/", "longer than"),
    ],
)
def test_parse_url_refuses(url, message):
    with pytest.raises(UrlRefused, match=message):
        webhooks.parse_url(url)


def test_parse_url_accepts():
    t = webhooks.parse_url("https://hooks.example.com/provisio?x=1")
    assert (t.scheme, t.host, t.port, t.is_ip) == ("https", "hooks.example.com", 443, False)
    t = webhooks.parse_url("http://[::1]:8080/h")
    assert (t.host, t.port, t.is_ip) == ("::1", 8080, True)
    assert webhooks.parse_url("HTTP://127.0.0.1/").is_ip


# --------------------------------------------------------------------------- retries


def test_backoff_doubles_with_equal_jitter_up_to_the_cap():
    low = [webhooks.backoff_s(n, 5, 3600, rand=lambda: 0.0) for n in range(1, 13)]
    high = [webhooks.backoff_s(n, 5, 3600, rand=lambda: 1.0) for n in range(1, 13)]
    assert high[:4] == [5, 10, 20, 40]
    assert low[:4] == [2.5, 5, 10, 20]  # never below half the step
    assert max(high) == 3600 and high[-1] == 3600  # capped
    assert all(a <= b for a, b in itertools.pairwise(high))


def test_retry_until_the_horizon_then_dead():
    created = datetime(2026, 1, 1, tzinfo=UTC)
    kw = {"horizon_s": 3 * 86400, "base_s": 5, "cap_s": 3600, "rand": lambda: 1.0}
    at = webhooks.retry_or_dead(1, created, created + timedelta(seconds=1), **kw)
    assert at == created + timedelta(seconds=6)
    # The next attempt would start past the horizon: dead letter.
    assert webhooks.retry_or_dead(40, created, created + timedelta(days=3, seconds=-60), **kw) is None
    assert webhooks.retry_or_dead(40, created, created + timedelta(days=2), **kw) is not None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("24h", 86400), ("3d", 259200), ("250ms", 0.25), (" 1.5h ", 5400)],
)
def test_parse_duration(text, seconds):
    assert webhooks.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-1h", "1w", "h"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        webhooks.parse_duration(text)


# --------------------------------------------------------------------------- order


def test_a_resource_waiting_for_a_retry_holds_back_only_its_own_later_events():
    a, b, c = (uuid.UUID(int=i) for i in (1, 2, 3))
    pending = [
        Pending(1, a, (1, 1, 1), due=False),  # a's first event waits for its retry
        Pending(2, b, (1, 2, 2), due=True),
        Pending(3, a, (2, 1, 3), due=True),  # held back behind 1
        Pending(4, b, (2, 2, 4), due=True),
        Pending(5, c, (3, 1, 5), due=True),
        Pending(6, a, (3, 2, 6), due=True),  # held back too
    ]
    assert webhooks.sendable_chains(pending) == [[2, 4], [5]]


def test_chains_follow_feed_order_not_input_order():
    a = uuid.UUID(int=1)
    pending = [Pending(9, a, (5, 0, 9), True), Pending(3, a, (1, 0, 3), True), Pending(4, a, (2, 0, 4), True)]
    assert webhooks.sendable_chains(pending) == [[3, 4, 9]]


def test_a_leased_delivery_in_flight_blocks_like_a_retry():
    a = uuid.UUID(int=1)
    pending = [Pending(1, a, (1, 0, 1), True), Pending(2, a, (2, 0, 2), False), Pending(3, a, (3, 0, 3), True)]
    # 1 may go; 2 is in flight elsewhere, so 3 waits for it.
    assert webhooks.sendable_chains(pending) == [[1]]


def test_events_without_a_resource_share_one_order_key():
    assert webhooks.order_key(None) == webhooks.order_key(None) == uuid.UUID(int=0)
    rid = uuid.uuid4()
    assert webhooks.order_key(rid) == rid


# --------------------------------------------------------------------------- signatures


def test_signature_headers_verify_with_standardwebhooks():
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(secret) > 40
    now = datetime.now(UTC)
    body = webhooks.body_bytes({"id": "e1", "type": "user.created", "data": {"name": "Zoë"}})
    headers = webhooks.signature_headers("e1", now, body, [secret])
    assert headers["webhook-id"] == "e1"
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,") and " " not in headers["webhook-signature"]
    assert Webhook(secret).verify(body, headers)["data"] == {"name": "Zoë"}
    tampered = body.replace(b"user.created", b"user.deleted")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(tampered, headers)


def test_during_a_rotation_both_secrets_sign():
    old, new = webhooks.new_secret(), webhooks.new_secret()
    now = datetime.now(UTC)
    secrets = webhooks.signing_secrets(new, old, now + timedelta(hours=1), now)
    assert secrets == [new, old]
    body = b'{"id":"e2"}'
    headers = webhooks.signature_headers("e2", now, body, secrets)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for s in (old, new):
        Webhook(s).verify(body, headers)
    # After the overlap only the new one signs.
    assert webhooks.signing_secrets(new, old, now - timedelta(seconds=1), now) == [new]
    assert webhooks.signing_secrets(new, None, None, now) == [new]


def test_excerpt_and_event_patterns():
    assert webhooks.excerpt(b"x" * 10, 4) == "xxxx…"
    assert webhooks.excerpt(b"ok", 4) == "ok"
    assert webhooks.excerpt(b"\xff\xfe", 4) == "\ufffd\ufffd"
    assert webhooks.event_patterns("user.*,group.member_added") == ["user.%", r"group.member\_added"]
    assert webhooks.event_patterns(None) is None and webhooks.event_patterns("*") is None
    assert webhooks.patterns_text(["user.%", r"group.member\_added"]) == "user.*,group.member_added"
    with pytest.raises(ValueError):
        webhooks.event_patterns("user.%")


def test_the_disabled_mail_says_what_to_do():
    mail = webhooks.disabled_mail(
        endpoint="acme-hooks",
        tenant="acme",
        url="https://hooks.acme.example/p",
        failing_since=datetime(2026, 1, 1, tzinfo=UTC),
        disable_after_s=86400,
        last_error="HTTP 500: boom",
    )
    assert "acme-hooks" in mail.subject and "acme" in mail.subject
    assert "provisio webhook enable acme-hooks" in mail.text and "HTTP 500: boom" in mail.text
    assert "1d" in mail.text
