"""Encrypted assertions (XML Encryption) and the algorithms Provisio accepts.

Both crypto backends decrypt here, with ``cryptography``: the ``xmlsec1`` program on
this platform (1.2.x) knows neither ``xmlenc11#rsa-oaep`` nor OAEP with SHA-256, so
sharing one decryptor is what keeps the two backends' verdicts identical. What it does,
and what pysaml2's backends did not:

- an **allow-list** of algorithms, each refusal naming the algorithm: key transport
  RSA-OAEP only (xmlenc-core §5.4.2 ``rsa-oaep-mgf1p``, xmlenc-core1 §5.5.2 ``rsa-oaep``
  with its DigestMethod and MGF); RSA-1_5 is refused (Bleichenbacher's padding oracle,
  xmlenc-core1 §5.5.1 "MUST NOT be used" in new deployments); content AES-CBC and
  AES-GCM (xmlenc-core1 §5.2);
- the OAEP ``DigestMethod`` inside the EncryptedKey's EncryptionMethod (SHA-1 by
  default, which Entra ID and Okta send) is a parameter of the key transport, not a
  signature digest: it is judged here, never by the signature check;
- the plaintext is parsed with the gateway's hardened settings (no DTD, no entities, no
  network), must be exactly one ``saml:Assertion`` with no assertion nested inside it,
  and the algorithms of every Signature it carries pass the same allow-list as a plain
  response's (an RSA-SHA1 assertion inside an EncryptedAssertion is refused like a plain
  one).

Every failure to decrypt — wrong key, bad padding, GCM tag mismatch, plaintext that does
not parse, holds a DTD or is not an assertion — is the same refusal, so the answer says
nothing more about the ciphertext (the CBC attacks of Jager & Somorovsky, "How to Break
XML Encryption", CCS 2011, need to tell these apart); the other refusals need a
plaintext that is a whole well-formed assertion.

An EncryptedID (the NameID encrypted on its own, saml-core §2.2.4) is decrypted by
``decrypt_name_id`` with the same allow-list, only once the signature covering it has been
verified (saml.py); its refusals can say more, since the IdP signed its ciphertext.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from defusedxml.ElementTree import fromstring as safe_fromstring
from lxml import etree

SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
XENC = "http://www.w3.org/2001/04/xmlenc#"
XENC11 = "http://www.w3.org/2009/xmlenc11#"
DSIG_MORE = "http://www.w3.org/2001/04/xmldsig-more#"

_ASSERTION = f"{{{SAML_NS}}}Assertion"
_ENCRYPTED_ASSERTION = f"{{{SAML_NS}}}EncryptedAssertion"
_ENCRYPTED_ID = f"{{{SAML_NS}}}EncryptedID"
_SUBJECT = f"{{{SAML_NS}}}Subject"
_NAME_ID = f"{{{SAML_NS}}}NameID"
_ENCRYPTED_DATA = f"{{{XENC}}}EncryptedData"
_ENCRYPTED_KEY = f"{{{XENC}}}EncryptedKey"
_ENCRYPTION_METHOD = f"{{{XENC}}}EncryptionMethod"
_CIPHER_VALUE = f"{{{XENC}}}CipherValue"
_OAEP_PARAMS = f"{{{XENC}}}OAEPparams"
_MGF = f"{{{XENC11}}}MGF"
_DIGEST_METHOD = f"{{{DSIG_NS}}}DigestMethod"
_KEY_INFO = f"{{{DSIG_NS}}}KeyInfo"
_SIGNATURE = f"{{{DSIG_NS}}}Signature"
_PLACEHOLDER_NS = "urn:provisio:saml:decrypted"

# ----------------------------------------------------------------- signatures

# xmldsig-core1 §6 and RFC 6931 names. Only these sign an accepted response.
SIGNATURE_METHODS = {
    DSIG_MORE + "rsa-sha256": "RSA-SHA256",
    DSIG_MORE + "rsa-sha384": "RSA-SHA384",
    DSIG_MORE + "rsa-sha512": "RSA-SHA512",
    DSIG_MORE + "ecdsa-sha256": "ECDSA-SHA256",
    DSIG_MORE + "ecdsa-sha384": "ECDSA-SHA384",
    DSIG_MORE + "ecdsa-sha512": "ECDSA-SHA512",
}
DIGEST_METHODS = {
    XENC + "sha256": "SHA-256",
    DSIG_MORE + "sha384": "SHA-384",
    XENC + "sha512": "SHA-512",
}
# Names for the refusal message (RFC 6931 §2); anything else is named by its URI.
_KNOWN_WEAK = {
    DSIG_NS + "rsa-sha1": "RSA-SHA1",
    DSIG_NS + "dsa-sha1": "DSA-SHA1",
    DSIG_NS + "hmac-sha1": "HMAC-SHA1",
    DSIG_NS + "sha1": "SHA-1",
    DSIG_MORE + "rsa-md5": "RSA-MD5",
    DSIG_MORE + "md5": "MD5",
    DSIG_MORE + "rsa-ripemd160": "RSA-RIPEMD-160",
    XENC + "ripemd160": "RIPEMD-160",
    DSIG_MORE + "sha224": "SHA-224",
    DSIG_MORE + "rsa-sha224": "RSA-SHA224",
    DSIG_MORE + "ecdsa-sha1": "ECDSA-SHA1",
    DSIG_MORE + "ecdsa-sha224": "ECDSA-SHA224",
    DSIG_MORE + "hmac-sha256": "HMAC-SHA256",
    XENC11 + "sha224": "SHA-224",
}


class PolicyRefusal(Exception):
    """A document Provisio refuses on principle (not a failed decryption): the SAML
    engine turns it into a ``Refused`` with this reason and message."""

    def __init__(self, reason: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status

    def __reduce__(self) -> Any:
        return (PolicyRefusal, (self.reason, self.message, self.status))


DECRYPT_FAILED = (
    "The assertion could not be decrypted with this connection's key; give the identity provider "
    "this connection's current SP metadata."
)


class DecryptFailed(Exception):
    """The ciphertext could not be decrypted with the key given (one answer for all)."""


def _name(uri: str) -> str:
    return _KNOWN_WEAK.get(uri) or f'"{uri[:120]}"'


def signature_algorithm_problem(signature_method: str | None, digest_methods: list[str | None]) -> str | None:
    """Why a Signature's algorithms are refused (a message naming the algorithm), or
    None when its SignatureMethod and every Reference's DigestMethod are allowed."""
    method = (signature_method or "").strip()
    if method not in SIGNATURE_METHODS:
        return (
            f"The response is signed with {_name(method) if method else 'no SignatureMethod'}, which is "
            "refused; configure the identity provider to sign with RSA-SHA256 (SHA-256)."
        )
    if not digest_methods:
        return "The signature has no Reference, which is refused."
    for digest in digest_methods:
        d = (digest or "").strip()
        if d not in DIGEST_METHODS:
            return (
                f"The response's signature uses the digest {_name(d) if d else '(none)'}, which is refused; "
                "configure the identity provider to use SHA-256."
            )
    return None


def check_signature_elements(root: Any) -> None:
    """Every ds:Signature under ``root`` (an lxml or ElementTree element) uses allowed
    algorithms; raise :class:`PolicyRefusal` ``weak_signature`` otherwise. Only
    Signature elements are judged: a DigestMethod that parameterises RSA-OAEP inside an
    EncryptedKey is not a signature."""
    for sig in root.iter(_SIGNATURE):
        signed_info = sig.find(f"{{{DSIG_NS}}}SignedInfo")
        if signed_info is None:
            continue  # not a signature anyone can verify: the signature check refuses it
        method_el = signed_info.find(f"{{{DSIG_NS}}}SignatureMethod")
        method = method_el.get("Algorithm") if method_el is not None else None
        digests = [
            (ref.find(_DIGEST_METHOD).get("Algorithm") if ref.find(_DIGEST_METHOD) is not None else None)
            for ref in signed_info.findall(f"{{{DSIG_NS}}}Reference")
        ]
        problem = signature_algorithm_problem(method, digests)
        if problem:
            raise PolicyRefusal("weak_signature", problem)


# ----------------------------------------------------------------- encryption

# Content encryption (xmlenc-core1 §5.2): key length in bytes and the mode.
_DATA_ALGORITHMS = {
    XENC + "aes128-cbc": (16, "cbc"),
    XENC + "aes192-cbc": (24, "cbc"),
    XENC + "aes256-cbc": (32, "cbc"),
    XENC11 + "aes128-gcm": (16, "gcm"),
    XENC11 + "aes192-gcm": (24, "gcm"),
    XENC11 + "aes256-gcm": (32, "gcm"),
}
_RSA_OAEP_MGF1P = XENC + "rsa-oaep-mgf1p"
_RSA_OAEP = XENC11 + "rsa-oaep"
_RSA_1_5 = XENC + "rsa-1_5"
# OAEP's hash (DigestMethod) and MGF1's hash (xenc11:MGF), xmlenc-core1 §5.5.2.
_OAEP_DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    DSIG_NS + "sha1": hashes.SHA1,
    XENC + "sha256": hashes.SHA256,
    DSIG_MORE + "sha384": hashes.SHA384,
    XENC + "sha512": hashes.SHA512,
}
_MGF_DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    XENC11 + "mgf1sha1": hashes.SHA1,
    XENC11 + "mgf1sha256": hashes.SHA256,
    XENC11 + "mgf1sha384": hashes.SHA384,
    XENC11 + "mgf1sha512": hashes.SHA512,
}


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _b64(text: str | None) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise DecryptFailed() from None


def _key_transport(ek: Any, what: str = "assertion") -> padding.OAEP:
    """The OAEP padding an EncryptedKey's EncryptionMethod asks for, if allowed."""
    method = ek.find(_ENCRYPTION_METHOD)
    alg = (method.get("Algorithm") if method is not None else "") or ""
    if alg == _RSA_1_5:
        raise PolicyRefusal(
            "weak_encryption",
            f"The {what}'s key is encrypted with RSA-1_5 "
            f"({_RSA_1_5}), which is refused (it is open to padding-oracle attacks); configure "
            "the identity provider to use RSA-OAEP key transport.",
        )
    if alg not in (_RSA_OAEP_MGF1P, _RSA_OAEP):
        raise PolicyRefusal(
            "weak_encryption",
            f"The {what}'s key is encrypted with {_name(alg) if alg else '(none)'}"
            ", which is not supported; configure the identity provider to use RSA-OAEP.",
        )
    digest_el = method.find(_DIGEST_METHOD)
    digest_uri = digest_el.get("Algorithm") if digest_el is not None else DSIG_NS + "sha1"  # the OAEP default
    if digest_uri not in _OAEP_DIGESTS:
        raise PolicyRefusal(
            "weak_encryption",
            f"RSA-OAEP with the digest {_name(digest_uri or '')} is not supported; use SHA-1 (the default) or SHA-256.",
        )
    mgf_hash: Callable[[], hashes.HashAlgorithm] = hashes.SHA1  # rsa-oaep-mgf1p: MGF1 with SHA-1, always
    mgf_el = method.find(_MGF)
    if alg == _RSA_OAEP and mgf_el is not None:
        mgf_uri = mgf_el.get("Algorithm") or ""
        if mgf_uri not in _MGF_DIGESTS:
            raise PolicyRefusal(
                "weak_encryption", f"RSA-OAEP with the mask generation function {_name(mgf_uri)} is not supported."
            )
        mgf_hash = _MGF_DIGESTS[mgf_uri]
    params_el = method.find(_OAEP_PARAMS)
    label = _b64(params_el.text) if params_el is not None and (params_el.text or "").strip() else None
    return padding.OAEP(mgf=padding.MGF1(mgf_hash()), algorithm=_OAEP_DIGESTS[digest_uri](), label=label)


def _content_key(
    container: Any, data: Any, private_key: rsa.RSAPrivateKey, key_len: int, what: str = "assertion"
) -> tuple[bytes, Any]:
    """The content key, and the EncryptedKey it came from, from an EncryptedKey in the
    EncryptedData's KeyInfo or beside it in the EncryptedAssertion or EncryptedID
    (saml-core §2.2.4 and §2.3.3.1 allow both; RetrievalMethod points to the latter)."""
    candidates = []
    key_info = data.find(_KEY_INFO)
    if key_info is not None:
        candidates.extend(key_info.findall(_ENCRYPTED_KEY))
    candidates.extend(container.findall(_ENCRYPTED_KEY))
    if not candidates:
        raise DecryptFailed()
    paddings = [_key_transport(ek, what) for ek in candidates]  # every key's algorithm is judged first
    for ek, pad in zip(candidates, paddings, strict=True):
        value = ek.find(f"{{{XENC}}}CipherData/{_CIPHER_VALUE}")
        if value is None:
            continue
        try:
            key = private_key.decrypt(_b64(value.text), pad)
        except (ValueError, DecryptFailed):
            continue  # another recipient's key, or not ours
        if len(key) == key_len:
            return key, ek
    raise DecryptFailed()


def _decrypt_data(alg: str, key: bytes, blob: bytes) -> bytes:
    _, mode = _DATA_ALGORITHMS[alg]
    if mode == "gcm":
        # xmlenc-core1 §5.2.4: a 96-bit IV, then the ciphertext and a 128-bit tag.
        if len(blob) < 12 + 16:
            raise DecryptFailed()
        try:
            return AESGCM(key).decrypt(blob[:12], blob[12:], None)
        except InvalidTag:
            raise DecryptFailed() from None
    # xmlenc-core1 §5.2.1: the IV, then CBC blocks; the last octet is the padding length
    # and the other padding octets are arbitrary (not PKCS#7), so only the length counts.
    if len(blob) < 32 or len(blob) % 16:
        raise DecryptFailed()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[:16])).decryptor()
    plain = decryptor.update(blob[16:]) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= 16:
        raise DecryptFailed()
    return plain[:-pad]


def _plain_assertion(plaintext: bytes) -> Any:
    """The decrypted octets as one saml:Assertion, parsed as the gateway parses a
    response (defusedxml first: no DTD, no entities; then lxml without network).
    Plaintext that is not a well-formed assertion (a DTD included) fails like a wrong
    key: a CBC attacker learns nothing until the plaintext is a whole assertion."""
    try:
        safe_fromstring(plaintext, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        el = etree.fromstring(plaintext, _parser())
    except Exception:  # DefusedXmlException, ParseError, XMLSyntaxError: all the same answer
        raise DecryptFailed() from None
    if el.tag != _ASSERTION:
        raise DecryptFailed()
    nested = sum(1 for _ in el.iter(_ASSERTION, _ENCRYPTED_ASSERTION)) - 1
    if nested:
        # Signature wrapping inside the ciphertext: a second assertion for the signature
        # to resolve to (saml-profiles §4.1.4.2 allows exactly one assertion).
        raise PolicyRefusal("assertions", "The encrypted assertion holds another assertion, which is refused.", 400)
    check_signature_elements(el)
    check_encrypted_ids([el], el)
    return el


# ----------------------------------------------------------------- EncryptedID

# saml-core §2.2.4: an EncryptedID holds a NameID (or BaseID) of at most a few hundred
# characters; anything near these sizes is not one (claim limits: NameID ≤ 512).
MAX_ENCRYPTED_ID_BYTES = 16 * 1024
MAX_NAME_ID_PLAINTEXT = 4 * 1024
_NAME_ID_ATTRIBUTES = frozenset({"Format", "NameQualifier", "SPNameQualifier", "SPProvidedID"})
NAME_ID_DECRYPT_FAILED = (
    "The NameID (EncryptedID) could not be decrypted with this connection's key; give the identity "
    "provider this connection's current SP metadata (its encryption certificate)."
)


def check_encrypted_ids(assertions: list[Any], root: Any) -> None:
    """The only EncryptedID accepted is the one child of an assertion's Subject
    (saml-core §2.2.3, saml-profiles §4.1.4.2: the Subject names the user). One
    anywhere else under ``root`` — in a SubjectConfirmation, the response's Extensions,
    a second Subject — is refused: nothing reads it, and a wrapping attack is what puts
    it there. Its algorithms are judged here too, before any signature check, as an
    encrypted assertion's are (no decryption happens here)."""
    placed = [eid for a in assertions for eid in a.findall(f"{_SUBJECT}/{_ENCRYPTED_ID}")]
    found = sum(1 for _ in root.iter(_ENCRYPTED_ID))
    if found != len(placed) or any(len(a.findall(_SUBJECT)) > 1 for a in assertions):
        raise PolicyRefusal(
            "subject", "The response holds an EncryptedID outside the assertion's Subject, which is refused.", 400
        )
    if len(placed) > 1:
        raise PolicyRefusal("subject", "The assertion's Subject holds more than one EncryptedID.", 400)
    for eid in placed:
        for data in eid.findall(_ENCRYPTED_DATA):
            _name_id_data_algorithm(data)
            key_info = data.find(_KEY_INFO)
            for ek in (key_info.findall(_ENCRYPTED_KEY) if key_info is not None else []) + eid.findall(_ENCRYPTED_KEY):
                _key_transport(ek, "NameID")


def _name_id_data_algorithm(data: Any) -> str:
    method = data.find(_ENCRYPTION_METHOD)
    alg = (method.get("Algorithm") if method is not None else "") or ""
    if alg not in _DATA_ALGORITHMS:
        raise PolicyRefusal(
            "weak_encryption",
            f"The NameID (EncryptedID) is encrypted with {_name(alg) if alg else '(none)'}"
            ", which is not supported; configure the identity provider to use AES-256-GCM "
            "or AES-256-CBC.",
        )
    return alg


def _in_context(plaintext: bytes, nsmap: dict[str | None, str]) -> Any:
    """The plaintext parsed as one element: on its own first (OpenSAML and .NET serialise
    the NameID with its namespace declarations), else in the namespace context of the
    EncryptedID, as xmlenc-core1 §4.5 step 3 decrypts an Element (xmlsec parses it in
    its node's context too). defusedxml first: no DTD, no entities."""
    candidates = [plaintext]
    decls = " ".join(
        f'xmlns{":" + prefix if prefix else ""}="{uri}"'
        for prefix, uri in nsmap.items()
        if '"' not in uri and "&" not in uri and "<" not in uri
    )
    candidates.append(f"<provisio-context {decls}>".encode() + plaintext + b"</provisio-context>")
    for i, text in enumerate(candidates):
        try:
            safe_fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
            el = etree.fromstring(text, _parser())
        except Exception:  # DefusedXmlException, ParseError, XMLSyntaxError
            continue
        if i == 0:
            return el
        children = [c for c in el]
        if len(children) != 1 or (el.text or "").strip() or (children[0].tail or "").strip():
            raise PolicyRefusal("subject", "The encrypted NameID does not hold exactly one NameID element.", 400)
        return children[0]
    raise PolicyRefusal("subject", "The encrypted NameID is not well-formed XML (or holds a DTD or entities).", 400)


def decrypt_name_id(encrypted_id: Any, private_keys: list[rsa.RSAPrivateKey]) -> tuple[str, tuple[str, ...]]:
    """The NameID an lxml ``saml:EncryptedID`` element encrypts, as XML text with its
    namespace declared, and the algorithms used (content encryption, key transport, and
    the OAEP DigestMethod / MGF when given). The EncryptedKey is inside the
    EncryptedData's KeyInfo (as Shibboleth sends it) or beside the
    EncryptedData in the EncryptedID (OpenSAML's "peer" placement, with a
    RetrievalMethod), saml-core §2.2.4.

    The caller decrypts only an EncryptedID under a verified signature, so no one but
    the IdP chose this ciphertext: unlike an EncryptedAssertion's, its failures may
    be told apart (a key failure is ``decrypt``; plaintext that is not one NameID is
    ``subject``). Raise :class:`PolicyRefusal`."""
    if len(etree.tostring(encrypted_id)) > MAX_ENCRYPTED_ID_BYTES:
        raise PolicyRefusal("too_large", "The encrypted NameID (EncryptedID) is larger than this service accepts.", 413)
    datas = encrypted_id.findall(_ENCRYPTED_DATA)
    if len(datas) != 1:
        raise PolicyRefusal("subject", "An EncryptedID must hold exactly one EncryptedData.", 400)
    enc = datas[0]
    # saml-core §2.2.4: Type, when present, MUST be #Element.
    if enc.get("Type") not in (None, XENC + "Element"):
        raise PolicyRefusal("subject", "The encrypted NameID is not an encrypted element (EncryptedData Type).", 400)
    alg = _name_id_data_algorithm(enc)
    cipher_value = enc.find(f"{{{XENC}}}CipherData/{_CIPHER_VALUE}")
    if cipher_value is None:
        raise PolicyRefusal("decrypt", NAME_ID_DECRYPT_FAILED)
    try:
        blob = _b64(cipher_value.text)
    except DecryptFailed:
        raise PolicyRefusal("decrypt", NAME_ID_DECRYPT_FAILED) from None
    if len(blob) > MAX_NAME_ID_PLAINTEXT + 64:
        raise PolicyRefusal("too_large", "The encrypted NameID (EncryptedID) is larger than this service accepts.", 413)
    plaintext = None
    used_key = None
    for private_key in private_keys:
        try:
            key, used_key = _content_key(encrypted_id, enc, private_key, _DATA_ALGORITHMS[alg][0], "NameID")
            plaintext = _decrypt_data(alg, key, blob)
            break
        except DecryptFailed:
            continue
    if plaintext is None or used_key is None:
        raise PolicyRefusal("decrypt", NAME_ID_DECRYPT_FAILED)
    el = _in_context(plaintext, dict(encrypted_id.nsmap))
    if el.tag != _NAME_ID or len(el) or not set(el.attrib) <= _NAME_ID_ATTRIBUTES:
        # A BaseID, an assertion, or a NameID with children or foreign attributes.
        raise PolicyRefusal("subject", "The encrypted NameID does not hold exactly one NameID element.", 400)
    # Re-serialised on its own, with exactly the SAML namespace it needs (pysaml2 parses it).
    name_id = etree.Element(_NAME_ID, nsmap={"saml": SAML_NS})
    for attr in _NAME_ID_ATTRIBUTES:
        if el.get(attr) is not None:
            name_id.set(attr, el.get(attr))
    name_id.text = el.text
    key_method = used_key.find(_ENCRYPTION_METHOD)
    algorithms = [alg, key_method.get("Algorithm") or ""]
    for param in (key_method.find(_DIGEST_METHOD), key_method.find(_MGF)):
        if param is not None and param.get("Algorithm"):
            algorithms.append(param.get("Algorithm"))
    return etree.tostring(name_id, encoding="unicode"), tuple(algorithms)


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptFailed()
    return key


def decrypt_document(data: bytes, private_key: rsa.RSAPrivateKey) -> str:
    """``data`` with each EncryptedAssertion's EncryptedData replaced by the assertion it
    encrypts (where xmlsec puts it, so pysaml2 reads it the same way). Raise
    :class:`PolicyRefusal` for a refused algorithm or structure, :class:`DecryptFailed`
    when this key cannot decrypt it."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError:
        raise DecryptFailed() from None
    containers = list(root.iter(_ENCRYPTED_ASSERTION))
    if not containers:
        raise DecryptFailed()
    spliced: list[tuple[str, str]] = []
    for container in containers:
        datas = container.findall(_ENCRYPTED_DATA)
        if len(datas) != 1:
            raise PolicyRefusal("assertions", "An EncryptedAssertion must hold exactly one EncryptedData.", 400)
        enc = datas[0]
        kind = enc.get("Type")
        if kind not in (None, XENC + "Element"):
            # #Content would splice arbitrary nodes into the container.
            raise PolicyRefusal(
                "malformed", "The encrypted assertion is not an encrypted element (EncryptedData Type).", 400
            )
        method = enc.find(_ENCRYPTION_METHOD)
        alg = (method.get("Algorithm") if method is not None else "") or ""
        if alg not in _DATA_ALGORITHMS:
            raise PolicyRefusal(
                "weak_encryption",
                f"The assertion is encrypted with {_name(alg) if alg else '(none)'}"
                ", which is not supported; configure the identity provider to use AES-256-GCM "
                "or AES-256-CBC.",
            )
        key, _ = _content_key(container, enc, private_key, _DATA_ALGORITHMS[alg][0])
        cipher_value = enc.find(f"{{{XENC}}}CipherData/{_CIPHER_VALUE}")
        if cipher_value is None:
            raise DecryptFailed()
        assertion = _plain_assertion(_decrypt_data(alg, key, _b64(cipher_value.text)))
        # Spliced in as text, with its own namespace declarations: moving the element
        # into this tree would let lxml rename its prefixes to the ones declared here,
        # and exclusive c14n (the assertion's signature) covers prefixes.
        token = secrets.token_hex(16)
        container.replace(
            enc, etree.Element(f"{{{_PLACEHOLDER_NS}}}decrypted", token=token, nsmap={"ph": _PLACEHOLDER_NS})
        )
        spliced.append((token, etree.tostring(assertion, encoding="unicode")))
    out = etree.tostring(root, encoding="unicode")
    for token, text in spliced:
        marker = f'<ph:decrypted xmlns:ph="{_PLACEHOLDER_NS}" token="{token}"/>'
        if out.count(marker) != 1:
            raise DecryptFailed()
        out = out.replace(marker, text)
    return out
