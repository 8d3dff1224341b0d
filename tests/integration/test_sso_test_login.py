"""Test logins (issue 14) through the real SAML gateway, provisioner, Postgres and Redis:
what was received and what a real login would do, nothing provisioned; refusals with
their reason; disabled connections; enabling only after a passed test of the current
settings; tenant isolation; no open redirect."""

from __future__ import annotations

import base64
import os
import sys
import uuid
import zlib
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from defusedxml.ElementTree import fromstring

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from provisio_lib import db
from provisio_lib.admin import sso_test
from provisio_lib.admin.errors import AdminError
from saml_idp import ENTRA, TestIdP, entra_attributes
from saml_setup import PUBLIC, add_connection, audit_outcomes, page_is_clean, post_acs, sp_login, start_gateway
from tests.conftest import make_tenant

pytestmark = pytest.mark.integration

CONSOLE = "http://console.test"
URLS = sso_test.TestLoginSettings(saml_public_url=PUBLIC, console_public_url=CONSOLE)
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"


@pytest.fixture
async def gateway(service_env: dict[str, str], topology: Any) -> Any:
    client = await start_gateway()
    yield client
    await client.close()


@pytest.fixture
async def acme(pool: Any) -> Any:
    return await make_tenant(pool, name=f"acme-{uuid.uuid4().hex[:6]}")


async def _start(pool: Any, tenant_id: uuid.UUID, name: str, return_to: str = "/setup/abc/sso") -> sso_test.TestStart:
    async with pool.acquire() as c:
        return await sso_test.start_test(
            c, tenant_id, name, return_to=return_to, actor="admin@acme.test", settings=URLS
        )


async def _round_trip_start(gateway: Any, start: sso_test.TestStart) -> tuple[str, str]:
    """The browser follows the test's login URL: (AuthnRequest id, RelayState)."""
    parts = urlsplit(start.login_url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC
    resp = await gateway.get(f"{parts.path}?{parts.query}", allow_redirects=False)
    assert resp.status == 302, await resp.text()
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)
    return str(fromstring(xml).get("ID")), query["RelayState"][0]


async def _test_login(gateway: Any, pool: Any, s: Any, **response: Any) -> sso_test.TestResult:
    start = await _start(pool, s.tenant_id, s.name)
    req_id, relay = await _round_trip_start(gateway, start)
    resp = await post_acs(gateway, s, s.response(in_response_to=req_id, **response), relay_state=relay)
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == f"{CONSOLE}/setup/abc/sso?test={start.test_id}"
    async with pool.acquire() as c:
        result = await sso_test.get_result(c, s.tenant_id, start.test_id)
    assert result is not None and result.status != "pending"
    return result


async def _counts(pool: Any, tenant_id: uuid.UUID) -> dict[str, int]:
    out = {}
    for table in ("users", "groups", "memberships", "user_identities", "events", "inbox"):
        out[table] = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant_id)
    return out


async def _no_codes(redis: Any, topology: Any) -> bool:
    return not [k async for k in redis.scan_iter(match=topology.key("saml", "code", "*"))]


# ------------------------------------------------------------------ passed tests


async def test_passed_test_shows_what_was_received_and_a_create_provisioning_nothing(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", jit="sync")
    before = await _counts(pool, acme.id)
    result = await _test_login(gateway, pool, s, groups=["Sales", "Engineering"])
    assert result.status == "passed", result
    assert result.error is None and result.completed_at is not None
    assert result.connection_name == "entra"
    r = result.received
    assert r is not None
    assert r.issuer == s.idp.entity_id
    assert r.name_id == "alice@acme.test" and r.name_id_format and r.name_id_format.endswith("emailAddress")
    assert r.attributes[ENTRA + "givenname"] == ["Alice"]
    assert sorted(r.groups) == ["Engineering", "Sales"]
    assert RSA_SHA256 in r.signature_algorithms and r.encryption_algorithms == []
    assert [c.name for c in result.checks][-1] == "preview" and all(c.ok for c in result.checks)
    assert {"signature", "audience", "replay", "request", "attributes"} <= {c.name for c in result.checks}
    p = result.preview
    assert p is not None and p.action == "create"
    assert p.changes["user_name"] == {"before": None, "after": "alice@acme.test"}
    assert p.changes["given_name"] == {"before": None, "after": "Alice"}
    assert sorted(p.groups_added) == ["Engineering", "Sales"] and p.groups_removed == []
    assert p.user is not None and p.user["user_name"] == "alice@acme.test" and p.refusals == []
    # Nothing provisioned: no user, group, membership, link, event, inbox row, code or
    # audit-stream outcome; the connection has not even noted a groups claim.
    assert await _counts(pool, acme.id) == before
    assert await _no_codes(redis, topology)
    assert await audit_outcomes(redis, topology, acme.id) == []
    assert not await pool.fetchval("SELECT groups_claim_seen FROM sso_connections WHERE tenant_id = $1", acme.id)
    # The test itself is in the audit trail (who ran it), as a no-op.
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE tenant_id = $1 AND operation = 'sso.test_login'", acme.id)
    assert row["source_label"] == "admin@acme.test" and row["result"] == "noop"


async def test_passed_test_of_an_existing_user_shows_field_and_group_changes(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", jit="sync")
    # A real login first: alice exists, in Sales and Beta (JIT).
    req_id = await sp_login(gateway, s)
    real = await post_acs(gateway, s, s.response(in_response_to=req_id, groups=["Sales", "Beta"]))
    assert real.status == 303, await real.text()
    before = await _counts(pool, acme.id)
    user = await pool.fetchrow("SELECT * FROM users WHERE tenant_id = $1", acme.id)
    audited = len(await audit_outcomes(redis, topology, acme.id))

    attrs = {**entra_attributes(["Sales", "Engineering"]), ENTRA + "givenname": ["Alicia"]}
    result = await _test_login(gateway, pool, s, attributes=attrs, shape="encrypted")
    assert result.status == "passed", result
    assert result.received is not None and result.received.encryption_algorithms  # AES-GCM / RSA-OAEP
    assert RSA_SHA256 in result.received.signature_algorithms  # the signature inside the encrypted assertion
    p = result.preview
    assert p is not None and p.action == "update"
    assert p.changes == {"given_name": {"before": "Alice", "after": "Alicia"}}
    assert p.groups_added == ["Engineering"] and p.groups_removed == ["Beta"]
    assert p.user is not None and p.user["id"] == str(user["id"])
    # Unchanged in fact.
    assert await _counts(pool, acme.id) == before
    after = await pool.fetchrow("SELECT * FROM users WHERE tenant_id = $1", acme.id)
    assert after["given_name"] == "Alice" and after["version"] == user["version"]
    groups = await pool.fetch(
        "SELECT g.display_name FROM memberships m JOIN groups g ON g.id = m.group_id WHERE m.user_id = $1 ORDER BY 1",
        user["id"],
    )
    assert [g["display_name"] for g in groups] == ["Beta", "Sales"]
    assert len(await audit_outcomes(redis, topology, acme.id)) == audited

    # Same claims as stored: a match, nothing would change.
    same = await _test_login(gateway, pool, s, groups=["Sales", "Beta"])
    assert same.preview is not None and same.preview.action == "match"
    assert same.preview.changes == {} and same.preview.groups_added == same.preview.groups_removed == []


async def test_a_login_the_provisioner_would_refuse_is_shown_as_such(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    s = await add_connection(pool, acme.id, "okta", preset="okta", jit="off")
    result = await _test_login(gateway, pool, s)
    # The SAML set-up is right (the test passes); a real login of this user would be refused.
    assert result.status == "passed"
    assert result.preview is not None and result.preview.action == "refuse"
    assert "JIT is off" in result.preview.refusals[0]


# ------------------------------------------------------------------ failed tests


@pytest.mark.parametrize(
    ("case", "check", "words"),
    [
        ("wrong_certificate", "signature", "not correctly signed"),
        ("wrong_audience", "audience", "Identifier"),
        ("weak_algorithm", "algorithms", "RSA-SHA1"),
        ("missing_claim", "attributes", "surname"),
    ],
)
async def test_failed_tests_record_the_check_and_its_reason(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any, case: str, check: str, words: str
) -> None:
    s = await add_connection(pool, acme.id, "entra", required=("family_name",))
    start = await _start(pool, acme.id, "entra")
    req_id, relay = await _round_trip_start(gateway, start)
    kw: dict[str, Any] = {"in_response_to": req_id, "groups": ["Sales", "Engineering"]}
    if case == "wrong_certificate":
        s.idp = TestIdP(s.idp.entity_id)  # same IdP name, another signing key
    elif case == "wrong_audience":
        kw["sp_entity_id"] = "https://other-app.test/saml"
    elif case == "weak_algorithm":
        kw.update(sign_alg=RSA_SHA1, digest_alg=SHA1)
    elif case == "missing_claim":
        kw["attributes"] = {k: v for k, v in entra_attributes().items() if "surname" not in k}
        del kw["groups"]
    if "sp_entity_id" in kw:
        xml = s.idp.response(
            sp_entity_id=kw["sp_entity_id"],
            acs_url=s.urls.acs,
            name_id="alice@acme.test",
            attributes=entra_attributes(["Sales", "Engineering"]),
            in_response_to=req_id,
        )
    else:
        xml = s.response(**kw)
    resp = await post_acs(gateway, s, xml, relay_state=relay)
    assert resp.status == 303, await resp.text()
    async with pool.acquire() as c:
        result = await sso_test.get_result(c, acme.id, start.test_id)
    assert result is not None and result.status == "failed"
    failed = [c for c in result.checks if not c.ok]
    assert [c.name for c in failed] == [check], result.checks
    assert failed[0].reason and words in failed[0].reason
    assert result.error == failed[0].reason and result.preview is None
    assert result.checks[0].name == "response" and result.checks[0].ok
    # What the IdP sent is shown even though it was refused (read without trusting it).
    assert result.received is not None and result.received.issuer == s.idp.entity_id
    assert result.received.name_id == "alice@acme.test"
    if case != "missing_claim":
        assert result.received.groups == ["Sales", "Engineering"]
    if case == "weak_algorithm":
        assert RSA_SHA1 in result.received.signature_algorithms
    # A refused test is no refused login: nothing on the audit stream.
    assert await audit_outcomes(redis, topology, acme.id) == []
    # The round trip is single-use: the same response again is told to start anew.
    again = await post_acs(gateway, s, xml, relay_state=relay)
    assert again.status == 410 and page_is_clean(await again.text())


async def test_test_and_real_requests_cannot_stand_in_for_each_other(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra")
    # A real login's request answered into a test: the test fails on the request check.
    start = await _start(pool, acme.id, "entra")
    _, relay = await _round_trip_start(gateway, start)
    real_req = await sp_login(gateway, s)
    resp = await post_acs(gateway, s, s.response(in_response_to=real_req), relay_state=relay)
    assert resp.status == 303
    async with pool.acquire() as c:
        result = await sso_test.get_result(c, acme.id, start.test_id)
    assert result is not None and result.status == "failed" and result.checks[-1].name == "request"
    # A test's request answered as a real login: refused, no user, no code.
    start = await _start(pool, acme.id, "entra")
    test_req, _ = await _round_trip_start(gateway, start)
    resp = await post_acs(gateway, s, s.response(in_response_to=test_req))
    assert resp.status == 403 and "request" in await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 0
    assert await _no_codes(redis, topology)
    # A real login may not pose as a test by its RelayState.
    fake = await gateway.get(
        f"/saml/{s.tenant}/entra/login", params={"RelayState": f"provisio-test:{start.test_id}"}, allow_redirects=False
    )
    assert fake.status == 400


async def test_unknown_finished_and_foreign_tests_are_refused_at_the_gateway(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra")
    other = await add_connection(pool, acme.id, "okta", preset="okta")
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        resp = await gateway.get(f"/saml/{s.tenant}/entra/login", params={"test": bad}, allow_redirects=False)
        assert resp.status in (400, 404) and page_is_clean(await resp.text())
    start = await _start(pool, acme.id, "okta")  # a test of another connection
    resp = await gateway.get(f"/saml/{s.tenant}/entra/login", params={"test": str(start.test_id)})
    assert resp.status == 404
    await _test_login(gateway, pool, other)
    done = await pool.fetchval("SELECT id FROM sso_test_logins WHERE status <> 'pending'")
    resp = await gateway.get(f"/saml/{s.tenant}/okta/login", params={"test": str(done)}, allow_redirects=False)
    assert resp.status == 409


# ------------------------------------------------------------------ enabled / disabled


async def test_disabled_connection_refuses_real_logins_and_allows_tests_enable_needs_a_fresh_pass(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", allow_idp_initiated=True)
    async with pool.acquire() as c:
        await sso_test.disable(c, acme.id, "entra", actor="admin@acme.test")
    # Real logins: refused with a readable page, at the login URL and at the ACS.
    resp = await gateway.get(f"/saml/{s.tenant}/entra/login", allow_redirects=False)
    assert resp.status == 403 and "not enabled yet" in await resp.text()
    resp = await post_acs(gateway, s, s.response())
    text = await resp.text()
    assert resp.status == 403 and "not enabled yet" in text and page_is_clean(text)
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 0

    async with pool.acquire() as c:
        with pytest.raises(AdminError, match="no successful test login"):
            await sso_test.enable(c, acme.id, "entra", actor="admin@acme.test")
    failed = await _test_login(gateway, pool, s, sign_assertion=False, sign_response=False)
    assert failed.status == "failed"
    async with pool.acquire() as c:
        with pytest.raises(AdminError, match="no successful test login"):
            await sso_test.enable(c, acme.id, "entra", actor="admin@acme.test")
    # A test works on the disabled connection; then the connection may be enabled...
    assert (await _test_login(gateway, pool, s)).status == "passed"
    # ... unless its settings changed after the test.
    await pool.execute(
        "UPDATE sso_connections SET required_attributes = '{email}', updated_at = now() WHERE tenant_id = $1", acme.id
    )
    async with pool.acquire() as c:
        with pytest.raises(AdminError, match="changed after its last successful test"):
            await sso_test.enable(c, acme.id, "entra", actor="admin@acme.test")
    # Switching a connection off and on, or a new app secret, is no change of what a test checks.
    assert (await _test_login(gateway, pool, s)).status == "passed"
    await pool.execute("UPDATE sso_connections SET app_secret_hash = NULL WHERE tenant_id = $1", acme.id)
    async with pool.acquire() as c:
        await sso_test.enable(c, acme.id, "entra", actor="admin@acme.test")
    # Enabled: real logins work again.
    req_id = await sp_login(gateway, s)
    assert (await post_acs(gateway, s, s.response(in_response_to=req_id))).status == 303
    rows = await pool.fetch(
        "SELECT operation, source_label, changes FROM audit_log WHERE tenant_id = $1 AND operation LIKE 'sso.%able'"
        " ORDER BY completed_at",
        acme.id,
    )
    assert [(r["operation"], r["source_label"]) for r in rows] == [
        ("sso.disable", "admin@acme.test"),
        ("sso.enable", "admin@acme.test"),
    ]
    assert rows[1]["changes"] == {"enabled": {"before": False, "after": True}}


async def test_a_test_against_stale_settings_does_not_count(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    """The gateway records the settings version it verified with: a test run on settings
    since replaced (e.g. within the gateway's connection cache) cannot enable the new ones."""
    s = await add_connection(pool, acme.id, "entra")
    await pool.execute("UPDATE sso_connections SET enabled = false WHERE tenant_id = $1", acme.id)
    result = await _test_login(gateway, pool, s)
    assert result.status == "passed"
    await pool.execute(
        "UPDATE sso_test_logins SET tested_changed_at = tested_changed_at - interval '1 second' WHERE id = $1",
        result.test_id,
    )
    async with pool.acquire() as c:
        with pytest.raises(AdminError):
            await sso_test.enable(c, acme.id, "entra", actor="admin@acme.test")
        await sso_test.enable(c, acme.id, "entra", actor="cli", force=True)
        assert await c.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", acme.id)
        note = await c.fetchval("SELECT notes FROM audit_log WHERE operation = 'sso.enable'")
    assert "forced without a passed test login" in note


# ------------------------------------------------------------------ isolation and redirects


async def test_results_are_isolated_per_tenant_and_return_to_stays_on_the_console(
    pool: Any, acme: Any, database_url: str
) -> None:
    other = await make_tenant(pool, name=f"other-{uuid.uuid4().hex[:6]}")
    await add_connection(pool, acme.id, "entra")
    start = await _start(pool, acme.id, "entra")
    conn = await db.connect(database_url)
    try:
        assert (await sso_test.get_result(conn, acme.id, start.test_id)) is not None
        assert await sso_test.get_result(conn, other.id, start.test_id) is None
        assert await sso_test.get_result(conn, acme.id, uuid.uuid4()) is None
        with pytest.raises(AdminError, match="no SSO connection"):
            await sso_test.start_test(conn, other.id, "entra", return_to="/setup", actor="x", settings=URLS)
        with pytest.raises(AdminError, match="no SSO connection"):
            await sso_test.enable(conn, other.id, "entra", actor="x")
        for bad in (
            "https://evil.test/setup",
            "//evil.test/setup",
            "/\\evil.test",
            "http://console.test@evil.test/",
            "https://console.test/setup",  # another scheme
            "javascript:alert(1)",
            "/setup\n/x",
        ):
            with pytest.raises(AdminError, match="return_to"):
                await sso_test.start_test(conn, acme.id, "entra", return_to=bad, actor="x", settings=URLS)
        ok = await sso_test.start_test(
            conn, acme.id, "entra", return_to=f"{CONSOLE}/setup/t0k/sso?step=test", actor="x", settings=URLS
        )
        assert await conn.fetchval("SELECT return_to FROM sso_test_logins WHERE id = $1", ok.test_id) == (
            f"{CONSOLE}/setup/t0k/sso?step=test"
        )
    finally:
        await conn.close()


# ------------------------------------------------------------------ the provisioner's dry run


async def test_dry_runs_are_never_part_of_a_real_batch(
    pool: Any, acme: Any, redis: Any, topology: Any, service_env: Any
) -> None:
    """A batch holding real commands and dry runs: the real ones are applied and announced
    as usual; each dry run answers its gateway only (no inbox row, no event, nothing on
    the audit stream), even for a login that would create a user."""
    from provisio_lib.contract import Command, CreateUser, JitLogin, Source, UserData, encode
    from provisio_lib.outcomes import entry_outcomes
    from provisio_lib.topology import DATA_FIELD
    from tests.conftest import eventually, running_provisioner

    s = await add_connection(pool, acme.id, "entra", jit="sync")
    conn_id = await pool.fetchval("SELECT id FROM sso_connections WHERE tenant_id = $1", acme.id)
    replies = topology.key("test", "replies")
    saml = Source(kind="saml", id=str(conn_id), label="entra")
    scim = Source(kind="scim", id="t", label="test")

    def user(name: str) -> Command:
        return Command(
            type="user.create",
            tenant_id=acme.id,
            source=scim,
            correlation_id=name,
            payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name=name)),
        )

    dry = Command(
        type="jit.login",
        tenant_id=acme.id,
        source=saml,
        correlation_id="dry",
        reply_to=replies,
        payload=JitLogin(
            connection_id=conn_id,
            connection_name=s.name,
            mode="sync",
            name_id="carol@acme.test",
            user_name="carol@acme.test",
            given_name="Carol",
            groups=("Sales",),
            dry_run=True,
        ),
    )
    # Queued before the provisioner starts, so its first read takes them as one batch.
    stream = topology.command_stream_for(acme.id)
    for cmd in (user("ann"), dry, user("bob")):
        await redis.xadd(stream, {DATA_FIELD: encode(cmd)})
    async with running_provisioner() as app:

        async def replied() -> list[Any]:
            out = []
            for _id, fields in await redis.xrange(replies):
                out.extend(entry_outcomes(fields))
            return out

        [answer] = await eventually(replied)
        await eventually(lambda: _count(pool, "SELECT count(*) FROM users WHERE tenant_id = $1", acme.id, 2))
        # One batch: the dry run taken out, the two creates applied together in one statement.
        assert app.context.get("provisioner").paths == {"one_statement": 1, "one_transaction": 0, "careful": 0}
    assert answer.event_id == dry.event_id and answer.ok and "created" in answer.notes
    assert answer.changes["given_name"].after == "Carol" and answer.changes["groups.jit"].after == ["Sales"]
    names = {r["user_name"] for r in await pool.fetch("SELECT user_name FROM users WHERE tenant_id = $1", acme.id)}
    assert names == {"ann", "bob"}
    assert await pool.fetchval("SELECT count(*) FROM groups WHERE tenant_id = $1", acme.id) == 0
    assert not await pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", dry.event_id)
    events = await pool.fetch("SELECT type FROM events WHERE tenant_id = $1", acme.id)
    assert sorted(e["type"] for e in events) == ["user.created", "user.created"]
    announced = await audit_outcomes(redis, topology, acme.id)
    assert len(announced) == 2 and dry.event_id not in {o.event_id for o in announced}


async def _count(pool: Any, sql: str, arg: Any, expected: int) -> bool:
    return bool(await pool.fetchval(sql, arg) == expected)
