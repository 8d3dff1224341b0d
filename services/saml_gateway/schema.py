"""SAML schema validation for pysaml2 on libxml2 (through lxml) instead of xmlschema.

Before checking a signature, pysaml2 validates the signed element against the SAML 2.0
schemas (``saml2.sigver.validate_doc_with_schema``, its defence against documents
shaped to confuse signature checks). It does so with ``xmlschema``, pure Python: a large part
of what a whole response check costs. libxml2's XSD validator does the same job against the
same schema files (pysaml2's own copies) at a small fraction of that (BENCHMARKS.md).

libxml2 is the stricter of the two (e.g. it refuses an ``xsi:type`` QName whose prefix
pysaml2's re-serialisation left undeclared, which xmlschema lets pass), so a document
libxml2 refuses is handed to xmlschema for the verdict: accepted documents take the fast
path, and the verdict is always xmlschema's as long as libxml2 never accepts what
xmlschema refuses — which ``tests/integration/test_saml_attacks.py`` checks on every item
of the attack corpus and on schema-invalid variants.

pysaml2 calls a module global, so :func:`install` puts a dispatcher there once; it uses
libxml2 only inside :func:`validating_with` (per thread, set by ``SamlEngine`` around
its own parses) and pysaml2's validator everywhere else.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import saml2.data.schemas
import saml2.sigver
from lxml import etree
from saml2.xml.schema import validate as pysaml2_validate

_SCHEMA_DIR = str(files(saml2.data.schemas))
_local = threading.local()


class _LocalSchemas(etree.Resolver):
    """Imports by URL (the protocol schema imports xmldsig from w3.org) come from
    pysaml2's local copies; nothing is fetched."""

    def resolve(self, url: str | None, pubid: str | None, context: Any) -> Any:
        local = os.path.join(_SCHEMA_DIR, os.path.basename(url or ""))
        if url and os.path.isfile(local):
            return self.resolve_filename(local, context)
        return self.resolve_string("", context)


def _parser() -> etree.XMLParser:
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False, huge_tree=False)
    parser.resolvers.add(_LocalSchemas())
    return parser


class Libxml2Validator:
    """Validates a document against ``saml-schema-protocol-2.0.xsd`` (which imports the
    assertion, xmldsig and xenc schemas), as pysaml2's default validator does."""

    def __init__(self) -> None:
        self._per_thread = threading.local()
        self.fallbacks = 0  # documents libxml2 refused and xmlschema judged
        self._schema()  # fail at start, not on the first login

    def _schema(self) -> etree.XMLSchema:
        # One per thread: a validator's error log is per object.
        schema = getattr(self._per_thread, "schema", None)
        if schema is None:
            doc = etree.parse(os.path.join(_SCHEMA_DIR, "saml-schema-protocol-2.0.xsd"), _parser())
            schema = self._per_thread.schema = etree.XMLSchema(doc)
        return schema

    def valid(self, doc: str | bytes) -> bool:
        """libxml2's own verdict."""
        raw = doc.encode() if isinstance(doc, str) else doc
        try:
            tree = etree.fromstring(raw, _parser())
        except etree.XMLSyntaxError:
            return False
        return bool(self._schema().validate(tree))

    def __call__(self, doc: str | bytes) -> None:
        if self.valid(doc):
            return
        self.fallbacks += 1
        pysaml2_validate(doc)  # raises XMLSchemaError with pysaml2's own message


def _dispatch(doc: Any, validator: Any = None) -> Any:
    chosen: Callable[[Any], None] | None = getattr(_local, "validator", None)
    if chosen is None or validator is not None:
        return pysaml2_validate(doc, validator)
    return chosen(doc)


def install() -> None:
    """Route pysaml2's schema validation through the dispatcher (idempotent)."""
    saml2.sigver.validate_doc_with_schema = _dispatch


@contextmanager
def validating_with(validator: Callable[[Any], None] | None) -> Iterator[None]:
    """In this thread, pysaml2 validates with ``validator`` (None: its own)."""
    previous = getattr(_local, "validator", None)
    _local.validator = validator
    try:
        yield
    finally:
        _local.validator = previous
