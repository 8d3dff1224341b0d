"""The resolver that holds each outbound connection to the addresses ``netguard``'s rule
vetted: webhook delivery (``webhook_http``) and the console's IdP metadata download
(``admin.connections``)."""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from .netguard import address_allowed

Refusal = Callable[[str, list[str]], Exception]


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver (``aiohttp.DefaultResolver`` unless ``resolver`` is given), then
    the address rule on what it answered; only the addresses that pass are returned, and a
    ``TCPConnector`` connects to exactly what its resolver returns, so the addresses
    vetted are the ones connected to — a second DNS answer (DNS rebinding) never reaches
    a socket. The connector's DNS cache, where on, holds only vetted answers.

    ``allow``: a setting (none|loopback|private) or a test of one address. By default the
    addresses that pass are kept and the others dropped; ``every=True`` refuses the name
    as soon as one of its addresses fails. A refusal raises ``refuse(host, addresses)``
    (all the addresses the name resolved to): an OSError is reported by aiohttp as a
    connection error (``ClientConnectorDNSError``), any other exception leaves the request
    as it is. A failed lookup raises ``lookup_failed(host, error)`` where given, else the
    lookup's own OSError.

    aiohttp does not resolve IP literals (``http://127.0.0.1/``): check those before the
    request. Pair with ``ClientSession(trust_env=False)``: a proxy would connect instead.
    """

    def __init__(
        self,
        allow: str | Callable[[str], bool],
        refuse: Refusal,
        *,
        every: bool = False,
        lookup_failed: Callable[[str, OSError], Exception] | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._allowed = functools.partial(address_allowed, allow=allow) if isinstance(allow, str) else allow
        self._refuse = refuse
        self._every = every
        self._lookup_failed = lookup_failed
        self._inner = resolver if resolver is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await self._inner.resolve(host, port, family)
        except OSError as err:
            if self._lookup_failed is None:
                raise
            raise self._lookup_failed(host, err) from None
        addresses = [r["host"] for r in results]
        ok = [a for a in addresses if self._allowed(a)]
        if not ok or (self._every and len(ok) < len(addresses)):
            raise self._refuse(host, addresses)
        return [r for r in results if r["host"] in ok]

    async def close(self) -> None:
        await self._inner.close()
