"""The web console without a browser: sessions, CSRF, the login limiter, roles, escaping,
dead-letter actions audited with the staff member, and `provisio staff`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from auditor.records import audit_row
from auditor.store import write_batch
from provisio_lib.contract import Command, CreateUser, Source, UserData, encode
from provisio_lib.topology import DATA_FIELD
from tests.conftest import make_tenant
from tests.console_support import PASSWORD, console_client, csrf_token, login, make_staff

from .audit_support import make_outcome

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


async def test_login_sets_a_hardened_session_cookie_and_wrong_passwords_are_refused(service_env, pool):
    await make_staff(pool, "ann@example.com", "support")
    async with console_client() as client:
        r = await client.get("/tenants", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/login")
        r = await login(client, "ann@example.com", "not the password")
        assert r.status == 401
        assert "Wrong email, password or one-time code." in await r.text()
        r = await login(client, "nobody@example.com", PASSWORD)
        assert r.status == 401
        r = await login(client, "ANN@example.com", PASSWORD)
        assert r.status == 303 and r.headers["Location"] == "/tenants"
        cookie = next(h for h in r.headers.getall("Set-Cookie") if h.startswith("provisio_console="))
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http on loopback
        page = await client.get("/tenants")
        assert page.status == 200
        headers = page.headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
        assert "<script>" not in (await page.text()).split("</head>")[1]  # no inline script in the body


async def test_secure_cookie_when_the_public_url_is_https(service_env, pool):
    await make_staff(pool, "ann@example.com", "support")
    async with console_client(console_public_url="https://console.example.com") as client:
        r = await client.get("/login")
        cookie = next(h for h in r.headers.getall("Set-Cookie") if h.startswith("provisio_console_form="))
        assert "Secure" in cookie and "HttpOnly" in cookie
        # Over plain http the browser does not send a Secure cookie back: no login on http.
        assert (await login(client, "ann@example.com")).status == 403


async def test_a_tampered_session_cookie_is_no_session(service_env, pool):
    await make_staff(pool, "ann@example.com", "support")
    async with console_client() as client:
        await login(client, "ann@example.com")
        value = client.session.cookie_jar.filter_cookies(client.make_url("/"))["provisio_console"].value
        client.session.cookie_jar.clear()
        r = await client.get("/tenants", allow_redirects=False, headers={"Cookie": f"provisio_console={value}"})
        assert r.status == 200
        tampered = value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
        r = await client.get("/tenants", allow_redirects=False, headers={"Cookie": f"provisio_console={tampered}"})
        assert r.status == 303 and r.headers["Location"].startswith("/login")
        # A validly signed cookie of a session id the server never issued: no session either.
        from console.app import SIGNER

        forged = client.app[SIGNER].session_cookie("not-a-session")
        r = await client.get("/tenants", allow_redirects=False, headers={"Cookie": f"provisio_console={forged}"})
        assert r.status == 303


async def test_posts_without_a_valid_csrf_token_are_refused(service_env, pool):
    await make_staff(pool, "ann@example.com", "support")
    async with console_client() as client:
        # The login form itself: no token, or a token not bound to this browser's nonce.
        r = await client.post("/login", data={"email": "ann@example.com", "password": PASSWORD})
        assert r.status == 403 and "CSRF" in await r.text()
        await login(client, "ann@example.com")
        r = await client.post("/logout", data={}, allow_redirects=False)
        assert r.status == 403
        r = await client.post("/logout", data={"csrf_token": "forged"}, allow_redirects=False)
        assert r.status == 403
        assert (await client.get("/tenants", allow_redirects=False)).status == 200  # still signed in
        token = csrf_token(await (await client.get("/tenants")).text())
        r = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
        assert r.status == 303
        assert (await client.get("/tenants", allow_redirects=False)).status == 303


async def test_login_attempts_are_limited_per_account_and_per_address(service_env, pool):
    await make_staff(pool, "ann@example.com", "support")
    await make_staff(pool, "bob@example.com", "support")
    async with console_client(console_login_attempts=3, console_login_address_attempts=5) as client:
        for _ in range(3):
            assert (await login(client, "ann@example.com", "wrong password!")).status == 401
        r = await login(client, "ann@example.com")  # the right password, but locked out
        assert r.status == 429 and "Too many failed sign-ins" in await r.text()
        # Another account from the same address still works until the address limit.
        assert (await login(client, "bob@example.com", "wrong password!")).status == 401
        assert (await login(client, "bob@example.com", "wrong password!")).status == 401
        assert (await login(client, "bob@example.com")).status == 429  # 5 failures from this address


async def test_sessions_end_after_idle_and_absolute_time(service_env, pool):
    await make_staff(pool, "ann@example.com", "support")
    async with console_client(console_session_idle_s=600, console_session_max_s=3600) as client:
        await login(client, "ann@example.com")
        assert (await client.get("/tenants", allow_redirects=False)).status == 200
        await pool.execute("UPDATE staff_sessions SET last_seen_at = now() - interval '11 minutes'")
        r = await client.get("/tenants", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/login?notice=expired"

        await login(client, "ann@example.com")
        await pool.execute("UPDATE staff_sessions SET created_at = now() - interval '61 minutes'")
        r = await client.get("/tenants", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/login?notice=expired"


async def test_every_value_is_escaped(service_env, pool):
    t = await make_tenant(pool)
    hostile = '<script>alert("x")</script>'
    o = make_outcome(t.id, user=hostile, changes={"display_name": {"before": None, "after": hostile}})
    async with pool.acquire() as conn:
        await write_batch(conn, [audit_row(o)], 60)
    await make_staff(pool, "ann@example.com", "support")
    async with console_client() as client:
        await login(client, "ann@example.com")
        for url in (f"/audit?tenant={t.name}", f"/tenants/{t.name}/users/{hostile}"):
            r = await client.get(url)
            html = await r.text()
            assert r.status == 200, html
            assert hostile not in html
            assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


async def test_audit_search_pages_newest_first(service_env, pool):
    t = await make_tenant(pool)
    outcomes = [make_outcome(t.id, user=f"user{i:02d}@example.com") for i in range(12)]
    async with pool.acquire() as conn:
        await write_batch(conn, [audit_row(o) for o in outcomes], 60)
    await make_staff(pool, "ann@example.com", "support")
    async with console_client(console_page_size=5) as client:
        await login(client, "ann@example.com")
        seen = []
        url = f"/audit?tenant={t.name}"
        for _ in range(3):
            html = await (await client.get(url)).text()
            seen += [n for n in (f"user{i:02d}@example.com" for i in range(12)) if f">{n}<" in html]
            if 'rel="next"' not in html:
                break
            url = html.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
        assert sorted(seen) == sorted(f"user{i:02d}@example.com" for i in range(12))
        r = await client.get("/audit?since=yesterday-ish")
        assert r.status == 200 and "bad time expression" in await r.text()


def _command(tenant_id: uuid.UUID) -> Command:
    return Command(
        tenant_id=tenant_id,
        source=Source(kind="scim", id="tok", label="test"),
        correlation_id="cid-dlq",
        payload=CreateUser(user_id=uuid.uuid4(), data=UserData(user_name="dead@example.com")),
    )


async def test_dead_letters_replay_as_admin_refused_for_support_and_audited(service_env, pool, redis, topology):
    t = await make_tenant(pool)
    cmd = _command(t.id)
    p = topology.partition_of(t.id)
    entry = await redis.xadd(
        topology.dead_letter_stream(p),
        {DATA_FIELD: encode(cmd), "error": "boom", "deliveries": "5", "failed_at": "now"},
    )
    dl_id = f"{p}:{entry.decode() if isinstance(entry, bytes) else entry}"
    await make_staff(pool, "sam@example.com", "support")
    await make_staff(pool, "ada@example.com", "admin")
    async with console_client() as client:
        await login(client, "sam@example.com")
        html = await (await client.get("/dead-letters")).text()
        assert dl_id in html and "Only admins can replay" in html
        assert (await client.get(f"/dead-letters/{dl_id}/replay")).status == 403
        token = csrf_token(html)
        r = await client.post(f"/dead-letters/{dl_id}/replay", data={"csrf_token": token, "confirm": "yes"})
        assert r.status == 403
        assert await redis.xlen(topology.dead_letter_stream(p)) == 1

    async with console_client() as client:
        await login(client, "ada@example.com")
        page = await client.get(f"/dead-letters/{dl_id}/replay")
        assert page.status == 200
        token = csrf_token(await page.text())
        # Without the confirmation box: refused, nothing replayed.
        r = await client.post(f"/dead-letters/{dl_id}/replay", data={"csrf_token": token})
        assert r.status == 400
        assert await redis.xlen(topology.dead_letter_stream(p)) == 1
        r = await client.post(
            f"/dead-letters/{dl_id}/replay", data={"csrf_token": token, "confirm": "yes"}, allow_redirects=False
        )
        assert r.status == 303 and r.headers["Location"] == "/dead-letters?notice=replayed"
        # The action is in the audit trail, found by who did it (as `audit search --connection`).
        html = await (await client.get("/audit?connection=ada@example.com")).text()
        assert "dlq.replay" in html and "staff:ada@example.com" in html
    assert await redis.xlen(topology.dead_letter_stream(p)) == 0
    entries = await redis.xrange(topology.command_stream(p))
    replayed = json.loads(entries[-1][1][DATA_FIELD.encode()])
    assert replayed["event_id"] == str(cmd.event_id) and replayed["attempt"] == cmd.attempt + 1
    row = await pool.fetchrow("SELECT * FROM audit_log WHERE source_kind = 'staff' AND operation = 'dlq.replay'")
    assert row["source_label"] == "ada@example.com" and row["tenant_id"] == t.id
    # A console user: source kind staff, by account id (an email alone never decides the kind).
    assert row["source_id"] == str(await pool.fetchval("SELECT id FROM staff WHERE email = 'ada@example.com'"))
    assert any(dl_id in n for n in row["notes"])


async def test_staff_cli_add_link_once_list_reset_remove(service_env, pool):
    env = {**service_env, "PROVISIO_CONSOLE_PUBLIC_URL": "https://console.example.com"}
    r = cli("staff", "add", "zoe@example.com", "--role", "admin", env=env)
    assert r.returncode == 0, r.stderr
    link = r.stdout.strip().splitlines()[-1]
    assert link.startswith("https://console.example.com/set-password/")
    token = link.rsplit("/", 1)[1]
    assert cli("staff", "add", "zoe@example.com", "--role", "admin", env=env).returncode == 1
    bad = cli("staff", "add", "x@example.com", "--role", "root", env=env)
    assert bad.returncode == 2 and "unknown role" in bad.stderr
    async with console_client() as client:
        page = await client.get(f"/set-password/{token}")
        html = await page.text()
        assert page.status == 200 and "zoe@example.com" in html
        from tests.console_support import form_token

        short = await client.post(
            f"/set-password/{token}", data={"form_token": form_token(html), "password": "short", "password2": "short"}
        )
        assert short.status == 400 and "at least 12" in await short.text()
        r2 = await client.post(
            f"/set-password/{token}",
            data={"form_token": form_token(html), "password": PASSWORD, "password2": PASSWORD},
            allow_redirects=False,
        )
        assert r2.status == 303
        assert (await client.get(f"/set-password/{token}")).status == 404  # used once
        assert (await login(client, "zoe@example.com")).status == 303
    listed = cli("staff", "list", "--json", env=env)
    assert json.loads(listed.stdout.splitlines()[0])["password"] == "set"
    reset = cli("staff", "reset", "zoe@example.com", env=env)
    assert reset.returncode == 0 and "/set-password/" in reset.stdout.splitlines()[-1]
    assert await pool.fetchval("SELECT count(*) FROM staff_sessions") == 0
    assert await pool.fetchval("SELECT password_hash FROM staff") is None
    assert cli("staff", "remove", "zoe@example.com", env=env).returncode == 0
    assert cli("staff", "remove", "zoe@example.com", env=env).returncode == 1
    actions = [
        (r["operation"], r["source_kind"], r["source_label"].startswith("cli:"))
        for r in await pool.fetch("SELECT operation, source_kind, source_label FROM audit_log ORDER BY id")
    ]
    # The operator's commands as cli (cli:<OS user>); setting the password is zoe's own, as staff.
    assert actions == [
        ("staff.add", "cli", True),
        ("staff.set_password", "staff", False),
        ("staff.reset", "cli", True),
        ("staff.remove", "cli", True),
    ]


async def test_two_factor_sign_in_with_totp(service_env, pool):
    import pyotp

    await make_staff(pool, "ann@example.com", "admin")
    r = cli("staff", "totp", "ann@example.com", env=service_env)
    assert r.returncode == 0, r.stderr
    uri = r.stdout.strip().splitlines()[-1]
    assert uri.startswith("otpauth://totp/") and "issuer=Provisio" in uri
    totp = pyotp.parse_uri(uri)
    async with console_client() as client:
        assert (await login(client, "ann@example.com")).status == 401  # password alone is not enough
        assert (
            await login(client, "ann@example.com", code="000000" if totp.now() != "000000" else "111111")
        ).status == 401
        assert (await login(client, "ann@example.com", PASSWORD + "x", code=totp.now())).status == 401
        assert (await login(client, "ann@example.com", code=totp.now())).status == 303
    assert cli("staff", "totp", "ann@example.com", "--off", env=service_env).returncode == 0
    async with console_client() as client:
        assert (await login(client, "ann@example.com")).status == 303


async def test_health_metrics_and_static_files_need_no_session(service_env, pool):
    async with console_client() as client:
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 200, await ready.text()
        metrics = await client.get("/metrics")
        assert metrics.status == 200 and "provisio_" in await metrics.text()
        js = await client.get("/static/console.js")
        assert js.status == 200 and js.headers["X-Content-Type-Options"] == "nosniff"
        # Unknown pages and bad ids are pages with a sentence, not tracebacks.
        r = await client.get("/no-such-page", allow_redirects=False)
        assert r.status in (303, 404)


async def test_bad_input_gets_a_readable_page_never_a_500(service_env, pool):
    await make_staff(pool, "ada@example.com", "admin")
    async with console_client() as client:  # fails the test if anything reached the 500 handler
        await login(client, "ada@example.com")
        for url, status, text in [
            ("/dead-letters/not-an-id", 400, "bad dead-letter id"),
            ("/dead-letters/0:1-0", 404, "no dead letter"),
            ("/dead-letters/99:1-0/replay", 400, "partition 99"),
            ("/tenants/nope/users/alice", 404, "unknown tenant"),
            ("/audit?result=maybe", 400, "unknown result"),
            ("/audit?page=x", 400, "whole number"),
            ("/users?tenant=&user=", 400, "Give a tenant"),
        ]:
            r = await client.get(url)
            assert r.status == status, (url, r.status)
            assert text in await r.text(), url
