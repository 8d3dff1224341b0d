"""The outbound address rule (provisio_lib.netguard): what an address is, what each
setting lets through, and the pinned resolver that applies it to a name's DNS answer.

The resolver is fed fixed DNS answers (an aiohttp resolver of its own), since a name
that resolves to a forbidden address, or to a mix, cannot be made with the machine's
DNS; tests/integration/test_netguard.py connects through it for real."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from provisio_lib import netguard, netguard_http

pytestmark = pytest.mark.unit


class FixedAnswers(AbstractResolver):
    """DNS as a dict: name → addresses, in answer order; an unknown name fails like getaddrinfo."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=socket.IPPROTO_TCP,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        self.closed = True


class Refused(Exception):
    def __init__(self, host: str, addresses: list[str]) -> None:
        super().__init__(f"{host}: {addresses}")
        self.host, self.addresses = host, addresses


DNS = {
    "loop.test": ["127.0.0.1", "::1"],
    "mapped-loop.test": ["::ffff:127.0.0.1"],  # RFC 4291 §2.5.5.2
    "nat64-loop.test": ["64:ff9b::7f00:1"],  # RFC 6052
    "sixtofour-loop.test": ["2002:7f00:1::1"],  # RFC 3056
    "metadata.test": ["169.254.169.254"],
    "mapped-metadata.test": ["::ffff:169.254.169.254"],
    "nat64-metadata.test": ["64:ff9b::a9fe:a9fe"],
    "sixtofour-metadata.test": ["2002:a9fe:a9fe::1"],
    "internal.test": ["10.0.0.7", "fd00::7"],
    "public.test": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "nat64-public.test": ["64:ff9b::5db8:d822"],  # 93.184.216.34 through NAT64
    "rebound.test": ["169.254.169.254", "93.184.216.34", "127.0.0.1"],  # a hostile answer mixes
}


def pinned(allow, **kw) -> netguard_http.PinnedResolver:
    return netguard_http.PinnedResolver(allow, Refused, resolver=FixedAnswers(DNS), **kw)


async def hosts(resolver: netguard_http.PinnedResolver, name: str) -> list[str]:
    return [r["host"] for r in await resolver.resolve(name, 443, socket.AF_UNSPEC)]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b::5db8:d822", "public"),
        ("2002:7f00:1::", "loopback"),
        ("2002:c0a8:101::1", "private"),
        ("2002:5db8:d822::1", "public"),
        ("::ffff:93.184.216.34", "public"),
        ("::ffff:100.64.0.1", "private"),  # RFC 6598 inside RFC 4291 mapping
        ("::ffff:0.0.0.0", "unspecified"),
        ("::ffff:224.0.0.1", "multicast"),
        ("198.18.0.1", "reserved"),  # RFC 2544 benchmarking: "private" to ipaddress, not RFC 1918
        ("192.0.0.1", "reserved"),  # RFC 6890 IETF protocol assignments
        ("fe80::a9fe:a9fe", "link_local"),
    ],
)
def test_ipv4_inside_ipv6_and_special_ranges(address, kind):
    assert netguard.classify_address(address) == kind


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        # Judged by the registry table, whatever this CPython's `ipaddress` says (gh-113171).
        ("192.0.0.8", "reserved"),  # 3.11.7's ipaddress calls it global
        ("192.0.0.170", "reserved"),  # NAT64 discovery, RFC 7050
        ("192.0.0.9", "public"),  # PCP anycast, RFC 7723: globally reachable
        ("192.0.0.10", "public"),  # TURN anycast, RFC 8155: globally reachable
        ("192.0.2.1", "reserved"),
        ("198.51.100.7", "reserved"),
        ("203.0.113.9", "reserved"),
        ("0.1.2.3", "reserved"),
        ("100.127.255.254", "private"),
        ("2001:db8::1", "reserved"),  # documentation: not "private", so `private` doesn't admit it
        ("2001::1", "reserved"),  # Teredo: an obfuscated IPv4 inside
        ("2001:2::1", "reserved"),  # benchmarking, RFC 5180
        ("64:ff9b:1::a00:1", "reserved"),  # local-use translation, RFC 8215
        ("100::1", "reserved"),  # discard-only, RFC 6666
        ("fec0::1", "private"),  # site-local, deprecated
        ("2606:4700::1111", "public"),
        ("1.1.1.1", "public"),
    ],
)
def test_special_purpose_ranges_do_not_depend_on_the_python_version(address, kind):
    assert netguard.classify_address(address) == kind
    if kind != "public":
        assert not netguard.address_allowed(address, "none")


@pytest.mark.parametrize(
    "name",
    ["metadata.test", "mapped-metadata.test", "nat64-metadata.test", "sixtofour-metadata.test"],
)
@pytest.mark.parametrize("allow", ["none", "loopback", "private"])
async def test_link_local_is_refused_under_every_setting(name, allow):
    with pytest.raises(Refused) as err:
        await hosts(pinned(allow), name)
    assert err.value.host == name and err.value.addresses == DNS[name]


@pytest.mark.parametrize("name", ["loop.test", "mapped-loop.test", "nat64-loop.test", "sixtofour-loop.test"])
async def test_loopback_only_under_loopback_or_private(name):
    with pytest.raises(Refused):
        await hosts(pinned("none"), name)
    assert await hosts(pinned("loopback"), name) == DNS[name]
    assert await hosts(pinned("private"), name) == DNS[name]


async def test_private_only_under_private():
    for allow in ("none", "loopback", "nonsense"):
        with pytest.raises(Refused):
            await hosts(pinned(allow), "internal.test")
    assert await hosts(pinned("private"), "internal.test") == ["10.0.0.7", "fd00::7"]


async def test_public_names_pass_every_setting():
    for allow in ("none", "loopback", "private"):
        assert await hosts(pinned(allow), "public.test") == DNS["public.test"]
        assert await hosts(pinned(allow), "nat64-public.test") == ["64:ff9b::5db8:d822"]


async def test_only_the_vetted_addresses_are_returned_to_connect_to():
    # What the resolver returns is all a TCPConnector dials: the forbidden entries of a
    # mixed answer are gone, the allowed ones keep their order and details.
    results = await pinned("none").resolve("rebound.test", 8443, socket.AF_UNSPEC)
    assert results == [
        ResolveResult(
            hostname="rebound.test",
            host="93.184.216.34",
            port=8443,
            family=socket.AF_INET,
            proto=socket.IPPROTO_TCP,
            flags=socket.AI_NUMERICHOST,
        )
    ]
    assert await hosts(pinned("loopback"), "rebound.test") == ["93.184.216.34", "127.0.0.1"]


async def test_every_refuses_a_mixed_answer_with_all_its_addresses():
    with pytest.raises(Refused) as err:
        await hosts(pinned("none", every=True), "rebound.test")
    assert err.value.addresses == DNS["rebound.test"]
    assert await hosts(pinned("none", every=True), "public.test") == DNS["public.test"]
    # A test of one address instead of a setting: here, anything goes.
    assert await hosts(pinned(lambda _a: True, every=True), "rebound.test") == DNS["rebound.test"]


async def test_an_empty_answer_is_refused():
    resolver = netguard_http.PinnedResolver("private", Refused, resolver=FixedAnswers({"empty.test": []}))
    with pytest.raises(Refused) as err:
        await hosts(resolver, "empty.test")
    assert err.value.addresses == []


async def test_a_failed_lookup_raises_the_callers_error_or_the_lookups_own():
    with pytest.raises(socket.gaierror):
        await hosts(pinned("none"), "unknown.test")
    resolver = pinned("none", lookup_failed=lambda host, err: Refused(host, [type(err).__name__]))
    with pytest.raises(Refused) as err:
        await hosts(resolver, "unknown.test")
    assert (err.value.host, err.value.addresses) == ("unknown.test", ["gaierror"])


async def test_close_closes_the_inner_resolver():
    inner = FixedAnswers({})
    await netguard_http.PinnedResolver("none", Refused, resolver=inner).close()
    assert inner.closed
