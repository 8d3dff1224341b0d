"""Differential fuzzing of the in-process signature backend against the xmlsec1 program.

The gateway verifies signatures in process by default (``saml_gateway/crypto.py``,
``CryptoBackendXmlsecBinding``), reproducing what pysaml2's ``xmlsec1`` program backend
decides. That backend stays the default only while it agrees with the program, so here
Hypothesis mutates genuine signed responses of the test IdP (tests/saml_idp.py) —
elements reordered, duplicated, moved and re-namespaced, prefixes renamed, IDs and
``xml:id`` changed, signature wrapping (XSW1-8), References, transforms, algorithms,
digests and KeyInfo altered, the document re-encoded — and every case goes through the
gateway's whole verification (``SamlEngine.verify_response``) once with each backend.
The verdict must be the same: accepted with the same identity, or refused for the same
reason (``Refused.reason``). Each signature pysaml2 could ask about is also checked with
both backends directly (``validate_signature``), since the gateway refuses many mutants
before any signature is checked.

Bounded for CI: a fixed number of examples, derandomized (the same cases on every run,
no example database), about 30 s of CPU. ``PROVISIO_DIFFERENTIAL_EXAMPLES=1000`` runs a
longer campaign (no disagreement in 1,000 + 800 when this was written).
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from saml2.sigver import CryptoBackendXmlSec1, SignatureError, XmlsecError

import saml_attacks as atk
from provisio_lib import sso
from saml_gateway.saml import Connection, Refused, SamlEngine
from saml_idp import ENTRA, TestIdP, b64, entra_attributes, make_keypair

pytestmark = pytest.mark.integration  # forks xmlsec1, writes key files

PUBLIC = "http://127.0.0.1:8082"
PROGRAM = CryptoBackendXmlSec1("/usr/bin/xmlsec1")
# Examples per test: ~0.2 s of CPU each (two full verifications and the direct checks,
# each program check a fork of xmlsec1).
MAX_EXAMPLES = int(os.environ.get("PROVISIO_DIFFERENTIAL_EXAMPLES", "50"))
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

SAML, SAMLP, DS = atk.SAML, atk.SAMLP, atk.DS
OTHER_NS = [SAML, SAMLP, DS, "http://www.w3.org/2001/04/xmlenc#", "urn:example:evil", None]
ALGORITHMS = {
    "transform": [
        "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        "http://www.w3.org/2006/12/xml-c14n11",
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
        "http://www.w3.org/TR/1999/REC-xslt-19991116",
        "http://www.w3.org/2000/09/xmldsig#base64",
        "urn:example:unknown-transform",
    ],
    "signature": [
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
        "http://www.w3.org/2001/04/xmldsig-more#hmac-sha256",
        "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
        "urn:example:unknown-signature",
    ],
    "digest": [
        "http://www.w3.org/2001/04/xmlenc#sha512",
        "http://www.w3.org/2001/04/xmldsig-more#sha384",
        "urn:example:unknown-digest",
    ],
    "c14n": [
        "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        "http://www.w3.org/2006/12/xml-c14n11#WithComments",
        "urn:example:unknown-c14n",
    ],
}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def idp() -> TestIdP:
    return TestIdP(f"https://sts.test/{uuid.uuid4().hex[:8]}/")


@pytest.fixture(scope="module")
def conn(idp: TestIdP) -> Connection:
    key, cert = sso.generate_sp_keypair("sp")
    return Connection(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        tenant_name="acme",
        name="entra",
        preset="entra",
        idp_entity_id=idp.entity_id,
        idp_metadata=idp.metadata(),
        jit_mode="create",
        app_url="https://app.test/cb",
        allow_idp_initiated=True,
        attribute_map=sso.attribute_map("entra"),
        required_attributes=(),
        sp_cert_pem=cert,
        sp_key_pem=key,
        app_secret_hash=None,
        updated_at=datetime.now(UTC),
    )


@pytest.fixture(scope="module")
def engines() -> Any:
    made = {
        b: SamlEngine(public_url=PUBLIC, skew_s=180, max_bytes=256 * 1024, backend=b, xmlsec1_path="/usr/bin/xmlsec1")
        for b in ("xmlsec", "xmlsec1")
    }
    yield made
    for e in made.values():
        e.close()


@pytest.fixture(scope="module")
def impostor_cert(idp: TestIdP) -> str:
    return make_keypair("impostor", os.path.dirname(idp.keys.key_file)).cert_b64


@pytest.fixture(scope="module")
def documents(idp: TestIdP, conn: Connection, engines: Any) -> dict[str, str]:
    """Genuine responses in the three shapes real IdPs send (signed response, signed
    assertion, both), made once: every example mutates one of them."""
    urls = sso.sp_urls(PUBLIC, conn.tenant_name, conn.name)
    sp_metadata = engines["xmlsec"].sp_metadata(conn)

    def make(sign_response: bool, sign_assertion: bool) -> str:
        return idp.response(
            sp_entity_id=urls.entity_id,
            acs_url=urls.acs,
            name_id="alice@acme.test",
            attributes=entra_attributes(["Sales"]),
            sp_metadata=sp_metadata,
            in_response_to="id-" + uuid.uuid4().hex,
            sign_response=sign_response,
            sign_assertion=sign_assertion,
        )

    unicode_attributes = {
        **entra_attributes(["Sales"]),
        ENTRA + "givenname": ["Zoë"],
        ENTRA + "surname": ["Ærøskøbing 名前"],
    }
    unicode = idp.response(
        sp_entity_id=urls.entity_id,
        acs_url=urls.acs,
        name_id="zoë@acme.test",
        attributes=unicode_attributes,
        sp_metadata=sp_metadata,
        in_response_to="id-" + uuid.uuid4().hex,
        sign_response=True,
        sign_assertion=True,
    )
    return {"response": make(True, False), "assertion": make(False, True), "both": make(True, True), "unicode": unicode}


# ------------------------------------------------------------------ verdicts


def verdict(engine: SamlEngine, conn: Connection, xml: str | bytes) -> str:
    """The gateway's verdict: the identity accepted, or the refusal reason."""
    try:
        login = engine.verify_response(conn, b64(xml))
    except Refused as refusal:
        return "refused:" + refusal.reason
    return f"ok:{login.name_id}:{sorted((k, tuple(v)) for k, v in login.attributes.items())}"


NODES = (f"{SAML}:Assertion", f"{SAMLP}:Response")


def signature_verdict(backend: Any, xml: str | bytes, cert_file: str, node_name: str, node_id: str) -> str:
    """One signature check as pysaml2 asks it: valid, or refused (either backend raises
    SignatureError/XmlsecError, or returns False)."""
    try:
        data = xml if isinstance(xml, bytes) else xml.encode()
        return "valid" if backend.validate_signature(data, cert_file, "pem", node_name, node_id) else "refused"
    except (SignatureError, XmlsecError):
        return "refused"


def assert_same_verdict(engines: Any, conn: Connection, xml: str | bytes, steps: Any, cert_file: str) -> str:
    got = {name: verdict(engine, conn, xml) for name, engine in engines.items()}
    assert got["xmlsec"] == got["xmlsec1"], (
        f"the backends disagree after {steps}: in process {got['xmlsec']!r}, xmlsec1 program {got['xmlsec1']!r}\n"
        f"{xml[:6000]!r}"
    )
    # Whatever was accepted is what the IdP signed: never the attacker's name.
    assert atk.EVIL not in got["xmlsec"], got
    # The gateway refuses many mutants before any signature is checked (two assertions,
    # SHA-1, not well-formed): compare the backends on each signature pysaml2 could ask
    # about too, so every mutant exercises them.
    try:
        root = atk.parse(xml)
    except etree.XMLSyntaxError:
        return got["xmlsec"]
    asked = {
        (node, el.get("ID"))
        for el in _elements(root)
        if el.get("ID") and el.find(f"{{{DS}}}Signature") is not None
        for node in NODES
        if etree.QName(el).localname == node.rsplit(":", 1)[1]
    }
    for node_name, node_id in sorted(asked):
        a = signature_verdict(engines["xmlsec"].binding, xml, cert_file, node_name, node_id)
        b = signature_verdict(PROGRAM, xml, cert_file, node_name, node_id)
        assert a == b, f"{node_name} #{node_id} after {steps}: in process {a}, xmlsec1 program {b}\n{xml[:6000]!r}"
    return got["xmlsec"]


# ------------------------------------------------------------------ mutations
#
# Each mutation is (kind, a, b, c) with small integers that pick the element, the
# place and the variant (modulo what the document has), so Hypothesis shrinks a
# failing case to a short, readable list of steps.


def _elements(root: Any) -> list[Any]:
    return [el for el in root.iter() if isinstance(el.tag, str)]


def _pick(items: list[Any], n: int) -> Any:
    return items[n % len(items)] if items else None


def _ids(root: Any) -> list[str]:
    return [el.get("ID") for el in _elements(root) if el.get("ID")]


def _qname(ns: str | None, local: str) -> str:
    return f"{{{ns}}}{local}" if ns else local


def reorder(root: Any, a: int, b: int, c: int) -> None:
    parent = _pick([el for el in _elements(root) if len(el) >= 2], a)
    if parent is None:
        return
    kids = list(parent)
    i, j = b % len(kids), c % len(kids)
    if i == j:
        parent[:] = list(reversed(kids))
        return
    kids[i], kids[j] = kids[j], kids[i]
    parent[:] = kids


def duplicate(root: Any, a: int, b: int, c: int) -> None:
    el = _pick(_elements(root)[1:], a)
    clone = copy.deepcopy(el)
    if c % 3 == 1 and clone.get("ID"):
        clone.set("ID", "_dup" + uuid.uuid4().hex[:8])
    elif c % 3 == 2:
        atk.set_name_id(clone)
    where = b % 3
    if where == 0:
        el.addprevious(clone)
    elif where == 1:
        el.addnext(clone)
    else:
        target = _pick([t for t in _elements(root) if t is not el], b // 3)
        target.append(clone)


def move(root: Any, a: int, b: int, c: int) -> None:
    el = _pick(_elements(root)[1:], a)
    inside = set(el.iter())
    target = _pick([t for t in _elements(root) if t not in inside], b)
    if target is None:
        return
    el.tail = None
    target.insert(c % (len(target) + 1), el)


def renamespace(root: Any, a: int, b: int, c: int) -> None:
    el = _pick(_elements(root), a)
    el.tag = _qname(_pick(OTHER_NS, b), etree.QName(el).localname)


def reprefix(root: Any, a: int, b: int, c: int) -> Any:
    """The same namespaces under other prefixes (serialised and re-read): the XML means
    the same, its canonical form (which carries prefixes) does not."""
    declared = sorted({p for el in _elements(root) for p in el.nsmap if p})
    prefix = _pick(declared, a)
    if prefix is None:
        return
    new = f"p{b % 7}"
    text = etree.tostring(root, encoding="unicode")
    text = text.replace(f"xmlns:{prefix}=", f"xmlns:{new}=").replace(f"<{prefix}:", f"<{new}:")
    text = (
        text.replace(f"</{prefix}:", f"</{new}:").replace(f'"{prefix}:', f'"{new}:').replace(f" {prefix}:", f" {new}:")
    )
    try:
        return etree.fromstring(text.encode())
    except etree.XMLSyntaxError:
        return None


def change_id(root: Any, a: int, b: int, c: int) -> None:
    el = _pick([e for e in _elements(root) if e.get("ID")], a)
    if el is None:
        return
    variant = c % 6
    if variant == 0:
        el.set("ID", _pick(_ids(root), b))  # another element's ID (maybe its own)
    elif variant == 1:
        el.set("ID", "_changed" + str(b))
    elif variant == 2:
        del el.attrib["ID"]
    elif variant == 3:
        el.set("{urn:example:evil}ID", el.get("ID"))  # a namespaced ID beside it
    elif variant == 4:
        other = _pick(_elements(root), b)
        other.set("ID", el.get("ID"))  # the signed ID on another element
    else:
        # xml:id is an ID to libxml2 whatever the element: the signed ID on another one.
        other = _pick(_elements(root), b)
        other.set("{http://www.w3.org/XML/1998/namespace}id", el.get("ID"))


def change_signature(root: Any, a: int, b: int, c: int, impostor_cert: str) -> None:
    sig = _pick(list(root.iter(f"{{{DS}}}Signature")), a)
    if sig is None:
        return
    ref = sig.find(f".//{{{DS}}}Reference")
    variant = b % 18
    if variant == 0 and ref is not None:
        ref.set("URI", "#" + (_pick(_ids(root), c) or "x"))
    elif variant == 1 and ref is not None:
        ref.set("URI", "")
    elif variant == 2 and ref is not None:
        ref.attrib.pop("URI", None)
    elif variant == 3 and ref is not None:
        ref.set(
            "URI", _pick(["http://evil.test/doc.xml", "file:///etc/passwd", "#xpointer(/)", "#xpointer(id('x'))"], c)
        )
    elif variant in (4, 5):
        tag = "DigestValue" if variant == 4 else "SignatureValue"
        el = sig.find(f".//{{{DS}}}{tag}")
        if el is not None and el.text:
            text = el.text.strip()
            i = c % len(text)
            el.text = text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]
    elif variant == 6:
        tr = _pick(list(sig.iter(f"{{{DS}}}Transform")), c)
        if tr is not None:
            tr.set("Algorithm", _pick(ALGORITHMS["transform"], c // 3))
    elif variant == 7:
        transforms = sig.find(f".//{{{DS}}}Transforms")
        if transforms is not None:
            transforms.getparent().remove(transforms)
    elif variant == 8:
        el = sig.find(f".//{{{DS}}}SignatureMethod")
        el.set("Algorithm", _pick(ALGORITHMS["signature"], c))
    elif variant == 9:
        el = sig.find(f".//{{{DS}}}DigestMethod")
        el.set("Algorithm", _pick(ALGORITHMS["digest"], c))
    elif variant == 10:
        el = sig.find(f".//{{{DS}}}CanonicalizationMethod")
        el.set("Algorithm", _pick(ALGORITHMS["c14n"], c))
    elif variant == 11:
        info = sig.find(f"{{{DS}}}KeyInfo")
        if info is not None:
            sig.remove(info)
    elif variant == 12:
        cert = sig.find(f".//{{{DS}}}X509Certificate")
        if cert is not None:
            cert.text = impostor_cert  # KeyInfo names another key: must not be used
    elif variant == 13 and ref is not None:
        ref.addnext(copy.deepcopy(ref))  # a second Reference in SignedInfo
    elif variant == 14:
        parent = sig.getparent()
        parent.remove(sig)
        _pick([parent, root, *root], c).insert(c % 3, sig)
    elif variant in (15, 16):
        # KeyInfo naming a key by name or by reference (another document, another element).
        info = sig.find(f"{{{DS}}}KeyInfo")
        if info is None:
            info = etree.SubElement(sig, f"{{{DS}}}KeyInfo")
        info[:] = []
        if variant == 15:
            etree.SubElement(info, f"{{{DS}}}KeyName").text = _pick(["impostor", "test-idp", ""], c)
        else:
            etree.SubElement(
                info,
                f"{{{DS}}}RetrievalMethod",
                URI=_pick(["http://evil.test/key.pem", "#" + (_pick(_ids(root), c) or "x"), "file:///etc/passwd"], c),
                Type="http://www.w3.org/2000/09/xmldsig#X509Data",
            )
    elif variant == 17:
        data = sig.find(f".//{{{DS}}}X509Data")
        if data is not None:
            first = etree.Element(f"{{{DS}}}X509Certificate")
            first.text = impostor_cert
            data.insert(0, first)  # another certificate before the IdP's


def change_text(root: Any, a: int, b: int, c: int) -> None:
    variant = c % 4
    if variant == 0:
        atk.set_name_id(root)
    elif variant == 1:
        nid = root.find(f".//{{{SAML}}}NameID")
        if nid is not None and nid.text and len(nid.text) > 1:
            i = 1 + a % (len(nid.text) - 1)
            head, tail = nid.text[:i], nid.text[i:]
            nid.text = head
            comment = etree.Comment("")
            comment.tail = tail
            nid.insert(0, comment)
    elif variant == 2:
        el = _pick(_elements(root), a)
        el.tail = (el.tail or "") + _pick([" ", "\n", "\t", "\r\n"], b)
    else:
        value = _pick(list(root.iter(f"{{{SAML}}}AttributeValue")), a)
        if value is not None:
            value.text = _pick(["Admins", "Sales ", "", "alice@acme.test"], b)


MUTATIONS = {
    "reorder": reorder,
    "duplicate": duplicate,
    "move": move,
    "renamespace": renamespace,
    "reprefix": reprefix,
    "change_id": change_id,
    "change_signature": change_signature,
    "change_text": change_text,
}

SHAPES = {"response", "assertion", "both", "unicode"}
ENCODINGS = [None, None, "UTF-8", "ISO-8859-1", "UTF-16", "US-ASCII"]
small = st.integers(min_value=0, max_value=63)
steps_strategy = st.lists(st.tuples(st.sampled_from(sorted(MUTATIONS)), small, small, small), min_size=1, max_size=3)


def mutate(
    xml: str, wrap: str | None, steps: list[tuple[str, int, int, int]], impostor_cert: str, encoding: str | None = None
) -> str | bytes:
    if wrap is not None:
        # The variant may need a signature this shape does not have.
        with contextlib.suppress(AttributeError, TypeError):
            xml = atk.XSW[wrap][1](xml)
    root = atk.parse(xml)
    for kind, a, b, c in steps:
        if kind == "change_signature":
            change_signature(root, a, b, c, impostor_cert)
        else:
            fresh = MUTATIONS[kind](root, a, b, c)
            root = root if fresh is None else fresh  # reprefix makes a new tree
    if encoding is None:
        return atk.dump(root)
    # The same document in another encoding, declared (characters the encoding lacks
    # become character references, which canonicalise to the same text).
    return etree.tostring(root, encoding=encoding, xml_declaration=True)


# ------------------------------------------------------------------ tests


def test_genuine_responses_are_accepted_alike(
    engines: Any, conn: Connection, documents: dict[str, str], idp: TestIdP
) -> None:
    for name, xml in documents.items():
        expected = "ok:zoë@acme.test" if name == "unicode" else "ok:alice@acme.test"
        for encoding in (None, "ISO-8859-1", "UTF-16"):
            document = xml if encoding is None else mutate(xml, None, [], "", encoding)
            got = assert_same_verdict(engines, conn, document, encoding, idp.keys.cert_file)
            # Other encodings: the same verdict is all that is asked (pysaml2 reads the
            # response as UTF-8 text, so it refuses UTF-16, and Latin-1 with non-ASCII text).
            assert got.startswith(expected) or encoding is not None, got


@BOUNDED
@given(shape=st.sampled_from(sorted(SHAPES)), steps=steps_strategy, encoding=st.sampled_from(ENCODINGS))
@example(shape="assertion", steps=[("change_signature", 0, 12, 0)], encoding=None)  # KeyInfo of another key
@example(shape="assertion", steps=[("change_id", 0, 0, 3)], encoding=None)  # namespaced ID: the program's path
@example(shape="response", steps=[("reprefix", 0, 1, 0)], encoding=None)
@example(shape="both", steps=[("change_text", 0, 0, 1)], encoding=None)  # comment in the NameID
def test_mutated_responses_get_the_same_verdict_from_both_backends(
    engines: Any,
    conn: Connection,
    documents: dict[str, str],
    impostor_cert: str,
    idp: TestIdP,
    shape: str,
    steps: Any,
    encoding: str | None,
) -> None:
    xml = mutate(documents[shape], None, steps, impostor_cert, encoding)
    assert_same_verdict(engines, conn, xml, steps, idp.keys.cert_file)


@BOUNDED
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    wrap=st.sampled_from(sorted(atk.XSW)),
    steps=st.lists(st.tuples(st.sampled_from(sorted(MUTATIONS)), small, small, small), max_size=2),
)
def test_wrapped_responses_get_the_same_verdict_from_both_backends(
    engines: Any,
    conn: Connection,
    documents: dict[str, str],
    impostor_cert: str,
    idp: TestIdP,
    shape: str,
    wrap: str,
    steps: Any,
) -> None:
    xml = mutate(documents[shape], wrap, steps, impostor_cert)
    assert_same_verdict(engines, conn, xml, (wrap, steps), idp.keys.cert_file)
