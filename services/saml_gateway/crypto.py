"""An in-process pysaml2 crypto backend on the ``xmlsec`` binding (libxmlsec1).

pysaml2's default backend (``CryptoBackendXmlSec1``) writes each document to a temp
file and forks the ``xmlsec1`` program for every signature check (its CPU cost: BENCHMARKS.md).
This backend runs the same libxmlsec1 verification in process, and reproduces what the
program does for pysaml2's command line
(``xmlsec1 --verify --enabled-reference-uris empty,same-doc --enabled-key-data
raw-x509-cert --pubkey-cert-pem CERT --id-attr:ID NODE --node-id ID``), so both give
the same verdict:

- IDs are registered only on elements named NODE (the program's ``--id-attr``: local
  name matches, and the namespace matches or is absent), children first; a duplicate
  ID is an error (the program exits "duplicate ID attribute"), which defeats the XML
  signature wrapping variants that copy the signed element's ID;
- the start node is the element with ID ``node_id`` and the Signature verified is the
  first one found from there in document order, through its subtree and then its
  following siblings (``xmlSecFindNode``);
- the key is only the certificate from the IdP metadata: KeyInfo in the document is
  never used (the program enables only raw-x509-cert key data, i.e. nothing a
  Signature's KeyInfo carries);
- a Reference whose URI is neither empty nor same-document ("#…") fails, as with
  ``--enabled-reference-uris empty,same-doc``.

Documents outside what the binding can reproduce exactly (a namespaced ``ID`` attribute,
which the program registers and the binding's ``register_id`` does not; a transform
outside the canonicalisation/enveloped set) are handed to the program itself: a rare, slower path
with the program's verdict by construction.

Failures raise ``SignatureError``/``XmlsecError`` as pysaml2's backend does, so pysaml2
handles both backends alike. Decryption is shared by both backends (``xmlenc.py``).
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from typing import Any

import xmlsec
from cachetools import LRUCache
from lxml import etree
from saml2.sigver import CryptoBackend, CryptoBackendXmlSec1, SignatureError, XmlsecError

from .xmlenc import DECRYPT_FAILED, DecryptFailed, PolicyRefusal, decrypt_document, load_private_key

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
_SIGNATURE = f"{{{DSIG_NS}}}Signature"
_REFERENCE = f"{{{DSIG_NS}}}Reference"
_TRANSFORM = f"{{{DSIG_NS}}}Transform"
# Transforms the binding runs exactly as the program does (the ones SAML uses,
# saml-core §5.4.4); anything else goes to the program.
_PLAIN_TRANSFORMS = frozenset(
    {
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
        "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
        "http://www.w3.org/2006/12/xml-c14n11",
        "http://www.w3.org/2006/12/xml-c14n11#WithComments",
    }
)


def _parser() -> etree.XMLParser:
    # As the program parses: keep whitespace (it is signed), never load DTDs, entities
    # or anything from the network (the gateway refused DTDs before we get here).
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class _Fallback(Exception):
    """The document needs the xmlsec1 program for an exact verdict."""


class CryptoBackendXmlsecBinding(CryptoBackend):
    """pysaml2 ``CryptoBackend`` verifying and decrypting in process."""

    def __init__(self, xmlsec1_path: str | None = None) -> None:
        super().__init__()
        self._program = CryptoBackendXmlSec1(xmlsec1_path) if xmlsec1_path else None
        self._keys: LRUCache[str, Any] = LRUCache(256)  # least recently used out when full
        self._private_keys: LRUCache[bytes, Any] = LRUCache(256)
        self._lock = threading.Lock()
        self.fallbacks = 0  # documents verified by the program (tests, metrics)

    @property
    def version(self) -> str:
        # In the module since xmlsec 1.3.14, not in its stubs (1.3.17).
        return ".".join(str(n) for n in xmlsec.get_libxmlsec_version())  # type: ignore[attr-defined]

    # ----------------------------------------------------------------- keys

    def _key(self, path: str, fmt: int) -> Any:
        # pysaml2 hands us a temp file per check; cache the parsed key by content.
        with open(path, "rb") as f:
            data = f.read()
        cache_key = f"{fmt}:{data!r}"
        with self._lock:  # an LRU read reorders: verifier threads share it
            key = self._keys.get(cache_key)
        if key is None:
            key = xmlsec.Key.from_memory(data, fmt, None)
            with self._lock:
                self._keys[cache_key] = key
        return key

    # ----------------------------------------------------------------- verify

    def validate_signature(self, signedtext: Any, cert_file: str, cert_type: str, node_name: str, node_id: Any) -> bool:
        if cert_type != "pem":
            raise SignatureError(f"unsupported certificate type {cert_type!r}")
        data = signedtext if isinstance(signedtext, bytes) else str(signedtext).encode("utf-8")
        try:
            return self._verify(data, cert_file, node_name, node_id)
        except _Fallback:
            if self._program is None:
                raise SignatureError("document needs the xmlsec1 program, which is not configured") from None
            self.fallbacks += 1
            return bool(self._program.validate_signature(data, cert_file, cert_type, node_name, node_id))

    def _verify(self, data: bytes, cert_file: str, node_name: str, node_id: Any) -> bool:
        try:
            root = etree.fromstring(data, _parser())
        except etree.XMLSyntaxError as err:
            raise SignatureError(f"unparsable document: {err}") from None
        prefix, _, local = node_name.rpartition(":")
        ns = prefix or None

        ctx = xmlsec.SignatureContext()
        ids: dict[str, Any] = {}
        # Children first, as xmlSecAppAddIDAttr registers them.
        for el in _postorder(root):
            if etree.QName(el).localname != local:
                continue
            el_ns = etree.QName(el).namespace
            if ns is not None and el_ns is not None and el_ns != ns:
                continue
            names = [a for a in el.attrib if etree.QName(a).localname == "ID"]
            if not names:
                continue
            if names != ["ID"]:
                raise _Fallback()  # a namespaced ID attribute: the program's rules differ
            value = el.get("ID")
            if value in ids and ids[value] is not el:
                raise SignatureError(f"duplicate ID attribute {value!r}")
            ids[value] = el
        for el in ids.values():
            try:
                ctx.register_id(el, "ID")
            except xmlsec.Error as err:
                raise SignatureError(f"cannot register ID: {err}") from None

        if node_id:
            start = ids.get(str(node_id))
            if start is None:
                raise SignatureError(f"failed to find node with id {node_id!r}")
        else:
            start = root
        signature = _find_from(start, _SIGNATURE)
        if signature is None:
            raise SignatureError("failed to find the Signature node")
        for ref in signature.iter(_REFERENCE):
            uri = ref.get("URI")
            if uri not in (None, "") and not uri.startswith("#"):
                raise SignatureError(f"reference URI {uri!r} is not same-document")
        for tr in signature.iter(_TRANSFORM):
            if tr.get("Algorithm") not in _PLAIN_TRANSFORMS:
                raise _Fallback()

        ctx.key = self._key(cert_file, xmlsec.constants.KeyDataFormatCertPem)
        try:
            ctx.verify(signature)
        except xmlsec.Error as err:
            raise SignatureError(f"signature verification failed: {err}") from None
        return True

    # ----------------------------------------------------------------- decrypt

    def decrypt(self, enctext: Any, key_file: str) -> str:
        # One decryptor for both backends, with the algorithm allow-list (xmlenc.py).
        return decrypt_with_key_file(enctext, key_file, self._private_keys, self._lock)

    # Signing and encrypting are the IdP's business; an SP only verifies and decrypts
    # (AuthnRequests are signed over the redirect query string, not with XML DSig).
    def sign_statement(self, statement: Any, node_name: str, key_file: str, node_id: Any) -> str:
        if self._program is None:
            raise NotImplementedError("XML signing needs the xmlsec1 program")
        return str(self._program.sign_statement(statement, node_name, key_file, node_id))

    def encrypt(self, text: Any, recv_key: Any, template: Any, key_type: Any, xpath: str = "") -> Any:
        if self._program is None:
            raise NotImplementedError("XML encryption needs the xmlsec1 program")
        return self._program.encrypt(text, recv_key, template, key_type, xpath)

    def encrypt_assertion(
        self, statement: Any, enc_key: Any, template: Any, key_type: Any = "des-192", node_xpath: Any = None
    ) -> Any:
        if self._program is None:
            raise NotImplementedError("XML encryption needs the xmlsec1 program")
        return self._program.encrypt_assertion(statement, enc_key, template, key_type, node_xpath)


class CryptoBackendProgram(CryptoBackendXmlSec1):
    """pysaml2's ``xmlsec1`` program backend (every signature check forks the program),
    decrypting with the shared decryptor: the program (1.2.x) cannot decrypt
    ``xmlenc11#rsa-oaep`` or OAEP with SHA-256, and has no algorithm allow-list."""

    def __init__(self, xmlsec_binary: str) -> None:
        super().__init__(xmlsec_binary)
        self._private_keys: LRUCache[bytes, Any] = LRUCache(256)
        self._lock = threading.Lock()

    def decrypt(self, enctext: Any, key_file: str) -> str:
        return decrypt_with_key_file(enctext, key_file, self._private_keys, self._lock)


def decrypt_with_key_file(enctext: Any, key_file: str, cache: MutableMapping[bytes, Any], lock: threading.Lock) -> str:
    """pysaml2's ``decrypt(enctext, key_file)`` contract: the document with the assertion
    decrypted in place. Refusals raise ``PolicyRefusal``, which pysaml2 lets through: a
    refused algorithm, and a ciphertext this key cannot decrypt (pysaml2 would swallow
    ``XmlsecError`` and carry on without the assertion; a connection has one key)."""
    data = enctext if isinstance(enctext, bytes) else str(enctext).encode("utf-8")
    with open(key_file, "rb") as f:
        pem = f.read()
    key = cache.get(pem)
    if key is None:
        try:
            key = load_private_key(pem)
        except (ValueError, TypeError, DecryptFailed):
            raise XmlsecError("the decryption key is not an RSA private key") from None
        with lock:
            if len(cache) > 256:
                cache.clear()
            cache[pem] = key
    try:
        return decrypt_document(data, key)
    except DecryptFailed:
        raise PolicyRefusal("decrypt", DECRYPT_FAILED) from None


def _postorder(el: Any) -> Any:
    for child in el:
        if isinstance(child.tag, str):
            yield from _postorder(child)
    yield el


def _find_from(start: Any, tag: str) -> Any:
    """xmlSecFindNode: the first ``tag`` in ``start``'s subtree, then in the subtrees of
    its following siblings, in document order."""
    node = start
    while node is not None:
        if isinstance(node.tag, str):
            for el in node.iter(tag):
                return el
        node = node.getnext()
    return None
