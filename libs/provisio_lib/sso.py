"""SSO connections: IdP metadata checks, SP key pairs, attribute maps and public URLs.

Pure functions shared by the CLI (``provisio sso add``) and the SAML gateway, so a
connection is validated once, at add time, with the same code that later uses it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .sso_presets import PRESETS, STANDARD_FIELDS

MAX_METADATA_BYTES = 1024 * 1024
MD_NS = "urn:oasis:names:tc:SAML:2.0:metadata"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
JIT_MODES = ("off", "create", "sync")
# What an absent groups claim means (issue 13 §3): "auto" = no groups once the
# connection has sent a groups claim; "none" = always no groups; "unchanged" = keep.
GROUPS_ABSENT = ("auto", "none", "unchanged")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
NAME_ID = "NameID"  # the user_name source when no claim is mapped to it


class MetadataError(ValueError):
    """The IdP metadata is unusable; the message says why, in one line."""


class MappingError(ValueError):
    """A --map or --require argument is malformed."""


@dataclass(frozen=True)
class IdpInfo:
    entity_id: str
    sso_url: str
    sso_binding: str
    signing_certs: tuple[str, ...]  # base64 DER, as in the metadata
    cert_subjects: tuple[str, ...]
    cert_not_after: tuple[datetime, ...]


def parse_idp_metadata(xml: bytes | str, *, now: datetime | None = None) -> IdpInfo:
    """Check SAML metadata of one IdP (SAML 2.0 metadata §2.4.3): an entity id, at least
    one signing certificate and a SingleSignOnService; refuse DTDs and entities."""
    from cryptography import x509
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    raw = xml.encode() if isinstance(xml, str) else xml
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(f"metadata is larger than {MAX_METADATA_BYTES // 1024} KiB")
    try:
        root = fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise MetadataError("metadata contains a DTD or entities, which are refused") from None
    except Exception as err:
        raise MetadataError(f"metadata is not well-formed XML ({err})") from None

    if root.tag == f"{{{MD_NS}}}EntityDescriptor":
        entities = [root]
    elif root.tag == f"{{{MD_NS}}}EntitiesDescriptor":
        entities = list(root.iter(f"{{{MD_NS}}}EntityDescriptor"))
    else:
        raise MetadataError("not SAML 2.0 metadata: the root must be md:EntityDescriptor")
    idps = [e for e in entities if e.find(f"{{{MD_NS}}}IDPSSODescriptor") is not None]
    if not idps:
        raise MetadataError("metadata has no IDPSSODescriptor: is this the IdP's (not an SP's) metadata?")
    if len(idps) > 1:
        raise MetadataError(f"metadata describes {len(idps)} IdPs; give the metadata of exactly one")
    entity = idps[0]
    entity_id = (entity.get("entityID") or "").strip()
    if not entity_id:
        raise MetadataError("metadata has no entityID")
    now = now or datetime.now(UTC)
    valid_until = entity.get("validUntil") or root.get("validUntil")
    if valid_until:
        try:
            until = datetime.fromisoformat(valid_until.replace("Z", "+00:00"))
        except ValueError:
            raise MetadataError(f"metadata validUntil {valid_until!r} is not a date") from None
        if until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        if until < now:
            raise MetadataError(f"metadata expired at {valid_until} (validUntil); download it again")

    idp = entity.find(f"{{{MD_NS}}}IDPSSODescriptor")
    assert idp is not None
    sso_url = sso_binding = ""
    services = {s.get("Binding"): s.get("Location") for s in idp.findall(f"{{{MD_NS}}}SingleSignOnService")}
    for binding in (BINDING_REDIRECT, BINDING_POST):
        if services.get(binding):
            sso_url, sso_binding = str(services[binding]), binding
            break
    if not sso_url:
        raise MetadataError("metadata has no SingleSignOnService with the HTTP-Redirect or HTTP-POST binding")

    certs: list[str] = []
    subjects: list[str] = []
    not_after: list[datetime] = []
    for kd in idp.findall(f"{{{MD_NS}}}KeyDescriptor"):
        if kd.get("use") not in (None, "signing"):
            continue
        for node in kd.iter(f"{{{DS_NS}}}X509Certificate"):
            b64 = "".join((node.text or "").split())
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(b64, validate=True))
            except Exception:
                raise MetadataError("metadata has a signing X509Certificate that is not a valid certificate") from None
            if b64 not in certs:
                certs.append(b64)
                subjects.append(cert.subject.rfc4514_string())
                not_after.append(cert.not_valid_after_utc)
    if not certs:
        raise MetadataError('metadata has no signing certificate (KeyDescriptor use="signing" with X509Certificate)')
    return IdpInfo(entity_id, sso_url, sso_binding, tuple(certs), tuple(subjects), tuple(not_after))


def generate_sp_keypair(common_name: str, *, years: int = 10) -> tuple[str, str]:
    """A fresh RSA-3072 key and self-signed certificate (PEM key, PEM cert) for one
    connection: IdPs encrypt assertions to it and verify our signed AuthnRequests."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365 * years))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def attribute_map(preset: str, overrides: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The effective map (field → claim names, first found wins): the preset's names,
    with each ``--map FIELD=CLAIM`` replacing a standard field or adding a custom one."""
    if preset not in PRESETS:
        raise MappingError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    result = {field: list(claims) for field, claims in PRESETS[preset].items()}
    for field, claim in (overrides or {}).items():
        if not _FIELD_NAME.match(field):
            raise MappingError(f"--map {field}=…: the field name must be letters, digits, _ . - (max 64)")
        if not claim.strip():
            raise MappingError(f"--map {field}=: the claim name is empty")
        result[field] = [claim.strip()]
    return result


def parse_map_options(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        field, sep, claim = item.partition("=")
        if not sep or not field.strip() or not claim.strip():
            raise MappingError(f"--map {item!r}: expected FIELD=CLAIM, e.g. department=http://…/department")
        out[field.strip()] = claim.strip()
    return out


def check_required(required: list[str], amap: dict[str, list[str]]) -> list[str]:
    """Required fields must be fields this connection can receive."""
    out = []
    for field in required:
        field = field.strip()
        if field != "user_name" and field not in amap:
            known = ", ".join(sorted({"user_name", *amap}))
            raise MappingError(f"--require {field}: not a mapped field (mapped: {known})")
        if field not in out:
            out.append(field)
    return out


def is_custom_field(field: str) -> bool:
    return field not in STANDARD_FIELDS


@dataclass(frozen=True)
class SpUrls:
    entity_id: str
    metadata: str
    login: str
    acs: str


def sp_urls(public_url: str, tenant: str, connection: str) -> SpUrls:
    """Public URLs of one connection; the SP entity id is its metadata URL (the usual
    convention, so an admin can paste one value into the IdP)."""
    base = f"{public_url.rstrip('/')}/saml/{tenant}/{connection}"
    return SpUrls(entity_id=f"{base}/metadata", metadata=f"{base}/metadata", login=f"{base}/login", acs=f"{base}/acs")


def cert_b64(cert_pem: str) -> str:
    """The base64 DER body of a PEM certificate (for metadata KeyDescriptors)."""
    lines = [ln for ln in cert_pem.strip().splitlines() if not ln.startswith("-----")]
    return "".join(lines)


def describe(info: IdpInfo) -> dict[str, Any]:
    return {
        "idp_entity_id": info.entity_id,
        "sso_url": info.sso_url,
        "certificates": [
            f"{s} (expires {d:%Y-%m-%d})" for s, d in zip(info.cert_subjects, info.cert_not_after, strict=True)
        ],
    }


_DOMAIN = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")


def normalize_domain(value: str) -> str:
    """A DNS domain name as stored in a connection's ``verified_domains`` (lower case,
    IDNA for non-ASCII); MappingError when it is not one."""
    raw = value.strip().lower().rstrip(".").removeprefix("@")
    try:
        ascii_ = raw.encode("idna").decode("ascii") if not raw.isascii() else raw
    except UnicodeError:
        raise MappingError(f"{value!r} is not a domain name") from None
    if not _DOMAIN.match(ascii_):
        raise MappingError(f"{value!r} is not a domain name (e.g. example.com)")
    return ascii_
