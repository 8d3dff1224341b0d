"""The XML Encryption decryptor and the algorithm allow-list (saml_gateway/xmlenc.py),
on documents built here with ``cryptography`` (keys generated per run)."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from saml_gateway.xmlenc import (
    DecryptFailed,
    PolicyRefusal,
    decrypt_document,
    signature_algorithm_problem,
)

pytestmark = pytest.mark.unit

XENC = "http://www.w3.org/2001/04/xmlenc#"
XENC11 = "http://www.w3.org/2009/xmlenc11#"
DS = "http://www.w3.org/2000/09/xmldsig#"
MORE = "http://www.w3.org/2001/04/xmldsig-more#"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
ASSERTION = (
    f'<saml:Assertion xmlns:saml="{SAML}" ID="_a1" Version="2.0" IssueInstant="2026-01-01T00:00:00Z">'
    "<saml:Issuer>https://idp.test/</saml:Issuer></saml:Assertion>"
).encode()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cbc(key: bytes, plain: bytes) -> bytes:
    iv = os.urandom(16)
    pad = 16 - len(plain) % 16
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + enc.update(plain + os.urandom(pad - 1) + bytes([pad])) + enc.finalize()


def _document(
    rsa_key: rsa.RSAPrivateKey,
    *,
    data_alg: str = XENC + "aes256-cbc",
    method: str = f'<xenc:EncryptionMethod Algorithm="{XENC}rsa-oaep-mgf1p">'
    f'<ds:DigestMethod Algorithm="{DS}sha1"/></xenc:EncryptionMethod>',
    oaep: padding.AsymmetricPadding | None = None,
    plain: bytes = ASSERTION,
    sibling_key: bool = False,
    data_type: str = XENC + "Element",
) -> bytes:
    size = 16 if "128" in data_alg else 32
    cek = os.urandom(size)
    if data_alg.endswith("gcm"):
        iv = os.urandom(12)
        blob = iv + AESGCM(cek).encrypt(iv, plain, None)
    else:
        blob = _cbc(cek, plain)
    oaep = oaep or padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    wrapped = rsa_key.public_key().encrypt(cek, oaep)
    ek = (
        f'<xenc:EncryptedKey xmlns:xenc="{XENC}" Id="_k1">{method}<xenc:CipherData><xenc:CipherValue>'
        f"{base64.b64encode(wrapped).decode()}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey>"
    )
    key_info = (
        f'<ds:KeyInfo><ds:RetrievalMethod URI="#_k1" Type="{XENC}EncryptedKey"/></ds:KeyInfo>'
        if sibling_key
        else f"<ds:KeyInfo>{ek}</ds:KeyInfo>"
    )
    return (
        f'<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:ds="{DS}" ID="_r" Version="2.0" '
        f'IssueInstant="2026-01-01T00:00:00Z"><saml:EncryptedAssertion xmlns:saml="{SAML}">'
        f'<xenc:EncryptedData xmlns:xenc="{XENC}" Type="{data_type}"><xenc:EncryptionMethod Algorithm="{data_alg}"/>'
        f"{key_info}<xenc:CipherData><xenc:CipherValue>{base64.b64encode(blob).decode()}</xenc:CipherValue>"
        f"</xenc:CipherData></xenc:EncryptedData>{ek if sibling_key else ''}</saml:EncryptedAssertion>"
        f"</samlp:Response>"
    ).encode()


@pytest.mark.parametrize(
    "data_alg", [XENC + "aes128-cbc", XENC + "aes256-cbc", XENC11 + "aes128-gcm", XENC11 + "aes256-gcm"]
)
def test_decrypts_in_place_where_xmlsec_puts_it(key: rsa.RSAPrivateKey, data_alg: str) -> None:
    out = decrypt_document(_document(key, data_alg=data_alg), key)
    assert "EncryptedData" not in out
    assert f'<saml:EncryptedAssertion xmlns:saml="{SAML}"><saml:Assertion xmlns:saml="{SAML}" ID="_a1"' in out


def test_xmlenc11_rsa_oaep_with_sha256_mgf1_sha256_and_a_label(key: rsa.RSAPrivateKey) -> None:
    method = (
        f'<xenc:EncryptionMethod Algorithm="{XENC11}rsa-oaep"><ds:DigestMethod Algorithm="{XENC}sha256"/>'
        f'<xenc11:MGF xmlns:xenc11="{XENC11}" Algorithm="{XENC11}mgf1sha256"/>'
        f"<xenc:OAEPparams>{base64.b64encode(b'label').decode()}</xenc:OAEPparams></xenc:EncryptionMethod>"
    )
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"label")
    assert 'ID="_a1"' in decrypt_document(_document(key, method=method, oaep=oaep), key)


def test_encrypted_key_beside_the_data(key: rsa.RSAPrivateKey) -> None:
    # saml-core §2.3.3.1: EncryptedKey may follow EncryptedData in the EncryptedAssertion.
    assert 'ID="_a1"' in decrypt_document(_document(key, sibling_key=True), key)


def test_rsa_1_5_is_refused_by_name(key: rsa.RSAPrivateKey) -> None:
    doc = _document(key, method=f'<xenc:EncryptionMethod Algorithm="{XENC}rsa-1_5"/>', oaep=padding.PKCS1v15())
    with pytest.raises(PolicyRefusal) as err:
        decrypt_document(doc, key)
    assert err.value.reason == "weak_encryption" and "RSA-1_5" in err.value.message


@pytest.mark.parametrize("data_alg", [XENC + "tripledes-cbc", "urn:x-made-up"])
def test_other_content_algorithms_are_refused(key: rsa.RSAPrivateKey, data_alg: str) -> None:
    with pytest.raises(PolicyRefusal) as err:
        decrypt_document(_document(key, data_alg=data_alg), key)
    assert err.value.reason == "weak_encryption" and data_alg in err.value.message


def test_another_key_fails_like_tampering(key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(DecryptFailed):
        decrypt_document(_document(other), key)
    doc = _document(key, data_alg=XENC11 + "aes256-gcm").replace(
        b"</xenc:CipherValue></xenc:CipherData></xenc:EncryptedData>",
        b"AAAA</xenc:CipherValue></xenc:CipherData></xenc:EncryptedData>",
    )
    with pytest.raises(DecryptFailed):
        decrypt_document(doc, key)


@pytest.mark.parametrize(
    "plain",
    [
        b'<!DOCTYPE a [<!ENTITY x "y">]>' + ASSERTION,
        b"<a/>",
        b"<a",
        f'<saml:Issuer xmlns:saml="{SAML}">x</saml:Issuer>'.encode(),
    ],
    ids=["dtd", "another element", "not well-formed", "not an assertion"],
)
def test_plaintext_that_is_not_an_assertion_fails_like_a_wrong_key(key: rsa.RSAPrivateKey, plain: bytes) -> None:
    # One answer, whatever the (possibly attacker-shaped, CBC) plaintext is.
    with pytest.raises(DecryptFailed):
        decrypt_document(_document(key, plain=plain), key)


@pytest.mark.parametrize(
    ("plain", "reason"),
    [
        (
            ASSERTION.replace(b"</saml:Assertion>", ASSERTION.replace(b'ID="_a1"', b'ID="_a2"') + b"</saml:Assertion>"),
            "assertions",
        ),
        (
            ASSERTION.replace(
                b"</saml:Assertion>",
                f'<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo>'
                f'<ds:SignatureMethod Algorithm="{DS}rsa-sha1"/><ds:Reference URI="#_a1">'
                f'<ds:DigestMethod Algorithm="{DS}sha1"/></ds:Reference></ds:SignedInfo>'
                "</ds:Signature></saml:Assertion>".encode(),
            ),
            "weak_signature",
        ),
    ],
    ids=["nested assertion", "rsa-sha1 inside"],
)
def test_the_plaintext_is_checked_like_a_response(key: rsa.RSAPrivateKey, plain: bytes, reason: str) -> None:
    with pytest.raises(PolicyRefusal) as err:
        decrypt_document(_document(key, plain=plain), key)
    assert err.value.reason == reason


def test_content_type_is_refused(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(PolicyRefusal):
        decrypt_document(_document(key, data_type=XENC + "Content"), key)


@pytest.mark.parametrize(
    ("method", "digest", "named"),
    [
        (DS + "rsa-sha1", XENC + "sha256", "RSA-SHA1"),
        (MORE + "rsa-sha256", DS + "sha1", "SHA-1"),
        (MORE + "rsa-md5", XENC + "sha256", "RSA-MD5"),
        (MORE + "rsa-sha256", MORE + "md5", "MD5"),
        (MORE + "rsa-sha256", XENC + "ripemd160", "RIPEMD-160"),
        (MORE + "rsa-sha256", MORE + "sha224", "SHA-224"),
        (MORE + "hmac-sha256", XENC + "sha256", "HMAC-SHA256"),
        ("", XENC + "sha256", "no SignatureMethod"),
    ],
)
def test_signature_allow_list_names_what_it_refuses(method: str, digest: str, named: str) -> None:
    problem = signature_algorithm_problem(method, [digest])
    assert problem is not None and named in problem


@pytest.mark.parametrize("method", ["rsa-sha256", "rsa-sha384", "rsa-sha512", "ecdsa-sha256", "ecdsa-sha512"])
@pytest.mark.parametrize("digest", [XENC + "sha256", MORE + "sha384", XENC + "sha512"])
def test_signature_allow_list_accepts(method: str, digest: str) -> None:
    assert signature_algorithm_problem(MORE + method, [digest]) is None
