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

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 §2.1: an IPv4 address in the last 32 bits
# RFC 1918 private IPv4; what else `ipaddress` calls private is special-purpose (RFC 6890).
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


# The IANA special-purpose address registries (RFC 6890 and the RFCs that added to them),
# entries not globally reachable, most specific first. Judged here, not only by the
# `ipaddress` flags, because those changed between CPython patch releases (gh-113171:
# 3.11.7 calls 192.0.0.8 global): the guard must not depend on the interpreter's age.
_SPECIAL_RANGES: tuple[tuple[str, AddressKind], ...] = (
    # IPv4
    ("192.0.0.9/32", "public"),  # Port Control Protocol anycast, RFC 7723: global
    ("192.0.0.10/32", "public"),  # TURN anycast, RFC 8155: global
    ("0.0.0.0/8", "reserved"),  # "this network", RFC 791 (0.0.0.0 itself: unspecified)
    ("100.64.0.0/10", "private"),  # shared address space (carrier-grade NAT), RFC 6598
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments, RFC 6890 §2.2.2
    ("192.0.2.0/24", "reserved"),  # TEST-NET-1, RFC 5737
    ("198.18.0.0/15", "reserved"),  # benchmarking, RFC 2544
    ("198.51.100.0/24", "reserved"),  # TEST-NET-2, RFC 5737
    ("203.0.113.0/24", "reserved"),  # TEST-NET-3, RFC 5737
    ("240.0.0.0/4", "reserved"),  # reserved, RFC 1112; with 255.255.255.255 (broadcast)
    # IPv6
    ("64:ff9b:1::/48", "reserved"),  # local-use IPv4/IPv6 translation, RFC 8215
    ("100::/64", "reserved"),  # discard-only, RFC 6666
    ("2001:db8::/32", "reserved"),  # documentation, RFC 3849
    ("2001::/23", "reserved"),  # IETF protocol assignments (Teredo 2001::/32 in it), RFC 2928
    ("fec0::/10", "private"),  # site-local, deprecated by RFC 3879
)
_SPECIAL = tuple((ipaddress.ip_network(net), kind) for net, kind in _SPECIAL_RANGES)


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
    if ip.is_unspecified:
        return "unspecified"
    for net, kind in _SPECIAL:
        if ip.version == net.version and ip in net:
            return kind
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        # 10/8, 172.16/12, 192.168/16, fc00::/7 (ULA, RFC 4193); anything else `ipaddress`
        # calls private is special-purpose (above) or reserved.
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
