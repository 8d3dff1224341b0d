"""A test SAML IdP on pysaml2's IdP side (``saml2.server.Server``).

Keys and certificates are generated per test session with ``cryptography`` (never
committed). Responses come in the shapes the real IdPs send:

- Entra ID: assertion signed (its default "Sign SAML assertion"), claim URIs;
- Google Workspace: response signed, admin-chosen attribute names;
- Okta: response and assertion signed;
- JumpCloud: assertion signed, ``memberOf`` groups;
and any of them with the assertion encrypted to the SP's certificate, as Entra ID and
Okta encrypt it (``encrypt_assertion``; see ``ENCRYPTIONS`` for the shapes and sources),
and/or the NameID alone encrypted into an ``EncryptedID`` inside the signed assertion, as
Shibboleth, AD FS and PingFederate can (``encrypt_name_id``; ``NAME_ID_ENCRYPTIONS``).

Attack helpers (``tests/saml_attacks.py``) rework these responses as XML.
"""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.attribute_converter import AttributeConverter
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_EMAILADDRESS, NameID
from saml2.server import Server
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

AUTHN = {"class_ref": "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"}
ENTRA = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"


@dataclass(frozen=True)
class KeyPair:
    key_pem: bytes
    cert_pem: bytes
    key_file: str
    cert_file: str

    @property
    def cert_b64(self) -> str:
        return "".join(ln for ln in self.cert_pem.decode().splitlines() if not ln.startswith("-----"))


def make_keypair(cn: str, directory: str, *, key_size: int = 2048) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    base = os.path.join(directory, cn.replace(" ", "_") + "-" + uuid.uuid4().hex[:6])
    with open(base + ".key", "wb") as f:
        f.write(key_pem)
    with open(base + ".crt", "wb") as f:
        f.write(cert_pem)
    return KeyPair(key_pem, cert_pem, base + ".key", base + ".crt")


@lru_cache(maxsize=1)
def _workdir() -> str:
    return tempfile.mkdtemp(prefix="provisio-test-idp-")


class TestIdP:
    """One IdP (entity id + signing key). ``metadata()`` is what an admin downloads."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        entity_id: str,
        keys: KeyPair | None = None,
        *,
        sso_url: str | None = None,
        sso_bindings: tuple[str, ...] = (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST),
    ) -> None:
        self.entity_id = entity_id
        self.sso_bindings = sso_bindings
        self.keys = keys or make_keypair("test-idp", _workdir())
        self.sso_url = sso_url or entity_id.rstrip("/") + "/sso"
        self._servers: dict[str, Server] = {}

    def _config(self, sp_metadata: str | None) -> IdPConfig:
        conf: dict[str, Any] = {
            "entityid": self.entity_id,
            "service": {
                "idp": {
                    "endpoints": {"single_sign_on_service": [(self.sso_url, b) for b in self.sso_bindings]},
                    "policy": {
                        "default": {
                            "lifetime": {"minutes": 5},
                            "attribute_restrictions": None,
                            "name_form": NAME_FORMAT_URI,
                        }
                    },
                    "name_id_format": [NAMEID_FORMAT_EMAILADDRESS],
                    "want_authn_requests_signed": False,
                }
            },
            "key_file": self.keys.key_file,
            "cert_file": self.keys.cert_file,
            "xmlsec_binary": "/usr/bin/xmlsec1",
            "delete_tmpfiles": True,
        }
        if sp_metadata:
            conf["metadata"] = {"inline": [sp_metadata]}
        c = IdPConfig()
        c.load(conf)
        return c

    def server(self, sp_metadata: str | None = None) -> Server:
        key = sp_metadata or ""
        if key not in self._servers:
            server = Server(config=self._config(sp_metadata))
            # Attribute names exactly as given (Entra's URIs, Okta's firstName, ...).
            conv = AttributeConverter(NAME_FORMAT_URI)
            conv._to, conv._fro = {}, {}
            server.config.attribute_converters = [conv]
            self._servers[key] = server
        return self._servers[key]

    def metadata(self) -> str:
        return str(entity_descriptor(self._config(None)))

    def response(
        self,
        *,
        sp_entity_id: str,
        acs_url: str,
        name_id: str,
        attributes: dict[str, list[str]] | None = None,
        in_response_to: str | None = None,
        sign_response: bool = False,
        sign_assertion: bool = True,
        encrypt_cert: str | None = None,
        encryption: str = "entra",
        sp_metadata: str | None = None,
        sign_alg: str = SIG_RSA_SHA256,
        digest_alg: str = DIGEST_SHA256,
        lifetime_minutes: int | None = None,
        issuer: str | None = None,
        encrypt_name_id: str | None = None,
        name_id_cert: str | None = None,
    ) -> str:
        """A SAML Response as XML text. ``encrypt_cert`` (the SP's certificate, base64
        DER as in its metadata) encrypts the assertion the way ``ENCRYPTIONS[encryption]``
        says; a response signature is then made over the EncryptedAssertion, as IdPs do.
        ``encrypt_name_id`` (a key of ``NAME_ID_ENCRYPTIONS``) replaces the NameID with an
        EncryptedID to ``name_id_cert`` (default ``encrypt_cert``) before anything is
        signed or the assertion encrypted, as an IdP builds it."""
        if encrypt_name_id:
            return self._response_with_encrypted_id(
                sp_entity_id=sp_entity_id,
                acs_url=acs_url,
                name_id=name_id,
                attributes=attributes,
                in_response_to=in_response_to,
                sign_response=sign_response,
                sign_assertion=sign_assertion,
                encrypt_cert=encrypt_cert,
                encryption=encryption,
                sp_metadata=sp_metadata,
                sign_alg=sign_alg,
                digest_alg=digest_alg,
                lifetime_minutes=lifetime_minutes,
                issuer=issuer,
                name_id_encryption=NAME_ID_ENCRYPTIONS[encrypt_name_id],
                name_id_cert=name_id_cert or encrypt_cert,
            )
        server = self.server(sp_metadata)
        if lifetime_minutes is not None:
            server.config.setattr("idp", "policy", None)
        nid = NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=name_id)
        resp = server.create_authn_response(
            identity=attributes or {},
            in_response_to=in_response_to,
            destination=acs_url,
            sp_entity_id=sp_entity_id,
            name_id=nid,
            authn=AUTHN,
            sign_response=sign_response and not encrypt_cert,
            sign_assertion=sign_assertion,
            sign_alg=sign_alg,
            digest_alg=digest_alg,
            issuer=issuer,
        )
        if not encrypt_cert:
            return str(resp)
        xml = encrypt_assertion(str(resp), encrypt_cert, ENCRYPTIONS[encryption])
        return sign_xml(xml, self.keys, assertion=False, response=True) if sign_response else xml

    def _response_with_encrypted_id(
        self,
        *,
        sign_response: bool,
        sign_assertion: bool,
        encrypt_cert: str | None,
        encryption: str,
        sp_entity_id: str,
        sign_alg: str,
        digest_alg: str,
        name_id_encryption: Encryption,
        name_id_cert: str | None,
        **kw: Any,
    ) -> str:
        if not name_id_cert:
            raise ValueError("encrypt_name_id needs the SP's certificate (name_id_cert or encrypt_cert)")
        from lxml import etree

        plain = self.response(sp_entity_id=sp_entity_id, sign_response=False, sign_assertion=False, **kw)
        root = etree.fromstring(plain.encode())
        nid = root.find(f"{{{SAML_NS}}}Assertion/{{{SAML_NS}}}Subject/{{{SAML_NS}}}NameID")
        encrypted = etree.fromstring(
            encrypted_id_xml(
                nid.text,
                nid.get("Format"),
                name_id_cert,
                name_id_encryption,
                recipient=sp_entity_id,
                name_qualifier=self.entity_id,
                context_prefix=nid.prefix or "saml",
            ).encode()
        )
        nid.getparent().replace(nid, encrypted)
        xml = etree.tostring(root, encoding="unicode")
        if sign_assertion:
            xml = sign_xml(xml, self.keys, sign_method=sign_alg, digest_method=digest_alg)
        if encrypt_cert:
            xml = encrypt_assertion(xml, encrypt_cert, ENCRYPTIONS[encryption])
        if sign_response:
            xml = sign_xml(
                xml, self.keys, assertion=False, response=True, sign_method=sign_alg, digest_method=digest_alg
            )
        return xml


def b64(xml: str | bytes) -> str:
    return base64.b64encode(xml.encode() if isinstance(xml, str) else xml).decode()


# Attribute statements as each IdP sends them for alice.
def entra_attributes(groups: list[str] | None = None, *, overage: bool = False) -> dict[str, list[str]]:
    attrs = {
        ENTRA + "emailaddress": ["alice@acme.test"],
        ENTRA + "givenname": ["Alice"],
        ENTRA + "surname": ["Liddell"],
        ENTRA + "name": ["alice@acme.test"],
        "http://schemas.microsoft.com/identity/claims/displayname": ["Alice Liddell"],
        "http://schemas.microsoft.com/identity/claims/objectidentifier": [str(uuid.UUID(int=7))],
    }
    if groups is not None:
        attrs["http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"] = groups
    if overage:
        attrs["http://schemas.microsoft.com/claims/groups.link"] = [
            "https://graph.windows.net/tenant/users/alice/getMemberObjects"
        ]
    return attrs


def okta_attributes(groups: list[str] | None = None) -> dict[str, list[str]]:
    attrs = {"firstName": ["Alice"], "lastName": ["Liddell"], "email": ["alice@acme.test"]}
    if groups is not None:
        attrs["groups"] = groups
    return attrs


def google_attributes(groups: list[str] | None = None) -> dict[str, list[str]]:
    return okta_attributes(groups)


def jumpcloud_attributes(groups: list[str] | None = None) -> dict[str, list[str]]:
    attrs = {"firstname": ["Alice"], "lastname": ["Liddell"], "email": ["alice@acme.test"]}
    if groups is not None:
        attrs["memberOf"] = groups
    return attrs


ATTRIBUTES = {
    "entra": entra_attributes,
    "google": google_attributes,
    "okta": okta_attributes,
    "jumpcloud": jumpcloud_attributes,
}
# (sign_response, sign_assertion) each IdP uses by default.
SHAPES = {
    "entra": (False, True),
    "google": (True, False),
    "okta": (True, True),
    "jumpcloud": (False, True),
}


# ------------------------------------------------------------------ XML Encryption as IdPs send it

XENC = "http://www.w3.org/2001/04/xmlenc#"
XENC11 = "http://www.w3.org/2009/xmlenc11#"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"


@dataclass(frozen=True)
class Encryption:
    """How an IdP encrypts an assertion: the markup style, the content encryption and
    the key transport (with the OAEP DigestMethod child and xmlenc11 MGF, when sent)."""

    style: str  # "entra" or "okta"
    data: str = XENC + "aes256-cbc"
    key_transport: str = XENC + "rsa-oaep-mgf1p"
    oaep_digest: str | None = DSIG + "sha1"
    mgf: str | None = None
    # EncryptedID only: the plaintext NameID declares its namespace itself (OpenSAML,
    # .NET), or relies on the EncryptedID's context (xmlenc-core1 §4.5 decrypts in context).
    standalone: bool = True


# Entra ID: "Microsoft Entra ID uses AES-256 to encrypt the SAML assertion data"
# (learn.microsoft.com/entra/identity/enterprise-apps/howto-saml-token-encryption). No
# captured Entra response was found in public sources; the markup is that of Microsoft's
# STS serializer as AD FS sends it in SAML-P responses and Microsoft's STS in WS-Trust
# tokens (e.g. the AD FS response in Cisco's CUCM SAML SSO troubleshooting guide):
# unprefixed EncryptedAssertion and KeyInfo, xenc: on EncryptedData, e: on EncryptedKey,
# rsa-oaep-mgf1p with an explicit <DigestMethod .../xmldsig#sha1/> (the OAEP default),
# the recipient named by X509IssuerSerial, and ISO 10126 (random) CBC padding (.NET).
# Okta: the app's "Assertion Encryption" with Encryption Algorithm AES128/256-CBC or
# AES128/256-GCM and Key Transport RSA-OAEP or RSA-1.5 (Okta's advanced SAML settings,
# as Salesforce's "Enable Asserted Encryption with SSO" help page walks through them).
# No captured Okta response was found in public sources, so the markup is the common
# OpenSAML-style one: saml2:/xenc:/ds: prefixes, the EncryptedKey inline in ds:KeyInfo
# with the recipient's certificate (as in login.gov's documented response example,
# GSA-TTS/identity-dev-docs), and rsa-oaep-mgf1p with a <ds:DigestMethod
# .../xmldsig#sha1/> child (as OpenSAML writes it, e.g. the Dutch eID responses).
ENCRYPTIONS = {
    "entra": Encryption("entra"),
    "okta": Encryption("okta"),  # AES256-CBC, RSA-OAEP: Okta's defaults
    "okta-aes128-cbc": Encryption("okta", data=XENC + "aes128-cbc"),
    "okta-aes256-gcm": Encryption("okta", data=XENC11 + "aes256-gcm"),
    "okta-aes128-gcm": Encryption("okta", data=XENC11 + "aes128-gcm"),
    # xmlenc-core1 §5.5.2 RSA-OAEP with SHA-256 and MGF1-SHA-256 (ITfoxtec, newer IdPs)
    "xmlenc11-oaep-sha256": Encryption(
        "okta",
        data=XENC11 + "aes256-gcm",
        key_transport=XENC11 + "rsa-oaep",
        oaep_digest=XENC + "sha256",
        mgf=XENC11 + "mgf1sha256",
    ),
    # Refused: RSA-1_5 key transport (Okta still offers "RSA-1.5").
    "okta-rsa-1_5": Encryption("okta", key_transport=XENC + "rsa-1_5", oaep_digest=None),
    # Refused: 3DES content encryption (pysaml2's own IdP default).
    "tripledes": Encryption("okta", data=XENC + "tripledes-cbc"),
}
# EncryptedID (saml-core §2.2.4), as IdPs that encrypt the NameID alone send it:
# - Shibboleth IdP (``encryptNameIDs``): OpenSAML markup, saml2:/xenc:/ds: prefixes, the
#   EncryptedKey inline in the EncryptedData's ds:KeyInfo with ``Recipient`` = the SP's
#   entity ID, rsa-oaep-mgf1p with a ds:DigestMethod child; AES-128-GCM, the IdP 4
#   default (UK federation's "IdP encryption options"; DFN-AAI's announcement);
# - OpenSAML's "peer" key placement: the EncryptedKey beside the EncryptedData in the
#   EncryptedID (with a ReferenceList), pointed to by a ds:RetrievalMethod;
# - xmlenc 1.1 RSA-OAEP with SHA-256 and MGF1-SHA-256 (xenc11:MGF), AES-256-GCM;
# - AES-256-CBC, the plaintext NameID using the EncryptedID's namespace context;
# - refused: RSA-1_5 key transport, 3DES content.
NAME_ID_ENCRYPTIONS = {
    "shibboleth": Encryption("inline", data=XENC11 + "aes128-gcm"),
    "shibboleth-cbc": Encryption("inline", data=XENC + "aes128-cbc"),
    "peer": Encryption("peer", data=XENC + "aes256-cbc"),
    "xmlenc11": Encryption(
        "inline",
        data=XENC11 + "aes256-gcm",
        key_transport=XENC11 + "rsa-oaep",
        oaep_digest=XENC + "sha256",
        mgf=XENC11 + "mgf1sha256",
    ),
    "in-context": Encryption("inline", data=XENC + "aes256-cbc", standalone=False),
    "rsa-1_5": Encryption("inline", key_transport=XENC + "rsa-1_5", oaep_digest=None),
    "tripledes": Encryption("inline", data=XENC + "tripledes-cbc"),
}
_HASHES = {DSIG + "sha1": hashes.SHA1, XENC + "sha256": hashes.SHA256}
_MGFS = {XENC11 + "mgf1sha1": hashes.SHA1, XENC11 + "mgf1sha256": hashes.SHA256}


def _load_cert(cert: str) -> x509.Certificate:
    if "BEGIN CERTIFICATE" in cert:
        return x509.load_pem_x509_certificate(cert.encode())
    return x509.load_der_x509_certificate(base64.b64decode("".join(cert.split())))


def _encrypt_content(alg: str, plain: bytes) -> tuple[bytes, bytes]:
    """(content key, IV + ciphertext [+ tag]) for xmlenc-core1 §5.2 algorithms."""
    size = 16 if "128" in alg else 32
    key = os.urandom(size)
    if alg.endswith("-gcm"):
        iv = os.urandom(12)
        return key, iv + AESGCM(key).encrypt(iv, plain, None)
    if alg.endswith("tripledes-cbc"):
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES

        key = os.urandom(24)
        iv = os.urandom(8)
        pad = 8 - len(plain) % 8
        enc = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
        return key, iv + enc.update(plain + os.urandom(pad - 1) + bytes([pad])) + enc.finalize()
    iv = os.urandom(16)
    pad = 16 - len(plain) % 16
    # ISO 10126 padding (random octets, then the length), as .NET writes it; xmlenc-core1
    # §5.2.1 lets the padding octets be arbitrary.
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return key, iv + enc.update(plain + os.urandom(pad - 1) + bytes([pad])) + enc.finalize()


def _wrap_key(cert: x509.Certificate, enc: Encryption, key: bytes) -> bytes:
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    if enc.key_transport.endswith("rsa-1_5"):
        return public.encrypt(key, padding.PKCS1v15())
    digest = _HASHES[enc.oaep_digest or DSIG + "sha1"]
    mgf = _MGFS[enc.mgf] if enc.mgf else hashes.SHA1
    return public.encrypt(key, padding.OAEP(mgf=padding.MGF1(mgf()), algorithm=digest(), label=None))


def encrypted_assertion_xml(assertion_xml: bytes, cert: str, enc: Encryption) -> str:
    """An EncryptedAssertion holding ``assertion_xml`` (xenc#Element), in ``enc``'s markup."""
    certificate = _load_cert(cert)
    key, blob = _encrypt_content(enc.data, assertion_xml)
    wrapped = base64.b64encode(_wrap_key(certificate, enc, key)).decode()
    data = base64.b64encode(blob).decode()
    if enc.style == "entra":
        params = f'<DigestMethod Algorithm="{enc.oaep_digest}"/>' if enc.oaep_digest else ""
        return (
            f'<EncryptedAssertion xmlns="{SAML_NS}"><xenc:EncryptedData Type="{XENC}Element" xmlns:xenc="{XENC}">'
            f'<xenc:EncryptionMethod Algorithm="{enc.data}"/><KeyInfo xmlns="{DSIG}">'
            f'<e:EncryptedKey xmlns:e="{XENC}"><e:EncryptionMethod Algorithm="{enc.key_transport}">{params}'
            f'</e:EncryptionMethod><KeyInfo><ds:X509Data xmlns:ds="{DSIG}"><ds:X509IssuerSerial>'
            f"<ds:X509IssuerName>{certificate.issuer.rfc4514_string()}</ds:X509IssuerName>"
            f"<ds:X509SerialNumber>{certificate.serial_number}</ds:X509SerialNumber></ds:X509IssuerSerial>"
            f"</ds:X509Data></KeyInfo><e:CipherData><e:CipherValue>{wrapped}</e:CipherValue></e:CipherData>"
            f"</e:EncryptedKey></KeyInfo><xenc:CipherData><xenc:CipherValue>{data}</xenc:CipherValue>"
            f"</xenc:CipherData></xenc:EncryptedData></EncryptedAssertion>"
        )
    params = f'<ds:DigestMethod Algorithm="{enc.oaep_digest}"/>' if enc.oaep_digest else ""
    if enc.mgf:
        params += f'<xenc11:MGF xmlns:xenc11="{XENC11}" Algorithm="{enc.mgf}"/>'
    cert_b64 = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    return (
        f'<saml2:EncryptedAssertion xmlns:saml2="{SAML_NS}"><xenc:EncryptedData xmlns:xenc="{XENC}" '
        f'Id="_{secrets.token_hex(16)}" Type="{XENC}Element"><xenc:EncryptionMethod Algorithm="{enc.data}"/>'
        f'<ds:KeyInfo xmlns:ds="{DSIG}"><xenc:EncryptedKey Id="_{secrets.token_hex(16)}">'
        f'<xenc:EncryptionMethod Algorithm="{enc.key_transport}">{params}</xenc:EncryptionMethod>'
        f"<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert_b64}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>"
        f"<xenc:CipherData><xenc:CipherValue>{wrapped}</xenc:CipherValue></xenc:CipherData></xenc:EncryptedKey>"
        f"</ds:KeyInfo><xenc:CipherData><xenc:CipherValue>{data}</xenc:CipherValue></xenc:CipherData>"
        f"</xenc:EncryptedData></saml2:EncryptedAssertion>"
    )


def encrypted_id_xml(
    value: str,
    name_id_format: str | None,
    cert: str,
    enc: Encryption,
    *,
    recipient: str | None = None,
    name_qualifier: str | None = None,
    plaintext: bytes | None = None,
    context_prefix: str = "saml2",
) -> str:
    """A ``saml2:EncryptedID`` holding a NameID (or ``plaintext`` as given), in ``enc``'s
    placement: "inline" (EncryptedKey in the EncryptedData's KeyInfo) or "peer". A
    NameID that is not ``enc.standalone`` uses ``context_prefix``, which the document
    around the EncryptedID declares."""
    from xml.sax.saxutils import escape, quoteattr

    if plaintext is None:
        attrs = f" Format={quoteattr(name_id_format)}" if name_id_format else ""
        if name_qualifier:
            attrs += f" NameQualifier={quoteattr(name_qualifier)}"
        if recipient:
            attrs += f" SPNameQualifier={quoteattr(recipient)}"
        prefix = "saml2" if enc.standalone else context_prefix
        decl = f' xmlns:saml2="{SAML_NS}"' if enc.standalone else ""
        plaintext = f"<{prefix}:NameID{decl}{attrs}>{escape(value)}</{prefix}:NameID>".encode()
    certificate = _load_cert(cert)
    key, blob = _encrypt_content(enc.data, plaintext)
    wrapped = base64.b64encode(_wrap_key(certificate, enc, key)).decode()
    data = base64.b64encode(blob).decode()
    params = f'<ds:DigestMethod Algorithm="{enc.oaep_digest}"/>' if enc.oaep_digest else ""
    if enc.mgf:
        params += f'<xenc11:MGF xmlns:xenc11="{XENC11}" Algorithm="{enc.mgf}"/>'
    cert_b64 = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    ed_id, ek_id = f"_{secrets.token_hex(16)}", f"_{secrets.token_hex(16)}"
    recipient_attr = f" Recipient={quoteattr(recipient)}" if recipient else ""
    encrypted_key = (
        f'<xenc:EncryptedKey xmlns:xenc="{XENC}" xmlns:ds="{DSIG}" Id="{ek_id}"{recipient_attr}>'
        f'<xenc:EncryptionMethod Algorithm="{enc.key_transport}">{params}</xenc:EncryptionMethod>'
        f"<ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert_b64}</ds:X509Certificate>"
        f"</ds:X509Data></ds:KeyInfo>"
        f"<xenc:CipherData><xenc:CipherValue>{wrapped}</xenc:CipherValue></xenc:CipherData>"
    )
    if enc.style == "peer":
        key_info = (
            f'<ds:KeyInfo xmlns:ds="{DSIG}"><ds:RetrievalMethod Type="{XENC}EncryptedKey" URI="#{ek_id}"/></ds:KeyInfo>'
        )
        peer = encrypted_key + f'<xenc:ReferenceList><xenc:DataReference URI="#{ed_id}"/></xenc:ReferenceList>'
        peer += "</xenc:EncryptedKey>"
    else:
        key_info = f'<ds:KeyInfo xmlns:ds="{DSIG}">{encrypted_key}</xenc:EncryptedKey></ds:KeyInfo>'
        peer = ""
    return (
        f'<saml2:EncryptedID xmlns:saml2="{SAML_NS}"><xenc:EncryptedData xmlns:xenc="{XENC}" Id="{ed_id}" '
        f'Type="{XENC}Element"><xenc:EncryptionMethod Algorithm="{enc.data}"/>{key_info}'
        f"<xenc:CipherData><xenc:CipherValue>{data}</xenc:CipherValue></xenc:CipherData>"
        f"</xenc:EncryptedData>{peer}</saml2:EncryptedID>"
    )


def encrypt_assertion(xml: str, cert: str, enc: Encryption) -> str:
    """``xml`` (a Response) with its Assertion replaced by an EncryptedAssertion."""
    from lxml import etree

    root = etree.fromstring(xml.encode())
    assertion = root.find(f"{{{SAML_NS}}}Assertion")
    encrypted = etree.fromstring(encrypted_assertion_xml(etree.tostring(assertion), cert, enc).encode())
    root.replace(assertion, encrypted)
    return etree.tostring(root, encoding="unicode")


def sign_xml(
    xml: str,
    keys: KeyPair,
    *,
    assertion: bool = True,
    response: bool = False,
    sign_method: str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    digest_method: str = "http://www.w3.org/2001/04/xmlenc#sha256",
) -> str:
    """Sign the (plain) assertion and/or the response, enveloped with exclusive c14n, as
    IdPs do, with the algorithms named (python-xmlsec; any the library offers, weak ones
    included, for the refusal tests). Existing signatures of those elements are replaced."""
    import xmlsec
    from lxml import etree

    transforms = {
        t.href: t
        for t in (getattr(xmlsec.constants, n) for n in dir(xmlsec.constants) if n.startswith("Transform"))
        if hasattr(t, "href")
    }
    root = etree.fromstring(xml.encode())
    targets = root.findall(f"{{{SAML_NS}}}Assertion") if assertion else []
    if response:
        targets.append(root)  # last: the response signature covers the assertion's
    for el in targets:
        for old in el.findall(f"{{{DSIG}}}Signature"):
            el.remove(old)
        sig = xmlsec.template.create(el, xmlsec.constants.TransformExclC14N, transforms[sign_method])
        issuer = el.find(f"{{{SAML_NS}}}Issuer")
        if issuer is not None:
            issuer.addnext(sig)
        else:
            el.insert(0, sig)
        ref = xmlsec.template.add_reference(sig, transforms[digest_method], uri="#" + el.get("ID"))
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
        xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(sig))
        ctx = xmlsec.SignatureContext()
        ctx.register_id(el, "ID")
        key = xmlsec.Key.from_memory(keys.key_pem, xmlsec.constants.KeyDataFormatPem)
        key.load_cert_from_memory(keys.cert_pem, xmlsec.constants.KeyDataFormatPem)
        ctx.key = key
        ctx.sign(sig)
    return etree.tostring(root, encoding="unicode")
