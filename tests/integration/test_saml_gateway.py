"""The SAML gateway over HTTP with real Postgres, Redis and the provisioner: SP
metadata, SP-initiated logins, the stateful refusals (replay, InResponseTo,
IdP-initiated), error pages and audit records, JIT modes and the code exchange."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import saml_attacks as atk
from saml_idp import ENTRA
from saml_setup import (
    add_connection,
    audit_outcomes,
    code_of,
    exchange,
    page_is_clean,
    post_acs,
    sp_login,
    start_gateway,
)
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(service_env: dict[str, str], topology: Any) -> Any:
    client = await start_gateway()
    yield client
    await client.close()


@pytest.fixture
async def acme(pool: Any) -> Any:
    return await make_tenant(pool, name=f"acme-{uuid.uuid4().hex[:6]}")


# ------------------------------------------------------------------ SP side


async def test_sp_metadata(gateway: Any, pool: Any, acme: Any) -> None:
    s = await add_connection(pool, acme.id, "entra")
    resp = await gateway.get(f"/saml/{s.tenant}/entra/metadata")
    assert resp.status == 200
    xml = await resp.text()
    assert f'entityID="{s.urls.entity_id}"' in xml
    assert s.urls.acs in xml and "HTTP-POST" in xml
    assert 'use="encryption"' in xml and 'use="signing"' in xml
    assert 'AuthnRequestsSigned="true"' in xml
    assert "PRIVATE KEY" not in xml
    # The encryption certificate as a file, for Entra's "Token encryption" upload.
    cert = await gateway.get(f"/saml/{s.tenant}/entra/certificate")
    assert cert.status == 200
    pem = await cert.text()
    assert pem.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE" not in pem
    assert s.sp_cert_b64[:64] in pem.replace("\n", "") and s.sp_cert_b64[:64] in xml


async def test_unknown_connection_is_a_404_page(gateway: Any, acme: Any) -> None:
    for path in (f"/saml/{acme.name}/nope/metadata", "/saml/nope/nope/login", "/saml/x/y/acs"):
        resp = await (gateway.post(path, data={"SAMLResponse": "x"}) if path.endswith("acs") else gateway.get(path))
        assert resp.status == 404
        assert "text/html" in resp.headers["Content-Type"]
        assert page_is_clean(await resp.text())


async def test_login_redirects_with_a_signed_request_kept_in_redis(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "okta", preset="okta")
    resp = await gateway.get(
        f"/saml/{s.tenant}/okta/login", params={"RelayState": "/reports/42"}, allow_redirects=False
    )
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == s.idp.sso_url
    query = parse_qs(location.query)
    assert query["RelayState"] == ["/reports/42"]
    assert query["SigAlg"] == ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"] and query["Signature"]
    req_id = await sp_login(gateway, s)
    ttl = await redis.ttl(topology.key("saml", "req", req_id))
    assert 0 < ttl <= 600
    too_long = await gateway.get(f"/saml/{s.tenant}/okta/login", params={"RelayState": "x" * 81}, allow_redirects=False)
    assert too_long.status == 400


# ------------------------------------------------------------------ full login


@pytest.mark.parametrize("preset", ["entra", "google", "okta", "jumpcloud"])
@pytest.mark.parametrize("shape", ["default", "encrypted"])
async def test_sp_initiated_login_end_to_end(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, preset: str, shape: str
) -> None:
    s = await add_connection(pool, acme.id, preset, preset=preset, jit="sync")
    req_id = await sp_login(gateway, s, relay_state="/inbox")
    xml = s.response(
        in_response_to=req_id, groups=["Sales", "Engineering"], shape=None if shape == "default" else shape
    )
    resp = await post_acs(gateway, s, xml, relay_state="/inbox")
    assert resp.status == 303, await resp.text()
    location = urlsplit(resp.headers["Location"])
    assert location.netloc == "app.test" and location.path == "/sso/callback"
    query = parse_qs(location.query)
    assert query["x"] == ["1"] and query["RelayState"] == ["/inbox"]
    profile_resp = await exchange(gateway, s, query["code"][0])
    assert profile_resp.status == 200, await profile_resp.text()
    profile = await profile_resp.json()
    assert profile["tenant"] == s.tenant and profile["connection"] == preset
    assert profile["user_name"] == "alice@acme.test"
    assert profile["attributes"]["given_name"] == "Alice" and profile["attributes"]["family_name"] == "Liddell"
    assert profile["attributes"]["email"] == "alice@acme.test"
    assert sorted(g["display_name"] for g in profile["groups"]) == ["Engineering", "Sales"]
    row = await pool.fetchrow("SELECT * FROM users WHERE tenant_id = $1", acme.id)
    assert str(row["id"]) == profile["user_id"] and row["created_by"] == "jit"


async def test_code_is_single_use_short_lived_and_bound_to_the_connection(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", allow_idp_initiated=True)
    other = await add_connection(pool, acme.id, "okta", preset="okta")
    code = code_of(await post_acs(gateway, s, s.response()))
    # A known code with another connection's secret, or with a made-up one, gets the
    # answer an unknown code gets: nothing tells a code holder without the secret that
    # the code is valid (before: 401 for a known code, 400 for an unknown one).
    unknown = await exchange(gateway, s, "x" * 43)
    assert unknown.status == 400
    for bad in (other.secret, "pas_" + "A" * 40):
        wrong_secret = await exchange(gateway, s, code, secret=bad)
        assert wrong_secret.status == unknown.status
        assert await wrong_secret.json() == await unknown.json()
        assert (await wrong_secret.json())["error"] == "invalid_grant"
    no_auth = await gateway.post("/saml/token", data={"code": code})
    assert no_auth.status == 401
    assert (await exchange(gateway, s, code)).status == 200  # the failed tries did not burn it
    twice = await exchange(gateway, s, code)
    assert twice.status == 400 and (await twice.json())["error"] == "invalid_grant"

    late = code_of(await post_acs(gateway, s, s.response()))
    key = [k async for k in redis.scan_iter(match=topology.key("saml", "code", "*"))]
    assert len(key) == 1
    assert 0 < await redis.ttl(key[0]) <= 60
    await redis.pexpire(key[0], 1)  # as if the app came back after the TTL
    await asyncio.sleep(0.05)
    too_late = await exchange(gateway, s, late)
    assert too_late.status == 400 and (await too_late.json())["error"] == "invalid_grant"
    garbage = await exchange(gateway, s, "not-a-code")
    assert garbage.status == 400


# ------------------------------------------------------------------ stateful refusals


async def _assert_refused(
    resp: Any, redis: Any, topology: Any, tenant_id: uuid.UUID, reason: str, status: int = 403
) -> None:
    assert resp.status == status, (resp.status, await resp.text())
    html = await resp.text()
    assert "text/html" in resp.headers["Content-Type"] and page_is_clean(html)
    outcomes = await audit_outcomes(redis, topology, tenant_id)
    refused = [o for o in outcomes if o.result == "failed" and f"refused:{reason}" in o.notes]
    assert refused, [o.notes for o in outcomes]
    assert refused[-1].command_type == "jit.login" and refused[-1].source.kind == "saml"


async def test_replay_exact_and_rewrapped(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", allow_idp_initiated=True)
    req_id = await sp_login(gateway, s)
    xml = s.response(in_response_to=req_id)  # Entra shape: assertion signed
    assert (await post_acs(gateway, s, xml)).status == 303
    await _assert_refused(await post_acs(gateway, s, xml), redis, topology, acme.id, "replay")
    # Re-wrapped: the signed assertion lifted into a new response for a fresh request.
    fresh = await sp_login(gateway, s)
    wrapper = atk.parse(s.response(in_response_to=fresh))
    wrapper.replace(atk.assertion_of(wrapper), atk.assertion_of(atk.parse(xml)))
    await _assert_refused(await post_acs(gateway, s, atk.dump(wrapper)), redis, topology, acme.id, "replay")
    # ... or as an unsolicited response (IdP-initiated allowed here): still a replay.
    bare = atk.edit(atk.dump(wrapper), "/samlp:Response", attr="InResponseTo", remove=True)
    await _assert_refused(await post_acs(gateway, s, bare), redis, topology, acme.id, "replay")


async def test_unknown_and_foreign_in_response_to(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra")
    other = await add_connection(pool, acme.id, "okta", preset="okta")
    await _assert_refused(
        await post_acs(gateway, s, s.response(in_response_to="id-never-issued")),
        redis,
        topology,
        acme.id,
        "in_response_to",
    )
    other_req = await sp_login(gateway, other)  # a request of another connection
    await _assert_refused(
        await post_acs(gateway, s, s.response(in_response_to=other_req)), redis, topology, acme.id, "in_response_to"
    )


async def test_idp_initiated_only_where_allowed(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    closed = await add_connection(pool, acme.id, "entra")
    await _assert_refused(await post_acs(gateway, closed, closed.response()), redis, topology, acme.id, "idp_initiated")
    open_ = await add_connection(pool, acme.id, "okta", preset="okta", allow_idp_initiated=True)
    assert (await post_acs(gateway, open_, open_.response())).status == 303


async def test_refusals_through_http_are_pages_and_audit_records(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", allow_idp_initiated=True)
    unsigned = s.response(sign_response=False, sign_assertion=False)
    await _assert_refused(await post_acs(gateway, s, unsigned), redis, topology, acme.id, "signature")
    await _assert_refused(
        await post_acs(gateway, s, atk.xsw3(s.response())), redis, topology, acme.id, "assertions", 400
    )
    await _assert_refused(
        await post_acs(gateway, s, atk.with_dtd(s.response(), '<!DOCTYPE r [<!ENTITY a "b">]>')),
        redis,
        topology,
        acme.id,
        "dtd",
        400,
    )
    resp = await gateway.post(f"/saml/{s.tenant}/entra/acs", data={"nothing": "here"})
    await _assert_refused(resp, redis, topology, acme.id, "malformed", 400)
    huge = await gateway.post(f"/saml/{s.tenant}/entra/acs", data={"SAMLResponse": "A" * 600_000})
    assert huge.status == 413 and page_is_clean(await huge.text())


# ------------------------------------------------------------------ JIT


async def _login(gateway: Any, s: Any, **kw: Any) -> Any:
    req_id = await sp_login(gateway, s)
    return await post_acs(gateway, s, s.response(in_response_to=req_id, **kw))


async def _profile(gateway: Any, s: Any, resp: Any) -> dict[str, Any]:
    got = await exchange(gateway, s, code_of(resp))
    assert got.status == 200
    return dict(await got.json())


async def test_jit_create_only_leaves_an_existing_user_unchanged(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", jit="create")
    first = await _profile(gateway, s, await _login(gateway, s, groups=["Sales"]))
    assert first["attributes"]["given_name"] == "Alice"
    renamed = {**__import__("saml_idp").entra_attributes(["Support"]), ENTRA + "givenname": ["Alicia"]}
    second = await _profile(gateway, s, await _login(gateway, s, attributes=renamed))
    assert second["user_id"] == first["user_id"]
    assert second["attributes"]["given_name"] == "Alice"  # Splashtop: create-only
    assert [g["display_name"] for g in second["groups"]] == ["Sales"]
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 1


async def test_jit_sync_updates_fields_and_only_jit_memberships(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    from saml_idp import entra_attributes

    s = await add_connection(
        pool,
        acme.id,
        "entra",
        jit="sync",
        mapping={"department": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/department"},
    )
    attrs = {**entra_attributes(["Sales", "Beta"]), ENTRA + "department": ["R&D"]}
    first = await _profile(gateway, s, await _login(gateway, s, attributes=attrs))
    assert first["attributes"]["custom"] == {"department": "R&D"}
    user_id = uuid.UUID(first["user_id"])
    # A SCIM-managed membership of the same user, in a group JIT also claims.
    scim_group = uuid.uuid4()
    await pool.execute(
        "INSERT INTO groups (id, tenant_id, display_name) VALUES ($1, $2, 'Finance')", scim_group, acme.id
    )
    await pool.execute(
        "INSERT INTO memberships (tenant_id, group_id, user_id, source) VALUES ($1, $2, $3, 'scim')",
        acme.id,
        scim_group,
        user_id,
    )

    attrs = {
        **entra_attributes(["Sales", "Engineering"]),
        ENTRA + "givenname": ["Alicia"],
        ENTRA + "department": ["Ops"],
    }
    second = await _profile(gateway, s, await _login(gateway, s, attributes=attrs))
    assert second["user_id"] == first["user_id"]
    assert second["attributes"]["given_name"] == "Alicia"
    assert second["attributes"]["custom"] == {"department": "Ops"}
    rows = await pool.fetch(
        """SELECT g.display_name, m.source FROM memberships m JOIN groups g ON g.id = m.group_id
           WHERE m.user_id = $1 ORDER BY 1, 2""",
        user_id,
    )
    assert [(r["display_name"], r["source"]) for r in rows] == [
        ("Engineering", "jit"),
        ("Finance", "scim"),
        ("Sales", "jit"),
    ]  # Beta removed, Finance kept

    # No group claim at all, from a connection that sent one before: the IdP omits the
    # attribute when the user has no groups (issue 13 §3), so JIT's memberships go.
    no_groups = {k: v for k, v in attrs.items() if "groups" not in k}
    await _profile(gateway, s, await _login(gateway, s, attributes=no_groups))
    rows = await pool.fetch("SELECT source FROM memberships WHERE user_id = $1", user_id)
    assert [r["source"] for r in rows] == ["scim"]
    # Set to `--groups-absent-means unchanged`, an absent claim leaves memberships as they are.
    await _profile(gateway, s, await _login(gateway, s, attributes=attrs))
    await pool.execute("UPDATE sso_connections SET groups_absent = 'unchanged' WHERE tenant_id = $1", acme.id)
    await _profile(gateway, s, await _login(gateway, s, attributes=no_groups))
    assert await pool.fetchval("SELECT count(*) FROM memberships WHERE user_id = $1", user_id) == 3


async def test_scim_user_is_matched_not_duplicated(gateway: Any, pool: Any, acme: Any, provisioner: Any) -> None:
    scim_id = uuid.uuid4()
    await pool.execute(
        """INSERT INTO users (id, tenant_id, user_name, email, given_name, created_by)
           VALUES ($1, $2, 'Alice.L', 'ALICE@acme.test', 'Alice', 'scim')""",
        scim_id,
        acme.id,
    )
    s = await add_connection(pool, acme.id, "entra", jit="sync")
    profile = await _profile(gateway, s, await _login(gateway, s, groups=["Sales"]))
    assert profile["user_id"] == str(scim_id)
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 1


async def test_jit_off_requires_an_existing_user(gateway: Any, pool: Any, acme: Any, provisioner: Any) -> None:
    s = await add_connection(pool, acme.id, "entra", jit="off")
    resp = await _login(gateway, s)
    assert resp.status == 403 and page_is_clean(await resp.text())
    assert "no account" in (await resp.text())
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 0
    existing = uuid.uuid4()
    await pool.execute(
        """INSERT INTO users (id, tenant_id, user_name, email, given_name, created_by)
                          VALUES ($1, $2, 'alice@acme.test', 'alice@acme.test', 'Ally', 'scim')""",
        existing,
        acme.id,
    )
    profile = await _profile(gateway, s, await _login(gateway, s))
    assert profile["user_id"] == str(existing) and profile["attributes"]["given_name"] == "Ally"


async def test_required_attribute_missing_names_the_claim(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    from saml_idp import entra_attributes

    s = await add_connection(pool, acme.id, "entra", required=("given_name", "family_name"))
    attrs = {k: v for k, v in entra_attributes().items() if not k.endswith("/surname")}
    resp = await _login(gateway, s, attributes=attrs)
    assert resp.status == 400
    assert ENTRA + "surname" in await resp.text()
    outcomes = await audit_outcomes(redis, topology, acme.id)
    assert outcomes[-1].error is not None and outcomes[-1].error.code == "invalid_value"
    assert outcomes[-1].error.field == "family_name" and outcomes[-1].user_name == "alice@acme.test"


async def test_entra_group_overage_is_recorded(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    from saml_idp import entra_attributes

    s = await add_connection(pool, acme.id, "entra", jit="sync")
    profile = await _profile(gateway, s, await _login(gateway, s, attributes=entra_attributes(overage=True)))
    assert profile["groups_overage"] is True

    async def noted() -> Any:
        return [o for o in await audit_outcomes(redis, topology, acme.id) if "groups_overage" in o.notes]

    from tests.conftest import eventually

    assert await eventually(noted)


async def test_scim_and_jit_on_the_same_user(gateway: Any, pool: Any, acme: Any, provisioner: Any) -> None:
    """SCIM (through the SCIM gateway) creates alice and puts her in Finance; JIT sync
    logins then match her by email, add and remove only their own memberships."""
    scim_app = pytest.importorskip("scim_gateway.app")
    from aiohttp.test_utils import TestClient, TestServer

    from provisio_lib.settings import load_settings
    from saml_idp import entra_attributes
    from scim_gateway.settings import ScimSettings

    scim = TestClient(TestServer(scim_app.create_app(load_settings(ScimSettings))))
    await scim.start_server()
    try:
        auth = {"Authorization": f"Bearer {acme.token}", "Content-Type": "application/scim+json"}
        made = await scim.post(
            "/scim/v2/Users",
            headers=auth,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "Alice.Liddell",
                "name": {"givenName": "Alice", "familyName": "Liddell"},
                "emails": [{"value": "ALICE@acme.test", "primary": True, "type": "work"}],
            },
        )
        assert made.status == 201, await made.text()
        user_id = (await made.json())["id"]
        group = await scim.post(
            "/scim/v2/Groups",
            headers=auth,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Finance",
                "members": [{"value": user_id}],
            },
        )
        assert group.status == 201, await group.text()
    finally:
        await scim.close()

    s = await add_connection(pool, acme.id, "entra", jit="sync")
    first = await _profile(gateway, s, await _login(gateway, s, attributes=entra_attributes(["Finance", "Sales"])))
    assert first["user_id"] == user_id and first["user_name"] == "Alice.Liddell"

    async def memberships() -> list[tuple[str, str]]:
        rows = await pool.fetch(
            """SELECT g.display_name, m.source FROM memberships m JOIN groups g ON g.id = m.group_id
               WHERE m.user_id = $1 ORDER BY 1, 2""",
            uuid.UUID(user_id),
        )
        return [(r["display_name"], r["source"]) for r in rows]

    assert await memberships() == [("Finance", "jit"), ("Finance", "scim"), ("Sales", "jit")]
    await _profile(gateway, s, await _login(gateway, s, attributes=entra_attributes(["Sales"])))
    assert await memberships() == [("Finance", "scim"), ("Sales", "jit")]  # JIT took back only its own
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 1


async def test_verification_in_worker_processes(
    service_env: dict[str, str], topology: Any, pool: Any, acme: Any, provisioner: Any, redis: Any
) -> None:
    client = await start_gateway(saml_verify_processes=1)
    try:
        s = await add_connection(pool, acme.id, "okta", preset="okta", allow_idp_initiated=True)
        xml = s.response(groups=["Sales"])
        profile = await _profile(client, s, await post_acs(client, s, xml))
        assert profile["user_name"] == "alice@acme.test" and profile["groups"][0]["display_name"] == "Sales"
        await _assert_refused(await post_acs(client, s, xml), redis, topology, acme.id, "replay")
        unsigned = s.response(sign_response=False, sign_assertion=False)
        await _assert_refused(await post_acs(client, s, unsigned), redis, topology, acme.id, "signature")
    finally:
        await client.close()


async def test_unusable_value_is_a_clear_refusal(gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any) -> None:
    s = await add_connection(pool, acme.id, "okta", preset="okta", allow_idp_initiated=True)
    resp = await post_acs(gateway, s, s.response(name_id="a" * 600 + "@acme.test"))
    assert resp.status == 400 and "user_name" in await resp.text() and page_is_clean(await resp.text())
    outcomes = await audit_outcomes(redis, topology, acme.id)
    assert outcomes[-1].error is not None and outcomes[-1].error.code == "invalid_value"


async def test_login_with_an_idp_that_takes_post_only(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    from saml2 import BINDING_HTTP_POST

    from saml_idp import TestIdP

    idp = TestIdP("https://idp.test/post-only/", sso_bindings=(BINDING_HTTP_POST,))
    s = await add_connection(pool, acme.id, "generic", preset="generic", idp=idp)
    resp = await gateway.get(f"/saml/{s.tenant}/generic/login", params={"RelayState": "r1"}, allow_redirects=False)
    assert resp.status == 200
    html = await resp.text()
    assert f'action="{idp.sso_url}"' in html and 'name="SAMLRequest"' in html and 'value="r1"' in html
    keys = [k async for k in redis.scan_iter(match=topology.key("saml", "req", "*"))]
    assert len(keys) == 1


async def test_verification_runs_off_the_event_loop(gateway: Any, pool: Any, acme: Any) -> None:
    import threading

    from saml_gateway.app import ENGINE

    engine = gateway.server.app[ENGINE]
    seen: list[str] = []
    original = engine.verify_response

    def spy(conn: Any, saml_response: str) -> Any:
        seen.append(threading.current_thread().name)
        return original(conn, saml_response)

    engine.verify_response = spy
    s = await add_connection(pool, acme.id, "entra")
    await asyncio.gather(
        *(post_acs(gateway, s, s.response(sign_response=False, sign_assertion=False)) for _ in range(4))
    )
    assert len(seen) == 4 and all(name.startswith("saml-verify") for name in seen), seen


@pytest.mark.parametrize("backend", ["xmlsec", "xmlsec1"])
async def test_encrypted_logins_as_entra_and_okta_send_them(
    service_env: dict[str, str], topology: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, backend: str
) -> None:
    """Entra ID (assertion signed, AES-256-CBC, RSA-OAEP with its SHA-1 DigestMethod) and
    Okta (response and assertion signed; AES-GCM among its options) through the real
    gateway on either backend: signed in. The refusals name what is refused."""
    client = await start_gateway(saml_crypto_backend=backend)
    try:
        entra = await add_connection(pool, acme.id, "entra", preset="entra")
        # Okta in a tenant of its own: the user JIT made through Entra signs in only
        # through Entra (its ssoName; issue 13 §1).
        globex = await make_tenant(pool, name=f"globex-{uuid.uuid4().hex[:6]}")
        okta = await add_connection(pool, globex.id, "okta", preset="okta")
        for s, encryption in ((entra, "entra"), (okta, "okta"), (okta, "okta-aes256-gcm")):
            xml = s.response(
                in_response_to=await sp_login(client, s), shape="encrypted", encryption=encryption, groups=["Sales"]
            )
            assert "rsa-oaep-mgf1p" in xml and 'DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"' in xml
            profile = await _profile(client, s, await post_acs(client, s, xml))
            assert profile["user_name"] == "alice@acme.test" and profile["groups"][0]["display_name"] == "Sales"

        from saml_idp import ENCRYPTIONS, encrypt_assertion, sign_xml

        # RSA-SHA1 inside the EncryptedAssertion (accepted before: never looked at).
        plain = entra.response(in_response_to=await sp_login(client, entra), sign_assertion=False)
        sha1 = encrypt_assertion(
            sign_xml(
                plain,
                entra.idp.keys,
                sign_method="http://www.w3.org/2000/09/xmldsig#rsa-sha1",
                digest_method="http://www.w3.org/2000/09/xmldsig#sha1",
            ),
            entra.sp_cert_b64,
            ENCRYPTIONS["entra"],
        )
        resp = await post_acs(client, entra, sha1)
        await _assert_refused(resp, redis, topology, acme.id, "weak_signature")
        assert "RSA-SHA1" in await resp.text()
        rsa15 = okta.response(in_response_to=await sp_login(client, okta), shape="encrypted", encryption="okta-rsa-1_5")
        resp = await post_acs(client, okta, rsa15)
        await _assert_refused(resp, redis, topology, globex.id, "weak_encryption")
        assert "RSA-1_5" in await resp.text() and "RSA-OAEP" in await resp.text()
    finally:
        await client.close()


async def test_wrong_audience_page_names_expected_and_received(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    """Entra's "Identifier mismatch": the page says `audience`'s documented message with
    both values (before: "The SAML response was refused (Exception)")."""
    s = await add_connection(pool, acme.id, "entra")
    xml = atk.sign(
        atk.edit(
            s.response(in_response_to=await sp_login(gateway, s), sign_assertion=False),
            "//saml:Audience",
            value="spn:00000000-1111-2222-3333-444444444444",
        ),
        s.idp.keys,
    )
    resp = await post_acs(gateway, s, xml)
    await _assert_refused(resp, redis, topology, acme.id, "audience")
    html = await resp.text()
    assert "spn:00000000-1111-2222-3333-444444444444" in html and s.urls.entity_id in html
    assert "Exception" not in html


async def test_plain_pysaml2_backends_selectable(
    service_env: dict[str, str], topology: Any, pool: Any, acme: Any, provisioner: Any, redis: Any
) -> None:
    """PROVISIO_SAML_CRYPTO_BACKEND=xmlsec1 and PROVISIO_SAML_SCHEMA_VALIDATOR=xmlschema:
    pysaml2's own verification, same results over HTTP."""
    client = await start_gateway(saml_crypto_backend="xmlsec1", saml_schema_validator="xmlschema")
    try:
        s = await add_connection(pool, acme.id, "jumpcloud", preset="jumpcloud")
        profile = await _profile(client, s, await _login(client, s, groups=["Ops"], shape="both"))
        assert profile["attributes"]["family_name"] == "Liddell" and profile["groups"][0]["display_name"] == "Ops"
        wrapped = atk.xsw1(s.response(in_response_to=await sp_login(client, s), shape="response"))
        await _assert_refused(await post_acs(client, s, wrapped), redis, topology, acme.id, "assertions", 400)
        tampered = atk.tamper_name_id(s.response(in_response_to=await sp_login(client, s)))
        await _assert_refused(await post_acs(client, s, tampered), redis, topology, acme.id, "signature")
    finally:
        await client.close()
