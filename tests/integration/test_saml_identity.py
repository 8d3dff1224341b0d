"""JIT identity linking and group claims end to end (issue 13 §1-§3): real signed SAML
from tests/saml_idp.py through the real SAML gateway and provisioner into Postgres."""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from saml_idp import ENTRA, entra_attributes, okta_attributes
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
from tests.conftest import eventually, make_tenant

pytestmark = pytest.mark.integration

GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"


@pytest.fixture
async def gateway(service_env: dict[str, str], topology: Any) -> Any:
    client = await start_gateway()
    yield client
    await client.close()


@pytest.fixture
async def acme(pool: Any) -> Any:
    return await make_tenant(pool, name=f"acme-{uuid.uuid4().hex[:6]}")


async def _login(gateway: Any, s: Any, **kw: Any) -> Any:
    req_id = await sp_login(gateway, s)
    return await post_acs(gateway, s, s.response(in_response_to=req_id, **kw))


async def _profile(gateway: Any, s: Any, resp: Any) -> dict[str, Any]:
    assert resp.status == 303, (resp.status, await resp.text())
    got = await exchange(gateway, s, code_of(resp))
    assert got.status == 200
    return dict(await got.json())


async def _scim_user(
    pool: Any,
    tenant_id: uuid.UUID,
    user_name: str,
    email: str | None = None,
    *,
    sso_name: str | None = None,
    given_name: str = "Victim",
) -> uuid.UUID:
    uid = uuid.uuid4()
    emails = [{"value": email, "type": "work", "primary": True}] if email else []
    await pool.execute(
        """INSERT INTO users (id, tenant_id, user_name, email, emails, given_name, sso_name, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 'scim')""",
        uid,
        tenant_id,
        user_name,
        email,
        emails,
        given_name,
        sso_name,
    )
    return uid


async def _refused(resp: Any, redis: Any, topology: Any, tenant_id: uuid.UUID, code: str) -> Any:
    html = await resp.text()
    assert resp.status == 403, (resp.status, html)
    assert page_is_clean(html)

    async def failed() -> Any:
        outs = [o for o in await audit_outcomes(redis, topology, tenant_id) if o.error and o.error.code == code]
        return outs[-1] if outs else None

    return html, await eventually(failed)


def _attrs(email: str, *, given: str = "Mallory", groups: list[str] | None = None) -> dict[str, list[str]]:
    return {
        **entra_attributes(groups),
        ENTRA + "emailaddress": [email],
        ENTRA + "name": [email],
        ENTRA + "givenname": [given],
    }


# ------------------------------------------------------------------ takeover refused


async def test_cross_idp_takeover_by_name_id_is_refused(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    """Two IdPs trusted by one tenant (the Simpplr case): a person in the partner IdP
    sends a corp user's email as NameID. Today that signed in as the victim and, in sync
    mode, overwrote the victim's name."""
    victim = await _scim_user(pool, acme.id, "victim@acme.test", "victim@acme.test")
    await add_connection(pool, acme.id, "corp", jit="sync")
    partner = await add_connection(pool, acme.id, "partner", jit="sync")
    resp = await _login(gateway, partner, name_id="victim@acme.test", attributes=_attrs("victim@acme.test"))
    html, outcome = await _refused(resp, redis, topology, acme.id, "not_linked")
    assert "administrator must link the account" in html
    assert "not authoritative" in outcome.error.message and outcome.source.label == "partner"
    row = await pool.fetchrow("SELECT given_name FROM users WHERE id = $1", victim)
    assert row["given_name"] == "Victim"
    assert await pool.fetchval("SELECT count(*) FROM user_identities") == 0


async def test_email_claim_takeover_is_refused(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    """The attacker's own NameID, the victim's email in the email claim."""
    victim = await _scim_user(pool, acme.id, "Victim.User", "victim@acme.test")
    await add_connection(pool, acme.id, "corp", jit="sync")
    partner = await add_connection(pool, acme.id, "partner", jit="sync")
    resp = await _login(gateway, partner, name_id="mallory@partner.test", attributes=_attrs("victim@acme.test"))
    await _refused(resp, redis, topology, acme.id, "not_linked")
    assert await pool.fetchval("SELECT given_name FROM users WHERE id = $1", victim) == "Victim"
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 1


async def test_sso_name_routes_and_restricts(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    """Splashtop's ssoName: a user whose ssoName names a connection signs in through it
    only — even where another connection is verified for the user's email domain."""
    await _scim_user(pool, acme.id, "carol@acme.test", "carol@acme.test", sso_name="Corp")
    corp = await add_connection(pool, acme.id, "corp", jit="sync")
    partner = await add_connection(pool, acme.id, "partner", jit="sync")
    await pool.execute("UPDATE sso_connections SET verified_domains = '{acme.test}' WHERE name = 'partner'")
    resp = await _login(gateway, partner, name_id="carol@acme.test", attributes=_attrs("carol@acme.test"))
    html, outcome = await _refused(resp, redis, topology, acme.id, "policy")
    assert "'corp' only" in outcome.error.message and "corp" in html
    profile = await _profile(
        gateway,
        corp,
        await _login(gateway, corp, name_id="carol@acme.test", attributes=_attrs("carol@acme.test", given="Carol")),
    )
    assert profile["user_name"] == "carol@acme.test" and profile["attributes"]["given_name"] == "Carol"


async def test_jit_created_user_belongs_to_its_connection(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    corp = await add_connection(pool, acme.id, "corp", jit="sync")
    partner = await add_connection(pool, acme.id, "partner", jit="sync")
    first = await _profile(gateway, corp, await _login(gateway, corp, attributes=_attrs("alice@acme.test")))
    link = await pool.fetchrow("SELECT * FROM user_identities")
    assert str(link["user_id"]) == first["user_id"] and link["name_id"] == "alice@acme.test"
    # The same email from the other IdP: refused (the user's ssoName names corp).
    resp = await _login(gateway, partner, attributes=_attrs("alice@acme.test"))
    await _refused(resp, redis, topology, acme.id, "policy")
    # Deleting the user deletes its identity links.
    await pool.execute("DELETE FROM users WHERE id = $1", uuid.UUID(first["user_id"]))
    assert await pool.fetchval("SELECT count(*) FROM user_identities") == 0


# ------------------------------------------------------------------ legitimate cases


async def test_scim_user_first_signs_in_through_its_only_idp(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    """Entra SCIM + Entra SSO: the tenant's only connection adopts the SCIM user, links
    it, and the link keeps working once a second connection is added; a linked user who
    changed email at the IdP still signs in as itself (sync updates the email)."""
    alice = await _scim_user(pool, acme.id, "Alice.Liddell", "alice@acme.test", given_name="Alice")
    entra = await add_connection(pool, acme.id, "entra", jit="sync")
    oid = str(uuid.UUID(int=7))  # a persistent NameID (Entra object id)
    first = await _profile(
        gateway, entra, await _login(gateway, entra, name_id=oid, attributes=_attrs("alice@acme.test", given="Alice"))
    )
    assert first["user_id"] == str(alice)
    assert await pool.fetchval("SELECT name_id FROM user_identities WHERE user_id = $1", alice) == oid
    await add_connection(pool, acme.id, "okta", preset="okta")
    again = await _profile(
        gateway,
        entra,
        await _login(gateway, entra, name_id=oid, attributes=_attrs("alice.new@acme.test", given="Alice")),
    )
    assert again["user_id"] == str(alice) and again["attributes"]["email"] == "alice.new@acme.test"
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 1


async def test_several_idps_with_verified_domains(
    gateway: Any, pool: Any, acme: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    alice = await _scim_user(pool, acme.id, "alice@acme.test", "alice@acme.test")
    bob = await _scim_user(pool, acme.id, "bob@partner.test", "bob@partner.test")
    corp = await add_connection(pool, acme.id, "corp", jit="sync")
    partner = await add_connection(pool, acme.id, "partner", preset="okta", jit="create")
    await pool.execute("UPDATE sso_connections SET verified_domains = '{acme.test}' WHERE name = 'corp'")
    await pool.execute("UPDATE sso_connections SET verified_domains = '{partner.test}' WHERE name = 'partner'")
    got = await _profile(
        gateway,
        corp,
        await _login(gateway, corp, name_id="alice@acme.test", attributes=_attrs("alice@acme.test", given="Alice")),
    )
    assert got["user_id"] == str(alice)
    bob_attrs = {**okta_attributes(), "email": ["bob@partner.test"]}
    got = await _profile(
        gateway, partner, await _login(gateway, partner, name_id="bob@partner.test", attributes=bob_attrs)
    )
    assert got["user_id"] == str(bob)
    # Each IdP only for its own domain.
    await _refused(
        await _login(gateway, corp, name_id="bob@partner.test", attributes=_attrs("bob@partner.test")),
        redis,
        topology,
        acme.id,
        "not_linked",
    )
    links = await pool.fetch(
        "SELECT c.name, i.user_id FROM user_identities i JOIN sso_connections c ON c.id = i.connection_id ORDER BY 1"
    )
    assert [(r["name"], r["user_id"]) for r in links] == [("corp", alice), ("partner", bob)]
    # An administrator's link makes the refused login work.
    await pool.execute(
        """INSERT INTO user_identities (tenant_id, connection_id, name_id, user_id, linked_by)
                          SELECT tenant_id, id, 'bob@partner.test', $1, 'cli' FROM sso_connections
                          WHERE name = 'corp'""",
        bob,
    )
    got = await _profile(
        gateway,
        corp,
        await _login(gateway, corp, name_id="bob@partner.test", attributes=_attrs("bob@partner.test", given="Bob")),
    )
    assert got["user_id"] == str(bob)


# ------------------------------------------------------------------ group claims (§3)


async def test_entra_group_object_ids_match_groups_and_scim_adopts(
    gateway: Any, pool: Any, acme: Any, provisioner: Any
) -> None:
    """Entra sends group object ids; its SCIM creates the groups with externalId = id."""
    from aiohttp.test_utils import TestClient, TestServer

    from provisio_lib.settings import load_settings
    from scim_gateway.app import create_app
    from scim_gateway.settings import ScimSettings

    sales_id, marketing_id = str(uuid.uuid4()), str(uuid.uuid4())
    scim = TestClient(TestServer(create_app(load_settings(ScimSettings))))
    await scim.start_server()
    auth = {"Authorization": f"Bearer {acme.token}", "Content-Type": "application/scim+json"}
    schema = ["urn:ietf:params:scim:schemas:core:2.0:Group"]
    try:
        made = await scim.post(
            "/scim/v2/Groups", headers=auth, json={"schemas": schema, "displayName": "Sales", "externalId": sales_id}
        )
        assert made.status == 201, await made.text()
        sales = (await made.json())["id"]
        s = await add_connection(pool, acme.id, "entra", jit="sync")
        profile = await _profile(gateway, s, await _login(gateway, s, groups=[sales_id, marketing_id, "Support"]))
        names = sorted(g["display_name"] for g in profile["groups"])
        assert names == sorted(["Sales", marketing_id, "Support"])  # Sales matched, not duplicated
        rows = {r["display_name"]: r for r in await pool.fetch("SELECT * FROM groups WHERE tenant_id = $1", acme.id)}
        assert rows[marketing_id]["external_id"] == marketing_id and rows[marketing_id]["created_by"] == "jit"
        assert rows["Support"]["external_id"] is None  # not an object id: no externalId invented

        adopted = await scim.post(
            "/scim/v2/Groups",
            headers=auth,
            json={"schemas": schema, "displayName": "Marketing", "externalId": marketing_id},
        )
        assert adopted.status == 201, await adopted.text()
        body = await adopted.json()
        assert body["id"] == str(rows[marketing_id]["id"]) and body["displayName"] == "Marketing"
        assert await pool.fetchval("SELECT count(*) FROM groups WHERE tenant_id = $1", acme.id) == 3
    finally:
        await scim.close()
    # The next login matches the adopted group by its externalId: no change, no new group.
    again = await _profile(gateway, s, await _login(gateway, s, groups=[sales_id, marketing_id, "Support"]))
    assert sorted(g["display_name"] for g in again["groups"]) == ["Marketing", "Sales", "Support"]
    assert await pool.fetchval("SELECT count(*) FROM groups WHERE tenant_id = $1", acme.id) == 3
    assert sales in {g["id"] for g in again["groups"]}


# ------------------------------------------------------------------ tenant policies for JIT (§3)


async def test_one_group_per_user_holds_for_jit_logins(
    gateway: Any, pool: Any, provisioner: Any, redis: Any, topology: Any
) -> None:
    from tests.integration.audit_support import SmtpServer, running_auditor, smtp_env

    tenant = await make_tenant(
        pool, name=f"team-{uuid.uuid4().hex[:6]}", one_group_per_user=True, notify_emails=["ops@team.example"]
    )
    s = await add_connection(pool, tenant.id, "entra", jit="sync")
    smtp = SmtpServer().start()
    try:
        async with running_auditor(**smtp_env(smtp.port)):
            profile = await _profile(gateway, s, await _login(gateway, s, groups=["Red", "Blue"]))
            assert profile["groups"] == []  # signed in; neither membership applied

            async def mailed() -> Any:
                return smtp.inbox.messages

            mail = (await eventually(mailed))[0]
    finally:
        smtp.stop()
    assert "(policy)" in mail["Subject"] and "one group per user" in mail.get_content()
    rows = await pool.fetch("SELECT result, error_code FROM audit_log WHERE tenant_id = $1 ORDER BY id", tenant.id)
    assert sorted((r["result"], r["error_code"]) for r in rows) == [("applied", None), ("failed", "policy")]

    async def policy_failures() -> Any:
        return [
            o
            for o in await audit_outcomes(redis, topology, tenant.id)
            if o.result == "failed" and o.error and o.error.code == "policy"
        ]

    failed = (await eventually(policy_failures))[-1]
    assert "one group per user" in failed.error.message and "'Blue'" in failed.error.message
    assert str(failed.resource_id) == profile["user_id"] and failed.user_name == "alice@acme.test"
    one = await _profile(gateway, s, await _login(gateway, s, groups=["Red"]))
    assert [g["display_name"] for g in one["groups"]] == ["Red"]
    both = await _profile(gateway, s, await _login(gateway, s, groups=["Red", "Blue"]))
    assert [g["display_name"] for g in both["groups"]] == ["Red"]
    moved = await _profile(gateway, s, await _login(gateway, s, groups=["Blue"]))  # leaving Red first
    assert [g["display_name"] for g in moved["groups"]] == ["Blue"]


async def test_immutable_user_name_covers_email_for_jit_and_scim(
    gateway: Any, pool: Any, provisioner: Any, waiter: Any, redis: Any, topology: Any
) -> None:
    from provisio_lib.contract import Command, ReplaceUser, Source, UserData

    tenant = await make_tenant(pool, name=f"splash-{uuid.uuid4().hex[:6]}", immutable_user_name=True)
    s = await add_connection(pool, tenant.id, "entra", jit="sync")
    first = await _profile(gateway, s, await _login(gateway, s, attributes=_attrs("alice@acme.test", given="Al")))
    second = await _profile(gateway, s, await _login(gateway, s, attributes=_attrs("other@acme.test", given="Alice")))
    assert second["user_id"] == first["user_id"]
    assert second["attributes"]["email"] == "alice@acme.test" and second["attributes"]["given_name"] == "Alice"

    async def mutability() -> Any:
        return [o for o in await audit_outcomes(redis, topology, tenant.id) if o.error and o.error.code == "mutability"]

    failed = (await eventually(mutability))[-1]
    assert failed.error.field == "emails" and "other@acme.test" in failed.error.message

    replace = Command(
        tenant_id=tenant.id,
        source=Source(kind="scim", id="t", label="test"),
        correlation_id="c-1",
        payload=ReplaceUser(
            user_id=uuid.UUID(first["user_id"]),
            data=UserData(user_name="alice@acme.test", emails=({"value": "new@acme.test", "primary": True},)),
        ),
    )
    out = await waiter.submit(replace, 10)
    assert out.result == "failed" and out.error.code == "mutability" and out.error.field == "emails"
    assert await pool.fetchval("SELECT email FROM users WHERE tenant_id = $1", tenant.id) == "alice@acme.test"


# ------------------------------------------------------------------ claim limits (§2)


async def test_overlong_claims_are_refused_at_the_gateway(
    gateway: Any, pool: Any, acme: Any, redis: Any, topology: Any
) -> None:
    s = await add_connection(pool, acme.id, "entra", jit="sync")
    for attrs, field in ((entra_attributes(["g" * 3000]), "group name"), (_attrs("a" * 3000 + "@acme.test"), "email")):
        resp = await _login(gateway, s, attributes=attrs)
        html = await resp.text()
        assert resp.status == 400 and f"a {field} of" in html and "the limit is 512" in html and page_is_clean(html)
    outcomes = [o for o in await audit_outcomes(redis, topology, acme.id) if "refused:claim_too_long" in o.notes]
    assert len(outcomes) == 2 and all(o.error.code == "invalid_value" for o in outcomes)
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 0


async def test_a_permanent_database_error_fails_at_once(pool: Any, acme: Any, provisioner: Any, waiter: Any) -> None:
    """A group name too long for its index (as a JitLogin from an older gateway would
    carry it): Postgres refuses it for good, so the login fails now instead of being
    retried for minutes into the dead letters while the browser waits."""
    from provisio_lib.contract import Command, JitLogin, Source

    s = await add_connection(pool, acme.id, "entra", jit="sync")
    conn_id = await pool.fetchval("SELECT id FROM sso_connections WHERE tenant_id = $1", acme.id)
    login = Command(
        tenant_id=acme.id,
        source=Source(kind="saml", id=str(conn_id), label=s.name),
        correlation_id="c-long",
        payload=JitLogin(
            connection_id=conn_id,
            connection_name=s.name,
            mode="sync",
            name_id="alice@acme.test",
            user_name="alice@acme.test",
            groups=(secrets.token_hex(1500),),
        ),
    )  # incompressible
    out = await waiter.submit(login, 8)
    assert out.result == "failed" and out.error.code == "invalid_value"
    assert "database refused" in out.error.message and login.payload.groups[0][:100] not in out.error.message
    assert await pool.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", acme.id) == 0


async def test_scim_cannot_change_email_under_immutable_user_name(pool: Any, provisioner: Any) -> None:
    """Splashtop: neither userName nor email may change — through SCIM as through JIT."""
    from aiohttp.test_utils import TestClient, TestServer

    from provisio_lib.settings import load_settings
    from scim_gateway.app import create_app
    from scim_gateway.settings import ScimSettings

    tenant = await make_tenant(pool, name=f"splash-{uuid.uuid4().hex[:6]}", immutable_user_name=True)
    scim = TestClient(TestServer(create_app(load_settings(ScimSettings))))
    await scim.start_server()
    auth = {"Authorization": f"Bearer {tenant.token}", "Content-Type": "application/scim+json"}
    try:
        made = await scim.post(
            "/scim/v2/Users",
            headers=auth,
            json={
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "dana@acme.test",
                "emails": [{"value": "dana@acme.test", "type": "work", "primary": True}],
            },
        )
        assert made.status == 201, await made.text()
        uid = (await made.json())["id"]
        patch = await scim.patch(
            f"/scim/v2/Users/{uid}",
            headers=auth,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [
                    {"op": "replace", "path": 'emails[type eq "work"].value', "value": "x@acme.test"},
                    {"op": "replace", "path": "displayName", "value": "Dana"},
                ],
            },
        )
        body = await patch.json()
        assert patch.status == 400 and body["scimType"] == "mutability" and "email" in body["detail"], body
        # A change that keeps the email still goes through.
        ok = await scim.patch(
            f"/scim/v2/Users/{uid}",
            headers=auth,
            json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "replace", "path": "displayName", "value": "Dana"}],
            },
        )
        assert ok.status == 200, await ok.text()
    finally:
        await scim.close()
    assert await pool.fetchval("SELECT email FROM users WHERE tenant_id = $1", tenant.id) == "dana@acme.test"
