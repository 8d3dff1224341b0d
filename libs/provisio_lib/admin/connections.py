"""SAML SSO connections: shared by `provisio sso …` and the console's setup wizard.

A connection added by an operator (`provisio sso add`) is enabled at once; one made
through a setup link starts disabled and is switched on by ``sso_test.enable`` only after
a test login passed. Every change is audited with its actor.
"""

from __future__ import annotations

import base64
import ipaddress
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit
from uuid import UUID
from xml.sax.saxutils import escape, quoteattr

import asyncpg

from provisio_lib import netguard, netguard_http, sso
from provisio_lib.sso_presets import PRESETS
from provisio_lib.tokens import generate_token, hash_token

from .errors import USAGE, AdminError
from .tenants import record, tenant_name

SECRET_PREFIX = "pas_"  # Provisio app secret (code exchange at POST /saml/token)


def new_secret() -> tuple[str, bytes]:
    secret = SECRET_PREFIX + generate_token().removeprefix("prv_")
    return secret, hash_token(secret)


@dataclass(frozen=True)
class Created:
    tenant_name: str
    name: str
    info: sso.IdpInfo
    secret: str


def check_options(
    *, preset: str | None = None, jit: str | None = None, app_url: str | None = None, groups_absent: str | None = None
) -> None:
    if groups_absent is not None and groups_absent not in sso.GROUPS_ABSENT:
        raise AdminError(
            f"unknown --groups-absent-means {groups_absent!r}; choose one of: {', '.join(sso.GROUPS_ABSENT)}"
        )
    if preset is not None and preset not in PRESETS:
        raise AdminError(f"unknown --preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if jit is not None and jit not in sso.JIT_MODES:
        raise AdminError(f"unknown --jit {jit!r}; choose one of: {', '.join(sso.JIT_MODES)}")
    if app_url is not None and not app_url.startswith(("https://", "http://")):
        raise AdminError(f"--app-url {app_url!r} must be an http(s) URL")


def parse_metadata(raw: bytes) -> sso.IdpInfo:
    try:
        return sso.parse_idp_metadata(raw)
    except sso.MetadataError as err:
        raise AdminError(f"invalid IdP metadata: {err}") from None


async def add(
    conn: asyncpg.Connection,
    tid: UUID,
    name: str,
    *,
    metadata: bytes,
    preset: str,
    actor: str,
    jit: str = "create",
    app_url: str | None = None,
    allow_idp_initiated: bool = False,
    overrides: dict[str, str] | None = None,
    required: list[str] | None = None,
    groups_absent: str = "auto",
    enabled: bool = True,
    tenant_label: str | None = None,
) -> Created:
    """Create a connection from IdP metadata; returns its one-time app secret."""
    name = name.strip().lower()
    check_options(preset=preset, jit=jit, app_url=app_url, groups_absent=groups_absent)
    try:
        amap = sso.attribute_map(preset, overrides or {})
        req = sso.check_required(required or [], amap)
    except sso.MappingError as err:
        raise AdminError(str(err)) from None
    info = parse_metadata(metadata)
    tname = await tenant_name(conn, tid)
    key_pem, cert_pem = sso.generate_sp_keypair(f"provisio {tname}/{name}")
    secret, secret_hash = new_secret()
    async with conn.transaction():
        try:
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO sso_connections (id, tenant_id, name, preset, idp_entity_id, idp_metadata,
                           jit_mode, app_url, allow_idp_initiated, attribute_map, required_attributes,
                           sp_cert_pem, sp_key_pem, app_secret_hash, groups_absent, enabled)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)""",
                    uuid.uuid4(),
                    tid,
                    name,
                    preset,
                    info.entity_id,
                    metadata.decode("utf-8", "replace"),
                    jit,
                    app_url,
                    allow_idp_initiated,
                    amap,
                    req,
                    cert_pem,
                    key_pem,
                    secret_hash,
                    groups_absent,
                    enabled,
                )
        except asyncpg.UniqueViolationError:
            raise AdminError(f"tenant {tenant_label or tname!r} already has an SSO connection named {name!r}") from None
        except asyncpg.CheckViolationError:
            raise AdminError(f"invalid connection name {name!r}: 1-63 lowercase letters, digits and dashes") from None
        await record(
            conn,
            actor,
            "sso.add",
            tid,
            resource_type="SsoConnection",
            notes=[f"connection {name}"],
            changes={
                "connection": {
                    "before": None,
                    "after": {
                        "name": name,
                        "preset": preset,
                        "idp_entity_id": info.entity_id,
                        "jit": jit,
                        "required": req,
                        "enabled": enabled,
                    },
                }
            },
        )
    return Created(tname, name, info, secret)


async def get(conn: asyncpg.Connection, tid: UUID, name: str, *, tenant_label: str | None = None) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT c.*, t.name AS tenant_name FROM sso_connections c JOIN tenants t ON t.id = c.tenant_id
           WHERE c.tenant_id = $1 AND c.name = $2""",
        tid,
        name.strip().lower(),
    )
    if row is None:
        tenant = tenant_label or await tenant_name(conn, tid)
        raise AdminError(f"tenant {tenant!r} has no SSO connection named {name!r} (see `provisio sso list {tenant}`)")
    return dict(row)


async def update(
    conn: asyncpg.Connection,
    tid: UUID,
    name: str,
    *,
    actor: str,
    metadata: bytes | None = None,
    jit: str | None = None,
    app_url: str | None = None,
    allow_idp_initiated: bool | None = None,
    overrides: dict[str, str] | None = None,
    required: list[str] | None = None,
    groups_absent: str | None = None,
    replace_map: bool = False,
    tenant_label: str | None = None,
) -> None:
    """Change a connection in place (the SP key, URLs and app secret stay). ``overrides``
    go on top of the current map, or on top of the preset's with ``replace_map``."""
    check_options(jit=jit, app_url=app_url, groups_absent=groups_absent)
    info = parse_metadata(metadata) if metadata is not None else None
    async with conn.transaction():
        row = await get(conn, tid, name, tenant_label=tenant_label)
        amap = (
            sso.attribute_map(row["preset"]) if replace_map else {k: list(v) for k, v in row["attribute_map"].items()}
        )
        try:
            for field, claim in (overrides or {}).items():
                amap[field] = sso.attribute_map(row["preset"], {field: claim})[field]
            req = sso.check_required(required, amap) if required is not None else list(row["required_attributes"])
        except sso.MappingError as err:
            raise AdminError(str(err)) from None
        if info is not None and info.entity_id != row["idp_entity_id"]:
            raise AdminError(
                f"the new metadata is for IdP {info.entity_id!r}, not this connection's "
                f"{row['idp_entity_id']!r}; add a new connection instead"
            )
        await conn.execute(
            """UPDATE sso_connections SET idp_metadata = coalesce($2, idp_metadata),
                   jit_mode = coalesce($3, jit_mode), app_url = coalesce($4, app_url),
                   allow_idp_initiated = coalesce($5, allow_idp_initiated), attribute_map = $6,
                   required_attributes = $7, groups_absent = coalesce($8, groups_absent), updated_at = now()
               WHERE id = $1""",
            row["id"],
            metadata.decode("utf-8", "replace") if metadata is not None else None,
            jit,
            app_url,
            allow_idp_initiated,
            amap,
            req,
            groups_absent,
        )
        changes: dict[str, Any] = {}
        for key, before, after in (
            ("metadata", None, "replaced" if metadata is not None else None),
            ("jit", row["jit_mode"], jit),
            ("app_url", row["app_url"], app_url),
            ("allow_idp_initiated", row["allow_idp_initiated"], allow_idp_initiated),
            ("attribute_map", row["attribute_map"], amap),
            ("required", list(row["required_attributes"]), req),
            ("groups_absent", row["groups_absent"], groups_absent),
        ):
            if after is not None and after != before:
                changes[key] = {"before": before, "after": after}
        await record(
            conn,
            actor,
            "sso.update",
            tid,
            resource_type="SsoConnection",
            notes=[f"connection {row['name']}"],
            changes=changes,
        )


async def list_connections(conn: asyncpg.Connection, tid: UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT name, preset, jit_mode AS jit, idp_entity_id, app_url, allow_idp_initiated, created_at, enabled
           FROM sso_connections WHERE tenant_id = $1 ORDER BY name""",
        tid,
    )
    return [dict(r) for r in rows]


async def remove(
    conn: asyncpg.Connection, tid: UUID, name: str, *, actor: str, tenant_label: str | None = None
) -> None:
    async with conn.transaction():
        row = await get(conn, tid, name, tenant_label=tenant_label)
        await conn.execute("DELETE FROM sso_connections WHERE id = $1", row["id"])
        await record(conn, actor, "sso.remove", tid, resource_type="SsoConnection", notes=[f"connection {row['name']}"])


async def rotate_secret(
    conn: asyncpg.Connection, tid: UUID, name: str, *, actor: str, tenant_label: str | None = None
) -> str:
    """A new app secret for the code exchange (the old one stops working)."""
    async with conn.transaction():
        row = await get(conn, tid, name, tenant_label=tenant_label)
        value, digest = new_secret()
        await conn.execute(
            "UPDATE sso_connections SET app_secret_hash = $2, updated_at = now() WHERE id = $1", row["id"], digest
        )
        await record(conn, actor, "sso.secret", tid, resource_type="SsoConnection", notes=[f"connection {row['name']}"])
    return value


async def set_domains(
    conn: asyncpg.Connection,
    tid: UUID,
    name: str,
    *,
    actor: str,
    add: list[str],
    remove: list[str],
    tenant_label: str | None = None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Verified email domains of a connection; returns them and (other connection, domain)
    for each added domain another connection of the tenant verifies too."""
    try:
        added = [sso.normalize_domain(d) for d in add]
        removed = [sso.normalize_domain(d) for d in remove]
    except sso.MappingError as err:
        raise AdminError(str(err)) from None
    async with conn.transaction():
        row = await get(conn, tid, name, tenant_label=tenant_label)
        current = [d for d in row["verified_domains"] if d not in removed]
        current += [d for d in dict.fromkeys(added) if d not in current]
        # A domain verified for two connections of a tenant makes both authoritative
        # for the same users: allowed (one IdP migrating to another), but said.
        others = await conn.fetch(
            """SELECT name, d FROM sso_connections, unnest(verified_domains) AS d
               WHERE tenant_id = $1 AND id <> $2 AND d = ANY($3::text[])""",
            row["tenant_id"],
            row["id"],
            added,
        )
        if added or removed:
            await conn.execute(
                "UPDATE sso_connections SET verified_domains = $2, updated_at = now() WHERE id = $1",
                row["id"],
                current,
            )
            await record(
                conn,
                actor,
                "sso.domains",
                tid,
                resource_type="SsoConnection",
                notes=[f"connection {row['name']}"],
                changes={"verified_domains": {"before": list(row["verified_domains"]), "after": current}},
            )
    return current, [(r["name"], r["d"]) for r in others]


# --------------------------------------------------------------------------- metadata from a person


def manual_metadata(entity_id: str, sso_url: str, certificate: str) -> bytes:
    """SAML metadata (SAML 2.0 metadata §2.4.3) built from values an admin typed: the
    IdP's entity ID, its SSO URL (HTTP-Redirect) and its signing certificate (PEM or
    bare base64). Checked by the same parser as uploaded metadata."""
    entity_id, sso_url = entity_id.strip(), sso_url.strip()
    if not entity_id or len(entity_id) > 1024:
        raise AdminError("enter the IdP's entity ID (issuer)", USAGE)
    if not sso_url.startswith(("https://", "http://")) or len(sso_url) > 2048:
        raise AdminError("the SSO URL must be an http(s) URL", USAGE)
    b64 = "".join(line for line in certificate.strip().splitlines() if not line.startswith("-----")).replace(" ", "")
    try:
        base64.b64decode(b64, validate=True)
    except ValueError:
        raise AdminError("the certificate must be PEM (-----BEGIN CERTIFICATE-----) or base64", USAGE) from None
    xml = (
        '<?xml version="1.0"?>\n'
        f'<md:EntityDescriptor xmlns:md="{sso.MD_NS}" entityID={quoteattr(entity_id)}>'
        f'<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        f'<md:KeyDescriptor use="signing"><ds:KeyInfo xmlns:ds="{sso.DS_NS}"><ds:X509Data>'
        f"<ds:X509Certificate>{escape(b64)}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        f'<md:SingleSignOnService Binding="{sso.BINDING_REDIRECT}" Location={quoteattr(sso_url)}/>'
        "</md:IDPSSODescriptor></md:EntityDescriptor>\n"
    )
    raw = xml.encode()
    parse_metadata(raw)
    return raw


def address_allowed(address: str) -> bool:
    """Only public unicast addresses: no loopback, private (RFC 1918, ULA), link-local
    (cloud metadata services live at 169.254.169.254), CGNAT, multicast, reserved. The
    webhooks' rule (``netguard``, setting ``none``), so both outbound fetches judge IPv4
    inside IPv6 (mapped, 6to4, NAT64) the same way."""
    return netguard.address_allowed(address, "none")


def _refused(host: str, addresses: list[str]) -> AdminError:
    bad = next((a for a in addresses if not address_allowed(a)), None)
    if bad is None:  # no address at all
        return AdminError(f"cannot resolve {host!r}")
    return AdminError(
        f"{host!r} resolves to {bad}, a private or local address: metadata URLs must be "
        "on the public internet (download the file and upload it instead)"
    )


async def fetch_metadata(url: str, *, allow_private: bool = False, timeout_s: float = 10.0) -> bytes:
    """Download IdP metadata for a person who gave its URL (server-side request forgery
    guarded, OWASP SSRF cheat sheet): http(s) only; every address a host resolves to must
    be public unless ``allow_private`` (an operator setting); the vetted addresses are
    the ones connected to (no DNS rebinding); redirects are followed by hand, each
    checked again; at most 1 MiB."""
    import aiohttp

    def check_url(u: str) -> None:
        parts = urlsplit(u)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminError("the metadata URL must be an http:// or https:// URL", USAGE)
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return
        if not allow_private and not address_allowed(str(literal)):
            raise AdminError(
                f"{parts.hostname} is a private or local address: metadata URLs must be on the public internet "
                "(download the file and upload it instead)"
            )

    # Every address a name resolves to must pass (``every``), or the name is refused;
    # ``allow_private`` lets any address through (the setting's "private, loopback and
    # link-local"). No DNS cache: each hop of a redirect is resolved and vetted anew.
    resolver = netguard_http.PinnedResolver(
        (lambda _address: True) if allow_private else "none",
        _refused,
        every=True,
        lookup_failed=lambda host, _err: AdminError(f"cannot resolve {host!r}"),
    )
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as session:
            for _hop in range(4):
                check_url(url)
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise AdminError(f"the metadata URL answered HTTP {resp.status}")
                    data = await resp.content.read(sso.MAX_METADATA_BYTES + 1)
                    if len(data) > sso.MAX_METADATA_BYTES:
                        raise AdminError(f"the metadata is larger than {sso.MAX_METADATA_BYTES // 1024} KiB")
                    return data
            raise AdminError("the metadata URL redirected too many times")
    except AdminError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        raise AdminError(f"cannot download the metadata: {type(err).__name__} {err}".strip()) from None
