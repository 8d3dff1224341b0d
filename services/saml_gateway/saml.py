"""pysaml2 per connection, and the checks Provisio adds on top of it.

Everything here is synchronous and CPU-bound: the app runs it in a thread pool so the
event loop never waits for XML parsing or signature checks.

pysaml2 verifies signatures and checks the status and NotBefore/NotOnOrAfter;
decryption is ours (xmlenc.py, through either crypto backend), of an EncryptedAssertion
and of a Subject's EncryptedID (``_AuthnResponse._decrypt_subject``). ``verify_response``
refuses what pysaml2 lets through (saml-profiles §4.1.4.2/§4.1.4.3, saml-bindings
§3.5.5.2): a missing Destination or AudienceRestriction, an Issuer other than the
connection's IdP (an assertion of one IdP inside another's response), a Recipient other
than our ACS, more than one assertion, signature algorithms outside the allow-list, and
(through Redis, in the app) replays and unknown InResponseTo. Destination, Audience and
Recipient are taken out of pysaml2's hands (``_AuthnResponse``) so each refusal has its
documented reason and names the values, instead of pysaml2's bare ``Exception``.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import functools
import os
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring
from saml2 import BINDING_HTTP_POST, time_util
from saml2.client import Saml2Client
from saml2.config import SPConfig
from saml2.metadata import entity_descriptor
from saml2.response import AuthnResponse
from saml2.xmldsig import DIGEST_SHA256, SIG_RSA_SHA256

from provisio_lib.sso import parse_idp_metadata, sp_urls

from . import schema
from .crypto import CryptoBackendProgram, CryptoBackendXmlsecBinding
from .xmlenc import (
    PolicyRefusal,
    check_encrypted_ids,
    check_signature_elements,
    decrypt_name_id,
    load_private_key,
    signature_algorithm_problem,
)

SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
_SHOWN = 3  # at most this many received values on a refusal page, each cut to 200 characters
_UNSHOWN = re.compile(r'[<>"`\x00-\x1f\x7f]')


class Refused(Exception):
    """A login Provisio refuses. ``reason`` is a short fixed code (metrics, audit notes);
    ``message`` is shown to the user and recorded, and never holds secrets."""

    def __init__(
        self, reason: str, message: str, status: int = 403, *, user_name: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.user_name = user_name
        self.field = field

    def __reduce__(self) -> Any:
        # Crosses the process boundary when verification runs in worker processes.
        return (_refused, (self.reason, self.message, self.status, self.user_name, self.field))


def _refused(reason: str, message: str, status: int, user_name: str | None, field: str | None) -> Refused:
    return Refused(reason, message, status, user_name=user_name, field=field)


@dataclass(frozen=True)
class Connection:
    """One row of ``sso_connections`` with its tenant's name: what the gateway needs."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_name: str
    name: str
    preset: str
    idp_entity_id: str
    idp_metadata: str
    jit_mode: str
    app_url: str | None
    allow_idp_initiated: bool
    attribute_map: dict[str, list[str]]
    required_attributes: tuple[str, ...]
    sp_cert_pem: str
    sp_key_pem: str
    app_secret_hash: bytes | None
    updated_at: datetime
    # Migration 0014: a disabled connection refuses real logins (test logins still run);
    # changed_at is when the settings a test login exercises last changed.
    enabled: bool = True
    changed_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Any) -> Connection:
        return cls(
            id=row["id"],
            tenant_id=row["tenant_id"],
            tenant_name=row["tenant_name"],
            name=row["name"],
            preset=row["preset"],
            idp_entity_id=row["idp_entity_id"],
            idp_metadata=row["idp_metadata"],
            jit_mode=row["jit_mode"],
            app_url=row["app_url"],
            allow_idp_initiated=row["allow_idp_initiated"],
            attribute_map={k: list(v) for k, v in (row["attribute_map"] or {}).items()},
            required_attributes=tuple(row["required_attributes"] or ()),
            sp_cert_pem=row["sp_cert_pem"] or "",
            sp_key_pem=row["sp_key_pem"] or "",
            app_secret_hash=row["app_secret_hash"],
            updated_at=row["updated_at"],
            enabled=row.get("enabled", True),
            changed_at=row.get("changed_at"),
        )


@dataclass(frozen=True)
class VerifiedLogin:
    """What a response that passed every stateless check says, as pysaml2 parsed it."""

    issuer: str
    name_id: str
    name_id_format: str | None
    session_index: str | None
    in_response_to: str | None
    assertion_id: str
    expires_at: datetime  # the latest NotOnOrAfter: keep the assertion id until then
    attributes: dict[str, list[str]] = field(default_factory=dict)
    # The algorithms of the signatures verified (SignatureMethod, DigestMethod), for the
    # test login's report.
    signature_algorithms: tuple[str, ...] = ()
    # The NameID came as an EncryptedID: its content encryption and key transport (with
    # the OAEP DigestMethod / MGF when sent). Empty for a clear NameID.
    name_id_encryption: tuple[str, ...] = ()


class SamlEngine:
    """Builds and caches one pysaml2 ``Saml2Client`` per connection (keyed by its
    ``updated_at``), with the configured crypto backend."""

    def __init__(
        self,
        *,
        public_url: str,
        skew_s: int,
        max_bytes: int,
        backend: str,
        xmlsec1_path: str,
        schema_validator: str = "xmlschema",
        workdir: str | None = None,
    ) -> None:
        self.public_url = public_url
        self.skew_s = skew_s
        self.max_bytes = max_bytes
        self.backend = backend
        self.xmlsec1_path = xmlsec1_path
        self._tmp = tempfile.TemporaryDirectory(prefix="provisio-saml-", dir=workdir)
        self._clients: dict[uuid.UUID, tuple[datetime, Saml2Client]] = {}
        self._lock = threading.Lock()
        self.binding = CryptoBackendXmlsecBinding(xmlsec1_path)
        self.program = CryptoBackendProgram(xmlsec1_path)
        self.schema_validator: Any = None
        if schema_validator == "libxml2":
            schema.install()
            self.schema_validator = schema.Libxml2Validator()

    def close(self) -> None:
        self._clients.clear()
        self._tmp.cleanup()

    # ----------------------------------------------------------------- clients

    def client(self, conn: Connection) -> Saml2Client:
        cached = self._clients.get(conn.id)
        if cached and cached[0] == conn.updated_at:
            return cached[1]
        # Verifier threads may ask for the same new connection at once: build it once
        # (the key files must not be rewritten while pysaml2 reads them).
        with self._lock:
            cached = self._clients.get(conn.id)
            if cached and cached[0] == conn.updated_at:
                return cached[1]
            client = self._build(conn)
            self._clients[conn.id] = (conn.updated_at, client)
            return client

    def _write(self, conn: Connection, name: str, content: str) -> str:
        path = os.path.join(self._tmp.name, f"{conn.id}-{conn.updated_at.timestamp():.0f}-{name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        return path

    def _build(self, conn: Connection) -> Saml2Client:
        urls = sp_urls(self.public_url, conn.tenant_name, conn.name)
        key_file = self._write(conn, "sp.key", conn.sp_key_pem)
        cert_file = self._write(conn, "sp.crt", conn.sp_cert_pem)
        config = {
            "entityid": urls.entity_id,
            "metadata": {"inline": [conn.idp_metadata]},
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(urls.acs, BINDING_HTTP_POST)]},
                    # InResponseTo is checked against Redis by the app, not pysaml2's
                    # in-memory "outstanding" dict (which would not survive a restart or
                    # a second replica); unsolicited responses are refused there too.
                    "allow_unsolicited": True,
                    "authn_requests_signed": True,
                    "want_response_signed": False,
                    "want_assertions_signed": False,
                    "want_assertions_or_response_signed": True,
                    "only_use_keys_in_metadata": True,
                    "name_id_format_allow_create": True,
                }
            },
            "key_file": key_file,
            "cert_file": cert_file,
            "encryption_keypairs": [{"key_file": key_file, "cert_file": cert_file}],
            "xmlsec_binary": self.xmlsec1_path,
            "crypto_backend": "xmlsec1",
            "accepted_time_diff": self.skew_s,
            "allow_unknown_attributes": True,
            # Our own names, not pysaml2's attribute maps: presets use the IdP's names.
            "attribute_map_dir": None,
            "delete_tmpfiles": True,
            "signing_algorithm": SIG_RSA_SHA256,
            "digest_algorithm": DIGEST_SHA256,
        }
        sp_config = SPConfig()
        sp_config.load(config)
        sp_config.attribute_converters = []
        client = _Client(config=sp_config)
        client.response_class = type("ConnectionAuthnResponse", (_AuthnResponse,), {"connection": conn})
        client.sec.crypto = self.binding if self.backend == "xmlsec" else self.program
        # pysaml2 keeps every identity it sees in memory (client.users): not needed,
        # and unbounded.
        client.users = _NoIdentityCache()
        return client

    # ----------------------------------------------------------------- SP side

    def sp_metadata(self, conn: Connection) -> str:
        client = self.client(conn)
        return str(entity_descriptor(client.config))

    def authn_request(self, conn: Connection, relay_state: str) -> tuple[str, str, dict[str, Any]]:
        """An AuthnRequest for the connection's IdP: (request id, binding, http info)."""
        client = self.client(conn)
        # The IdP's SingleSignOnService binding, HTTP-Redirect preferred (checked at add time).
        idp_binding = parse_idp_metadata(conn.idp_metadata).sso_binding
        req_id, info = client.prepare_for_authenticate(
            entityid=conn.idp_entity_id,
            relay_state=relay_state,
            binding=idp_binding,
            sign=True,
            sigalg=SIG_RSA_SHA256,
            digest_alg=DIGEST_SHA256,
        )
        return str(req_id), idp_binding, info

    # ----------------------------------------------------------------- ACS

    def verify_response(self, conn: Connection, saml_response: str, now: datetime | None = None) -> VerifiedLogin:
        """Every check that needs no shared state. Raise :class:`Refused`."""
        now = now or datetime.now(UTC)
        xml = self._decode(saml_response)
        root = self._precheck(xml)
        self._check_issuers(conn, root)
        client = self.client(conn)
        resp = self._parse(client, xml)
        return self._postcheck(conn, resp, now)

    def _decode(self, saml_response: str) -> bytes:
        if not saml_response:
            raise Refused("malformed", "The login request carried no SAMLResponse.", 400)
        # base64 grows by 4/3: refuse before decoding anything huge.
        if len(saml_response) > self.max_bytes * 4 // 3 + 8:
            raise Refused("too_large", "The SAML response is larger than this service accepts.", 413)
        try:
            xml = base64.b64decode("".join(saml_response.split()), validate=True)
        except (binascii.Error, ValueError):
            raise Refused("malformed", "The SAML response is not valid base64.", 400) from None
        if len(xml) > self.max_bytes:
            raise Refused("too_large", "The SAML response is larger than this service accepts.", 413)
        return xml

    def _precheck(self, xml: bytes) -> Any:
        try:
            root = safe_fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except DefusedXmlException:
            raise Refused("dtd", "The SAML response contains a DTD or entities, which are refused.", 400) from None
        except Exception:
            raise Refused("malformed", "The SAML response is not well-formed XML.", 400) from None
        if root.tag != f"{{{SAMLP_NS}}}Response":
            raise Refused("malformed", "The message is not a SAML 2.0 Response.", 400)
        count = sum(1 for _ in root.iter(f"{{{SAML_NS}}}Assertion")) + sum(
            1 for _ in root.iter(f"{{{SAML_NS}}}EncryptedAssertion")
        )
        if count == 0:
            # An error response (user not assigned to the app, sign-in cancelled...):
            # name the status code, never the IdP's free-text StatusMessage (unsigned).
            codes = [(el.get("Value") or "").rsplit(":", 1)[-1] for el in root.iter(f"{{{SAMLP_NS}}}StatusCode")]
            codes = [c for c in codes if c.isalnum() and c != "Success"]
            if codes:
                raise Refused(
                    "idp_status",
                    "The identity provider did not sign you in (status: "
                    f"{' / '.join(codes[:2])}). Ask your administrator whether you are assigned "
                    "to this application.",
                    403,
                )
        if count != 1:
            raise Refused("assertions", f"The SAML response must hold exactly one assertion (it holds {count}).", 400)
        # The algorithms of every Signature in the message (an allow-list); the ones in
        # an encrypted assertion are judged when it is decrypted (xmlenc.py).
        try:
            check_signature_elements(root)
            # An EncryptedID only as the Subject's of the (plain) assertion, with allowed
            # algorithms; the ones in an encrypted assertion are judged when it is
            # decrypted (xmlenc.py). Decrypted only after the signature check.
            check_encrypted_ids(root.findall(f"{{{SAML_NS}}}Assertion"), root)
        except PolicyRefusal as refusal:
            raise Refused(refusal.reason, refusal.message, refusal.status) from None
        return root

    def _check_issuers(self, conn: Connection, root: Any) -> None:
        """saml-core §3.2.2/§2.3.3: the response's Issuer (when present) and a plain
        assertion's are the connection's IdP. Checked before pysaml2, which would look
        for another IdP's keys, find none and blame the signature (an encrypted
        assertion's Issuer is checked by ``_AuthnResponse`` once decrypted)."""
        issuer = root.find(f"{{{SAML_NS}}}Issuer")
        if issuer is not None:
            _check_issuer(conn, issuer.text, "response")
        for assertion in root.findall(f"{{{SAML_NS}}}Assertion"):
            _check_issuer(conn, _el_text(assertion.find(f"{{{SAML_NS}}}Issuer")), "assertion")

    def _parse(self, client: Saml2Client, xml: bytes) -> Any:
        from saml2.response import StatusError
        from saml2.sigver import DecryptError, SigverError
        from saml2.validate import ResponseLifetimeExceed, ToEarly

        encoded = base64.b64encode(xml).decode()
        try:
            with schema.validating_with(self.schema_validator):
                resp = client.parse_authn_request_response(encoded, BINDING_HTTP_POST, outstanding={})
        except Refused:
            raise
        except PolicyRefusal as refusal:
            raise Refused(refusal.reason, refusal.message, refusal.status) from None
        except DecryptError:
            raise Refused(
                "decrypt",
                "The assertion could not be decrypted with this connection's key; give the "
                "identity provider this connection's current SP metadata.",
                403,
            ) from None
        except SigverError:
            raise Refused(
                "signature", "The response is not correctly signed by this connection's identity provider.", 403
            ) from None
        except ToEarly:
            raise Refused("not_yet_valid", "The assertion is not valid yet (check the clocks).", 403) from None
        except ResponseLifetimeExceed:
            raise Refused("expired", "The assertion has expired; sign in again.", 403) from None
        except StatusError as err:
            raise Refused(
                "idp_status", f"The identity provider reported an error: {type(err).__name__}.", 403
            ) from None
        except Exception as err:
            raise Refused("invalid", f"The SAML response was refused ({_describe(err)}).", 403) from None
        if resp is None or getattr(resp, "assertion", None) is None:
            raise Refused("invalid", "The SAML response holds no usable assertion.", 403)
        return resp

    def _postcheck(self, conn: Connection, resp: Any, now: datetime) -> VerifiedLogin:
        urls = sp_urls(self.public_url, conn.tenant_name, conn.name)
        response = resp.response
        assertions = list(resp.assertions or [])
        if len(assertions) != 1:
            raise Refused("assertions", "The SAML response must hold exactly one assertion.", 400)
        assertion = assertions[0]
        if response.signature is None and assertion.signature is None:
            raise Refused("signature", "Neither the response nor the assertion is signed.", 403)
        # The signatures pysaml2 verified (the response's, and the assertion's, decrypted
        # or not) use allowed algorithms: the pre-check saw the same ones, this makes it
        # hold whatever path pysaml2 took.
        algorithms: list[str] = []
        for signature in (response.signature, assertion.signature):
            if signature is not None:
                problem = _signature_problem(signature)
                if problem:
                    raise Refused("weak_signature", problem)
                algorithms.extend(a for a in _signature_algorithms(signature) if a not in algorithms)
        # saml-core §3.2.2: Issuer of the response is optional, but when present it is
        # the IdP's; the assertion's Issuer is required (§2.3.3) and must be the IdP that
        # signed it for this connection.
        response_issuer = _text(response.issuer)
        assertion_issuer = _text(assertion.issuer)
        if response_issuer is not None:
            _check_issuer(conn, response_issuer, "response")
        _check_issuer(conn, assertion_issuer, "assertion")
        # saml-bindings §3.5.5.2: Destination must be our ACS. All four IdPs set it.
        if response.destination != urls.acs:
            raise Refused(
                "destination",
                "The response is addressed to another service: its Destination is "
                f'{_shown([response.destination])}, this connection\'s ACS (Reply URL) is "{urls.acs}".',
            )
        # saml-profiles §4.1.4.2: the assertion MUST contain an AudienceRestriction
        # including the SP's entity id.
        conditions = assertion.conditions
        restrictions = list(getattr(conditions, "audience_restriction", None) or [])
        if not restrictions:
            raise Refused(
                "audience",
                "The assertion has no AudienceRestriction; it must name this connection's "
                f'SP entity ID "{urls.entity_id}".',
            )
        for restriction in restrictions:
            audiences = [_text(a) for a in restriction.audience or []]
            if urls.entity_id not in audiences:
                # Entra's "Identifier mismatch", the most common set-up mistake: say
                # what was received and what the IdP must send instead.
                raise Refused(
                    "audience",
                    f"The assertion is meant for another service: its Audience is "
                    f"{_shown(audiences)}, but this connection's SP entity ID (Identifier) is "
                    f'"{urls.entity_id}". Set the identity provider\'s Identifier (Entity ID) to it.',
                )

        skew = timedelta(seconds=self.skew_s)
        expiries: list[datetime] = []
        if conditions is not None:
            if conditions.not_before and _time(conditions.not_before) - skew > now:
                raise Refused("not_yet_valid", "The assertion is not valid yet (check the clocks).")
            if conditions.not_on_or_after:
                expiries.append(_time(conditions.not_on_or_after))

        subject = assertion.subject
        if subject is None or subject.name_id is None or not _text(subject.name_id):
            raise Refused("subject", "The assertion names no user (NameID).", 400)
        bearer = [
            sc for sc in subject.subject_confirmation or [] if sc.method == "urn:oasis:names:tc:SAML:2.0:cm:bearer"
        ]
        if not bearer:
            raise Refused("subject", "The assertion has no bearer SubjectConfirmation.", 400)
        response_irt = response.in_response_to or None
        confirmed = False
        for sc in bearer:
            data = sc.subject_confirmation_data
            if data is None:
                continue
            # saml-profiles §4.1.4.2: Recipient is the ACS; InResponseTo equals the
            # request's id (and so the response's).
            if data.recipient != urls.acs:
                continue
            if (data.in_response_to or None) != response_irt:
                continue
            if data.not_on_or_after:
                expiries.append(_time(data.not_on_or_after))
            if data.not_before and _time(data.not_before) - skew > now:
                continue
            confirmed = True
        if not confirmed:
            recipients = [sc.subject_confirmation_data.recipient for sc in bearer if sc.subject_confirmation_data]
            raise Refused(
                "recipient",
                "The assertion is not confirmed for this service: its bearer "
                f"SubjectConfirmationData has Recipient {_shown(recipients)} (this connection's ACS is "
                f'"{urls.acs}") or an InResponseTo other than the response\'s, or is not valid yet.',
            )
        if not expiries:
            raise Refused("expired", "The assertion has no NotOnOrAfter, so a replay could not be detected.", 400)
        expires_at = min(expiries)
        if expires_at + skew <= now:
            raise Refused("expired", "The assertion has expired; sign in again.")

        attributes: dict[str, list[str]] = {}
        for statement in assertion.attribute_statement or []:
            for attr in statement.attribute or []:
                values = [v.text.strip() for v in attr.attribute_value or [] if v.text and v.text.strip()]
                for key in {attr.name, attr.friendly_name} - {None, ""}:
                    attributes.setdefault(key, []).extend(values)
        session_index = None
        for statement in assertion.authn_statement or []:
            session_index = session_index or statement.session_index
        return VerifiedLogin(
            issuer=str(assertion_issuer),
            name_id=str(_text(subject.name_id)),
            name_id_format=subject.name_id.format,
            session_index=session_index,
            in_response_to=response_irt,
            assertion_id=str(assertion.id),
            expires_at=max(expiries) + skew,
            attributes=attributes,
            signature_algorithms=tuple(algorithms),
            name_id_encryption=tuple(getattr(resp, "name_id_encryption", ())),
        )


# --------------------------------------------------------------------------- worker processes

_WORKER_ENGINE: list[SamlEngine] = []


def init_worker(engine_kwargs: dict[str, Any]) -> None:
    """Initializer of a verification worker process: its own engine (clients, keys)."""
    import logging

    logging.getLogger("saml2").setLevel(logging.CRITICAL)
    _WORKER_ENGINE[:] = [SamlEngine(**engine_kwargs)]


def verify_in_worker(conn: Connection, saml_response: str) -> VerifiedLogin:
    return _WORKER_ENGINE[0].verify_response(conn, saml_response)


class _NoIdentityCache:
    def add_information_about_person(self, _info: Any) -> None:
        return None


class _AuthnResponse(AuthnResponse):
    """pysaml2's AuthnResponse without the checks ``_postcheck`` makes with a reason of
    its own and the values involved (Destination, Audience, Recipient), where pysaml2
    raises a bare ``Exception`` or returns nothing; and with the issuer of a decrypted
    assertion checked before pysaml2 looks for that issuer's keys. Everything else
    (signatures, decryption, times, status) is pysaml2's."""

    connection: Connection | None = None  # set on the per-connection subclass
    name_id_encryption: tuple[str, ...] = ()  # the EncryptedID's algorithms, once decrypted
    _decrypted_document: Any = None  # the document a decrypted assertion was verified in

    def _verify(self) -> Any:
        destination, self.response.destination = self.response.destination, None
        try:
            return super()._verify()
        finally:
            self.response.destination = destination

    def condition_ok(self, lax: bool = False) -> Any:
        conditions = self.assertion.conditions
        if conditions is None:
            return super().condition_ok(lax)
        restrictions, conditions.audience_restriction = conditions.audience_restriction, []
        try:
            return super().condition_ok(lax)
        finally:
            conditions.audience_restriction = restrictions

    def verify_recipient(self, recipient: Any) -> bool:
        return True

    def get_subject(self, keys: Any = None) -> Any:
        # pysaml2 says "No valid subject confirmation" (invalid); the documented reason
        # for an assertion without a bearer confirmation is "subject".
        subject = self.assertion.subject if self.assertion is not None else None
        if subject is not None and not any(
            sc.method == "urn:oasis:names:tc:SAML:2.0:cm:bearer" for sc in subject.subject_confirmation or []
        ):
            raise Refused("subject", "The assertion has no bearer SubjectConfirmation.", 400)
        if subject is not None and subject.encrypted_id is not None:
            self._decrypt_subject(subject)
        return super().get_subject(keys)

    def _decrypt_subject(self, subject: Any) -> None:
        """saml-core §2.2.4: the Subject's EncryptedID, decrypted with the connection's key
        into the NameID pysaml2 and ``_postcheck`` then read like a clear one. pysaml2's
        own path (``get_subject``) hands the backend only the EncryptedData, so an
        EncryptedKey beside it is lost and our allow-list never sees the key transport.

        Decrypted only under a verified signature: pysaml2 verified the response's
        signature when it loaded it, and the assertion's (or the decrypted assertion's)
        before calling here; with neither, nothing is decrypted. The ciphertext is read
        from the very assertion element those signatures cover (by its ID in the
        document pysaml2 verified), never from anywhere else in the message."""
        if self.response.signature is None and self.assertion.signature is None:
            raise Refused("signature", "Neither the response nor the assertion is signed.", 403)
        if subject.name_id is not None or subject.base_id is not None:
            raise Refused("subject", "The assertion's Subject holds both a NameID and an EncryptedID.", 400)
        if self.connection is None or not self.connection.sp_key_pem:
            raise Refused(
                "decrypt",
                "The NameID is encrypted (EncryptedID), but this connection has no decryption key.",
                403,
            )
        from lxml import etree

        # An encrypted assertion is read from the document its signature was checked in
        # (pysaml2 sets ``xmlstr`` to it only after this runs).
        document = self._decrypted_document or self.xmlstr
        xml = document if isinstance(document, bytes) else str(document).encode("utf-8")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        root = etree.fromstring(xml, parser)
        same_id = [el for el in root.iter(f"{{{SAML_NS}}}Assertion") if el.get("ID") == self.assertion.id]
        if len(same_id) != 1:
            raise Refused("assertions", "The SAML response must hold exactly one assertion.", 400)
        encrypted = same_id[0].findall(f"{{{SAML_NS}}}Subject/{{{SAML_NS}}}EncryptedID")
        if len(encrypted) != 1:
            raise Refused("subject", "The assertion's Subject must hold exactly one EncryptedID.", 400)
        try:
            name_id_xml, algorithms = decrypt_name_id(encrypted[0], [_private_key(self.connection.sp_key_pem)])
        except PolicyRefusal as refusal:
            raise Refused(refusal.reason, refusal.message, refusal.status) from None
        from saml2 import saml

        subject.name_id = saml.name_id_from_string(name_id_xml)
        subject.encrypted_id = None
        self.name_id_encryption = algorithms

    def decrypt_assertions(
        self, encrypted_assertions: Any, decr_txt: Any, issuer: Any = None, verified: bool = False
    ) -> Any:
        from saml2 import extension_elements_to_elements, saml, samlp

        if self.connection is not None:
            for encrypted in encrypted_assertions:
                for assertion in extension_elements_to_elements(encrypted.extension_elements or [], [saml, samlp]):
                    _check_issuer(self.connection, _text(getattr(assertion, "issuer", None)), "assertion")
        if encrypted_assertions:
            self._decrypted_document = decr_txt
        return super().decrypt_assertions(encrypted_assertions, decr_txt, issuer, verified)


@functools.lru_cache(maxsize=256)
def _private_key(pem: str) -> Any:
    """A connection's SP key, parsed once (keyed by its PEM: a new key is a new entry)."""
    try:
        return load_private_key(pem.encode())
    except Exception:
        raise Refused("decrypt", "This connection's decryption key cannot be read.", 403) from None


class _Client(Saml2Client):
    """A ``Saml2Client`` that parses authentication responses with ``_AuthnResponse``."""

    response_class: type[_AuthnResponse] = _AuthnResponse

    def _parse_response(
        self, xmlstr: Any, response_cls: Any, service: Any, binding: Any, outstanding_certs: Any = None, **kwargs: Any
    ) -> Any:
        if response_cls is AuthnResponse:
            response_cls = self.response_class
        return super()._parse_response(xmlstr, response_cls, service, binding, outstanding_certs, **kwargs)


def _check_issuer(conn: Connection, issuer: str | None, what: str) -> None:
    value = (issuer or "").strip() or None
    if what == "assertion" and value is None:
        raise Refused("issuer", "The assertion names no Issuer.")
    if value is not None and value != conn.idp_entity_id:
        raise Refused(
            "issuer",
            f"The {what} was issued by {_shown([value])}, not by this connection's identity "
            f'provider "{conn.idp_entity_id}" (check the IdP metadata given to this connection).',
        )


def _signature_problem(signature: Any) -> str | None:
    info = signature.signed_info
    if info is None:
        return "The signature has no SignedInfo."
    method = info.signature_method.algorithm if info.signature_method is not None else None
    digests = [ref.digest_method.algorithm if ref.digest_method is not None else None for ref in info.reference or []]
    return signature_algorithm_problem(method, digests)


def _signature_algorithms(signature: Any) -> list[str]:
    info = signature.signed_info
    method = info.signature_method.algorithm if info is not None and info.signature_method is not None else None
    digests = [r.digest_method.algorithm for r in (info.reference or []) if r.digest_method is not None] if info else []
    return [a for a in (method, *digests) if a]


def _shown(values: list[Any]) -> str:
    """Received values for a refusal page (escaped by the page), few and short. An
    Issuer or Audience is a URI: markup and control characters in one are shown as "?",
    so a hostile value is never echoed as markup, even escaped."""
    shown = [f'"{_UNSHOWN.sub("?", str(v).strip()[:200])}"' for v in values if v is not None and str(v).strip()][
        :_SHOWN
    ]
    return ", ".join(shown) if shown else "(none)"


def _el_text(el: Any) -> str | None:
    return el.text if el is not None else None


def _text(node: Any) -> str | None:
    if node is None:
        return None
    text = node.text if hasattr(node, "text") else node
    return text.strip() if isinstance(text, str) else None


def _time(value: str) -> datetime:
    """An xs:dateTime (saml-core §1.3.3: UTC) as an aware datetime."""
    return datetime.fromtimestamp(calendar.timegm(time_util.str_to_time(value)), tz=UTC)


def _describe(err: Exception) -> str:
    """A short, secret-free description of a pysaml2 error (no XML, no paths)."""
    name = type(err).__name__
    known = {
        "UnsolicitedResponse": "unsolicited response",
        "VerificationError": "verification failed",
        "InvalidAssertion": "invalid assertion",
        "IncorrectlySigned": "not correctly signed",
        "DecryptError": "the assertion could not be decrypted with this connection's key",
        "XMLSchemaError": "not valid against the SAML schema",
        "ParseError": "not well-formed XML",
    }
    return known.get(name, name)
