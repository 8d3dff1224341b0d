"""Helpers for SAML gateway tests: a connection row made the way `provisio sso add`
makes it, the gateway app in process, and the browser's side of a login."""

from __future__ import annotations

import base64
import uuid
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from defusedxml.ElementTree import fromstring

from provisio_lib import sso
from provisio_lib.outcomes import entry_outcomes
from provisio_lib.tokens import generate_token, hash_token
from provisio_lib.topology import Topology
from saml_gateway.saml import Connection, SamlEngine
from saml_idp import ATTRIBUTES, SHAPES, TestIdP, b64

PUBLIC = "http://127.0.0.1:8082"


@dataclass
class Setup:
    tenant_id: uuid.UUID
    tenant: str
    name: str
    idp: TestIdP
    preset: str
    secret: str
    urls: sso.SpUrls
    sp_cert_b64: str
    sp_metadata: str = ""

    def response(
        self,
        *,
        in_response_to: str | None = None,
        name_id: str = "alice@acme.test",
        attributes: dict[str, list[str]] | None = None,
        groups: list[str] | None = None,
        shape: str | None = None,
        **kw: Any,
    ) -> str:
        sign_response, sign_assertion = SHAPES.get(self.preset, (False, True))
        if shape == "encrypted":
            kw["encrypt_cert"] = self.sp_cert_b64
            kw.setdefault("encryption", "okta" if self.preset == "okta" else "entra")
        elif shape == "response":
            sign_response, sign_assertion = True, False
        elif shape == "both":
            sign_response, sign_assertion = True, True
        elif shape == "assertion":
            sign_response, sign_assertion = False, True
        sign_response = kw.pop("sign_response", sign_response)
        sign_assertion = kw.pop("sign_assertion", sign_assertion)
        if attributes is None:
            attributes = ATTRIBUTES.get(self.preset, ATTRIBUTES["okta"])(groups)
        return self.idp.response(
            sp_entity_id=self.urls.entity_id,
            acs_url=self.urls.acs,
            name_id=name_id,
            attributes=attributes,
            in_response_to=in_response_to,
            sign_response=sign_response,
            sign_assertion=sign_assertion,
            sp_metadata=self.sp_metadata or None,
            **kw,
        )


async def add_connection(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    name: str,
    *,
    preset: str = "entra",
    jit: str = "create",
    app_url: str | None = "https://app.test/sso/callback?x=1",
    allow_idp_initiated: bool = False,
    required: tuple[str, ...] = (),
    mapping: dict[str, str] | None = None,
    idp: TestIdP | None = None,
) -> Setup:
    idp = idp or TestIdP(f"https://idp.test/{uuid.uuid4().hex[:8]}/")
    tenant = await pool.fetchval("SELECT name FROM tenants WHERE id = $1", tenant_id)
    key_pem, cert_pem = sso.generate_sp_keypair(f"provisio {tenant}/{name}")
    secret = "pas_" + generate_token()[4:]
    amap = sso.attribute_map(preset, mapping or {})
    info = sso.parse_idp_metadata(idp.metadata())
    await pool.execute(
        """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata, jit_mode, app_url,
               allow_idp_initiated, attribute_map, required_attributes, sp_cert_pem, sp_key_pem, app_secret_hash)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
        uuid.uuid4(),
        tenant_id,
        name,
        preset,
        info.entity_id,
        idp.metadata(),
        jit,
        app_url,
        allow_idp_initiated,
        amap,
        list(required),
        cert_pem,
        key_pem,
        hash_token(secret),
    )
    row = await pool.fetchrow(
        """SELECT c.*, t.name AS tenant_name FROM sso_connections c JOIN tenants t ON t.id = c.tenant_id
           WHERE c.tenant_id = $1 AND c.name = $2""",
        tenant_id,
        name,
    )
    setup = Setup(
        tenant_id, tenant, name, idp, preset, secret, sso.sp_urls(PUBLIC, tenant, name), sso.cert_b64(cert_pem)
    )
    # The IdP knows the SP from its metadata, as after an admin uploads it.
    setup.sp_metadata = _engine().sp_metadata(Connection.from_row(row))
    return setup


_ENGINES: list[Any] = []


def _engine() -> Any:
    if not _ENGINES:
        _ENGINES.append(
            SamlEngine(
                public_url=PUBLIC, skew_s=180, max_bytes=256 * 1024, backend="xmlsec", xmlsec1_path="/usr/bin/xmlsec1"
            )
        )
    return _ENGINES[0]


async def start_gateway(**overrides: Any) -> TestClient:
    from provisio_lib.settings import load_settings
    from saml_gateway.app import create_app
    from saml_gateway.settings import SamlSettings

    settings = load_settings(SamlSettings, **{"saml_public_url": PUBLIC, "saml_connection_cache_s": 0, **overrides})
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client


async def sp_login(client: TestClient, s: Setup, relay_state: str | None = None) -> str:
    """GET the JIT login URL like a browser; return the AuthnRequest id it carries."""
    params = {"RelayState": relay_state} if relay_state else {}
    resp = await client.get(f"/saml/{s.tenant}/{s.name}/login", params=params, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    return str(fromstring(xml).get("ID"))


async def post_acs(client: TestClient, s: Setup, xml: str, relay_state: str | None = None) -> Any:
    data = {"SAMLResponse": b64(xml)}
    if relay_state:
        data["RelayState"] = relay_state
    return await client.post(f"/saml/{s.tenant}/{s.name}/acs", data=data, allow_redirects=False)


def code_of(resp: Any) -> str:
    assert resp.status == 303, resp.status
    return parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]


async def exchange(client: TestClient, s: Setup, code: str, secret: str | None = None) -> Any:
    return await client.post(
        "/saml/token", data={"code": code}, headers={"Authorization": f"Bearer {secret or s.secret}"}
    )


async def audit_outcomes(redis: Any, topology: Topology, tenant_id: uuid.UUID) -> list[Any]:
    entries = await redis.xrange(topology.audit_stream_for(tenant_id))
    out = []
    for _id, fields in entries:
        out.extend(o for o in entry_outcomes(fields) if o.tenant_id == tenant_id)
    return out


def page_is_clean(html: str) -> bool:
    lowered = html.lower()
    # No stack trace, key material or echoed XML on a page a browser shows.
    return not any(
        s in lowered for s in ("traceback", "begin certificate", "private key", "urn:oasis:names", "&lt;", 'file "')
    )
