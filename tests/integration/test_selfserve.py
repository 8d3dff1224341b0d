"""Self-serve setup without a browser: `provisio setup-link`, redeeming a link once,
expiry and revocation, scopes, tenant isolation, CSRF on every setup form, IdP metadata
(file, URL with SSRF refusal, by hand), connections created switched off, SCIM tokens
created and rotated (and used against the SCIM gateway), and the audit trail of the
shared admin layer (CLI actor, TOTP codes used once)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from provisio_lib.admin import setup_links
from provisio_lib.contract import Command, CreateUser, Source, UserData, encode
from provisio_lib.topology import DATA_FIELD
from tests.conftest import make_tenant
from tests.console_support import PASSWORD, console_on_port, form_token, login, make_staff
from tests.saml_idp import TestIdP

from .scim_helpers import bearer, scim_client

pytestmark = pytest.mark.integration

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def console(**overrides: Any) -> Any:
    return console_on_port(**{"saml_public_url": "https://sso.example.com", **overrides})


async def new_link(pool: Any, tid: uuid.UUID, scopes: list[str] | None = None, ttl: timedelta | None = None) -> str:
    async with pool.acquire() as conn:
        _link, token = await setup_links.create(
            conn, tid, scopes=scopes or ["sso", "scim"], ttl=ttl or timedelta(days=1), actor="cli:test"
        )
    return token


async def start(client: TestClient, token: str) -> Any:
    """Open the link's page and press its button (the POST that redeems it)."""
    page = await client.get(f"/setup/open/{token}")
    assert page.status == 200, await page.text()
    return await client.post(
        f"/setup/open/{token}", data={"form_token": form_token(await page.text())}, allow_redirects=False
    )


async def opened(client: TestClient, token: str) -> str:
    """Open the link in this client; returns the overview page's CSRF token."""
    r = await start(client, token)
    assert r.status == 303 and r.headers["Location"] == "/setup", await r.text()
    assert (await client.get("/setup")).status == 200
    for path in ("/setup/scim", "/setup/sso/new?idp=okta"):  # pages with a form, by scope
        m = _CSRF.search(await (await client.get(path)).text())
        if m:
            return m.group(1)
    raise AssertionError("no setup page with a CSRF token")


def metadata_form(csrf: str, idp: str, name: str, **fields: Any) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for k, v in {"csrf_token": csrf, "idp": idp, "name": name, "jit": "create", **fields}.items():
        if isinstance(v, tuple):
            form.add_field(k, v[1], filename=v[0], content_type="application/xml")
        else:
            form.add_field(k, v)
    return form


# --------------------------------------------------------------------------- CLI


async def test_setup_link_cli_create_list_revoke(service_env, pool):
    t = await make_tenant(pool)
    made = cli("setup-link", "create", t.name, "--expires", "2h", "--scope", "sso", env=service_env)
    assert made.returncode == 0, made.stderr
    lines = made.stdout.strip().splitlines()
    url = lines[-1]
    assert re.fullmatch(r"http://localhost:8084/setup/open/psl_[A-Za-z0-9_-]{43}", url), url
    token = url.rsplit("/", 1)[1]
    prefix = token[:12]
    assert prefix in lines[0] and "scope sso" in lines[0]
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM setup_links WHERE tenant_id = $1", t.id)
        assert row["prefix"] == prefix and list(row["scopes"]) == ["sso"]
        assert token.encode() not in bytes(row["token_hash"]) and len(row["token_hash"]) == 32  # SHA-256 only
        ttl = (row["expires_at"] - row["created_at"]).total_seconds()
        assert 7190 < ttl < 7210
        who = await conn.fetchval(
            "SELECT source_label FROM audit_log WHERE tenant_id = $1 AND operation = 'setup_link.create'", t.id
        )
        assert who is not None and who.startswith("cli:")
    listed = cli("setup-link", "list", t.name, "--json", env=service_env)
    assert prefix in listed.stdout and '"status": "unused"' in listed.stdout and token not in listed.stdout
    for bad, message in ((["--scope", "sso,ldap"], "bad --scope"), (["--expires", "90d"], "between 1m and 30d")):
        r = cli("setup-link", "create", t.name, *bad, env=service_env)
        assert r.returncode == 2 and message in r.stderr, r.stderr
    revoked = cli("setup-link", "revoke", prefix, env=service_env)
    assert revoked.returncode == 0 and f"revoked setup link {prefix}" in revoked.stdout
    assert '"status": "revoked"' in cli("setup-link", "list", t.name, "--json", env=service_env).stdout
    missing = cli("setup-link", "revoke", "psl_nothere", env=service_env)
    assert missing.returncode == 1 and "no setup link" in missing.stderr


async def test_cli_changes_are_audited_with_the_os_user(service_env, pool, redis, topology):
    t = await make_tenant(pool)
    assert cli("tenant", "policy", t.name, "--deprovision", "deactivate", env=service_env).returncode == 0
    assert cli("scim-token", "create", t.name, "--name", "entra", env=service_env).returncode == 0
    assert cli("scim-token", "revoke", t.name, "entra", env=service_env).returncode == 0
    # A dead letter replayed and one dropped: audited with the operator like the console's.
    p = topology.partition_of(t.id)
    ids = []
    for _ in range(2):
        cmd = Command(
            tenant_id=t.id,
            source=Source(kind="scim", id="tok", label="test"),
            correlation_id="cid",
            payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name="dead@example.com")),
        )
        entry = await redis.xadd(
            topology.dead_letter_stream(p), {DATA_FIELD: encode(cmd), "error": "boom", "deliveries": "5"}
        )
        ids.append(f"{p}:{entry.decode() if isinstance(entry, bytes) else entry}")
    assert cli("dlq", "replay", ids[0], env=service_env).returncode == 0
    assert cli("dlq", "drop", ids[1], env=service_env).returncode == 0
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT operation, source_label, changes, notes FROM audit_log WHERE tenant_id = $1 AND source_kind = 'cli'"
            " ORDER BY completed_at",
            t.id,
        )
    ops = [r["operation"] for r in rows]
    assert ops == ["tenant.policy", "scim_token.create", "scim_token.revoke", "dlq.replay", "dlq.drop"], ops
    # Source kind cli, not staff: no console user did these.
    assert await pool.fetchval("SELECT count(*) FROM audit_log WHERE source_kind = 'staff'") == 0
    assert all(r["source_label"].startswith("cli:") and len(r["source_label"]) > 4 for r in rows)
    assert rows[0]["changes"]["deprovision"] == {"before": "delete", "after": "deactivate"}
    assert ids[0] in " ".join(rows[3]["notes"]) and ids[1] in " ".join(rows[4]["notes"])


async def test_a_totp_code_is_accepted_once(service_env, pool):
    import pyotp

    from provisio_lib.admin import staff as staff_admin

    await make_staff(pool, "ann@example.com", "support")
    async with pool.acquire() as conn:
        _s, uri = await staff_admin.set_totp(conn, "ann@example.com", True)
    code = pyotp.parse_uri(uri).now()
    async with console() as client:
        assert (await login(client, "ann@example.com", PASSWORD, code=code)).status == 303
    async with console() as client:  # another browser replaying the same code (RFC 6238 §5.2)
        assert (await login(client, "ann@example.com", PASSWORD, code=code)).status == 401


# --------------------------------------------------------------------------- redeem


async def test_a_link_opens_once_in_one_browser(service_env, pool):
    t = await make_tenant(pool)
    token = await new_link(pool, t.id)
    async with console() as first, console() as second:
        # Opening the page (as a mail or chat link scanner does) changes nothing.
        for _ in range(2):
            page = await second.get(f"/setup/open/{token}")
            assert page.status == 200 and "Start setup in this browser" in await page.text()
        page_token = form_token(await page.text())
        forged = await first.post(f"/setup/open/{token}", data={"form_token": "forged"}, allow_redirects=False)
        assert forged.status == 403  # the button's form is CSRF-checked too
        r = await start(first, token)
        assert r.status == 303 and r.headers["Location"] == "/setup"
        cookie = next(h for h in r.headers.getall("Set-Cookie") if h.startswith("provisio_setup="))
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/setup" in cookie and "Max-Age=" in cookie
        assert r.headers["Referrer-Policy"] == "no-referrer"
        page = await first.get("/setup")
        assert page.status == 200 and t.name in await page.text()
        for client in (second, first):  # another browser, and the same one again
            again = await client.get(f"/setup/open/{token}")
            assert again.status == 410
            assert "opened already" in await again.text()
        raced = await second.post(f"/setup/open/{token}", data={"form_token": page_token}, allow_redirects=False)
        assert raced.status == 410  # a form fetched before the link was used: refused at the POST too
        assert (await second.get("/setup")).status == 401  # the second browser has no session
        assert (await first.get("/setup")).status == 200  # the first keeps its own
        unknown = await second.get("/setup/open/psl_" + "x" * 43)
        assert unknown.status == 404 and "not valid" in await unknown.text()
        forged = await second.get("/setup", headers={"Cookie": "provisio_setup=forged.value.here"})
        assert forged.status == 401


async def test_expired_and_revoked_links_are_refused_and_end_their_session(service_env, pool):
    t = await make_tenant(pool)
    expired = await new_link(pool, t.id)
    used = await new_link(pool, t.id)
    revoked = await new_link(pool, t.id)
    async with console() as client, console() as other:
        await opened(client, used)
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE setup_links SET expires_at = now() - interval '1 second' WHERE tenant_id = $1", t.id
            )
        r = await other.get(f"/setup/open/{expired}")
        assert r.status == 410 and "expired" in await r.text()
        ended = await client.get("/setup")
        assert ended.status == 401 and "setup session has ended" in await ended.text()
    fresh = await new_link(pool, t.id)
    async with console() as client, console() as other:
        await opened(client, fresh)
        async with pool.acquire() as conn:
            for token in (revoked, fresh):
                prefix = token[:12]
                await setup_links.revoke(conn, prefix, actor="cli:test")
        r = await other.get(f"/setup/open/{revoked}")
        assert r.status == 410 and "revoked" in await r.text()
        assert (await client.get("/setup")).status == 401


async def test_scopes_limit_the_pages(service_env, pool):
    t = await make_tenant(pool)
    async with console() as sso_only, console() as scim_only:
        csrf = await opened(sso_only, await new_link(pool, t.id, ["sso"]))
        await opened(scim_only, await new_link(pool, t.id, ["scim"]))
        r = await sso_only.get("/setup/scim")
        assert r.status == 403 and "does not include SCIM" in await r.text()
        r = await sso_only.post("/setup/scim/token", data={"csrf_token": csrf})
        assert r.status == 403
        assert (await scim_only.get("/setup/sso")).status == 403
        assert (await scim_only.get("/setup/sso/new?idp=okta")).status == 403
        overview = await (await scim_only.get("/setup")).text()
        assert 'href="/setup/sso"' not in overview and 'href="/setup/scim"' in overview


# --------------------------------------------------------------------------- the SSO wizard


async def test_wizard_metadata_file_url_and_manual_create_disabled_connections(service_env, pool):
    t = await make_tenant(pool)
    idp = TestIdP("https://idp.example.com/okta")
    xml = idp.metadata()
    served = web.Application()
    served.router.add_get("/metadata.xml", lambda _r: web.Response(text=xml, content_type="application/xml"))
    async with TestServer(served, host="127.0.0.1") as md_server, console() as client:
        csrf = await opened(client, await new_link(pool, t.id))
        choose = await client.get("/setup/sso")
        assert choose.status == 200 and "Microsoft Entra ID" in await choose.text()
        page = await client.get("/setup/sso/new?idp=okta&name=okta")
        html = await page.text()
        acs = f"https://sso.example.com/saml/{t.name}/okta/acs"
        assert acs in html and f'data-copy="{acs}"' in html
        assert f"https://sso.example.com/saml/{t.name}/okta/certificate" in html
        assert "Audience URI (SP Entity ID)" in html  # Okta's own steps
        assert 'value="firstName"' in html  # the preset's mapping

        # A file upload.
        form = metadata_form(csrf, "okta", "okta", source="file", metadata_file=("okta.xml", xml), req_email="1")
        r = await client.post("/setup/sso/new", data=form, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/setup/sso/okta?notice=created", await r.text()
        shown = await (await client.get("/setup/sso/okta?notice=created")).text()
        assert "switched off until a test sign-in passes" in shown and "Test sign-in" in shown

        # A URL on loopback: refused (SSRF) unless the operator allows private addresses.
        url = str(md_server.make_url("/metadata.xml"))
        form = metadata_form(csrf, "okta", "okta-url", source="url", metadata_url=url)
        r = await client.post("/setup/sso/new", data=form)
        assert r.status == 400 and "private or local address" in await r.text()
        for target in ("http://169.254.169.254/latest/meta-data/", "http://[::1]/x", "file:///etc/passwd"):
            form = metadata_form(csrf, "okta", "okta-url", source="url", metadata_url=target)
            r = await client.post("/setup/sso/new", data=form)
            assert r.status == 400, target
        # By hand: entity ID, SSO URL, certificate.
        form = metadata_form(
            csrf,
            "generic",
            "manual",
            source="manual",
            idp_entity_id="https://idp.example.com/manual",
            idp_sso_url="https://idp.example.com/manual/sso",
            idp_cert=idp.keys.cert_pem.decode(),
            jit="off",
        )
        r = await client.post("/setup/sso/new", data=form, allow_redirects=False)
        assert r.status == 303, await r.text()
        # Broken metadata: the form again, with the reason.
        form = metadata_form(csrf, "okta", "broken", source="file", metadata_file=("x.xml", "<nope/>"))
        r = await client.post("/setup/sso/new", data=form)
        assert r.status == 400 and "invalid IdP metadata" in await r.text()
        dup = metadata_form(csrf, "okta", "okta", source="file", metadata_file=("okta.xml", xml))
        r = await client.post("/setup/sso/new", data=dup)
        assert r.status == 400 and "already has an SSO connection" in await r.text()
    async with console(console_metadata_allow_private=True) as client, TestServer(served, host="127.0.0.1") as md:
        csrf = await opened(client, await new_link(pool, t.id))
        form = metadata_form(csrf, "okta", "okta-url", source="url", metadata_url=str(md.make_url("/metadata.xml")))
        r = await client.post("/setup/sso/new", data=form, allow_redirects=False)
        assert r.status == 303, await r.text()
    async with pool.acquire() as conn:
        rows = {
            r["name"]: r
            for r in await conn.fetch(
                "SELECT name, enabled, jit_mode, required_attributes, idp_entity_id FROM sso_connections WHERE tenant_id = $1",
                t.id,
            )
        }
        assert set(rows) == {"okta", "manual", "okta-url"}
        assert not any(r["enabled"] for r in rows.values())  # off until a test sign-in passes
        assert list(rows["okta"]["required_attributes"]) == ["email"]
        assert (
            rows["manual"]["jit_mode"] == "off" and rows["manual"]["idp_entity_id"] == "https://idp.example.com/manual"
        )
        audit = await conn.fetch(
            "SELECT source_kind, source_label FROM audit_log WHERE tenant_id = $1 AND operation = 'sso.add'", t.id
        )
        assert len(audit) == 3 and all(a["source_label"].startswith("setup:psl_") for a in audit)
        assert all(a["source_kind"] == "setup" for a in audit)  # a customer's IT admin, not staff


async def test_enable_is_refused_without_a_passed_test(service_env, pool):
    t = await make_tenant(pool)
    xml = TestIdP("https://idp.example.com/e").metadata()
    async with console() as client:
        csrf = await opened(client, await new_link(pool, t.id))
        form = metadata_form(csrf, "entra", "entra", source="file", metadata_file=("e.xml", xml))
        assert (await client.post("/setup/sso/new", data=form, allow_redirects=False)).status == 303
        r = await client.post("/setup/sso/entra/enable", data={"csrf_token": csrf})
        assert r.status == 409 and "test" in (await r.text()).lower()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", t.id) is False


async def test_a_setup_session_cannot_reach_another_tenant(service_env, pool):
    a, b = await make_tenant(pool), await make_tenant(pool)
    xml = TestIdP("https://idp.example.com/b").metadata()
    async with console() as client_b:
        csrf_b = await opened(client_b, await new_link(pool, b.id))
        form = metadata_form(csrf_b, "okta", "b-okta", source="file", metadata_file=("b.xml", xml))
        assert (await client_b.post("/setup/sso/new", data=form, allow_redirects=False)).status == 303
    test_b = uuid.uuid4()
    async with pool.acquire() as conn:
        conn_b = await conn.fetchval("SELECT id FROM sso_connections WHERE tenant_id = $1", b.id)
        await conn.execute(
            """INSERT INTO sso_test_logins (id, tenant_id, connection_id, status, created_by, return_to)
               VALUES ($1, $2, $3, 'passed', 'test', 'http://x')""",
            test_b,
            b.id,
            conn_b,
        )
    async with console() as client:
        csrf = await opened(client, await new_link(pool, a.id))
        for path in (
            "/setup/sso/b-okta",
            f"/setup/sso/b-okta/result?test={test_b}",
            f"/setup/sso/{b.name}",
            f"/setup/sso/../../tenants/{b.name}",
        ):
            r = await client.get(path, allow_redirects=False)
            assert r.status in (404, 303), path  # 303: to the staff login
            assert "idp.example.com/b" not in await r.text(), path  # nothing of B's connection
        for path in ("/setup/sso/b-okta/enable", "/setup/sso/b-okta/disable", "/setup/sso/b-okta/test"):
            r = await client.post(path, data={"csrf_token": csrf})
            assert r.status == 404, path
        # Rotating "test" rotates tenant A's token of that label, never B's.
        r = await client.post("/setup/scim/token", data={"csrf_token": csrf, "rotate": "test"})
        assert r.status == 200
        staff_pages = await client.get("/tenants", allow_redirects=False)
        assert staff_pages.status == 303  # a setup session is no staff session
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT enabled FROM sso_connections WHERE tenant_id = $1", b.id) is False
        assert await conn.fetchval(
            "SELECT revoked_at IS NULL FROM scim_tokens WHERE tenant_id = $1 AND label = 'test'", b.id
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM scim_tokens WHERE tenant_id = $1 AND revoked_at IS NOT NULL", a.id
            )
            == 1
        )


async def test_every_setup_form_checks_csrf(service_env, pool):
    t = await make_tenant(pool)
    xml = TestIdP("https://idp.example.com/c").metadata()
    async with console() as client:
        csrf = await opened(client, await new_link(pool, t.id))
        form = metadata_form(csrf, "okta", "okta", source="file", metadata_file=("c.xml", xml))
        assert (await client.post("/setup/sso/new", data=form, allow_redirects=False)).status == 303
        for path, data in (
            ("/setup/sso/new", {"idp": "okta", "name": "x", "source": "manual"}),
            ("/setup/sso/okta/test", {}),
            ("/setup/sso/okta/enable", {}),
            ("/setup/sso/okta/disable", {}),
            ("/setup/scim/token", {}),
            ("/setup/scim/token", {"rotate": "test"}),
        ):
            for token in (None, "wrong", csrf[:-1]):
                body = dict(data, **({"csrf_token": token} if token is not None else {}))
                r = await client.post(path, data=body)
                assert r.status == 403 and "CSRF" in await r.text(), (path, token)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM scim_tokens WHERE tenant_id = $1", t.id) == 1
        assert await conn.fetchval("SELECT count(*) FROM sso_test_logins WHERE tenant_id = $1", t.id) == 0


# --------------------------------------------------------------------------- SCIM


async def test_scim_token_created_and_rotated_works_against_the_gateway(service_env, pool):
    t = await make_tenant(pool)
    async with console(scim_public_url="https://scim.example.com") as client:
        csrf = await opened(client, await new_link(pool, t.id, ["scim"]))
        page = await (await client.get("/setup/scim")).text()
        assert "https://scim.example.com/scim/v2" in page and "Tenant URL" in page and "SCIM connector base URL" in page
        r = await client.post("/setup/scim/token", data={"csrf_token": csrf})
        html = await r.text()
        first = re.search(r'<code id="new-token">(prv_[^<]+)</code>', html)
        assert r.status == 200 and first and "shown only this once" in html
        assert "setup-2" in html  # make_tenant's token is token 1
        assert first.group(1) not in await (await client.get("/setup/scim")).text()  # never again
        r = await client.post("/setup/scim/token", data={"csrf_token": csrf, "rotate": "setup-2"})
        second = re.search(r'<code id="new-token">(prv_[^<]+)</code>', await r.text())
        assert second and second.group(1) != first.group(1)
    async with scim_client(scim_token_cache_s=0) as scim:
        ok = await scim.get("/scim/v2/Users", headers=bearer(second.group(1)))
        assert ok.status == 200 and (await ok.json())["totalResults"] == 0
        old = await scim.get("/scim/v2/Users", headers=bearer(first.group(1)))
        assert old.status == 401
    async with pool.acquire() as conn:
        ops = await conn.fetch(
            "SELECT operation, source_kind FROM audit_log WHERE tenant_id = $1 AND source_label LIKE 'setup:%'"
            " ORDER BY completed_at",
            t.id,
        )
    assert [o["operation"] for o in ops] == [
        "setup_link.redeem",
        "scim_token.create",
        "scim_token.revoke",
        "scim_token.create",
    ]
    assert {o["source_kind"] for o in ops} == {"setup"}


async def test_the_provisioning_log_shows_this_tenant_only_with_advice(service_env, pool):
    from auditor.records import audit_row
    from auditor.store import write_batch

    from .audit_support import make_outcome

    a, b = await make_tenant(pool), await make_tenant(pool)
    rows = [
        make_outcome(a.id, user="alice@a.example"),
        make_outcome(a.id, user="ann@a.example", result="failed", code="uniqueness", message="userName taken"),
        make_outcome(b.id, user="bob@b.example", result="failed", code="policy", message="b's secret failure"),
    ]
    async with pool.acquire() as conn:
        await write_batch(conn, [audit_row(o) for o in rows], 60)
    async with console() as client:
        await opened(client, await new_link(pool, a.id, ["scim"]))
        html = await (await client.get("/setup/scim")).text()
    assert "alice@a.example" in html and "ann@a.example" in html and "userName taken" in html
    assert "Match the existing account in the IdP" in html  # admin/advice.py's wording for uniqueness
    assert "bob@b.example" not in html and "secret failure" not in html


async def test_a_failed_test_sign_in_shows_its_reasons_escaped(service_env, pool):
    t = await make_tenant(pool)
    xml = TestIdP("https://idp.example.com/f").metadata()
    hostile = '<script>alert("x")</script>'
    async with console() as client:
        csrf = await opened(client, await new_link(pool, t.id))
        form = metadata_form(csrf, "okta", "okta", source="file", metadata_file=("f.xml", xml))
        assert (await client.post("/setup/sso/new", data=form, allow_redirects=False)).status == 303
        # Starting a test answers with the gateway's test-mode login as a link (console.js follows it).
        started = await client.post("/setup/sso/okta/test", data={"csrf_token": csrf})
        html = await started.text()
        m = re.search(r'id="test-go" data-follow href="([^"]+)"', html)
        assert started.status == 200 and m
        assert m.group(1).startswith(f"https://sso.example.com/saml/{t.name}/okta/login?test=")
        test_id = uuid.UUID(m.group(1).rsplit("=", 1)[1])
        async with pool.acquire() as conn:
            await conn.execute(
                """UPDATE sso_test_logins SET status = 'failed', completed_at = now(), error = $2,
                       received = $3::jsonb, checks = $4::jsonb WHERE id = $1""",
                test_id,
                "The response's Audience is not this connection's SP entity ID.",
                {"issuer": hostile, "name_id": "alice@f.example", "attributes": {"x": [hostile]}},
                [
                    {"name": "signature", "ok": True, "reason": None},
                    {"name": "audience", "ok": False, "reason": "expected https://sso.example.com/…"},
                ],
            )
        page = await client.get(f"/setup/sso/okta/result?test={test_id}")
        html = await page.text()
        assert page.status == 200 and "failed</span></h1>" in html
        assert "Audience is not this connection" in html and "<strong>audience</strong>: expected" in html
        assert hostile not in html and "&lt;script&gt;" in html
        assert "Switch the connection on" not in html
        assert (await client.get("/setup/sso/okta/result?test=nonsense")).status == 404
        assert (await client.get(f"/setup/sso/okta/result?test={uuid.uuid4()}")).status == 404


async def test_a_connection_changed_on_the_setup_page(service_env, pool):
    t = await make_tenant(pool)
    idp = TestIdP("https://idp.example.com/g")
    other = TestIdP("https://idp.example.com/other")
    async with console() as client:
        csrf = await opened(client, await new_link(pool, t.id, ["sso"]))
        form = metadata_form(csrf, "okta", "okta", source="file", metadata_file=("g.xml", idp.metadata()))
        assert (await client.post("/setup/sso/new", data=form, allow_redirects=False)).status == 303
        async with pool.acquire() as conn:
            await conn.execute(
                """UPDATE sso_connections SET attribute_map = attribute_map || '{"department": ["dept"]}'::jsonb
                   WHERE tenant_id = $1""",
                t.id,
            )
        page = await (await client.get("/setup/sso/okta/edit")).text()
        assert 'value="firstName"' in page and "Keep the current metadata" in page
        # Another IdP's metadata is refused; the form comes back with the reason.
        form = metadata_form(csrf, "okta", "okta", source="file", metadata_file=("o.xml", other.metadata()))
        r = await client.post("/setup/sso/okta/edit", data=form)
        assert r.status == 400 and "add a new connection instead" in await r.text()
        form = metadata_form(
            csrf, "okta", "okta", source="keep", jit="sync", map_given_name="givenName", req_given_name="1"
        )
        r = await client.post("/setup/sso/okta/edit", data=form, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/setup/sso/okta?notice=updated", await r.text()
        r = await client.post("/setup/sso/okta/edit", data={"source": "keep"})
        assert r.status == 403  # CSRF
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT jit_mode, attribute_map, required_attributes, enabled FROM sso_connections WHERE tenant_id = $1",
            t.id,
        )
        assert row["jit_mode"] == "sync" and list(row["required_attributes"]) == ["given_name"]
        assert row["attribute_map"]["given_name"] == ["givenName"] and row["attribute_map"]["email"] == ["email"]
        assert row["attribute_map"]["department"] == ["dept"]  # a custom field the form does not show, kept
        assert row["enabled"] is False
        changes = await conn.fetchval(
            "SELECT changes FROM audit_log WHERE tenant_id = $1 AND operation = 'sso.update'", t.id
        )
        assert changes["jit"] == {"before": "create", "after": "sync"}
