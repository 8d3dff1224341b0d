"""The client's address for per-address limits (libs/provisio_lib/ratelimit.py)."""

from __future__ import annotations

import pytest

from provisio_lib.ratelimit import parse_trusted_proxies, source_address
from provisio_lib.settings import CommonSettings, SettingsError, load_settings

pytestmark = pytest.mark.unit

PROXIES = parse_trusted_proxies("10.0.0.0/8, 192.168.1.10, ::1")


def test_without_trusted_proxies_the_header_is_ignored():
    assert source_address("203.0.113.9", "198.51.100.1", ()) == "203.0.113.9"


def test_a_request_not_from_a_trusted_proxy_keeps_its_peer_address():
    assert source_address("203.0.113.9", "198.51.100.1", PROXIES) == "203.0.113.9"


def test_the_right_most_untrusted_hop_is_the_client():
    # the client wrote "1.2.3.4" itself; the proxies appended what they saw
    assert source_address("10.1.1.1", "1.2.3.4, 198.51.100.7, 10.2.2.2", PROXIES) == "198.51.100.7"
    assert source_address("::1", "2001:db8::5", PROXIES) == "2001:db8::5"


def test_garbage_in_the_header_falls_back_to_the_proxy():
    assert source_address("10.1.1.1", "not-an-ip", PROXIES) == "10.1.1.1"


def test_a_bad_trusted_proxy_setting_is_one_clear_error(monkeypatch):
    with pytest.raises(SettingsError, match="PROVISIO_TRUSTED_PROXIES is invalid"):
        load_settings(
            CommonSettings,
            database_url="postgresql://x",
            redis_url="redis://x",
            trusted_proxies="10.0.0.0/8, not-a-network",
        )
