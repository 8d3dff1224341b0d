"""SCIM filters (RFC 7644 §3.4.2.2) → parameterised SQL over the users/groups tables.

Pure: no I/O. The filter text is parsed by scim2-models (its lark grammar covers the
whole ABNF with errata, typed literals, JSON string escapes, and Entra's
``emails[type eq "work"].value eq "x"`` form); this module walks the tree and emits SQL.

Every value a client sends travels as a ``$n`` parameter, never inside the SQL text;
LIKE patterns escape ``\\ % _`` so they are data too. Attribute *names* never reach the
SQL either: they are resolved against the schema tables to fixed column expressions,
and JSON paths into ``attributes`` are passed as ``text[]`` parameters. The columns
and the joins over ``memberships`` are the directory read model's
(``provisio_lib.directory.layout``): this module maps SCIM attributes to its field
names, and knows no table layout of its own.

``caseExact: false`` attributes compare ``lower(x) = lower($n)`` — for ``userName``
this is exactly the expression of the unique index ``users_user_name_key
(tenant_id, lower(user_name))``, so ``userName eq`` is an index lookup.

SQL NULL: a missing attribute makes a comparison NULL, which WHERE treats as false
(RFC 7644: a comparison with an unassigned attribute is false), except under ``not``,
where ``coalesce(…, false)`` keeps ``not (title eq "x")`` true for users without a title.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scim2_models.exceptions import InvalidFilterException
from scim2_models.path import (
    AttrPath,
    CompareOperator,
    Comparison,
    FilterNode,
    LogicalExpr,
    LogicalOperator,
    Not,
    Present,
    ScimFilter,
    ValuePath,
)

from provisio_lib.directory.layout import GROUPS_OF, MEMBERS, TABLES, Link, link_col, link_exists

from .errors import invalid_filter, invalid_value
from .limits import check_filter_text, check_filter_tree
from .schema import ENTERPRISE_SCHEMA, PROVISIO_SCHEMA, Attr, ResourceKind

__all__ = ["SqlFilter", "compile_filter", "compile_sort", "fast_eq_filter", "like_escape", "parse_filter"]


@dataclass
class SqlFilter:
    sql: str
    params: list[Any] = field(default_factory=list)
    # True when the filter matches at most one row through a unique index
    # (``userName eq``, ``id eq``; for groups also ``displayName eq``).
    unique: bool = False


# The filter IdPs send on almost every call (Entra, Okta: ``userName eq "…"``, also
# ``externalId eq``/``id eq``) is read by this pattern, far cheaper than the lark grammar
# (BENCHMARKS.md). Anything else, or anything
# the pattern is unsure of, goes to the full grammar; a unit test checks both agree.
_SIMPLE_EQ = re.compile(
    r'\s*([A-Za-z][A-Za-z0-9_-]*(?:\.[A-Za-z][A-Za-z0-9_-]*)?)\s+[eE][qQ]\s+("(?:[^"\\\x00-\x1f]|\\["\\/bfnrtu])*")\s*'
)


def _simple_eq(text: str) -> FilterNode | None:
    m = _SIMPLE_EQ.fullmatch(text)
    if m is None:
        return None
    name, _, sub = m.group(1).partition(".")
    if name.lower() in ("and", "or", "not") or sub.lower() in ("and", "or", "not"):
        return None
    try:
        value = json.loads(m.group(2))
        return Comparison(AttrPath(name, sub or None), CompareOperator.eq, value)
    except ValueError:
        return None  # let the grammar report it


def parse_filter(text: str) -> FilterNode:
    fast = _simple_eq(text)
    if fast is not None:
        return fast
    check_filter_text(text)  # bounded before the grammar runs (issue 13: a 2,000-term filter ran 143 s)
    try:
        ast = ScimFilter(text).ast
    except InvalidFilterException as err:
        raise invalid_filter(f"invalid filter: {getattr(err, 'detail', None) or err}") from None
    except (ValueError, RecursionError) as err:
        raise invalid_filter(f"invalid filter: {err}") from None
    check_filter_tree(ast)
    return ast


def like_escape(value: str) -> str:
    """Escape LIKE metacharacters (default escape character is the backslash)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class _Column:
    sql: str
    type: str  # string boolean dateTime uuid
    case_exact: bool


@dataclass(frozen=True)
class _JsonScalar:
    base: str  # a jsonb SQL expression
    path: tuple[str, ...]  # passed as a text[] parameter
    attr: Attr


@dataclass(frozen=True)
class _JsonMulti:
    array: str | None  # jsonb array SQL expression, or None for attributes -> path
    path: tuple[str, ...]
    attr: Attr  # the multi-valued complex attribute
    sub: str | None


@dataclass(frozen=True)
class _Const:
    value: str


@dataclass(frozen=True)
class _Members:  # Group.members (memberships table)
    sub: str | None


@dataclass(frozen=True)
class _UserGroups:  # User.groups (memberships table)
    sub: str | None


_Target = _Column | _JsonScalar | _JsonMulti | _Const | _Members | _UserGroups

_STR = Attr("x", "string")
_STR_EXACT = Attr("x", "string", case_exact=True)


class _Compiler:
    def __init__(self, kind: ResourceKind, alias: str, first_param: int) -> None:
        self.kind = kind
        self.table = TABLES[kind.name]
        self.alias = alias
        self.params: list[Any] = []
        self.first = first_param
        self._n = 0

    def param(self, value: Any) -> str:
        if isinstance(value, str):
            if "\x00" in value:
                raise invalid_filter("a filter value contains a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise invalid_filter("a filter value is not valid Unicode text") from None
        self.params.append(value)
        return f"${self.first + len(self.params) - 1}"

    def col(self, field: str) -> str:
        """The read model's column ``field`` under this compiler's alias."""
        return self.table.col(field, self.alias)

    def key(self, name: str) -> str:
        return f"{self.param(name)}::text"

    def fresh(self) -> str:
        self._n += 1
        return f"e{self._n}"

    # ---- attribute resolution

    def resolve(self, ap: AttrPath) -> _Target:
        col = self.col
        kind = self.kind
        uri = ap.uri.lower() if ap.uri else None
        name = ap.attr
        sub = ap.sub_attr
        low = name.lower()
        if uri is None or uri == kind.core.id.lower():
            if low == "id" and not sub:
                return _Column(col("id"), "uuid", True)
            if low == "externalid" and not sub:
                return _Column(col("external_id"), "string", True)
            if low == "meta":
                s = (sub or "").lower()
                if s == "created":
                    return _Column(col("created_at"), "dateTime", True)
                if s == "lastmodified":
                    return _Column(col("updated_at"), "dateTime", True)
                if s == "resourcetype":
                    return _Const(kind.name)
                raise invalid_filter(f"meta.{sub} cannot be filtered on")
            attr = kind.core.attr(name)
            if attr is None:
                raise invalid_filter(f"unknown attribute {str(ap)!r} in filter")
            sub_attr = self._sub(attr, sub, ap)
            if kind.name == "Group":
                if attr.name == "displayName":
                    return _Column(col("display_name"), "string", False)
                if attr.name == "members":
                    return _Members(sub_attr.name if sub_attr else None)
                raise invalid_filter(f"{attr.name} cannot be filtered on")
            if attr.name == "userName":
                return _Column(col("user_name"), "string", False)
            if attr.name == "displayName":
                return _Column(col("display_name"), "string", False)
            if attr.name == "active":
                return _Column(col("active"), "boolean", True)
            if attr.name == "groups":
                return _UserGroups(sub_attr.name if sub_attr else None)
            if attr.name == "emails":
                return _JsonMulti(col("emails"), (), attr, sub_attr.name if sub_attr else None)
            if attr.name == "name" and sub_attr is not None:
                if sub_attr.name == "givenName":
                    return _Column(col("given_name"), "string", False)
                if sub_attr.name == "familyName":
                    return _Column(col("family_name"), "string", False)
            if attr.mutability == "writeOnly":
                raise invalid_filter(f"{attr.name} cannot be filtered on")
            return self._json(attr, sub_attr, (attr.name,))
        ext = kind.extensions.get(uri)
        if ext is None:
            raise invalid_filter(f"unknown schema {ap.uri!r} in filter")
        attr = ext.attr(name)
        if attr is None:
            raise invalid_filter(f"unknown attribute {str(ap)!r} in filter")
        if (ext.id, attr.name) in kind.sso_aliases and not sub:
            return _Column(col("sso_name"), "string", True)  # stored as Provisio's ssoName
        if ext.id == PROVISIO_SCHEMA:
            if attr.name == "ssoName":
                return _Column(col("sso_name"), "string", True)
            if attr.free_form:  # custom.<key>: tenant-defined, compared as text
                if not sub:
                    raise invalid_filter("filter on custom.<attribute>, not on custom itself")
                return _JsonScalar(col("attributes"), ("custom", sub), _STR)  # stored as attributes["custom"]
        sub_attr = self._sub(attr, sub, ap)
        if ext.id == ENTERPRISE_SCHEMA and attr.name == "manager" and sub_attr is None:
            sub_attr = attr.child("value")
        return self._json(attr, sub_attr, (ext.id, attr.name))

    def _sub(self, attr: Attr, sub: str | None, ap: AttrPath) -> Attr | None:
        if sub is None:
            return None
        child = attr.child(sub)
        if child is None:
            raise invalid_filter(f"unknown attribute {str(ap)!r} in filter")
        return child

    def _json(self, attr: Attr, sub_attr: Attr | None, path: tuple[str, ...]) -> _Target:
        base = self.col("attributes")
        if attr.multi_valued:
            return _JsonMulti(None, path, attr, sub_attr.name if sub_attr else None)
        if sub_attr is not None:
            return _JsonScalar(base, (*path, sub_attr.name), sub_attr)
        if attr.type == "complex":
            return _JsonScalar(base, path, attr)
        return _JsonScalar(base, path, attr)

    # ---- nodes

    def node(self, n: FilterNode, elem: tuple[str, Attr] | None = None) -> str:
        if isinstance(n, LogicalExpr):
            joiner = " AND " if n.op == LogicalOperator.and_ else " OR "
            return "(" + joiner.join(self.node(t, elem) for t in n.terms) + ")"
        if isinstance(n, Not):
            return f"NOT coalesce({self.node(n.expr, elem)}, false)"
        if isinstance(n, ValuePath):
            if elem is not None:
                raise invalid_filter("value filters cannot be nested")
            target = self.resolve(n.attr_path)
            return self.value_path(target, n)
        if isinstance(n, Present):
            target = self.elem_target(n.attr_path, elem) if elem else self.resolve(n.attr_path)
            return self.present(target)
        if isinstance(n, Comparison):
            target = self.elem_target(n.attr_path, elem) if elem else self.resolve(n.attr_path)
            return self.compare(target, n.op, n.value)
        raise invalid_filter("unsupported filter expression")

    def elem_target(self, ap: AttrPath, elem: tuple[str, Attr]) -> _Target:
        var, parent = elem
        if ap.uri or ap.sub_attr:
            raise invalid_filter(f"{ap} is not a sub-attribute of {parent.name}")
        if var in ("@members", "@groups"):
            link, m, other, const = (
                (MEMBERS, "m", "mu", "User") if var == "@members" else (GROUPS_OF, "ug", "gg", "direct")
            )
            s = ap.attr.lower()
            if s == "value":
                return _Column(link_col(link, m), "uuid", True)
            if s == "display":
                return _Column(link.other_table.col("display_name", other), "string", False)
            if s == "type":
                return _Const(const)
            raise invalid_filter(f"unknown attribute {parent.name}.{ap.attr} in filter")
        child = parent.child(ap.attr)
        if child is None:
            raise invalid_filter(f"unknown attribute {parent.name}.{ap.attr} in filter")
        return _JsonScalar(f"{var}.v", (child.name,), child)

    def value_path(self, target: _Target, n: ValuePath) -> str:
        if isinstance(target, _JsonMulti) and target.sub is None:
            var = self.fresh()
            inner = self.node(n.val_filter, (var, target.attr))
            return f"EXISTS (SELECT 1 FROM jsonb_array_elements({self.array(target)}) AS {var}(v) WHERE {inner})"
        if isinstance(target, _Members) and target.sub is None:
            from .schema import group_schema

            inner = self.node(n.val_filter, ("@members", group_schema().attr("members")))  # type: ignore[arg-type]
            return link_exists(MEMBERS, self.alias, "m", "mu", inner)
        if isinstance(target, _UserGroups) and target.sub is None:
            from .schema import user_schema

            inner = self.node(n.val_filter, ("@groups", user_schema().attr("groups")))  # type: ignore[arg-type]
            return link_exists(GROUPS_OF, self.alias, "ug", "gg", inner)
        raise invalid_filter(f"{n.attr_path} is not a multi-valued attribute")

    def array(self, t: _JsonMulti) -> str:
        if t.array is not None:
            return f"coalesce({t.array}, '[]'::jsonb)"
        # jsonb_typeof guard: a non-array stored value must not make the query fail
        p = self.param(list(t.path))
        attributes = self.col("attributes")
        return (
            f"(CASE WHEN jsonb_typeof({attributes} #> {p}::text[]) = 'array' "
            f"THEN {attributes} #> {p}::text[] ELSE '[]'::jsonb END)"
        )

    # ---- presence

    def present(self, t: _Target) -> str:
        if isinstance(t, _Column):
            if t.type == "string":
                return f"({t.sql} IS NOT NULL AND {t.sql} <> '')"
            return f"{t.sql} IS NOT NULL"
        if isinstance(t, _JsonScalar):
            p = self.param(list(t.path))
            return f"(nullif({t.base} #>> {p}::text[], '') IS NOT NULL)"
        if isinstance(t, _JsonMulti):
            if t.sub is None:
                return f"(jsonb_array_length({self.array(t)}) > 0)"
            var = self.fresh()
            p = self.key(t.sub)
            return (
                f"EXISTS (SELECT 1 FROM jsonb_array_elements({self.array(t)}) AS {var}(v) "
                f"WHERE nullif({var}.v ->> {p}, '') IS NOT NULL)"
            )
        if isinstance(t, _Const):
            return "TRUE"
        if isinstance(t, _Members):
            return link_exists(MEMBERS, self.alias, "m", None)
        if isinstance(t, _UserGroups):
            return link_exists(GROUPS_OF, self.alias, "ug", None)
        raise invalid_filter("unsupported presence test")

    # ---- comparison

    def compare(self, t: _Target, op: CompareOperator, value: Any) -> str:
        if value is None:
            # RFC 7644 does not define "eq null"; read it as "not present".
            if op == CompareOperator.eq:
                return f"NOT coalesce({self.present(t)}, false)"
            if op == CompareOperator.ne:
                return self.present(t)
            raise invalid_filter(f"{op.value} null is not a valid comparison")
        if isinstance(t, _Const):
            return "TRUE" if _const_match(t.value, op, value) else "FALSE"
        if isinstance(t, _Column):
            return self.compare_sql(t.sql, t.type, t.case_exact, op, value)
        if isinstance(t, _JsonScalar):
            if t.attr.type == "complex":
                child = t.attr.child("value")
                if child is None:
                    raise invalid_filter(f"{t.attr.name} is complex: filter on a sub-attribute")
                t = _JsonScalar(t.base, (*t.path, "value"), child)
            if t.attr.type == "boolean":
                return self.compare_json_bool(f"({t.base} #> {self.param(list(t.path))}::text[])", op, value)
            expr = f"({t.base} #>> {self.param(list(t.path))}::text[])"
            return self.compare_sql(expr, "string", t.attr.case_exact, op, value)
        if isinstance(t, _JsonMulti) and t.attr.type != "complex" and t.sub is None:
            # a multi-valued simple attribute (a tenant's extension: "skills": ["a", "b"]):
            # compared element by element; "ne" means no element equals the value
            var = self.fresh()
            elem = f"({var}.v #>> '{{}}')"
            neg = op == CompareOperator.ne
            cond = self.compare_sql(elem, "string", t.attr.case_exact, CompareOperator.eq if neg else op, value)
            found = f"EXISTS (SELECT 1 FROM jsonb_array_elements({self.array(t)}) AS {var}(v) WHERE {cond})"
            return f"NOT {found}" if neg else found
        if isinstance(t, _JsonMulti):
            sub = t.attr.child(t.sub or "value")
            if sub is None:
                raise invalid_filter(f"{t.attr.name} has no value sub-attribute to compare")
            var = self.fresh()
            if op == CompareOperator.ne:
                # "emails ne x": no email equals x (not: some email differs from x)
                eq = (
                    self.compare_sql(
                        f"({var}.v ->> {self.key(sub.name)})", "string", sub.case_exact, CompareOperator.eq, value
                    )
                    if sub.type != "boolean"
                    else self.compare_json_bool(f"({var}.v -> {self.key(sub.name)})", CompareOperator.eq, value)
                )
                return f"NOT EXISTS (SELECT 1 FROM jsonb_array_elements({self.array(t)}) AS {var}(v) WHERE {eq})"
            # Built only here: each comparison binds parameters, and a parameter the SQL
            # never uses makes Postgres refuse the statement (a 500 before, for "ne").
            if sub.type == "boolean":
                inner = self.compare_json_bool(f"({var}.v -> {self.key(sub.name)})", op, value)
            else:
                inner = self.compare_sql(f"({var}.v ->> {self.key(sub.name)})", "string", sub.case_exact, op, value)
            return f"EXISTS (SELECT 1 FROM jsonb_array_elements({self.array(t)}) AS {var}(v) WHERE {inner})"
        if isinstance(t, _Members):
            return self.compare_link(MEMBERS, "m", "mu", "User", t.sub, op, value)
        if isinstance(t, _UserGroups):
            return self.compare_link(GROUPS_OF, "ug", "gg", "direct", t.sub, op, value)
        raise invalid_filter("unsupported comparison")

    def compare_link(
        self, link: Link, m: str, other: str, type_: str, sub: str | None, op: CompareOperator, value: Any
    ) -> str:
        """``members.x`` / ``groups.x`` (``type_``: the constant ``type`` of the link)."""
        s = (sub or "value").lower()
        eq_op = op if op != CompareOperator.ne else CompareOperator.eq
        if s == "value":
            cond = self.compare_sql(link_col(link, m), "uuid", True, eq_op, value)
        elif s == "display":  # a user's or a group's display_name
            cond = self.compare_sql(link.other_table.col("display_name", other), "string", False, eq_op, value)
        elif s == "type":
            cond = "TRUE" if _const_match(type_, op, value) else "FALSE"
        else:
            raise invalid_filter(f"{sub} cannot be filtered on")
        exists = link_exists(link, self.alias, m, other, cond)
        return f"NOT {exists}" if op == CompareOperator.ne else exists

    def compare_json_bool(self, expr: str, op: CompareOperator, value: Any) -> str:
        b = _as_bool(value)
        if op == CompareOperator.eq:
            return f"({expr} = to_jsonb({self.param(b)}::boolean))"
        if op == CompareOperator.ne:
            return f"({expr} IS DISTINCT FROM to_jsonb({self.param(b)}::boolean))"
        raise invalid_filter(f"{op.value} cannot compare booleans")

    def compare_sql(self, expr: str, typ: str, case_exact: bool, op: CompareOperator, value: Any) -> str:
        if typ == "boolean":
            b = _as_bool(value)
            if op == CompareOperator.eq:
                return f"({expr} = {self.param(b)}::boolean)"
            if op == CompareOperator.ne:
                return f"({expr} IS DISTINCT FROM {self.param(b)}::boolean)"
            raise invalid_filter(f"{op.value} cannot compare booleans")
        if typ == "uuid":
            if not isinstance(value, str):
                raise invalid_filter("id is compared with a string")
            if op in (CompareOperator.eq, CompareOperator.ne):
                try:
                    u = uuid.UUID(value)
                except ValueError:
                    # not an id this server could have minted: nothing equals it
                    return "FALSE" if op == CompareOperator.eq else "TRUE"
                sym = "=" if op == CompareOperator.eq else "<>"
                return f"({expr} {sym} {self.param(u)}::uuid)"
            return self.compare_sql(f"{expr}::text", "string", False, op, value)
        if typ == "dateTime":
            if not isinstance(value, str):
                raise invalid_filter("dateTime attributes are compared with an xsd:dateTime string")
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise invalid_filter(f"{value!r} is not an xsd:dateTime") from None
            if op in (CompareOperator.co, CompareOperator.sw, CompareOperator.ew):
                raise invalid_filter(f"{op.value} cannot compare dateTime values")
            if when.tzinfo is None:
                raise invalid_filter(f"{value!r} has no time zone")
            try:
                # Postgres compares in UTC: 0001-01-01T00:00:00+14:00 is before year 1
                # there, which Python cannot represent (an OverflowError, a 500 before).
                when = when.astimezone(UTC)
            except (OverflowError, ValueError):
                raise invalid_filter(f"{value!r} is outside the range of dates this server stores") from None
            return f"({expr} {_SYM[op]} {self.param(when)}::timestamptz)"
        # strings
        if isinstance(value, bool):
            raise invalid_filter("a string attribute is compared with a boolean")
        text = value if isinstance(value, str) else str(value)
        low = (lambda s: s) if case_exact else (lambda s: f"lower({s})")
        if op in (CompareOperator.co, CompareOperator.sw, CompareOperator.ew):
            esc = like_escape(text)
            pattern = {"co": f"%{esc}%", "sw": f"{esc}%", "ew": f"%{esc}"}[op.value]
            return f"({low(expr)} LIKE {low(self.param(pattern) + '::text')})"
        p = self.param(text) + "::text"
        if op == CompareOperator.ne:
            return f"({low(expr)} IS DISTINCT FROM {low(p)})"
        return f"({low(expr)} {_SYM[op]} {low(p)})"


_SYM = {
    CompareOperator.eq: "=",
    CompareOperator.ne: "<>",
    CompareOperator.gt: ">",
    CompareOperator.ge: ">=",
    CompareOperator.lt: "<",
    CompareOperator.le: "<=",
}


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # Entra-style string booleans
    raise invalid_filter(f"{value!r} is not a boolean")


def _const_match(actual: str, op: CompareOperator, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    a, v = actual.lower(), value.lower()
    return {
        "eq": a == v,
        "ne": a != v,
        "co": v in a,
        "sw": a.startswith(v),
        "ew": a.endswith(v),
        "gt": a > v,
        "ge": a >= v,
        "lt": a < v,
        "le": a <= v,
    }[op.value]


# ``<attr> eq "string"`` on a column, straight to SQL (no AST, no attribute resolution):
# (kind, attribute name in lower case) → (read model column, type, caseExact, unique). The SQL and
# parameters are those the general compiler makes (a unit test compares them); every
# other filter takes the general path.
_EQ_COLUMNS: dict[tuple[str, str], tuple[str, str, bool, bool]] = {
    ("User", "username"): ("user_name", "string", False, True),
    ("User", "externalid"): ("external_id", "string", True, False),
    ("User", "id"): ("id", "uuid", True, True),
    ("User", "displayname"): ("display_name", "string", False, False),
    ("Group", "displayname"): ("display_name", "string", False, True),
    ("Group", "externalid"): ("external_id", "string", True, False),
    ("Group", "id"): ("id", "uuid", True, True),
}


def fast_eq_filter(kind: ResourceKind, text: str, alias: str, first_param: int) -> SqlFilter | None:
    """``compile_filter`` for ``<column attribute> eq "string"``; None for anything else."""
    m = _SIMPLE_EQ.fullmatch(text)
    if m is None:
        return None
    target = _EQ_COLUMNS.get((kind.name, m.group(1).lower()))
    if target is None:
        return None
    raw = m.group(2)
    if "\\" in raw:
        try:
            value = json.loads(raw)
        except ValueError:
            return None  # let the grammar report it
    else:
        value = raw[1:-1]  # the pattern admits no quote or control character unescaped
    column, typ, case_exact, unique = target
    c = _Compiler(kind, alias, first_param)
    return SqlFilter(c.compare_sql(c.col(column), typ, case_exact, CompareOperator.eq, value), c.params, unique)


def compile_filter(kind: ResourceKind, text: str, alias: str, first_param: int) -> SqlFilter:
    """``text`` → a SQL boolean expression over table alias ``alias`` whose parameters
    are numbered from ``$first_param``."""
    fast = fast_eq_filter(kind, text, alias, first_param)
    if fast is not None:
        return fast
    return _compile_general(kind, text, alias, first_param)


def _compile_general(kind: ResourceKind, text: str, alias: str, first_param: int) -> SqlFilter:
    ast = parse_filter(text)
    c = _Compiler(kind, alias, first_param)
    return SqlFilter(c.node(ast), c.params)


def compile_sort(kind: ResourceKind, sort_by: str, alias: str, first_param: int) -> SqlFilter:
    """``sortBy`` → an ORDER BY expression (RFC 7644 §3.4.2.3)."""
    try:
        ast = ScimFilter(f"{sort_by} pr").ast
    except (InvalidFilterException, ValueError):
        raise invalid_value(f"sortBy {sort_by!r} is not an attribute path") from None
    if not isinstance(ast, Present):
        raise invalid_value(f"sortBy {sort_by!r} is not an attribute path")
    c = _Compiler(kind, alias, first_param)
    try:
        t = c.resolve(ast.attr_path)
    except Exception as err:
        raise invalid_value(f"sortBy: {getattr(err, 'detail', err)}") from None
    if isinstance(t, _Column):
        expr = t.sql if t.case_exact or t.type != "string" else f"lower({t.sql})"
        return SqlFilter(expr, c.params)
    if isinstance(t, _JsonScalar):
        p = c.param(list(t.path))
        return SqlFilter(f"lower({t.base} #>> {p}::text[])", c.params)
    if isinstance(t, _JsonMulti):
        # RFC 7644 §3.4.2.3: multi-valued → sort by the primary (else first) value
        sub = t.sub or "value"
        p = c.key(sub)
        arr = c.array(t)
        return SqlFilter(
            f"(SELECT lower(x.v ->> {p}) FROM jsonb_array_elements({arr}) WITH ORDINALITY AS x(v, i) "
            f"ORDER BY (x.v -> 'primary') = 'true'::jsonb DESC NULLS LAST, x.i LIMIT 1)",
            c.params,
        )
    if isinstance(t, _Const):
        return SqlFilter(c.col("id"), [])
    raise invalid_value(f"sortBy {sort_by!r} cannot be sorted on")
