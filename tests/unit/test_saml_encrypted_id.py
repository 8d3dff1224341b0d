"""EncryptedID (saml-core §2.2.4), the pure parts: ``xmlenc.decrypt_name_id`` on the
EncryptedIDs tests/saml_idp.py builds the way IdPs send them, the placement rule, and
how the test login labels the NameID's algorithms. End to end (signatures, the gateway,
identity links): tests/integration/test_saml_encrypted_id.py."""

from __future__ import annotations

import base64
import os
import sys
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from defusedxml.ElementTree import fromstring as safe_fromstring
from lxml import etree

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from provisio_lib import sso
from saml_gateway.testmode import encryption_algorithms, inspect_unverified
from saml_gateway.xmlenc import (
    MAX_NAME_ID_PLAINTEXT,
    PolicyRefusal,
    check_encrypted_ids,
    decrypt_name_id,
    load_private_key,
)
from saml_idp import NAME_ID_ENCRYPTIONS, XENC, XENC11, encrypted_id_xml

pytestmark = pytest.mark.unit

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
SP = "https://sso.test/saml/acme/shib/metadata"
IDP = "https://idp.test/idp/shibboleth"


@pytest.fixture(scope="module")
def sp() -> tuple[rsa.RSAPrivateKey, str]:
    key_pem, cert_pem = sso.generate_sp_keypair("sp")
    return load_private_key(key_pem.encode()), sso.cert_b64(cert_pem)


def _eid(xml: str) -> Any:
    return etree.fromstring(xml.encode())


def _make(sp: tuple[rsa.RSAPrivateKey, str], style: str = "shibboleth", **kw: Any) -> Any:
    kw.setdefault("recipient", SP)
    kw.setdefault("name_qualifier", IDP)
    return _eid(encrypted_id_xml("alice@acme.test", EMAIL, sp[1], NAME_ID_ENCRYPTIONS[style], **kw))


@pytest.mark.parametrize("style", ["shibboleth", "shibboleth-cbc", "peer", "xmlenc11", "in-context"])
def test_decrypts_each_shape_to_the_name_id(sp: tuple[rsa.RSAPrivateKey, str], style: str) -> None:
    eid = _make(sp, style, context_prefix="saml2")
    xml, algorithms = decrypt_name_id(eid, [sp[0]])
    nid = safe_fromstring(xml)
    assert nid.tag == f"{{{SAML}}}NameID" and nid.text == "alice@acme.test"
    assert nid.get("Format") == EMAIL and nid.get("NameQualifier") == IDP and nid.get("SPNameQualifier") == SP
    enc = NAME_ID_ENCRYPTIONS[style]
    assert algorithms[:2] == (enc.data, enc.key_transport)
    assert (enc.oaep_digest in algorithms) and ((enc.mgf in algorithms) if enc.mgf else True)


def test_peer_key_placement_is_beside_the_data(sp: tuple[rsa.RSAPrivateKey, str]) -> None:
    eid = _make(sp, "peer")
    assert eid.find(f"{{{XENC}}}EncryptedKey").get("Recipient") == SP
    assert (
        eid.find(f"{{{XENC}}}EncryptedData/{{http://www.w3.org/2000/09/xmldsig#}}KeyInfo/{{{XENC}}}EncryptedKey")
        is None
    )
    assert decrypt_name_id(eid, [sp[0]])[0]


def test_the_sp_may_hold_several_keys(sp: tuple[rsa.RSAPrivateKey, str]) -> None:
    """A key rollover: the old key first, the one the IdP used second."""
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    xml, _ = decrypt_name_id(_make(sp), [old, sp[0]])
    assert "alice@acme.test" in xml


def test_markup_in_the_value_is_kept_as_text(sp: tuple[rsa.RSAPrivateKey, str]) -> None:
    eid = _eid(encrypted_id_xml('a&b<c>"d', PERSISTENT, sp[1], NAME_ID_ENCRYPTIONS["shibboleth"]))
    xml, _ = decrypt_name_id(eid, [sp[0]])
    assert safe_fromstring(xml).text == 'a&b<c>"d'


def test_another_key_is_a_decrypt_refusal_naming_the_name_id(sp: tuple[rsa.RSAPrivateKey, str]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(PolicyRefusal) as err:
        decrypt_name_id(_make(sp), [other])
    assert err.value.reason == "decrypt" and "NameID" in err.value.message and err.value.status == 403


@pytest.mark.parametrize(("style", "named"), [("rsa-1_5", "RSA-1_5"), ("tripledes", "tripledes-cbc")])
def test_refused_algorithms_are_named(sp: tuple[rsa.RSAPrivateKey, str], style: str, named: str) -> None:
    with pytest.raises(PolicyRefusal) as err:
        decrypt_name_id(_make(sp, style), [sp[0]])
    assert err.value.reason == "weak_encryption" and named in err.value.message and "NameID" in err.value.message


@pytest.mark.parametrize(
    "plaintext",
    [
        f'<saml2:NameID xmlns:saml2="{SAML}">a</saml2:NameID><saml2:NameID xmlns:saml2="{SAML}">b</saml2:NameID>',
        f'<saml2:BaseID xmlns:saml2="{SAML}">a</saml2:BaseID>',
        f'<saml2:Assertion xmlns:saml2="{SAML}" ID="_x" Version="2.0" IssueInstant="2026-01-01T00:00:00Z"/>',
        f'<saml2:NameID xmlns:saml2="{SAML}">a<saml2:NameID>b</saml2:NameID></saml2:NameID>',
        f'<saml2:NameID xmlns:saml2="{SAML}">alice<!-- -->@evil.test</saml2:NameID>',
        f'<saml2:NameID xmlns:saml2="{SAML}" Evil="1">a</saml2:NameID>',
        '<NameID xmlns="urn:other">a</NameID>',
        f'text<saml2:NameID xmlns:saml2="{SAML}">a</saml2:NameID>',
        f'<!DOCTYPE x [<!ENTITY e "mallory">]><saml2:NameID xmlns:saml2="{SAML}">&e;</saml2:NameID>',
        '<saml2:NameID xmlns:saml2="urn:oasis:names:tc:SAML:2.0:assertion">unclosed',
        "",
    ],
    ids=[
        "two",
        "base-id",
        "assertion",
        "nested",
        "comment",
        "foreign-attr",
        "other-ns",
        "text",
        "dtd",
        "broken",
        "empty",
    ],
)
def test_plaintext_must_be_exactly_one_name_id(sp: tuple[rsa.RSAPrivateKey, str], plaintext: str) -> None:
    eid = _eid(encrypted_id_xml("", None, sp[1], NAME_ID_ENCRYPTIONS["shibboleth"], plaintext=plaintext.encode()))
    with pytest.raises(PolicyRefusal) as err:
        decrypt_name_id(eid, [sp[0]])
    assert err.value.reason == "subject", err.value.message
    assert "mallory" not in err.value.message


def test_oversized_ciphertext_is_refused(sp: tuple[rsa.RSAPrivateKey, str]) -> None:
    big = f'<saml2:NameID xmlns:saml2="{SAML}">{"a" * (MAX_NAME_ID_PLAINTEXT + 100)}</saml2:NameID>'
    eid = _eid(encrypted_id_xml("", None, sp[1], NAME_ID_ENCRYPTIONS["shibboleth"], plaintext=big.encode()))
    with pytest.raises(PolicyRefusal) as err:
        decrypt_name_id(eid, [sp[0]])
    assert err.value.reason == "too_large" and err.value.status == 413
    huge = _make(sp)
    huge.append(etree.Element("{urn:x}pad", v="p" * 20_000))
    with pytest.raises(PolicyRefusal) as err:
        decrypt_name_id(huge, [sp[0]])
    assert err.value.reason == "too_large"


def test_encrypted_data_of_another_type_is_refused(sp: tuple[rsa.RSAPrivateKey, str]) -> None:
    eid = _make(sp)
    eid.find(f"{{{XENC}}}EncryptedData").set("Type", XENC + "Content")
    with pytest.raises(PolicyRefusal) as err:
        decrypt_name_id(eid, [sp[0]])
    assert err.value.reason == "subject"
    two = _make(sp)
    two.append(_make(sp).find(f"{{{XENC}}}EncryptedData"))
    with pytest.raises(PolicyRefusal):
        decrypt_name_id(two, [sp[0]])


# ------------------------------------------------------------------ placement


def _response(subject_inner: str, extra: str = "", confirmation_inner: str = "") -> Any:
    return etree.fromstring(
        (
            f'<samlp:Response xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}">{extra}'
            f'<saml:Assertion ID="_a"><saml:Subject>{subject_inner}'
            f'<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">{confirmation_inner}'
            "</saml:SubjectConfirmation></saml:Subject></saml:Assertion></samlp:Response>"
        ).encode()
    )


EID = "<saml:EncryptedID/>"


@pytest.mark.parametrize(
    ("subject", "extra", "confirmation"),
    [
        (EID + EID, "", ""),
        ("<saml:NameID>a</saml:NameID>", f"<samlp:Extensions>{EID}</samlp:Extensions>", ""),
        ("<saml:NameID>a</saml:NameID>", "", EID),
        (EID, f"<saml:Subject>{EID}</saml:Subject>", ""),
    ],
    ids=["two", "in-extensions", "in-confirmation", "second-subject-outside"],
)
def test_an_encrypted_id_anywhere_but_the_subject_is_refused(subject: str, extra: str, confirmation: str) -> None:
    root = _response(subject, extra, confirmation)
    with pytest.raises(PolicyRefusal) as err:
        check_encrypted_ids(root.findall(f"{{{SAML}}}Assertion"), root)
    assert err.value.reason == "subject"


def test_a_second_subject_in_the_assertion_is_refused() -> None:
    root = _response(EID)
    root.find(f"{{{SAML}}}Assertion").append(
        etree.fromstring(f'<saml:Subject xmlns:saml="{SAML}">{EID}</saml:Subject>')
    )
    with pytest.raises(PolicyRefusal):
        check_encrypted_ids(root.findall(f"{{{SAML}}}Assertion"), root)


def test_the_subjects_encrypted_id_is_accepted() -> None:
    root = _response(EID)
    check_encrypted_ids(root.findall(f"{{{SAML}}}Assertion"), root)
    plain = _response("<saml:NameID>a</saml:NameID>")
    check_encrypted_ids(plain.findall(f"{{{SAML}}}Assertion"), plain)


# ------------------------------------------------------------------ test login report


def test_the_test_login_labels_the_name_ids_algorithms(sp: tuple[rsa.RSAPrivateKey, str]) -> None:
    eid = encrypted_id_xml("alice@acme.test", EMAIL, sp[1], NAME_ID_ENCRYPTIONS["xmlenc11"])
    xml = (
        f'<samlp:Response xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}"><saml:Issuer>{IDP}</saml:Issuer>'
        f"<saml:Assertion><saml:Issuer>{IDP}</saml:Issuer><saml:Subject>{eid}</saml:Subject></saml:Assertion>"
        "</samlp:Response>"
    )
    b64 = base64.b64encode(xml.encode()).decode()
    # Unverified (a refused test): read from the XML, labelled, no NameID shown.
    received = inspect_unverified(b64, 256 * 1024)
    assert received.name_id is None and received.issuer == IDP
    assert received.encryption_algorithms == [f"NameID: {XENC11}aes256-gcm", f"NameID: {XENC11}rsa-oaep"]
    # Verified: the algorithms the gateway decrypted with (OAEP digest and MGF included).
    verified = (XENC11 + "aes256-gcm", XENC11 + "rsa-oaep", XENC + "sha256", XENC11 + "mgf1sha256")
    assert encryption_algorithms(b64, 256 * 1024, verified) == [f"NameID: {a}" for a in verified]
    # A clear NameID: nothing labelled.
    plain = base64.b64encode(xml.replace(eid, "<saml:NameID>a</saml:NameID>").encode()).decode()
    assert encryption_algorithms(plain, 256 * 1024) == []


@pytest.mark.parametrize(("style", "named"), [("rsa-1_5", "RSA-1_5"), ("tripledes", "tripledes-cbc")])
def test_algorithms_are_judged_with_the_placement_before_any_key_is_used(
    sp: tuple[rsa.RSAPrivateKey, str], style: str, named: str
) -> None:
    """The pre-check (before the signature check) refuses a weak EncryptedID by name, as
    it does a weak signature; the accepted shapes pass it."""
    for accepted in ("shibboleth", "peer", "xmlenc11"):
        root = _response(encrypted_id_xml("a", None, sp[1], NAME_ID_ENCRYPTIONS[accepted]))
        check_encrypted_ids(root.findall(f"{{{SAML}}}Assertion"), root)
    root = _response(encrypted_id_xml("a", None, sp[1], NAME_ID_ENCRYPTIONS[style]))
    with pytest.raises(PolicyRefusal) as err:
        check_encrypted_ids(root.findall(f"{{{SAML}}}Assertion"), root)
    assert err.value.reason == "weak_encryption" and named in err.value.message
