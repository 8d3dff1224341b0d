"""Which addresses Provisio's outbound HTTP may reach (the guard against server-side
request forgery, OWASP SSRF prevention cheat sheet). Pure: the aiohttp resolver that
holds each connection to the addresses this rule vetted is ``netguard_http``.

Two callers: webhook delivery (``webhook_http``, ``PROVISIO_WEBHOOK_ALLOW_PRIVATE``) and
the console's download of IdP metadata from a URL (``admin.connections``,
``PROVISIO_CONSOLE_METADATA_ALLOW_PRIVATE``). Each says which addresses it accepts and
how it words a refusal; what an address is, and resolve → vet → connect to the vetted
addresses only, are here.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

# Which non-public addresses a setting lets a connection reach. "none" (the default):
# public only; "loopback" adds 127.0.0.0/8 and ::1 (tests, `provisio dev`); "private"
# adds the private ranges too (a receiver inside the operator's network). Link-local
# (169.254.0.0/16, RFC 3927: cloud metadata services such as 169.254.169.254; fe80::/10),
# multicast, unspecified and reserved addresses are never reachable.
AllowPrivate = Literal["none", "loopback", "private"]

AddressKind = Literal["public", "loopback", "private", "link_local", "multicast", "unspecified", "reserved"]

_ALLOWED: dict[str, frozenset[str]] = {
    "none": frozenset({"public"}),
    "loopback": frozenset({"public", "loopback"}),
    "private": frozenset({"public", "loopback", "private"}),
}

# RFC 6598 shared address space (carrier-grade NAT): not routable on the internet,
# and `ipaddress` calls it neither private nor global.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 §2.1: an IPv4 address in the last 32 bits
# RFC 1918 private IPv4; what else `ipaddress` calls private is special-purpose (RFC 6890).
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def classify_address(address: str) -> AddressKind:
    """The kind of an IP address (v4 or v6, as text; a ``%zone`` suffix is ignored). IPv6
    forms that carry an IPv4 address are judged by that IPv4 address, since a host that
    routes them reaches it: IPv4-mapped ``::ffff:a.b.c.d`` (RFC 4291 §2.5.5.2), 6to4
    ``2002::/16`` (RFC 3056 §2) and NAT64 ``64:ff9b::/96`` (RFC 6052); so
    ``::ffff:127.0.0.1`` is loopback and ``2002:a9fe:a9fe::`` link-local."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return classify_address(str(inner))
    # The flags below follow the IANA special-purpose address registries (RFC 6890).
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "private"
    if ip.is_private:
        # 10/8, 172.16/12, 192.168/16, fc00::/7 (ULA, RFC 4193) — and some reserved ranges
        # that `ipaddress` also calls private (192.0.0.0/24, 198.18.0.0/15, documentation).
        if isinstance(ip, ipaddress.IPv4Address) and not any(ip in n for n in _RFC1918):
            return "reserved"
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return "public"


def address_allowed(address: str, allow: str) -> bool:
    """Whether ``allow`` (none|loopback|private; anything else counts as none) lets a
    connection reach ``address``."""
    return classify_address(address) in _ALLOWED.get(allow, _ALLOWED["none"])
