"""HTTP handlers: parse → read Postgres or submit a command → map errors → respond.

Writes never touch Postgres here: they become ``contract`` commands, published through
the process's one ``OutcomeWaiter``, and the answer is the state the provisioner
committed (``Outcome.resource``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
import uuid
from typing import Any

from aiohttp import web
from pydantic_core import from_json, to_json

from provisio_lib import directory
from provisio_lib.contract import (
    ChangeGroupMembers,
    Command,
    CommandPayload,
    CreateGroup,
    CreateUser,
    DeleteGroup,
    DeleteUser,
    ErrorInfo,
    Outcome,
    ReplaceGroup,
    ReplaceUser,
    Source,
)
from provisio_lib.observability import OUTCOME_WAIT
from provisio_lib.outcomes import BrokerUnavailable, OutcomeTimeout

from . import repository as repo
from .auth import TenantAuth
from .errors import SCIM_CONTENT_TYPE, ScimError, invalid_syntax, invalid_value, not_found
from .keys import BASE_PATH, BODY, CORRELATION_ID, POOL, SETTINGS, TENANT, TOKENS, WAITER
from .limits import check_changed_strings, has_string_over
from .patch import apply_patch, parse_patch, plan_group_patch
from .resources import (
    canonical_group,
    canonical_user,
    etag,
    fold_sso_aliases,
    group_data,
    member_ids,
    normalise,
    project,
    refresh_name,
    render_group,
    render_user,
    require,
    split_csv,
    unknown_attributes,
    user_data,
)
from .schema import (
    LIST_SCHEMA,
    SEARCH_SCHEMA,
    ResourceKind,
    all_schemas,
    group_kind,
    resource_types,
    service_provider_config,
    user_kind,
)

_JSON_TYPES = ("application/scim+json", "application/json")
_MAX_START_INDEX = 2**62


# --------------------------------------------------------------------------- helpers


def base_url(request: web.Request) -> str:
    return public_url(request.app[SETTINGS]) + BASE_PATH


def public_url(settings: Any) -> str:
    """The gateway's external base URL: PROVISIO_SCIM_PUBLIC_URL, else derived from its
    port. Never from the request's Host header: a forged Host would otherwise become the
    Location of a 201 and the meta.location an IdP stores (issue 13 §5)."""
    public = settings.scim_public_url
    if public is not None:
        return str(public).rstrip("/")
    return f"http://127.0.0.1:{settings.scim_port}"


def dumps(data: Any) -> bytes:
    """JSON bytes of a response body: pydantic-core's serializer (cheaper than
    json.dumps, compact, UTF-8); json.dumps for what it refuses (lone surrogates)."""
    try:
        return to_json(data)
    except ValueError:
        return json.dumps(data).encode()


def scim_json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps(data), content_type=SCIM_CONTENT_TYPE, headers=headers)


def tenant(request: web.Request) -> TenantAuth:
    auth: TenantAuth = request[TENANT]
    return auth


def tenant_user_kind(request: web.Request) -> ResourceKind:
    """The User kind of the request's tenant (its declared extension schemas)."""
    return tenant(request).user_kind or user_kind()


def _kind_of(request: web.Request, kind_name: str) -> ResourceKind:
    return tenant_user_kind(request) if kind_name == "User" else group_kind()


def _max_chars(request: web.Request) -> int:
    """PROVISIO_SCIM_MAX_STRING_CHARS: every string a write stores is checked against it
    when the body (or a PATCH's result) is normalised (limits.py)."""
    limit: int = request.app[SETTINGS].scim_max_string_chars
    return limit


def _normalise_patched(kind: ResourceKind, stored: dict[str, Any], patched: Any, cap: int, **kw: Any) -> Any:
    """A PATCH's result, normalised. Its strings are capped as a POST's are, except a
    long value it keeps from a resource stored before the cap (``limits.
    check_changed_strings``): otherwise no PATCH — not even Entra's ``active: false`` —
    could reach that resource until someone trimmed it."""
    if not has_string_over(stored, cap):
        return normalise(kind, patched, max_chars=cap, **kw)
    updated = normalise(kind, patched, max_chars=None, **kw)
    check_changed_strings(stored, updated, cap)
    return updated


async def read_json(request: web.Request) -> Any:
    ctype = request.content_type
    if request.headers.get("Content-Type") and ctype not in _JSON_TYPES:
        raise ScimError(415, f"Content-Type must be application/scim+json, not {ctype}", "invalidSyntax")
    raw = await request.read()  # client_max_size enforces the body limit (413)
    if not raw:
        raise invalid_syntax("the request body is empty")
    try:
        # pydantic-core's parser (jiter) gives the same values as json.loads, cheaper;
        # what it refuses (a BOM, UTF-16, lone surrogate escapes, deep nesting) goes to
        # json.loads, so the answer (value or error) is json.loads's.
        body = request[BODY] = from_json(raw)
        return body
    except ValueError:
        pass
    try:
        body = request[BODY] = json.loads(raw)
        return body
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid_syntax(f"the request body is not valid JSON: {err}") from None
    except RecursionError:
        # json.loads recurses per nesting level; jiter refused it above for the same reason.
        raise invalid_syntax("the request body nests too deeply") from None


def parse_id(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise not_found(f"{what} {raw!r}") from None


def if_match_version(request: web.Request) -> int | None:
    """The version an If-Match header requires (None: no header or ``*``)."""
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    tags = [t.strip() for t in raw.split(",")]
    for t in tags:
        t = t.removeprefix("W/").strip('"')
        # isdigit() alone accepts superscript or Arabic-Indic digits (int() refuses them: a 500 before); an
        # ETag this server issued is ASCII digits of a bigint.
        if t.isascii() and t.isdigit() and len(t) <= 18:
            return int(t)
    return -1  # an ETag this server never issued: never matches


def check_if_match(request: web.Request, current_version: int) -> None:
    want = if_match_version(request)
    if want is not None and want != current_version:
        raise ScimError(412, f"If-Match does not match the current version {etag(current_version)}")


def not_modified(request: web.Request, version: int) -> bool:
    raw = request.headers.get("If-None-Match")
    return raw is not None and etag(version) in [t.strip() for t in raw.split(",")]


def _query_int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid_value(f"{name} must be an integer") from None


_ERRORS: dict[str, tuple[int, str | None]] = {
    "uniqueness": (409, "uniqueness"),
    "not_found": (404, None),
    "user_not_found": (404, None),
    "version_mismatch": (412, None),
    "invalid_value": (400, "invalidValue"),
    "mutability": (400, "mutability"),
    "policy": (409, None),
}


def outcome_error(error: ErrorInfo | None) -> ScimError:
    if error is None:
        return ScimError(500, "the provisioner refused the change without a reason")
    status, scim_type = _ERRORS.get(error.code, (500, None))
    if status == 500:
        return ScimError(500, "the provisioner could not apply the change; it has been logged")
    detail = error.message
    if error.code == "policy":
        detail = f"tenant policy: {error.message}"
    err = ScimError(status, detail, scim_type)
    err.audited = True  # the provisioner's failed Outcome is the audit record
    return err


async def submit(request: web.Request, payload: CommandPayload) -> Outcome:
    """Publish one command and wait for its outcome; failures become ScimErrors."""
    auth = tenant(request)
    app = request.app
    settings = app[SETTINGS]
    waiter = app[WAITER]
    command = Command(
        type=payload.type,
        tenant_id=auth.tenant_id,
        source=_source(auth),
        correlation_id=request[CORRELATION_ID],
        reply_to=waiter.reply_to(),  # set here: the waiter would otherwise copy the command
        payload=payload,
    )
    started = time.perf_counter()
    try:
        outcome = await waiter.submit(command, settings.scim_outcome_timeout_s)
    except OutcomeTimeout:
        _outcome_wait(payload.type, "timeout").observe(time.perf_counter() - started)
        raise ScimError(
            503,
            "the provisioner did not answer in time; the change is queued and will be applied once",
            headers={"Retry-After": str(settings.scim_retry_after_s)},
        ) from None
    except BrokerUnavailable:
        _outcome_wait(payload.type, "unavailable").observe(time.perf_counter() - started)
        raise ScimError(
            503,
            "the command queue is unavailable; retry later",
            headers={"Retry-After": str(settings.scim_retry_after_s)},
        ) from None
    _outcome_wait(payload.type, "outcome").observe(time.perf_counter() - started)
    return outcome


# Per-token Source and per-(type, result) histogram child, made once: a pydantic model
# and a prometheus labels() call (lock + tuple) per request add up on the write path.
def _source(auth: TenantAuth) -> Source:
    return _token_source(auth.token_id, auth.token_label)


@functools.lru_cache(maxsize=10_000)
def _token_source(token_id: uuid.UUID, label: str) -> Source:
    return Source(kind="scim", id=str(token_id), label=label)


@functools.cache  # command types × 3 results
def _outcome_wait(command_type: str, result: str) -> Any:
    return OUTCOME_WAIT.labels(type=command_type, result=result)


def _committed(outcome: Outcome) -> dict[str, Any]:
    if outcome.result == "failed" or outcome.resource is None:
        raise outcome_error(outcome.error)
    return outcome.resource


def _projection(request: web.Request) -> tuple[list[str] | None, list[str] | None]:
    return split_csv(request.query.get("attributes")), split_csv(request.query.get("excludedAttributes"))


def _resource_response(
    request: web.Request, kind_name: str, resource: dict[str, Any], version: int, status: int = 200
) -> web.Response:
    kind = _kind_of(request, kind_name)
    attrs, excluded = _projection(request)
    body = project(kind, resource, attrs, excluded)
    headers = {"ETag": etag(version)}
    if status == 201:
        headers["Location"] = resource["meta"]["location"]
    return scim_json(body, status, headers)


# --------------------------------------------------------------------------- discovery


async def service_provider_config_view(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    return scim_json(service_provider_config(base_url(request), s.scim_max_results, s.scim_max_body))


async def _discovery_kind(request: web.Request) -> ResourceKind | None:
    """Discovery needs no token; with one, the answer includes that tenant's declared
    extension schemas (and only that tenant's). A token sent but not valid is a 401."""
    raw = request.headers.get("Authorization")
    if raw is None:
        return None
    scheme, _, token = raw.partition(" ")
    token = token.strip()
    auth = None
    if scheme.lower() == "bearer" and token and len(token) <= 512:
        auth = await request.app[TOKENS].lookup(token)
    if auth is None:
        raise ScimError(401, "the bearer token is not valid", headers={"WWW-Authenticate": 'Bearer realm="scim"'})
    return auth.user_kind


async def resource_types_view(request: web.Request) -> web.Response:
    items = resource_types(base_url(request), await _discovery_kind(request))
    return scim_json(_list(items, 1))


async def resource_type_view(request: web.Request) -> web.Response:
    for item in resource_types(base_url(request), await _discovery_kind(request)):
        if item["id"] == request.match_info["id"]:
            return scim_json(item)
    raise not_found(f"ResourceType {request.match_info['id']!r}")


async def schemas_view(request: web.Request) -> web.Response:
    base = base_url(request)
    return scim_json(_list([s.to_scim(base) for s in all_schemas(await _discovery_kind(request))], 1))


async def schema_view(request: web.Request) -> web.Response:
    wanted = request.match_info["id"]
    for s in all_schemas(await _discovery_kind(request)):
        if s.id.lower() == wanted.lower():
            return scim_json(s.to_scim(base_url(request)))
    raise not_found(f"Schema {wanted!r}")


def _list(resources: list[dict[str, Any]], start_index: int, total: int | None = None) -> dict[str, Any]:
    return {
        "schemas": [LIST_SCHEMA],
        "totalResults": len(resources) if total is None else total,
        "startIndex": start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }


# --------------------------------------------------------------------------- list / search


async def _search(
    request: web.Request,
    kind_name: str,
    *,
    filter_text: str | None,
    start_index: int,
    count: int | None,
    sort_by: str | None,
    sort_order: str | None,
    attributes: list[str] | None,
    excluded: list[str] | None,
) -> web.Response:
    settings = request.app[SETTINGS]
    kind = _kind_of(request, kind_name)
    # RFC 7644 §3.4.2.4: < 1 is read as 1; past the end is an empty page. Clamped so
    # that any integer a client sends fits Postgres's bigint OFFSET.
    start_index = min(max(1, start_index), _MAX_START_INDEX)
    count = settings.scim_default_count if count is None else max(0, min(count, settings.scim_max_results))
    order = (sort_order or "ascending").lower()
    if order not in ("ascending", "descending"):
        raise invalid_value("sortOrder must be ascending or descending")
    auth = tenant(request)
    pool = request.app[POOL]
    wants_links = _wants(kind, "groups" if kind_name == "User" else "members", attributes, excluded)
    total, rows = await repo.search(
        pool,
        kind,
        auth.tenant_id,
        filter_text=filter_text,
        start_index=start_index,
        count=count,
        sort_by=sort_by,
        descending=order == "descending",
        with_groups=wants_links,
    )
    base = base_url(request)
    if kind_name == "User":
        items = [render_user(r, base, kind=kind) for r in rows]
    else:
        members = (
            await directory.group_members(pool, auth.tenant_id, [r["id"] for r in rows]) if wants_links and rows else {}
        )
        items = [render_group(r, members.get(r["id"]) if wants_links else None, base) for r in rows]
    items = [project(kind, i, attributes, excluded) for i in items]
    return scim_json(_list(items, start_index, total))


def _wants(kind: Any, name: str, attributes: list[str] | None, excluded: list[str] | None) -> bool:
    def hits(paths: list[str]) -> bool:
        for p in paths:
            low = p.lower()
            if low.startswith(kind.core.id.lower() + ":"):
                low = low[len(kind.core.id) + 1 :]
            if low == name or low.startswith(name + "."):
                return True
        return False

    if attributes:
        return hits(attributes)
    if excluded:
        return not hits(excluded)
    return True


async def list_view(request: web.Request, kind_name: str) -> web.Response:
    q = request.query
    count_raw = q.get("count")
    return await _search(
        request,
        kind_name,
        filter_text=q.get("filter") or None,
        start_index=_query_int(request, "startIndex", 1),
        count=_query_int(request, "count", 0) if count_raw not in (None, "") else None,
        sort_by=q.get("sortBy") or None,
        sort_order=q.get("sortOrder") or None,
        attributes=split_csv(q.get("attributes")),
        excluded=split_csv(q.get("excludedAttributes")),
    )


def _search_request(body: Any) -> dict[str, Any]:
    """A SearchRequest message (RFC 7644 §3.4.3), validated."""
    if not isinstance(body, dict):
        raise invalid_syntax("a SearchRequest must be a JSON object")
    schemas = body.get("schemas") or []
    if not isinstance(schemas, list) or SEARCH_SCHEMA not in schemas:
        raise invalid_syntax(f"schemas must contain {SEARCH_SCHEMA}")

    def int_field(name: str) -> int | None:
        v = body.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise invalid_value(f"{name} must be an integer")
        return v

    def str_list(name: str) -> list[str] | None:
        v = body.get(name)
        if v is None:
            return None
        if isinstance(v, str):
            return split_csv(v)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise invalid_value(f"{name} must be a list of attribute paths")
        return v

    def str_field(name: str) -> str | None:
        v = body.get(name)
        if v is not None and not isinstance(v, str):
            raise invalid_value(f"{name} must be a string")
        return v or None

    return {
        "filter": str_field("filter"),
        "start_index": int_field("startIndex") or 1,
        "count": int_field("count"),
        "sort_by": str_field("sortBy"),
        "sort_order": str_field("sortOrder"),
        "attributes": str_list("attributes"),
        "excluded": str_list("excludedAttributes"),
    }


async def search_view(request: web.Request, kind_name: str) -> web.Response:
    """POST /Users/.search, /Groups/.search (RFC 7644 §3.4.3)."""
    req = _search_request(await read_json(request))
    return await _search(
        request,
        kind_name,
        filter_text=req["filter"],
        start_index=req["start_index"],
        count=req["count"],
        sort_by=req["sort_by"],
        sort_order=req["sort_order"],
        attributes=req["attributes"],
        excluded=req["excluded"],
    )


# --------------------------------------------------------------------------- users


async def get_user(request: web.Request) -> web.Response:
    uid = parse_id(request.match_info["id"], "User")
    auth = tenant(request)
    attrs, excluded = _projection(request)
    kind = tenant_user_kind(request)
    row = await directory.get_user(
        request.app[POOL], auth.tenant_id, uid, groups=_wants(kind, "groups", attrs, excluded)
    )
    if row is None:
        raise not_found(f"User {uid}")
    if not_modified(request, row["version"]):
        return web.Response(status=304, headers={"ETag": etag(row["version"])})
    return _resource_response(request, "User", render_user(row, base_url(request), kind=kind), row["version"])


def _user_response(request: web.Request, state: dict[str, Any], status: int = 200) -> web.Response:
    resource = render_user(state, base_url(request), kind=tenant_user_kind(request))
    return _resource_response(request, "User", resource, int(state["version"]), status)


async def create_user(request: web.Request) -> web.Response:
    kind = tenant_user_kind(request)
    resource = fold_sso_aliases(kind, normalise(kind, await read_json(request), max_chars=_max_chars(request)))
    require(kind, resource)
    data = user_data(resource)
    outcome = await submit(request, CreateUser(user_id=uuid.uuid4(), data=data))
    return _user_response(request, _committed(outcome), 201)


async def replace_user(request: web.Request) -> web.Response:
    """PUT: full replace (Okta's update)."""
    kind = tenant_user_kind(request)
    uid = parse_id(request.match_info["id"], "User")
    auth = tenant(request)
    resource = fold_sso_aliases(kind, normalise(kind, await read_json(request), max_chars=_max_chars(request)))
    require(kind, resource)
    row = await directory.get_user(request.app[POOL], auth.tenant_id, uid, groups=False)
    if row is None:
        raise not_found(f"User {uid}")
    data = user_data(resource, keep=unknown_attributes(row["attributes"]))
    check_if_match(request, row["version"])
    outcome = await submit(request, ReplaceUser(user_id=uid, data=data, expected_version=if_match_version(request)))
    return _user_response(request, _committed(outcome))


async def patch_user(request: web.Request) -> web.Response:
    """PATCH: applied here to the state read (version v), sent as ReplaceUser(v); a
    concurrent change (version_mismatch) makes it re-read and re-apply."""
    kind = tenant_user_kind(request)
    uid = parse_id(request.match_info["id"], "User")
    auth = tenant(request)
    ops = parse_patch(await read_json(request))
    pool = request.app[POOL]
    retries = request.app[SETTINGS].scim_write_retries
    for attempt in range(retries + 1):
        # The groups are only shown, never patched: read them only if the stored state is the answer.
        row = await directory.get_user(pool, auth.tenant_id, uid, groups=False)
        if row is None:
            raise not_found(f"User {uid}")
        check_if_match(request, row["version"])
        view = canonical_user(kind, row)  # with the aliased extension values (Splashtop ssoName)
        # "store": extension data already stored stays; new undeclared paths were
        # already refused by apply_patch when the tenant rejects them.
        patched = apply_patch(kind, view, ops)
        updated = refresh_name(view, _normalise_patched(kind, view, patched, _max_chars(request), undeclared="store"))
        if kind.sso_aliases:
            current = fold_sso_aliases(kind, view, view)
            updated = fold_sso_aliases(kind, updated, view)
        else:
            current = view
        require(kind, updated)
        if updated == current:
            # Nothing changes (Entra re-sends PATCHes it already sent): answer the stored state.
            state = dict(row)
            attrs, excluded = _projection(request)
            if _wants(kind, "groups", attrs, excluded):
                state["groups"] = await directory.user_groups(pool, auth.tenant_id, uid)
            return _resource_response(request, "User", render_user(state, base_url(request), kind=kind), row["version"])
        data = user_data(updated, keep=unknown_attributes(row["attributes"]))
        outcome = await submit(request, ReplaceUser(user_id=uid, data=data, expected_version=row["version"]))
        if (
            outcome.result == "failed"
            and outcome.error is not None
            and outcome.error.code == "version_mismatch"
            and if_match_version(request) is None
            and attempt < retries
        ):
            # Another write won: re-read and re-apply. Each lost round means another
            # writer committed, so N concurrent writers need at most N-1 retries.
            await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))
            continue
        return _user_response(request, _committed(outcome))
    raise ScimError(409, "the user kept changing while this PATCH was applied; retry")


async def delete_user(request: web.Request) -> web.Response:
    uid = parse_id(request.match_info["id"], "User")
    auth = tenant(request)
    row = await directory.get_user(request.app[POOL], auth.tenant_id, uid, groups=False)
    if row is None:
        raise not_found(f"User {uid}")
    check_if_match(request, row["version"])
    outcome = await submit(request, DeleteUser(user_id=uid, expected_version=if_match_version(request)))
    if outcome.result == "failed":
        raise outcome_error(outcome.error)
    return web.Response(status=204)


# --------------------------------------------------------------------------- groups


async def _group_response(request: web.Request, group: dict[str, Any] | Any, status: int = 200) -> web.Response:
    auth = tenant(request)
    attrs, excluded = _projection(request)
    members = None
    if _wants(group_kind(), "members", attrs, excluded):
        gid = uuid.UUID(str(group["id"]))
        members = (await directory.group_members(request.app[POOL], auth.tenant_id, [gid]))[gid]
    resource = render_group(group, members, base_url(request))
    return _resource_response(request, "Group", resource, int(group["version"]), status)


async def get_group(request: web.Request) -> web.Response:
    gid = parse_id(request.match_info["id"], "Group")
    row = await directory.get_group(request.app[POOL], tenant(request).tenant_id, gid)
    if row is None:
        raise not_found(f"Group {gid}")
    if not_modified(request, row["version"]):
        return web.Response(status=304, headers={"ETag": etag(row["version"])})
    return await _group_response(request, row)


async def create_group(request: web.Request) -> web.Response:
    kind = group_kind()
    resource = normalise(kind, await read_json(request), max_chars=_max_chars(request))
    require(kind, resource)
    data = group_data(resource, member_ids(resource))
    outcome = await submit(request, CreateGroup(group_id=uuid.uuid4(), data=data))
    return await _group_response(request, _committed(outcome), 201)


async def replace_group(request: web.Request) -> web.Response:
    kind = group_kind()
    gid = parse_id(request.match_info["id"], "Group")
    resource = normalise(kind, await read_json(request), max_chars=_max_chars(request))
    require(kind, resource)
    data = group_data(resource, member_ids(resource))
    row = await directory.get_group(request.app[POOL], tenant(request).tenant_id, gid)
    if row is None:
        raise not_found(f"Group {gid}")
    check_if_match(request, row["version"])
    outcome = await submit(request, ReplaceGroup(group_id=gid, data=data, expected_version=if_match_version(request)))
    return await _group_response(request, _committed(outcome))


async def patch_group(request: web.Request) -> web.Response:
    """Member adds/removes become ChangeGroupMembers (set operations, no version);
    other changes are applied to the group read and sent as ReplaceGroup(v)."""
    kind = group_kind()
    gid = parse_id(request.match_info["id"], "Group")
    auth = tenant(request)
    pool = request.app[POOL]
    ops = parse_patch(await read_json(request))
    plan = plan_group_patch(kind, ops)
    retries = request.app[SETTINGS].scim_write_retries
    row = await directory.get_group(pool, auth.tenant_id, gid)
    if row is None:
        raise not_found(f"Group {gid}")
    check_if_match(request, row["version"])
    state: Any = row
    if plan.other:
        for attempt in range(retries + 1):
            members = None
            if plan.needs_members:
                members = (await directory.group_members(pool, auth.tenant_id, [gid]))[gid]
            current = canonical_group(row, members)
            updated = _normalise_patched(kind, current, apply_patch(kind, current, plan.other), _max_chars(request))
            require(kind, updated)
            if updated == current:
                break
            new_members = member_ids(updated) if plan.needs_members else None
            data = group_data(updated, new_members)
            outcome = await submit(request, ReplaceGroup(group_id=gid, data=data, expected_version=row["version"]))
            if (
                outcome.result == "failed"
                and outcome.error is not None
                and outcome.error.code == "version_mismatch"
                and if_match_version(request) is None
                and attempt < retries
            ):
                row = await directory.get_group(pool, auth.tenant_id, gid)
                if row is None:
                    raise not_found(f"Group {gid}")
                continue
            state = _committed(outcome)
            break
    if plan.add or plan.remove:
        outcome = await submit(
            request, ChangeGroupMembers(group_id=gid, add=tuple(plan.add), remove=tuple(plan.remove))
        )
        state = _committed(outcome)
    return await _group_response(request, state)


async def delete_group(request: web.Request) -> web.Response:
    gid = parse_id(request.match_info["id"], "Group")
    row = await directory.get_group(request.app[POOL], tenant(request).tenant_id, gid)
    if row is None:
        raise not_found(f"Group {gid}")
    check_if_match(request, row["version"])
    outcome = await submit(request, DeleteGroup(group_id=gid))
    if outcome.result == "failed":
        raise outcome_error(outcome.error)
    return web.Response(status=204)


# --------------------------------------------------------------------------- routes


def _kind(view: Any, kind_name: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return await view(request, kind_name)

    handler.__name__ = f"{view.__name__}_{kind_name.lower()}"
    return handler


async def root_search(request: web.Request) -> web.Response:
    """POST /.search at the server root (RFC 7644 §3.4.3): Users then Groups. An
    attribute one resource type lacks makes that type match nothing (§3.4.2.1)."""
    body = await read_json(request)
    req = _search_request(body)
    settings = request.app[SETTINGS]
    start = min(max(1, req["start_index"]), _MAX_START_INDEX)
    count = (
        settings.scim_default_count if req["count"] is None else max(0, min(req["count"], settings.scim_max_results))
    )
    auth = tenant(request)
    pool = request.app[POOL]
    base = base_url(request)
    totals: list[int] = []
    pages: list[list[dict[str, Any]]] = []
    errors: list[ScimError] = []
    offset = start - 1
    for kind in (tenant_user_kind(request), group_kind()):
        try:
            total, _ = await repo.search(
                pool,
                kind,
                auth.tenant_id,
                filter_text=req["filter"],
                start_index=1,
                count=0,
                sort_by=None,
                descending=False,
            )
        except ScimError as err:
            if err.scim_type != "invalidFilter":
                raise
            errors.append(err)
            totals.append(0)
            pages.append([])
            continue
        take = max(0, min(count - sum(len(p) for p in pages), total - offset)) if offset < total else 0
        rows: list[Any] = []
        if take:
            _, rows = await repo.search(
                pool,
                kind,
                auth.tenant_id,
                filter_text=req["filter"],
                start_index=offset + 1,
                count=take,
                sort_by=None,
                descending=False,
            )
        offset = max(0, offset - total)
        if kind.name == "User":
            items = [render_user(r, base, kind=kind) for r in rows]
        else:
            members = await directory.group_members(pool, auth.tenant_id, [r["id"] for r in rows]) if rows else {}
            items = [render_group(r, members.get(r["id"]), base) for r in rows]
        pages.append([project(kind, i, req["attributes"], req["excluded"]) for i in items])
        totals.append(total)
    if len(errors) == 2:
        raise errors[0]  # no resource type understands the filter
    resources = [i for p in pages for i in p]
    return scim_json(_list(resources, start, sum(totals)))


# (method, path relative to BASE_PATH, handler, needs auth, summary) — the OpenAPI
# document is generated from this same table.
ROUTES: list[tuple[str, str, Any, bool, str]] = [
    ("GET", "/ServiceProviderConfig", service_provider_config_view, False, "Service provider configuration"),
    ("GET", "/ResourceTypes", resource_types_view, False, "List resource types"),
    ("GET", "/ResourceTypes/{id}", resource_type_view, False, "Get a resource type"),
    ("GET", "/Schemas", schemas_view, False, "List schemas"),
    ("GET", "/Schemas/{id}", schema_view, False, "Get a schema"),
    ("GET", "/Users", _kind(list_view, "User"), True, "List or filter users"),
    ("POST", "/Users", create_user, True, "Create a user"),
    ("POST", "/Users/.search", _kind(search_view, "User"), True, "Search users"),
    ("GET", "/Users/{id}", get_user, True, "Get a user"),
    ("PUT", "/Users/{id}", replace_user, True, "Replace a user"),
    ("PATCH", "/Users/{id}", patch_user, True, "Modify a user"),
    ("DELETE", "/Users/{id}", delete_user, True, "Delete (or deactivate, by tenant policy) a user"),
    ("GET", "/Groups", _kind(list_view, "Group"), True, "List or filter groups"),
    ("POST", "/Groups", create_group, True, "Create a group"),
    ("POST", "/Groups/.search", _kind(search_view, "Group"), True, "Search groups"),
    ("GET", "/Groups/{id}", get_group, True, "Get a group"),
    ("PUT", "/Groups/{id}", replace_group, True, "Replace a group"),
    ("PATCH", "/Groups/{id}", patch_group, True, "Modify a group"),
    ("DELETE", "/Groups/{id}", delete_group, True, "Delete a group"),
    ("POST", "/.search", root_search, True, "Search Users and Groups at once"),
]
