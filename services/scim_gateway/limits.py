"""Bounds on what one SCIM request may make the gateway (and Postgres) do. Pure, no I/O.

One tenant must not be able to stall the others (issue 13 §2): a filter's SQL grows with
its terms, a PATCH value filter is evaluated against every value of the attribute, and a
multi-valued attribute with 20,000 values is copied on every write. Real IdPs stay far
below these limits: Entra ID and Okta filter on one attribute (``userName eq "…"``,
``externalId eq``, ``displayName eq``) and PATCH with a handful of operations; users carry
a few emails, phone numbers and addresses.

- A filter (``filter=``, a SearchRequest's ``filter``, a PATCH path's value filter) is at
  most ``MAX_FILTER_CHARS`` characters (checked before parsing), ``MAX_FILTER_TERMS``
  comparisons or presence tests, nested at most ``MAX_FILTER_DEPTH`` levels of
  ``and``/``or``/``not``/``()``/``[]``. Over: 400 ``invalidFilter`` (RFC 7644 §3.12),
  or ``invalidPath`` for a PATCH path.
- A PATCH carries at most ``MAX_PATCH_OPERATIONS`` operations.
- A multi-valued attribute (``emails``, ``phoneNumbers``, …; not a group's ``members``,
  which is stored as memberships rather than in the resource) holds at most
  ``MAX_VALUES`` values and ``MAX_VALUES_BYTES`` bytes of JSON. Over: 400
  ``invalidValue``. RFC 7643 §5 (ServiceProviderConfig) has no place for either;
  docs/scim.md lists them.
- A string value (every single-valued string or reference attribute, each sub-attribute
  of a complex value such as ``emails[].value``, each string of a multi-valued attribute,
  and the strings and keys of extension or custom JSON) is at most ``max_chars``
  characters: ``PROVISIO_SCIM_MAX_STRING_CHARS``, default ``MAX_STRING_CHARS``. Each is
  stored, put on the streams and sent in every event, webhook and App API page. Over:
  400 ``invalidValue`` naming the attribute and the limit. Entra ID caps userName and
  displayName at 256 characters, Okta's profile strings stay near 100. A binary value
  (base64, e.g. an X.509 certificate of 1 to 3 KB) is bounded by ``MAX_BINARY_CHARS``
  instead, the size a whole multi-valued attribute may have.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from scim2_models.path import FilterNode, LogicalExpr, Not, ValuePath

from .errors import ScimError

MAX_FILTER_CHARS = 4096
MAX_FILTER_TERMS = 50
MAX_FILTER_DEPTH = 8
MAX_PATCH_OPERATIONS = 1000
MAX_VALUES = 100
MAX_VALUES_BYTES = 64 * 1024
MAX_STRING_CHARS = 1024  # the default of PROVISIO_SCIM_MAX_STRING_CHARS
MIN_STRING_CHARS = 256  # the setting's floor: Entra ID sends userName/displayName up to 256
MAX_BINARY_CHARS = MAX_VALUES_BYTES


def check_filter_text(text: str, scim_type: str = "invalidFilter") -> None:
    """Refuse an oversized filter before the grammar spends time on it."""
    if len(text) > MAX_FILTER_CHARS:
        raise ScimError(400, f"the filter is longer than {MAX_FILTER_CHARS} characters", scim_type)


def check_filter_tree(node: FilterNode, scim_type: str = "invalidFilter") -> None:
    """Refuse a parsed filter with too many terms or too deep a nesting."""
    terms, depth = filter_cost(node)
    if terms > MAX_FILTER_TERMS:
        raise ScimError(400, f"the filter has {terms} comparisons; at most {MAX_FILTER_TERMS} are allowed", scim_type)
    if depth > MAX_FILTER_DEPTH:
        raise ScimError(400, f"the filter nests {depth} levels deep; at most {MAX_FILTER_DEPTH} are allowed", scim_type)


def filter_cost(node: FilterNode) -> tuple[int, int]:
    """(comparisons and presence tests, deepest nesting) of a filter tree. Iterative: the
    tree of a deeply nested filter must not hit Python's recursion limit here."""
    terms = 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(node, 0)]
    while stack:
        n, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(n, LogicalExpr):
            # a or b or c is one level however many terms it chains
            stack.extend((t, depth + 1) for t in n.terms)
        elif isinstance(n, Not):
            stack.append((n.expr, depth + 1))
        elif isinstance(n, ValuePath):
            stack.append((n.val_filter, depth + 1))
        else:
            terms += 1
    return terms, deepest


def check_values(name: str, items: list[Any]) -> None:
    """At most MAX_VALUES values and MAX_VALUES_BYTES bytes in one multi-valued attribute."""
    if len(items) > MAX_VALUES:
        raise ScimError(400, f"{name} has {len(items)} values; at most {MAX_VALUES} are allowed", "invalidValue")
    size = _json_size(items) if items else 0
    if size > MAX_VALUES_BYTES:
        raise ScimError(
            400, f"{name} holds {size} bytes of values; at most {MAX_VALUES_BYTES} are allowed", "invalidValue"
        )


def check_string(where: str, value: str, max_chars: int) -> None:
    """At most ``max_chars`` characters (code points) in one string value at ``where``."""
    n = len(value)
    if n > max_chars:
        raise ScimError(400, f"{where} is {n} characters; the limit is {max_chars}", "invalidValue")


def has_string_over(value: Any, max_chars: int) -> bool:
    """Whether any string (or key) in ``value`` is longer than ``max_chars``: a resource
    stored before the limit was set or lowered."""
    if isinstance(value, str):
        return len(value) > max_chars
    if isinstance(value, dict):
        return any(len(k) > max_chars or has_string_over(v, max_chars) for k, v in value.items())
    if isinstance(value, list):
        return any(has_string_over(v, max_chars) for v in value)
    return False


def check_changed_strings(before: Any, after: Any, max_chars: int, where: str = "") -> None:
    """``check_string`` on every string of ``after`` that ``before`` does not hold at the
    same place: a PATCH of a resource stored before the limit is judged by what it
    changes, so a long value it keeps does not block it (an IdP deactivating that user
    must get through). Base64 certificates (``x509Certificates``) keep their binary limit."""
    if isinstance(after, str):
        if after != before:
            limit = max(max_chars, MAX_BINARY_CHARS) if where.startswith("x509Certificates") else max_chars
            check_string(where or "value", after, limit)
    elif isinstance(after, dict):
        old = before if isinstance(before, dict) else {}
        for k, v in after.items():
            if k not in old:
                check_string(f"a key of {where}" if where else "an attribute name", k, max_chars)
            check_changed_strings(old.get(k), v, max_chars, f"{where}.{k}" if where else k)
    elif isinstance(after, list):
        old_items = before if isinstance(before, list) else []
        for i, v in enumerate(after):
            check_changed_strings(old_items[i] if i < len(old_items) else None, v, max_chars, f"{where}[{i}]")


def _json_size(value: Any) -> int:
    try:
        return len(to_json(value))
    except ValueError:  # lone surrogates: the value is refused elsewhere; count characters
        return len(repr(value))
