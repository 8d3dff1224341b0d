"""A test SAML IdP on pysaml2's IdP side (``saml2.server.Server``).

Keys and certificates are generated per test session with ``cryptography`` (never
committed). Responses come in the shapes the real IdPs send:

- Entra ID: assertion signed (its default "Sign SAML assertion"), claim URIs;
- Google Workspace: response signed, admin-chosen attribute names;
- Okta: response and assertion signed;
- JumpCloud: assertion signed, ``memberOf`` groups;
and any of them with the assertion encrypted to the SP's certificate.

Attack helpers (``tests/saml_attacks.py``) rework these responses as XML.
"""

from __future__ import annotations

import base64
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
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
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365)).sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
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

    def __init__(self, entity_id: str, keys: KeyPair | None = None, *, sso_url: str | None = None,
                 sso_bindings: tuple[str, ...] = (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST)) -> None:
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
                    "endpoints": {
                        "single_sign_on_service": [(self.sso_url, b) for b in self.sso_bindings]
                    },
                    "policy": {"default": {"lifetime": {"minutes": 5}, "attribute_restrictions": None,
                                           "name_form": NAME_FORMAT_URI}},
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
        sp_metadata: str | None = None,
        sign_alg: str = SIG_RSA_SHA256,
        digest_alg: str = DIGEST_SHA256,
        lifetime_minutes: int | None = None,
        issuer: str | None = None,
    ) -> str:
        """A SAML Response as XML text."""
        server = self.server(sp_metadata)
        if lifetime_minutes is not None:
            server.config.setattr("idp", "policy", None)
        nid = NameID(format=NAMEID_FORMAT_EMAILADDRESS, text=name_id)
        kwargs: dict[str, Any] = {}
        if encrypt_cert:
            kwargs.update(encrypt_assertion=True, encrypt_cert_assertion=encrypt_cert,
                          encrypt_assertion_self_contained=True)
        resp = server.create_authn_response(
            identity=attributes or {},
            in_response_to=in_response_to,
            destination=acs_url,
            sp_entity_id=sp_entity_id,
            name_id=nid,
            authn=AUTHN,
            sign_response=sign_response,
            sign_assertion=sign_assertion,
            sign_alg=sign_alg,
            digest_alg=digest_alg,
            issuer=issuer,
            **kwargs,
        )
        return str(resp)


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
