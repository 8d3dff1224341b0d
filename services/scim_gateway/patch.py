"""SCIM PATCH (RFC 7644 §3.5.2) applied to a resource in canonical form (pure, no I/O).

Accepts what the RFC says and what Entra ID and Okta really send:

- op names in any case (Entra: ``"Replace"``, ``"Add"``, ``"Remove"``);
- booleans as the strings ``"True"``/``"False"`` (Entra), coerced by the schema type;
- a path-less op whose value object's keys are paths (``"name.givenName"``,
  ``"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"``) or
  extension URNs holding an object (Okta, Entra);
- URN-prefixed paths (``urn:ietf:params:scim:schemas:core:2.0:User:userName``);
- ``emails[type eq "work"].value`` add/replace: updates the matching email, or creates
  it when there is none (Entra), leaving the other emails alone;
- the enterprise ``manager`` as a bare id string (Entra);
- member removal as ``remove`` + ``members`` + a value list (Entra: remove only those)
  and as ``members[value eq "id"]`` (Okta).

Paths are parsed with scim2-models' RFC 7644 path grammar.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache
from scim2_models.exceptions import InvalidPathException
from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Path,
    Present,
    ValuePath,
)

from .errors import ScimError, invalid_path, invalid_syntax, invalid_value
from .limits import MAX_PATCH_OPERATIONS, MAX_VALUES, check_filter_text, check_filter_tree
from .resources import check_json, coerce, coerce_single, parse_member_id
from .schema import COMMON, PATCH_SCHEMA, Attr, ResourceKind, Schema

OPS = ("add", "replace", "remove")


@dataclass(frozen=True)
class Op:
    op: str  # add | replace | remove (lower case)
    path: str | None
    value: Any = None


def no_target(detail: str) -> ScimError:
    return ScimError(400, detail, "noTarget")


def mutability(detail: str) -> ScimError:
    return ScimError(400, detail, "mutability")


# --------------------------------------------------------------------------- parsing


def parse_patch(body: Any) -> list[Op]:
    """Validate a PatchOp message; return its operations with lower-case op names."""
    if not isinstance(body, dict):
        raise invalid_syntax("the PATCH body must be a PatchOp JSON object")
    schemas = body.get("schemas")
    if not isinstance(schemas, list) or not any(
        isinstance(s, str) and s.lower() == PATCH_SCHEMA.lower() for s in schemas
    ):
        raise invalid_syntax(f"schemas must contain {PATCH_SCHEMA}")
    raw_ops = body.get("Operations", body.get("operations"))
    if not isinstance(raw_ops, list) or not raw_ops:
        raise invalid_syntax("Operations must be a non-empty list")
    if len(raw_ops) > MAX_PATCH_OPERATIONS:
        raise invalid_syntax(f"a PATCH holds at most {MAX_PATCH_OPERATIONS} operations, not {len(raw_ops)}")
    ops = []
    for i, raw in enumerate(raw_ops):
        if not isinstance(raw, dict):
            raise invalid_syntax(f"Operations[{i}] must be an object")
        lowered = {k.lower(): v for k, v in raw.items()}
        name = lowered.get("op")
        if not isinstance(name, str) or name.lower() not in OPS:
            raise invalid_syntax(f"Operations[{i}].op must be add, replace or remove, got {name!r}")
        path = lowered.get("path")
        if path is not None and not isinstance(path, str):
            raise invalid_path(f"Operations[{i}].path must be a string")
        if path is not None and not path.strip():
            path = None
        name = name.lower()
        if name != "remove" and "value" not in lowered:
            raise invalid_value(f"Operations[{i}]: {name} needs a value")
        ops.append(Op(name, path.strip() if path else None, lowered.get("value")))
    return ops


def expand(kind: ResourceKind, ops: list[Op]) -> list[Op]:
    """Turn path-less operations into one operation per attribute path."""
    out: list[Op] = []
    for op in ops:
        if op.path is not None:
            if op.path.lower() in kind.extensions and isinstance(op.value, dict) and op.op != "remove":
                named = kind.extensions[op.path.lower()]
                out.extend(Op(op.op, f"{named.id}:{k}", v) for k, v in op.value.items() if k.lower() != "schemas")
            elif _undeclared_object(kind, op):
                out.extend(Op(op.op, f"{op.path}:{k}", v) for k, v in op.value.items() if k.lower() != "schemas")
            else:
                out.append(op)
            continue
        if op.op == "remove":
            raise no_target("remove needs a path (RFC 7644 §3.5.2.2)")
        if not isinstance(op.value, dict):
            raise invalid_value(f"a {op.op} without a path needs an object value")
        for key, value in op.value.items():
            low = key.lower()
            if low in ("schemas", "id", "meta"):
                continue  # Okta echoes id (and Entra schemas) in path-less values
            ext = kind.extensions.get(low)
            if ext is None and low.startswith("urn:") and kind.undeclared == "store" and isinstance(value, dict):
                # an undeclared extension's object (Entra's path-less form): one op per key
                out.extend(Op(op.op, f"{key}:{k}", v) for k, v in value.items() if k.lower() != "schemas")
                continue
            if ext is not None or low == kind.core.id.lower():
                if not isinstance(value, dict):
                    raise invalid_value(f"{key} must be an object")
                schema_id = ext.id if ext is not None else kind.core.id
                out.extend(Op(op.op, f"{schema_id}:{k}", v) for k, v in value.items() if k.lower() != "schemas")
                continue
            out.append(Op(op.op, key, value))
    return out


def _undeclared_object(kind: ResourceKind, op: Op) -> bool:
    """``path`` is a whole undeclared extension (``urn:...:<Name>:2.0:User``) and ``value``
    its attributes, in "store" mode. Told from ``urn:...:User:<attr>`` by its last
    segment being the resource type's name (RFC 7643 §3.3 extension URNs end with it)."""
    path = op.path or ""
    return (
        kind.undeclared == "store"
        and op.op != "remove"
        and isinstance(op.value, dict)
        and path.lower().startswith("urn:")
        and path.rpartition(":")[2] == kind.name
        and path.lower() != kind.core.id.lower()
    )


# --------------------------------------------------------------------------- targets


@dataclass
class _Target:
    container_key: str | None  # None: the resource itself; else an extension URN
    attr: Attr
    sub: Attr | None = None
    sub_name: str | None = None  # for free-form (custom.<key>)
    value_filter: FilterNode | None = None


# Parsed paths, per resource kind: IdPs send the same few paths over and over. A _Target
# is never changed once _parse_path returns it, so one instance can serve every PATCH.
# Least recently used out when full: odd paths must not evict the common ones.
_PATHS: LRUCache[tuple[int, str], tuple[ResourceKind, _Target]] = LRUCache(1024)


def _parse_path(kind: ResourceKind, path: str) -> _Target:
    hit = _PATHS.get((id(kind), path))
    if hit is not None and hit[0] is kind:
        return hit[1]
    target = _parse_path_uncached(kind, path)
    _PATHS[(id(kind), path)] = (kind, target)
    return target


def _parse_path_uncached(kind: ResourceKind, path: str) -> _Target:
    # A value filter is evaluated against every value of the attribute, on the event
    # loop: its size is bounded like a search filter's (issue 13: 500 terms blocked 20 s).
    check_filter_text(path, "invalidPath")
    try:
        node = Path(path).ast
    except (InvalidPathException, ValueError) as err:
        raise invalid_path(f"invalid path {path!r}: {getattr(err, 'detail', None) or err}") from None
    if isinstance(node, ValuePath):
        t = _resolve(kind, node.attr_path, path)
        if not t.attr.multi_valued or t.sub is not None:
            raise invalid_path(f"{path!r}: a value filter needs a multi-valued attribute")
        check_filter_tree(node.val_filter, "invalidPath")
        t.value_filter = node.val_filter
        if node.sub_attr:
            t.sub = t.attr.child(node.sub_attr)
            if t.sub is None:
                raise invalid_path(f"{path!r}: {t.attr.name} has no sub-attribute {node.sub_attr!r}")
        return t
    if isinstance(node, AttrPath):
        return _resolve(kind, node, path)
    raise invalid_path(f"{path!r} is not an attribute path")


def _resolve(kind: ResourceKind, ap: AttrPath, raw: str) -> _Target:
    schema: Schema = kind.core
    key: str | None = None
    if ap.uri is not None:
        found = kind.schema_for_urn(ap.uri)
        if found is None:
            raise invalid_path(f"{raw!r}: unknown schema {ap.uri!r}")
        schema = found
        key = None if found is kind.core else found.id
    low = ap.attr.lower()
    if key is None and low in COMMON:
        common = COMMON[low]
        if common.mutability == "readOnly":
            raise mutability(f"{common.name} is read-only")
        return _Target(None, common)
    attr = schema.attr(ap.attr)
    if attr is None:
        raise invalid_path(f"{raw!r}: no such attribute")
    if attr.mutability == "readOnly":
        raise mutability(f"{attr.name} is read-only")
    if ap.sub_attr is None:
        return _Target(key, attr)
    if attr.free_form:
        return _Target(key, attr, None, ap.sub_attr)
    sub = attr.child(ap.sub_attr)
    if sub is None:
        raise invalid_path(f"{raw!r}: {attr.name} has no sub-attribute {ap.sub_attr!r}")
    return _Target(key, attr, sub)


# --------------------------------------------------------------------------- filter on values


def matches(node: FilterNode, item: Any, parent: Attr) -> bool:
    """Evaluate a valFilter on one value of a multi-valued complex attribute."""
    if isinstance(node, LogicalExpr):
        results = (matches(t, item, parent) for t in node.terms)
        return all(results) if node.op == LogicalOperator.and_ else any(results)
    if isinstance(node, Not):
        return not matches(node.expr, item, parent)
    if not isinstance(item, dict):
        return False
    if isinstance(node, Present):
        return item.get(_sub_name(node.attr_path, parent)) not in (None, "", [], {})
    if isinstance(node, Comparison):
        name = _sub_name(node.attr_path, parent)
        sub = parent.child(name)
        actual = item.get(name)
        expected = node.value
        if sub is not None and sub.type == "boolean":
            try:
                expected = coerce_single(sub, expected, name) if expected is not None else None
            except ScimError:
                return False
            actual = bool(actual) if name == "primary" else actual
        if isinstance(actual, str) and isinstance(expected, str) and not (sub and sub.case_exact):
            actual, expected = actual.lower(), expected.lower()
        op = node.op
        if op == CompareOperator.eq:
            return actual == expected
        if op == CompareOperator.ne:
            return actual != expected
        if not isinstance(actual, str) or not isinstance(expected, str):
            return False
        return {
            "co": expected in actual,
            "sw": actual.startswith(expected),
            "ew": actual.endswith(expected),
            "gt": actual > expected,
            "ge": actual >= expected,
            "lt": actual < expected,
            "le": actual <= expected,
        }[op.value]
    if isinstance(node, ValuePath):
        raise invalid_path("value filters cannot be nested")
    return False


def _sub_name(ap: AttrPath, parent: Attr) -> str:
    if ap.uri or ap.sub_attr:
        raise invalid_path(f"{ap} is not a sub-attribute of {parent.name}")
    child = parent.child(ap.attr)
    return child.name if child else ap.attr


def _seed_from_filter(node: FilterNode, parent: Attr) -> dict[str, Any] | None:
    """The value an ``eq``-only filter describes (``type eq "work"`` → {"type": "work"}),
    used to create the value an Entra ``emails[type eq "work"].value`` add targets."""
    terms = node.terms if isinstance(node, LogicalExpr) and node.op == LogicalOperator.and_ else (node,)
    seed: dict[str, Any] = {}
    for t in terms:
        if not isinstance(t, Comparison) or t.op != CompareOperator.eq:
            return None
        name = _sub_name(t.attr_path, parent)
        sub = parent.child(name)
        if sub is None:
            return None
        seed[name] = coerce_single(sub, t.value, f"{parent.name}.{name}")
    return seed


# --------------------------------------------------------------------------- apply


def apply_patch(kind: ResourceKind, resource: dict[str, Any], ops: list[Op]) -> dict[str, Any]:
    """Return a new resource with ``ops`` applied (``ops`` from ``parse_patch``)."""
    res = _copy_json(resource)
    for op in expand(kind, ops):
        assert op.path is not None
        if op.path.lower() in kind.extensions and op.op == "remove":
            res.pop(kind.extensions[op.path.lower()].id, None)
            continue
        if kind.undeclared == "store" and _apply_undeclared(kind, res, op):
            continue
        target = _parse_path(kind, op.path)
        _apply_one(res, target, op)
    return _prune(res)


def _apply_undeclared(kind: ResourceKind, res: dict[str, Any], op: Op) -> bool:
    """An op on extension data under a URN the tenant has not declared, in "store" mode:
    Entra sends ``urn:...:<Name>:2.0:User:<attr>`` paths for attributes an admin mapped.
    Applied as sent (no schema to check types against); False when the path is not one."""
    path = op.path or ""
    low = path.lower()
    if not low.startswith("urn:") or low == kind.core.id.lower() or low.startswith(kind.core.id.lower() + ":"):
        return False
    for urn in kind.extensions:
        if low == urn or low.startswith(urn + ":"):
            return False
    if "[" in path or '"' in path:
        raise invalid_path(f"{path!r}: value filters need a declared extension schema (provisio scim-schema add)")
    whole = next((k for k in res if k.lower() == low), None)
    if op.op == "remove" and (whole is not None or path.rpartition(":")[2] == kind.name):
        if whole is not None:
            res.pop(whole)
        return True
    urn, _, name = path.rpartition(":")
    if whole is not None or not name or urn.lower() in ("urn", "") or name == kind.name:
        raise invalid_path(f"{path!r}: name an attribute of the extension (urn:...:User:attribute)")
    top, _, sub = name.partition(".")
    key = next((k for k in res if k.lower() == urn.lower()), urn)
    found = res.get(key)
    part = dict(found) if isinstance(found, dict) else {}
    value = None if op.op == "remove" else check_json(op.value, path)
    if sub:
        inner = dict(part.get(top) or {}) if isinstance(part.get(top), dict) else {}
        if value is None:
            inner.pop(sub, None)
        else:
            inner[sub] = value
        part[top] = inner
    elif value is None:
        part.pop(top, None)
    else:
        part[top] = value
    res[key] = part
    return True


def _copy_json(value: Any) -> Any:
    """Deep copy of a JSON tree (dicts, lists, scalars): what copy.deepcopy does for a
    resource in canonical form, without its memo bookkeeping (cheaper: BENCHMARKS.md)."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


def _container(res: dict[str, Any], t: _Target, create: bool) -> dict[str, Any] | None:
    if t.container_key is None:
        return res
    if create:
        return res.setdefault(t.container_key, {})
    c = res.get(t.container_key)
    return c if isinstance(c, dict) else None


def _key_of(item: Any) -> Any:
    if isinstance(item, dict) and "value" in item:
        v = item["value"]
        return v.lower() if isinstance(v, str) else v
    return repr(sorted(item.items())) if isinstance(item, dict) else item


def _apply_one(res: dict[str, Any], t: _Target, op: Op) -> None:
    attr = t.attr
    name = attr.name
    if t.value_filter is not None:
        _apply_value_path(res, t, op)
        return
    if op.op == "remove":
        c = _container(res, t, create=False)
        if c is None:
            return
        if t.sub is not None or t.sub_name is not None:
            sub_name = t.sub.name if t.sub else t.sub_name
            cur = c.get(name)
            if isinstance(cur, dict):
                cur.pop(sub_name, None)
            elif isinstance(cur, list):
                for item in cur:
                    if isinstance(item, dict):
                        item.pop(sub_name, None)
            return
        if attr.multi_valued and op.value not in (None, [], {}):
            # Entra: {"op":"Remove","path":"members","value":[{"value":"id"}]} removes
            # only the listed values.
            gone = {_key_of(v) for v in coerce(attr, op.value, name) or ()}
            c[name] = [v for v in c.get(name) or () if _key_of(v) not in gone]
            return
        c.pop(name, None)
        return
    if attr.required and op.value in (None, ""):
        raise invalid_value(f"{name} is required")
    c = _container(res, t, create=True)
    assert c is not None
    if t.sub_name is not None:  # free-form custom.<key>
        custom = c.setdefault(name, {})
        if op.value is None:
            custom.pop(t.sub_name, None)
        else:
            custom[t.sub_name] = op.value
        return
    if t.sub is not None:
        if attr.multi_valued:
            raise invalid_path(
                f'{name}.{t.sub.name}: select the values with a filter, e.g. {name}[type eq "work"].{t.sub.name}'
            )
        v = coerce_single(t.sub, op.value, f"{name}.{t.sub.name}")
        old = c.get(name)
        cur = dict(old) if isinstance(old, dict) else {}
        if v is None:
            cur.pop(t.sub.name, None)
        else:
            cur[t.sub.name] = v
        c[name] = cur
        return
    value = coerce(attr, op.value, name)
    if attr.multi_valued:
        new = list(value or ())
        if op.op == "replace":
            c[name] = new
            return
        cur = list(c.get(name) or ())
        keys = {_key_of(v): i for i, v in enumerate(cur)}
        for item in new:
            k = _key_of(item)
            if k in keys:
                old = cur[keys[k]]
                cur[keys[k]] = {**old, **item} if isinstance(old, dict) and isinstance(item, dict) else item
            else:
                keys[k] = len(cur)
                cur.append(item)
        if any(isinstance(i, dict) and i.get("primary") is True for i in new):
            # RFC 7643 §2.4: the newly added primary value wins
            for item in cur:
                if (
                    isinstance(item, dict)
                    and item.get("primary") is True
                    and not any(item is n or item == n for n in new)
                ):
                    item["primary"] = False
        c[name] = cur
        return
    if attr.type == "complex" and isinstance(value, dict) and not attr.free_form:
        # RFC 7644 §3.5.2.1/§3.5.2.3: sub-attributes not given are left unchanged
        old = c.get(name)
        c[name] = {**(old if isinstance(old, dict) else {}), **value}
        return
    if attr.type == "complex" and attr.free_form and isinstance(value, dict) and op.op == "add":
        c[name] = {**(c.get(name) or {}), **value}
        return
    if value is None:
        c.pop(name, None)
    else:
        c[name] = value


def _apply_value_path(res: dict[str, Any], t: _Target, op: Op) -> None:
    attr = t.attr
    assert t.value_filter is not None
    c = _container(res, t, create=op.op != "remove")
    if c is None:
        return
    items = c.get(attr.name)
    items = list(items) if isinstance(items, list) else []
    if attr.name != "members" and len(items) > MAX_VALUES:
        # stored before the limit existed: do not evaluate a filter over all of them
        raise invalid_value(
            f"{attr.name} holds {len(items)} values, more than the {MAX_VALUES} allowed; replace it as a whole"
        )
    hits = [i for i, item in enumerate(items) if matches(t.value_filter, item, attr)]
    if op.op == "remove":
        if t.sub is not None:
            for i in hits:
                items[i] = {k: v for k, v in items[i].items() if k != t.sub.name}
        else:
            gone = set(hits)  # a set: "i not in hits" over a list was quadratic
            items = [item for i, item in enumerate(items) if i not in gone]
        c[attr.name] = items
        return
    if t.sub is not None:
        v = coerce_single(t.sub, op.value, f"{attr.name}.{t.sub.name}")
        if not hits:
            seed = _seed_from_filter(t.value_filter, attr)
            if seed is None:
                raise no_target(f"no {attr.name} value matches the filter")
            # Entra: add/replace emails[type eq "work"].value creates the work email
            items.append({**seed, t.sub.name: v})
        for i in hits:
            items[i] = {**items[i], t.sub.name: v}
            if v is None:
                items[i].pop(t.sub.name)
        if t.sub.name == "primary" and v is True:
            chosen = hits[0] if hits else len(items) - 1
            for i, item in enumerate(items):
                if i != chosen and item.get("primary") is True:
                    items[i] = {**item, "primary": False}
        c[attr.name] = items
        return
    value = op.value[0] if isinstance(op.value, list) and len(op.value) == 1 else op.value
    v = coerce_single(attr, value, attr.name)
    if not isinstance(v, dict):
        raise invalid_value(f"{attr.name}: the value must be an object")
    if not hits:
        seed = _seed_from_filter(t.value_filter, attr)
        if seed is None or (op.op == "replace" and not seed):
            raise no_target(f"no {attr.name} value matches the filter")
        items.append({**seed, **v})
    for i in hits:
        items[i] = v if op.op == "replace" else {**items[i], **v}
    c[attr.name] = items


def _prune(res: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in res.items():
        if isinstance(v, dict) and k.startswith("urn:"):
            v = {sk: sv for sk, sv in v.items() if sv not in (None, [], {}, "") or (sk == "custom" and sv == {})}
        if v in (None, [], {}):
            continue
        out[k] = v
    return out


# --------------------------------------------------------------------------- groups


@dataclass
class GroupPlan:
    """A group PATCH split into member changes (ChangeGroupMembers, no version needed)
    and the other operations (applied to the group and sent as ReplaceGroup)."""

    add: list[uuid.UUID] = field(default_factory=list)
    remove: list[uuid.UUID] = field(default_factory=list)
    other: list[Op] = field(default_factory=list)
    needs_members: bool = False  # a member op needs the full member list (replace, filters)


def plan_group_patch(kind: ResourceKind, ops: list[Op]) -> GroupPlan:
    plan = GroupPlan()
    add: dict[uuid.UUID, None] = {}
    remove: dict[uuid.UUID, None] = {}
    for op in expand(kind, ops):
        assert op.path is not None
        low = op.path.lower()
        is_members = (
            low == "members"
            or low.startswith("members[")
            or low.startswith("members.")
            or (low.startswith(kind.core.id.lower() + ":members"))
        )
        if not is_members:
            plan.other.append(op)
            continue
        if low.endswith(":members"):
            low = "members"
        ids = _simple_member_ids(op, low)
        if ids is None:
            plan.needs_members = True
            plan.other.append(op)
            continue
        for mid in ids:
            if op.op == "add":
                add[mid] = None
                remove.pop(mid, None)
            else:
                remove[mid] = None
                add.pop(mid, None)
    if plan.needs_members:
        # Order matters once ops need the full list: apply every member op in sequence.
        plan.other = [op for op in expand(kind, ops)]
        return plan
    plan.add = list(add)
    plan.remove = list(remove)
    return plan


def _simple_member_ids(op: Op, low: str) -> list[uuid.UUID] | None:
    """Member ids of an add/remove that needs no member list, else None."""
    if low == "members" and op.op == "add":
        values = op.value if isinstance(op.value, list) else [op.value]
        return [parse_member_id(v.get("value") if isinstance(v, dict) else v) for v in values]
    if low == "members" and op.op == "remove" and op.value not in (None, [], {}):
        values = op.value if isinstance(op.value, list) else [op.value]
        return [parse_member_id(v.get("value") if isinstance(v, dict) else v) for v in values]
    if op.op == "remove" and low.startswith("members["):
        try:
            node = Path(op.path or "").ast
        except (InvalidPathException, ValueError) as err:
            raise invalid_path(f"invalid path {op.path!r}: {err}") from None
        if isinstance(node, ValuePath) and node.sub_attr is None:
            return _value_eq_ids(node.val_filter)
    return None


def _value_eq_ids(node: FilterNode) -> list[uuid.UUID] | None:
    if (
        isinstance(node, Comparison)
        and node.op == CompareOperator.eq
        and node.attr_path.attr.lower() == "value"
        and not node.attr_path.sub_attr
        and not node.attr_path.uri
    ):
        try:
            return [uuid.UUID(str(node.value))]
        except ValueError:
            return []  # not an id we minted: matches no member
    if isinstance(node, LogicalExpr) and node.op == LogicalOperator.or_:
        out: list[uuid.UUID] = []
        for t in node.terms:
            ids = _value_eq_ids(t)
            if ids is None:
                return None
            out.extend(ids)
        return out
    return None
