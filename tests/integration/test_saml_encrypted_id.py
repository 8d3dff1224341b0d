"""EncryptedID (saml-core §2.2.4: the NameID encrypted on its own inside the signed
assertion, as Shibboleth's ``encryptNameIDs``, AD FS, PingFederate and Keycloak send it)
through the real SAML gateway, provisioner, Postgres and Redis: signed in and linked like
a clear NameID; inside an EncryptedAssertion too; refusals as readable pages (never a
500); wrapping refused; the test login shows the NameID was encrypted, and how."""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

import pytest
from lxml import etree

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import saml_attacks as atk
from provisio_lib import sso
from provisio_lib.admin import sso_test
from saml_idp import NAME_ID_ENCRYPTIONS, SAML_NS, XENC, encrypted_id_xml, sign_xml
from saml_setup import (
    PUBLIC,
    Setup,
    add_connection,
    audit_outcomes,
    code_of,
    exchange,
    page_is_clean,
    post_acs,
    sp_login,
    start_gateway,
)
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration

EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"


@pytest.fixture
async def gateway(service_env: dict[str, str], topology: Any) -> Any:
    client = await start_gateway()
    yield client
    await client.close()


@pytest.fixture
async def acme(pool: Any) -> Any:
    return await make_tenant(pool, name=f"acme-{uuid.uuid4().hex[:6]}")


async def _encrypted_id_response(client: Any, s: Setup, style: str = "shibboleth", **kw: Any) -> str:
    kw.setdefault("name_id_cert", s.sp_cert_b64)
    xml = s.response(in_response_to=await sp_login(client, s), encrypt_name_id=style, **kw)
    assert "NameID" not in xml and ("EncryptedID" in xml or "EncryptedAssertion" in xml)  # no clear NameID
    return xml


async def _profile(client: Any, s: Setup, resp: Any) -> dict[str, Any]:
    assert resp.status == 303, (resp.status, await resp.text())
    got = await exchange(client, s, code_of(resp))
    assert got.status == 200
    return dict(await got.json())


async def _refused(resp: Any, redis: Any, topology: Any, tenant_id: uuid.UUID, reason: str, status: int) -> str:
    html = await resp.text()
    assert resp.status == status, (resp.status, html)
    assert "text/html" in resp.headers["Content-Type"] and page_is_clean(html)
    outcomes = await audit_outcomes(redis, topology, tenant_id)
    refused = [o for o in outcomes if o.result == "failed" and f"refused:{reason}" in o.notes]
    assert refused, [o.notes for o in outcomes]
    return html


@pytest.mark.parametrize("backend", ["xmlsec", "xmlsec1"])
async def test_encrypted_name_id_signs_in_and_links_like_a_clear_one(
    service_env: dict[str, str], topology: Any, pool: Any, acme: Any, provisioner: Any, backend: str
) -> None:
    """Shibboleth's shape (EncryptedKey inline, Recipient, AES-128-GCM), then OpenSAML's
    peer placement: the same user each time, linked by (connection, NameID value); a
    later clear NameID of the same value is that user too — the encryption is the
    transport, the identity is the NameID."""
    client = await start_gateway(saml_crypto_backend=backend)
    try:
        s = await add_connection(pool, acme.id, "shib", preset="okta", jit="sync")
        first = await _profile(client, s, await post_acs(client, s, await _encrypted_id_response(client, s)))
        assert first["name_id"] == "alice@acme.test" and first["user_name"] == "alice@acme.test"
        link = await pool.fetchrow("SELECT * FROM user_identities WHERE tenant_id = $1", acme.id)
        assert link["name_id"] == "alice@acme.test" and str(link["user_id"]) == first["user_id"]
        for style in ("peer", "in-context"):
            again = await _profile(client, s, await post_acs(client, s, await _encrypted_id_response(client, s, style)))
            assert again["user_id"] == first["user_id"]
        clear = s.response(in_response_to=await sp_login(client, s))
        assert "alice@acme.test" in clear
        assert (await _profile(client, s, await post_acs(client, s, clear)))["user_id"] == first["user_id"]
        assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 1
        assert await pool.fetchval("SELECT count(*) FROM user_identities WHERE tenant_id = $1", acme.id) == 1
    finally:
        await client.close()


async def test_encrypted_name_id_inside_an_encrypted_assertion(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    """Both layers (PingFederate's "SAML_SUBJECT encrypted ... as part of a whole
    assertion" when both are on), response signed over the EncryptedAssertion too."""
    s = await add_connection(pool, acme.id, "ping", preset="okta")
    for style, signed in (("shibboleth", {}), ("xmlenc11", {"sign_response": True})):
        xml = await _encrypted_id_response(
            gateway, s, style, encrypt_cert=s.sp_cert_b64, encryption="okta-aes256-gcm", **signed
        )
        assert "EncryptedAssertion" in xml and "EncryptedID" not in xml  # inside the ciphertext
        profile = await _profile(gateway, s, await post_acs(gateway, s, xml))
        assert profile["name_id"] == "alice@acme.test"


async def test_name_id_encrypted_to_another_key_is_a_readable_page(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    """The IdP holds an old or wrong SP certificate: 403 with what to do, not a 500."""
    s = await add_connection(pool, acme.id, "shib", preset="okta")
    _, other_cert = sso.generate_sp_keypair("someone else")
    xml = await _encrypted_id_response(gateway, s, name_id_cert=sso.cert_b64(other_cert))
    html = await _refused(await post_acs(gateway, s, xml), redis, topology, acme.id, "decrypt", 403)
    assert "NameID" in html and "could not be decrypted" in html and "SP metadata" in html
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 0


@pytest.mark.parametrize(("style", "named"), [("rsa-1_5", "RSA-1_5"), ("tripledes", "tripledes-cbc")])
async def test_refused_algorithms_are_named_on_the_page(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any, style: str, named: str
) -> None:
    s = await add_connection(pool, acme.id, "shib", preset="okta")
    xml = await _encrypted_id_response(gateway, s, style)
    html = await _refused(await post_acs(gateway, s, xml), redis, topology, acme.id, "weak_encryption", 403)
    assert named in html and "NameID" in html


async def test_an_unsigned_encrypted_id_is_never_decrypted(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    """Nothing signed: refused for the signature, before any decryption (a ciphertext to
    another key would otherwise say "decrypt": no oracle for unsigned ciphertext)."""
    s = await add_connection(pool, acme.id, "shib", preset="okta")
    _, other_cert = sso.generate_sp_keypair("someone else")
    xml = await _encrypted_id_response(
        gateway, s, name_id_cert=sso.cert_b64(other_cert), sign_assertion=False, sign_response=False
    )
    await _refused(await post_acs(gateway, s, xml), redis, topology, acme.id, "signature", 403)


def _attacker_encrypted_id(s: Setup, value: str = atk.EVIL) -> etree._Element:
    """Anyone can encrypt to the SP's public certificate (it is published)."""
    return etree.fromstring(
        encrypted_id_xml(value, EMAIL, s.sp_cert_b64, NAME_ID_ENCRYPTIONS["shibboleth"], recipient=s.urls.entity_id)
    )


async def test_moved_or_swapped_encrypted_ids_are_refused(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    """Wrapping with EncryptedIDs: the only NameID ever used is the one the verified
    signature covers, in the verified assertion's Subject."""
    s = await add_connection(pool, acme.id, "shib", preset="okta")

    # An attacker's EncryptedID in the response's Extensions, beside a genuine signed
    # assertion with a clear NameID (response unsigned, assertion signed).
    root = atk.parse(s.response(in_response_to=await sp_login(gateway, s), sign_response=False))
    ext = etree.Element("{urn:oasis:names:tc:SAML:2.0:protocol}Extensions")
    ext.append(_attacker_encrypted_id(s))
    root.find(f"{{{SAML_NS}}}Issuer").addnext(ext)
    await _refused(await post_acs(gateway, s, atk.dump(root)), redis, topology, acme.id, "subject", 400)

    # A second Subject with the attacker's EncryptedID appended to the signed assertion.
    root = atk.parse(await _encrypted_id_response(gateway, s))
    subject = etree.SubElement(atk.assertion_of(root), f"{{{SAML_NS}}}Subject")
    subject.append(_attacker_encrypted_id(s))
    await _refused(await post_acs(gateway, s, atk.dump(root)), redis, topology, acme.id, "subject", 400)

    # The signed assertion's EncryptedID swapped for the attacker's: the signature breaks.
    root = atk.parse(await _encrypted_id_response(gateway, s))
    genuine = root.find(f".//{{{SAML_NS}}}EncryptedID")
    genuine.getparent().replace(genuine, _attacker_encrypted_id(s))
    await _refused(await post_acs(gateway, s, atk.dump(root)), redis, topology, acme.id, "signature", 403)

    # The attacker's EncryptedID in the genuine assertion's SubjectConfirmation.
    root = atk.parse(await _encrypted_id_response(gateway, s))
    atk.assertion_of(root).find(f"{{{SAML_NS}}}Subject/{{{SAML_NS}}}SubjectConfirmation").insert(
        0, _attacker_encrypted_id(s)
    )
    await _refused(await post_acs(gateway, s, atk.dump(root)), redis, topology, acme.id, "subject", 400)

    # XSW3 with EncryptedIDs: an unsigned evil assertion (attacker's EncryptedID) before
    # the signed original.
    original = atk.parse(await _encrypted_id_response(gateway, s))
    evil = atk.parse(atk.dump(original))
    evil_assertion = atk.strip_signatures(atk.assertion_of(evil))
    evil_assertion.set("ID", "_evil_assertion")
    eid = evil_assertion.find(f".//{{{SAML_NS}}}EncryptedID")
    eid.getparent().replace(eid, _attacker_encrypted_id(s))
    atk.assertion_of(original).addprevious(evil_assertion)
    await _refused(await post_acs(gateway, s, atk.dump(original)), redis, topology, acme.id, "assertions", 400)

    # A NameID and an EncryptedID in one Subject, validly signed: schema-invalid (the
    # Subject holds one identifier), which pysaml2's schema check before the signature
    # check refuses as a bad signature.
    root = atk.parse(s.response(in_response_to=await sp_login(gateway, s), sign_response=False, sign_assertion=False))
    nid = atk.assertion_of(root).find(f"{{{SAML_NS}}}Subject/{{{SAML_NS}}}NameID")
    nid.addnext(_attacker_encrypted_id(s))
    resp = await post_acs(gateway, s, sign_xml(atk.dump(root), s.idp.keys))
    await _refused(resp, redis, topology, acme.id, "signature", 403)
    assert await pool.fetchval("SELECT count(*) FROM users WHERE user_name = $1", atk.EVIL) == 0


async def test_signed_plaintext_that_is_not_one_name_id_is_refused(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    """Validly signed by the IdP, but the EncryptedID holds two NameIDs: refused, and
    neither value is used."""
    s = await add_connection(pool, acme.id, "shib", preset="okta")
    two = (
        f'<saml2:NameID xmlns:saml2="{SAML_NS}">alice@acme.test</saml2:NameID>'
        f'<saml2:NameID xmlns:saml2="{SAML_NS}">{atk.EVIL}</saml2:NameID>'
    ).encode()
    root = atk.parse(s.response(in_response_to=await sp_login(gateway, s), sign_response=False, sign_assertion=False))
    nid = atk.assertion_of(root).find(f"{{{SAML_NS}}}Subject/{{{SAML_NS}}}NameID")
    nid.getparent().replace(
        nid,
        etree.fromstring(encrypted_id_xml("", None, s.sp_cert_b64, NAME_ID_ENCRYPTIONS["peer"], plaintext=two)),
    )
    resp = await post_acs(gateway, s, sign_xml(atk.dump(root), s.idp.keys))
    html = await _refused(resp, redis, topology, acme.id, "subject", 400)
    assert "exactly one NameID" in html and atk.EVIL not in html


async def test_test_login_shows_the_name_id_was_encrypted_and_how(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    """The console's test sign-in: the decrypted NameID and its format, and the NameID's
    algorithms labelled (with the OAEP digest and MGF) beside the assertion's."""
    s = await add_connection(pool, acme.id, "shib", preset="okta")
    settings = sso_test.TestLoginSettings(saml_public_url=PUBLIC, console_public_url="http://console.test")
    async with pool.acquire() as c:
        start = await sso_test.start_test(
            c, acme.id, "shib", return_to="/setup/x/sso", actor="a@acme.test", settings=settings
        )
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(start.login_url)
    resp = await gateway.get(f"{parts.path}?{parts.query}", allow_redirects=False)
    assert resp.status == 302
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    import base64
    import zlib

    from defusedxml.ElementTree import fromstring

    req_id = str(fromstring(zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)).get("ID"))
    xml = s.response(
        in_response_to=req_id,
        encrypt_name_id="xmlenc11",
        name_id_cert=s.sp_cert_b64,
        encrypt_cert=s.sp_cert_b64,
        encryption="okta",
    )
    done = await post_acs(gateway, s, xml, relay_state=query["RelayState"][0])
    assert done.status == 303, await done.text()
    async with pool.acquire() as c:
        result = await sso_test.get_result(c, acme.id, start.test_id)
    assert result is not None and result.status == "passed", result
    r = result.received
    assert r is not None and r.name_id == "alice@acme.test" and r.name_id_format == EMAIL
    xenc11 = "http://www.w3.org/2009/xmlenc11#"
    assert r.encryption_algorithms == [
        XENC + "aes256-cbc",  # the EncryptedAssertion's (Okta's defaults)
        XENC + "rsa-oaep-mgf1p",
        f"NameID: {xenc11}aes256-gcm",
        f"NameID: {xenc11}rsa-oaep",
        f"NameID: {XENC}sha256",
        f"NameID: {xenc11}mgf1sha256",
    ]
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 0


async def test_encrypted_name_id_in_worker_processes(
    service_env: dict[str, str], topology: Any, pool: Any, acme: Any, provisioner: Any, redis: Any
) -> None:
    """PROVISIO_SAML_VERIFY_PROCESSES: decrypted in the worker, the login and a refusal
    cross the process boundary."""
    client = await start_gateway(saml_verify_processes=1)
    try:
        s = await add_connection(pool, acme.id, "shib", preset="okta")
        profile = await _profile(client, s, await post_acs(client, s, await _encrypted_id_response(client, s)))
        assert profile["name_id"] == "alice@acme.test"
        xml = await _encrypted_id_response(client, s, "rsa-1_5")
        html = await _refused(await post_acs(client, s, xml), redis, topology, acme.id, "weak_encryption", 403)
        assert "RSA-1_5" in html
    finally:
        await client.close()
