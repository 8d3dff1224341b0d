"""Pure rules of self-serve setup: link lifetimes and scopes, the SSRF address rule and
its use before any connection, metadata typed by hand, TOTP codes used once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from provisio_lib import sso
from provisio_lib.admin import connections, setup_links
from provisio_lib.admin.errors import AdminError
from provisio_lib.admin.staff import totp_step


def test_ttl_and_scopes():
    assert setup_links.parse_ttl("7d") == timedelta(days=7)
    assert setup_links.parse_ttl(" 30m ") == timedelta(minutes=30)
    assert setup_links.parse_ttl("2w") == timedelta(weeks=2)
    for bad in ("", "7", "0m", "31d", "5w", "1y", "-1d", "7 days"):
        with pytest.raises(AdminError):
            setup_links.parse_ttl(bad)
    assert setup_links.parse_scopes("sso,scim") == ["sso", "scim"]
    assert setup_links.parse_scopes(" SCIM , scim ") == ["scim"]
    for bad in ("", ",", "sso,ldap", "admin"):
        with pytest.raises(AdminError):
            setup_links.parse_scopes(bad)


def test_a_links_state_for_the_console():
    now = datetime.now(UTC)
    later, earlier = now + timedelta(hours=1), now - timedelta(hours=1)

    def link(expires: datetime, redeemed: datetime | None = None, revoked: datetime | None = None) -> str:
        made = setup_links.SetupLink(
            uuid.uuid4(), uuid.uuid4(), "acme", "psl_x", ("sso",), "cli:t", earlier, expires, redeemed, revoked
        )
        return f"{made.state}/{made.status}/{made.live}"

    assert link(later) == "unused/unused/True"
    assert link(later, redeemed=now) == "in use/redeemed/True"
    assert link(earlier, redeemed=now) == "used/expired/False"
    assert link(earlier) == "expired/expired/False"
    assert link(later, redeemed=now, revoked=now) == "revoked/revoked/False"
    assert link(earlier, revoked=now) == "revoked/revoked/False"


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata services
        ("100.64.0.1", False),  # CGNAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:169.254.169.254", False),
    ],
)
def test_only_public_addresses_are_fetched(address, allowed):
    assert connections.address_allowed(address) is allowed


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/md",
        "http://[::1]/md",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/",
        "http://localhost:1/",
    ],
)
async def test_private_metadata_urls_are_refused_before_connecting(url):
    with pytest.raises(AdminError, match="private or local address"):
        await connections.fetch_metadata(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/md", "gopher://x/", "http:///nohost"])
async def test_only_http_urls(url):
    with pytest.raises(AdminError, match="http"):
        await connections.fetch_metadata(url)


def test_metadata_typed_by_hand_is_checked_like_uploaded_metadata():
    _key, cert = sso.generate_sp_keypair("idp")
    raw = connections.manual_metadata('https://idp.example.com/"><x', "https://idp.example.com/sso", cert)
    info = sso.parse_idp_metadata(raw)
    assert info.entity_id == 'https://idp.example.com/"><x'  # escaped into the XML, read back as typed
    assert info.sso_url == "https://idp.example.com/sso" and len(info.signing_certs) == 1
    bare = "".join(line for line in cert.splitlines() if not line.startswith("-----"))
    assert sso.parse_idp_metadata(connections.manual_metadata("e", "https://x/sso", bare)).entity_id == "e"
    with pytest.raises(AdminError, match="SSO URL"):
        connections.manual_metadata("e", "javascript:alert(1)", cert)
    with pytest.raises(AdminError, match="entity ID"):
        connections.manual_metadata(" ", "https://x/sso", cert)
    with pytest.raises(AdminError):
        connections.manual_metadata("e", "https://x/sso", "not a certificate!")


def test_a_totp_step_is_accepted_once_and_never_an_earlier_one():
    secret = pyotp.random_base32()
    now = datetime(2026, 12, 3, 1, 0, 15, tzinfo=UTC)
    totp = pyotp.TOTP(secret)
    step = totp.timecode(now)
    code = totp.at(now)
    assert totp_step(secret, code, now=now) == step
    assert totp_step(secret, code, after=step, now=now) is None  # used: refused
    previous = totp.at(now - timedelta(seconds=30))
    assert totp_step(secret, previous, now=now) == step - 1  # clock drift
    assert totp_step(secret, previous, after=step, now=now) is None  # older than the last used
    assert totp_step(secret, "12345", now=now) is None and totp_step(secret, "abcdef", now=now) is None
