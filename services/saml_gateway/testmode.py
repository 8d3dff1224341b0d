"""Test logins (issue 14): what the gateway reports of a response, as pure functions.

The response itself is verified by exactly the code of a real login (``saml.py``,
``app._check_state``, ``mapping.py``); this module only describes it for the setup
page: which checks passed or which one refused it and why (the refusal's own message),
and what the response carried. For a refused response the values are read from the
unverified XML (with defusedxml, bounded), since showing the admin what their IdP sent
— its Issuer, Audience-relevant NameID, attribute names — is the point of a test.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

from defusedxml.ElementTree import fromstring as safe_fromstring

from provisio_lib.admin.sso_test import Check, Received

SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
XENC_NS = "http://www.w3.org/2001/04/xmlenc#"

# RelayState of a test login's AuthnRequest (saml-bindings §3.4.3: at most 80 bytes; this
# plus a UUID is 50). A real login's RelayState may not start with it.
RELAY_PREFIX = "provisio-test:"

MAX_ATTRIBUTES = 100
MAX_VALUES = 50
MAX_TEXT = 1000

# The checks of a login in the order the code makes them, with the refusal reasons
# (``Refused.reason``) each stands for. A refused test shows the checks before the one
# that failed as passed, the failed one with its reason, and none after it.
CHECKS: tuple[tuple[str, frozenset[str]], ...] = (
    ("response", frozenset({"malformed", "too_large", "dtd", "idp_status", "assertions"})),
    ("algorithms", frozenset({"weak_signature", "weak_encryption"})),
    ("issuer", frozenset({"issuer"})),
    ("decryption", frozenset({"decrypt"})),
    ("signature", frozenset({"signature", "invalid"})),
    ("validity", frozenset({"not_yet_valid", "expired"})),
    ("destination", frozenset({"destination"})),
    ("audience", frozenset({"audience"})),
    ("subject", frozenset({"subject"})),
    ("recipient", frozenset({"recipient"})),
    ("replay", frozenset({"replay"})),
    ("request", frozenset({"in_response_to", "idp_initiated"})),
    ("attributes", frozenset({"missing_claim", "claim_too_long", "invalid_value"})),
)
CHECK_NAMES = tuple(name for name, _ in CHECKS)


def checks(failed_reason: str | None = None, message: str | None = None) -> list[Check]:
    """All checks passed (``failed_reason`` None), or those up to the one that refused."""
    out: list[Check] = []
    for name, reasons in CHECKS:
        if failed_reason is not None and failed_reason in reasons:
            out.append(Check(name, False, message))
            return out
        out.append(Check(name, True))
    if failed_reason is not None:  # a reason no check names: say it after the others
        out.append(Check(failed_reason, False, message))
    return out


def _bounded(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text[:MAX_TEXT] if text else None


def _algorithms(root: Any) -> tuple[list[str], list[str]]:
    sig: list[str] = []
    for el in root.iter(f"{{{DSIG_NS}}}SignedInfo"):
        for child in el.iter():
            if child.tag in (f"{{{DSIG_NS}}}SignatureMethod", f"{{{DSIG_NS}}}DigestMethod"):
                alg = _bounded(child.get("Algorithm"))
                if alg and alg not in sig:
                    sig.append(alg)
    # The algorithms of an EncryptedID (the NameID encrypted on its own, saml-core
    # §2.2.4) are labelled, so the page tells them from the assertion's.
    of_name_id = {
        id(m) for eid in root.iter(f"{{{SAML_NS}}}EncryptedID") for m in eid.iter(f"{{{XENC_NS}}}EncryptionMethod")
    }
    enc: list[str] = []
    for el in root.iter(f"{{{XENC_NS}}}EncryptionMethod"):
        alg = _bounded(el.get("Algorithm"))
        if alg and id(el) in of_name_id:
            alg = NAME_ID_LABEL + alg
        if alg and alg not in enc:
            enc.append(alg)
    return sig, enc


NAME_ID_LABEL = "NameID: "


def encryption_algorithms(saml_response: str, max_bytes: int, name_id: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The encryption algorithms of a response: the EncryptedAssertion's as sent, then
    the NameID's (``name_id``: those a verified login decrypted it with, which include
    an EncryptedID inside an encrypted assertion and the OAEP digest), each labelled
    "NameID: "."""
    root = _parse(saml_response, max_bytes)
    enc = _algorithms(root)[1] if root is not None else []
    if name_id:
        enc = [a for a in enc if not a.startswith(NAME_ID_LABEL)]
        enc.extend(NAME_ID_LABEL + a for a in name_id if a and NAME_ID_LABEL + a not in enc)
    return enc


def _parse(saml_response: str, max_bytes: int) -> Any:
    if not saml_response or len(saml_response) > max_bytes * 4 // 3 + 8:
        return None
    try:
        xml = base64.b64decode("".join(saml_response.split()), validate=True)
        if len(xml) > max_bytes:
            return None
        return safe_fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except Exception:  # binascii.Error, a parse error, a DTD: nothing to show
        return None


def inspect_unverified(saml_response: str, max_bytes: int) -> Received:
    """What a (possibly refused) response says, read without trusting it: the Issuer,
    the NameID and attributes of a plain assertion (an encrypted one, or an encrypted
    NameID, shows only its algorithms), the signature and encryption algorithms. Empty
    when it is no XML."""
    root = _parse(saml_response, max_bytes)
    if root is None:
        return Received()
    assertion = root.find(f"{{{SAML_NS}}}Assertion")
    issuer_el = assertion.find(f"{{{SAML_NS}}}Issuer") if assertion is not None else None
    if issuer_el is None:
        issuer_el = root.find(f"{{{SAML_NS}}}Issuer")
    name_id = name_id_format = None
    attributes: dict[str, list[str]] = {}
    if assertion is not None:
        nid = assertion.find(f"{{{SAML_NS}}}Subject/{{{SAML_NS}}}NameID")
        if nid is not None:
            name_id, name_id_format = _bounded(nid.text), _bounded(nid.get("Format"))
        for attr in assertion.iter(f"{{{SAML_NS}}}Attribute"):
            name = _bounded(attr.get("Name"))
            if not name or (name not in attributes and len(attributes) >= MAX_ATTRIBUTES):
                continue
            values = attributes.setdefault(name, [])
            for value in attr.findall(f"{{{SAML_NS}}}AttributeValue"):
                text = _bounded(value.text)
                if text and len(values) < MAX_VALUES:
                    values.append(text)
    sig, enc = _algorithms(root)
    return Received(
        issuer=_bounded(issuer_el.text) if issuer_el is not None else None,
        name_id=name_id,
        name_id_format=name_id_format,
        attributes=attributes,
        signature_algorithms=sig,
        encryption_algorithms=enc,
    )


def bounded_attributes(attributes: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, values in list(attributes.items())[:MAX_ATTRIBUTES]:
        out[name[:MAX_TEXT]] = [v[:MAX_TEXT] for v in values[:MAX_VALUES]]
    return out


def as_json(value: Any) -> Any:
    """A Received/Check/Preview (or a list of them) as the JSON stored in sso_test_logins."""
    if isinstance(value, list):
        return [asdict(v) for v in value]
    return asdict(value) if value is not None else None
