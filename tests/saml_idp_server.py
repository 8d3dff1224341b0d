"""The test IdP (tests/saml_idp.py) over HTTP on loopback, for browser round trips.

- ``GET /metadata`` — the IdP's metadata (what an admin uploads to the setup page);
- ``GET /sso`` — takes an AuthnRequest by the HTTP-Redirect binding (saml-bindings
  §3.4) and answers, as a real IdP does after its own sign-in, with an auto-submitting
  form that POSTs a real signed (optionally encrypted) response to the request's ACS,
  with the RelayState (saml-bindings §3.5). The "user" who signs in is ``user``.

The SP is looked up by the request's Issuer, which for Provisio is its metadata URL:
the server downloads it (loopback only) so pysaml2's IdP side knows the SP, and takes
the SP's encryption certificate from it when ``encrypt`` is set. Every request seen is
kept in ``requests`` for assertions. This is a test tool, not a page of Provisio: its
form submits itself with a one-line script (a button without JavaScript).
"""

from __future__ import annotations

import base64
import socket
import uuid
import zlib
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from defusedxml.ElementTree import fromstring

from saml_idp import ATTRIBUTES, SHAPES, TestIdP

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class TestUser:
    """Who signs in at the IdP, and how the IdP sends it."""

    __test__ = False  # not a pytest class

    name_id: str = "alice@acme.test"
    groups: list[str] | None = field(default_factory=lambda: ["Sales", "Engineering"])
    attributes: dict[str, list[str]] | None = None  # default: the preset's shape for alice
    encrypt: bool = False
    encrypt_name_id: str | None = None  # a NAME_ID_ENCRYPTIONS key: an EncryptedID (Shibboleth ...)
    response_kw: dict[str, Any] = field(default_factory=dict)  # e.g. sign_alg for a weak signature


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class IdpServer:
    """``async with IdpServer(preset="okta") as idp:`` — ``idp.metadata_url``, ``idp.user``."""

    def __init__(self, *, preset: str = "entra", host: str = "127.0.0.1", user: TestUser | None = None) -> None:
        self.preset = preset
        self.host = host
        self.port = _free_port(host)
        self.base = f"http://{host}:{self.port}"
        self.idp = TestIdP(f"{self.base}/idp/{uuid.uuid4().hex[:8]}", sso_url=f"{self.base}/sso")
        self.user = user or TestUser()
        self.requests: list[dict[str, str | None]] = []
        self._sp_metadata: dict[str, str] = {}
        self._runner: web.AppRunner | None = None

    @property
    def metadata_url(self) -> str:
        return f"{self.base}/metadata"

    async def __aenter__(self) -> IdpServer:
        app = web.Application()
        app.router.add_get("/metadata", self._metadata)
        app.router.add_get("/sso", self._sso)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metadata(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.idp.metadata(), content_type="application/samlmetadata+xml")

    async def _sso(self, request: web.Request) -> web.Response:
        raw = request.query.get("SAMLRequest")
        if not raw:
            return web.Response(status=400, text="no SAMLRequest (this IdP takes the HTTP-Redirect binding)")
        # saml-bindings §3.4.4.1: DEFLATE (raw), then base64, then URL-encoded.
        xml = zlib.decompress(base64.b64decode(raw), -15)
        req = fromstring(xml, forbid_dtd=True)
        if req.tag != f"{{{SAMLP}}}AuthnRequest":
            return web.Response(status=400, text="not an AuthnRequest")
        issuer = (req.findtext(f"{{{SAML}}}Issuer") or "").strip()
        acs = req.get("AssertionConsumerServiceURL") or ""
        relay_state = request.query.get("RelayState")
        self.requests.append({"id": req.get("ID"), "issuer": issuer, "acs": acs, "relay_state": relay_state})
        sp_metadata = await self._sp(issuer)
        user = self.user
        sign_response, sign_assertion = SHAPES.get(self.preset, (False, True))
        kw = dict(user.response_kw)
        if user.encrypt:
            kw["encrypt_cert"] = _encryption_cert(sp_metadata)
            kw.setdefault("encryption", "okta" if self.preset == "okta" else "entra")
        if user.encrypt_name_id:
            kw["encrypt_name_id"] = user.encrypt_name_id
            kw["name_id_cert"] = _encryption_cert(sp_metadata)
        attributes = user.attributes if user.attributes is not None else ATTRIBUTES[self.preset](user.groups)
        response = self.idp.response(
            sp_entity_id=issuer,
            acs_url=acs,
            name_id=user.name_id,
            attributes=attributes,
            in_response_to=req.get("ID"),
            sign_response=kw.pop("sign_response", sign_response),
            sign_assertion=kw.pop("sign_assertion", sign_assertion),
            sp_metadata=sp_metadata,
            **kw,
        )
        fields = f'<input type="hidden" name="SAMLResponse" value="{base64.b64encode(response.encode()).decode()}">'
        if relay_state is not None:
            fields += f'<input type="hidden" name="RelayState" value="{escape(relay_state)}">'
        page = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Test IdP</title></head><body>"
            f'<form method="post" action="{escape(acs)}">{fields}'
            "<p>Signed in at the test IdP as "
            f"{escape(user.name_id)}.</p><button type=submit>Continue</button></form>"
            "<script>document.forms[0].submit()</script></body></html>"
        )
        return web.Response(text=page, content_type="text/html")

    async def _sp(self, entity_id: str) -> str:
        """The SP's metadata, from its entity id (Provisio's is the metadata URL)."""
        if entity_id not in self._sp_metadata:
            host = urlsplit(entity_id).hostname or ""
            if host not in LOOPBACK:
                raise web.HTTPBadRequest(text="the test IdP fetches SP metadata from loopback only")
            async with aiohttp.ClientSession() as s, s.get(entity_id) as resp:
                resp.raise_for_status()
                self._sp_metadata[entity_id] = await resp.text()
        return self._sp_metadata[entity_id]


def _encryption_cert(sp_metadata: str) -> str:
    """The SP's encryption certificate (base64 DER) from its metadata."""
    root = fromstring(sp_metadata.encode(), forbid_dtd=True)
    for kd in root.iter(f"{{{MD}}}KeyDescriptor"):
        if kd.get("use") in (None, "encryption"):
            cert = kd.findtext(f".//{{{DS}}}X509Certificate")
            if cert:
                return "".join(cert.split())
    raise ValueError("the SP metadata has no encryption certificate")
