"""`provisio sso …` as an operator runs it (a subprocess against the test database)."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from saml_idp import TestIdP

pytestmark = pytest.mark.integration

OPERATOR = f"cli:{getpass.getuser()}"  # the CLI's audit actor: this OS user


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisio_cli", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **service_env, "PROVISIO_SAML_PUBLIC_URL": "https://sso.example.com"}


def one_error_line(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


async def test_sso_connection_lifecycle(env: dict[str, str], pool: object, tmp_path: object, tenant: object) -> None:
    idp = TestIdP("https://sts.windows.test/abc/")
    md = tmp_path / "entra.xml"  # type: ignore[operator]
    md.write_text(idp.metadata())
    name = tenant.name  # type: ignore[attr-defined]
    added = cli(
        "sso",
        "add",
        name,
        "entra",
        "--metadata",
        str(md),
        "--preset",
        "entra",
        "--jit",
        "sync",
        "--app-url",
        "https://app.example.com/sso",
        "--map",
        "department=http://x/department",
        "--require",
        "given_name",
        "--require",
        "family_name",
        env=env,
    )
    assert added.returncode == 0, added.stderr
    out = added.stdout
    assert f"ACS URL:          https://sso.example.com/saml/{name}/entra/acs" in out
    assert f"JIT login URL:    https://sso.example.com/saml/{name}/entra/login" in out
    assert f"SP entity ID:     https://sso.example.com/saml/{name}/entra/metadata" in out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("pas_") and len(secret) > 40

    row = await pool.fetchrow("SELECT * FROM sso_connections WHERE name = 'entra'")  # type: ignore[attr-defined]
    assert row["idp_entity_id"] == idp.entity_id and row["jit_mode"] == "sync"
    assert row["attribute_map"]["department"] == ["http://x/department"]
    assert list(row["required_attributes"]) == ["given_name", "family_name"]
    assert "PRIVATE KEY" in row["sp_key_pem"] and "CERTIFICATE" in row["sp_cert_pem"]
    assert secret.encode() not in bytes(row["app_secret_hash"])

    shown = cli("sso", "show", name, "entra", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["sp_metadata_url"] == f"https://sso.example.com/saml/{name}/entra/metadata"
    assert info["jit_login_url"].endswith("/entra/login") and info["acs_url"].endswith("/entra/acs")
    assert info["idp_entity_id"] == idp.entity_id
    assert "PRIVATE" not in shown.stdout and secret not in shown.stdout
    text = cli("sso", "show", name, "entra", env=env)
    assert "JIT login URL" in text.stdout and "department <- http://x/department" in text.stdout

    okta_md = tmp_path / "okta.xml"  # type: ignore[operator]
    okta_md.write_text(TestIdP("http://www.okta.test/exk1").metadata())
    assert cli("sso", "add", name, "okta", "--metadata", str(okta_md), "--preset", "okta", env=env).returncode == 0
    listed = cli("sso", "list", name, "--json", env=env)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["entra", "okta"]

    dup = cli("sso", "add", name, "entra", "--metadata", str(md), "--preset", "entra", env=env)
    one_error_line(dup, "already has an SSO connection named 'entra'")

    rolled = TestIdP(idp.entity_id)  # same IdP, new signing certificate
    new_md = tmp_path / "entra-2.xml"  # type: ignore[operator]
    new_md.write_text(rolled.metadata())
    updated = cli(
        "sso",
        "update",
        name,
        "entra",
        "--metadata",
        str(new_md),
        "--jit",
        "create",
        "--no-idp-initiated",
        "--map",
        "cost_center=http://x/cc",
        env=env,
    )
    assert updated.returncode == 0, updated.stderr
    row2 = await pool.fetchrow("SELECT * FROM sso_connections WHERE name = 'entra'")  # type: ignore[attr-defined]
    assert row2["jit_mode"] == "create" and rolled.keys.cert_b64 in row2["idp_metadata"]
    assert row2["attribute_map"]["cost_center"] == ["http://x/cc"]
    assert row2["attribute_map"]["department"] == ["http://x/department"]
    assert row2["sp_key_pem"] == row["sp_key_pem"] and row2["app_secret_hash"] == row["app_secret_hash"]
    other_idp = tmp_path / "other.xml"  # type: ignore[operator]
    other_idp.write_text(TestIdP("https://other.test/").metadata())
    one_error_line(
        cli("sso", "update", name, "entra", "--metadata", str(other_idp), env=env), "add a new connection instead"
    )

    new_secret = cli("sso", "secret", name, "entra", env=env)
    assert new_secret.returncode == 0 and new_secret.stdout.strip().splitlines()[-1] != secret

    assert cli("sso", "remove", name, "entra", env=env).returncode == 0
    one_error_line(cli("sso", "show", name, "entra", env=env), "has no SSO connection named 'entra'")


def test_bad_input_is_one_clear_line(env: dict[str, str], tmp_path: object, tenant: object) -> None:
    name = tenant.name  # type: ignore[attr-defined]
    bad = tmp_path / "bad.xml"  # type: ignore[operator]
    bad.write_text("<html>this is the login page, not metadata</html>")
    one_error_line(
        cli("sso", "add", name, "x", "--metadata", str(bad), "--preset", "okta", env=env),
        "invalid IdP metadata: not SAML 2.0 metadata",
    )
    dtd = tmp_path / "dtd.xml"  # type: ignore[operator]
    dtd.write_text('<!DOCTYPE x [<!ENTITY a SYSTEM "file:///etc/passwd">]><x>&a;</x>')
    one_error_line(cli("sso", "add", name, "x", "--metadata", str(dtd), "--preset", "okta", env=env), "DTD or entities")
    one_error_line(cli("sso", "add", name, "x", "--metadata", "/nope.xml", "--preset", "okta", env=env), "not found")
    good = tmp_path / "good.xml"  # type: ignore[operator]
    good.write_text(TestIdP("https://idp.test/").metadata())
    one_error_line(
        cli("sso", "add", name, "x", "--metadata", str(good), "--preset", "adfs", env=env), "unknown --preset 'adfs'"
    )
    one_error_line(
        cli("sso", "add", name, "x", "--metadata", str(good), "--preset", "okta", "--jit", "always", env=env),
        "unknown --jit 'always'",
    )
    one_error_line(
        cli("sso", "add", name, "x", "--metadata", str(good), "--preset", "okta", "--map", "oops", env=env),
        "expected FIELD=CLAIM",
    )
    one_error_line(
        cli("sso", "add", name, "x", "--metadata", str(good), "--preset", "okta", "--require", "shoe", env=env),
        "not a mapped field",
    )
    one_error_line(
        cli("sso", "add", name, "Bad_Name!", "--metadata", str(good), "--preset", "okta", env=env),
        "invalid connection name",
    )
    one_error_line(cli("sso", "list", "nope", env=env), "unknown tenant 'nope'")


def test_metadata_from_a_url(env: dict[str, str], tmp_path: object, tenant: object) -> None:
    import functools
    import http.server
    import threading

    (tmp_path / "md.xml").write_text(TestIdP("https://accounts.google.test/o/saml2?idpid=C0").metadata())  # type: ignore[operator]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        name = tenant.name  # type: ignore[attr-defined]
        ok = cli("sso", "add", name, "google", "--metadata", f"{base}/md.xml", "--preset", "google", env=env)
        assert ok.returncode == 0, ok.stderr
        assert "IdP https://accounts.google.test/o/saml2?idpid=C0" in ok.stdout
        one_error_line(
            cli("sso", "add", name, "g2", "--metadata", f"{base}/missing.xml", "--preset", "google", env=env),
            "cannot download metadata",
        )
    finally:
        server.shutdown()


async def test_sso_domains_groups_absent_and_links(env: dict[str, str], pool: Any, tmp_path: Any, tenant: Any) -> None:
    name = tenant.name
    md = tmp_path / "entra.xml"
    md.write_text(TestIdP("https://sts.windows.test/dom/").metadata())
    assert (
        cli(
            "sso",
            "add",
            name,
            "entra",
            "--metadata",
            str(md),
            "--preset",
            "entra",
            "--groups-absent-means",
            "none",
            env=env,
        ).returncode
        == 0
    )
    one_error_line(
        cli("sso", "update", name, "entra", "--groups-absent-means", "maybe", env=env),
        "unknown --groups-absent-means 'maybe'",
    )
    assert cli("sso", "update", name, "entra", "--groups-absent-means", "unchanged", env=env).returncode == 0
    assert await pool.fetchval("SELECT groups_absent FROM sso_connections WHERE name = 'entra'") == "unchanged"

    added = cli("sso", "domains", name, "entra", "--add", "Example.COM", "--add", "@acme.test", env=env)
    assert added.returncode == 0, added.stderr
    assert "example.com, acme.test" in added.stdout
    one_error_line(cli("sso", "domains", name, "entra", "--add", "not a domain", env=env), "is not a domain name")
    removed = cli("sso", "domains", name, "entra", "--remove", "example.com", env=env)
    assert removed.returncode == 0 and "entra: acme.test" in removed.stdout
    listed = cli("sso", "domains", name, "entra", env=env)
    assert listed.stdout.strip().endswith("acme.test")
    info = json.loads(cli("sso", "show", name, "entra", "--json", env=env).stdout)
    assert info["verified_domains"] == ["acme.test"] and info["groups_absent_means"] == "unchanged"
    assert "verified domains: acme.test" in cli("sso", "show", name, "entra", env=env).stdout

    uid = uuid.uuid4()
    await pool.execute("INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'Bob@acme.test')", uid, tenant.id)
    linked = cli("sso", "link", name, "entra", "bob@acme.test", "00u-bob", env=env)
    assert linked.returncode == 0, linked.stderr
    row = await pool.fetchrow("SELECT user_id, linked_by FROM user_identities WHERE name_id = '00u-bob'")
    assert row["user_id"] == uid and row["linked_by"] == "cli"
    one_error_line(cli("sso", "link", name, "entra", "nobody", "x", env=env), "has no user 'nobody'")
    other = uuid.uuid4()
    await pool.execute("INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $2, 'eve')", other, tenant.id)
    one_error_line(cli("sso", "link", name, "entra", "eve", "00u-bob", env=env), "unlink it first")
    assert cli("sso", "unlink", name, "entra", "00u-bob", env=env).returncode == 0
    assert await pool.fetchval("SELECT count(*) FROM user_identities") == 0
    one_error_line(cli("sso", "unlink", name, "entra", "00u-bob", env=env), "is not linked")
    # Both changes are in the audit trail with the operator, source kind cli.
    rows = await pool.fetch(
        "SELECT operation, source_kind, source_label, user_name, resource_id FROM audit_log"
        " WHERE tenant_id = $1 AND operation LIKE 'sso.%link' ORDER BY id",
        tenant.id,
    )
    assert [(r["operation"], r["source_kind"], r["source_label"], r["resource_id"]) for r in rows] == [
        ("sso.link", "cli", OPERATOR, uid),
        ("sso.unlink", "cli", OPERATOR, uid),
    ]


async def test_sso_link_is_tenant_bound_refuses_a_taken_nameid_and_is_audited(
    env: dict[str, str], pool: Any, tmp_path: Any, tenant: Any
) -> None:
    """Who may sign in as whom: a link joins a user and a connection of one tenant only, a
    NameID of another user is not moved silently, and every link and unlink names its actor."""
    from tests.conftest import make_tenant

    md = tmp_path / "entra.xml"
    md.write_text(TestIdP("https://sts.windows.test/links/").metadata())
    other = await make_tenant(pool)
    for t in (tenant, other):  # the same connection name in both tenants
        assert cli("sso", "add", t.name, "entra", "--metadata", str(md), "--preset", "entra", env=env).returncode == 0
    alice, bob, mallory = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO users (id, tenant_id, user_name) VALUES ($1, $3, 'alice'), ($2, $3, 'bob'), ($4, $5, 'mallory')",
        alice,
        bob,
        tenant.id,
        mallory,
        other.id,
    )

    # Another tenant's user, by id or by name, is no user of this tenant: nothing is linked.
    for who in (str(mallory), "mallory"):
        one_error_line(cli("sso", "link", tenant.name, "entra", who, "00u-m", env=env), f"has no user {who!r}")
    assert await pool.fetchval("SELECT count(*) FROM user_identities") == 0
    one_error_line(cli("sso", "link", tenant.name, "entra", "alice", "  ", env=env), "NAMEID must be 1-512 characters")

    linked = cli("sso", "link", tenant.name, "entra", "ALICE", "00u-a", env=env)
    assert (linked.returncode, linked.stdout) == (0, "linked NameID '00u-a' of entra to user alice\n"), linked.stderr
    # A NameID linked to another user is refused, not moved: bob cannot take alice's identity.
    one_error_line(
        cli("sso", "link", tenant.name, "entra", "bob", "00u-a", env=env),
        "NameID '00u-a' of entra is linked to 'alice'; unlink it first",
    )
    assert await pool.fetchval("SELECT user_id FROM user_identities WHERE name_id = '00u-a'") == alice
    # The same NameID on the other tenant's connection of the same name is not this link.
    one_error_line(cli("sso", "unlink", other.name, "entra", "00u-a", env=env), "NameID '00u-a' is not linked on entra")
    # A new NameID for alice (changed at the IdP) replaces hers: one identity per user and connection.
    assert cli("sso", "link", tenant.name, "entra", str(alice), "00u-a2", env=env).returncode == 0
    links = await pool.fetch("SELECT tenant_id, name_id, user_id, linked_by FROM user_identities")
    assert [tuple(r) for r in links] == [(tenant.id, "00u-a2", alice, "cli")]
    unlinked = cli("sso", "unlink", tenant.name, "entra", "00u-a2", env=env)
    assert (unlinked.returncode, unlinked.stdout) == (0, "unlinked NameID '00u-a2' of entra\n"), unlinked.stderr
    one_error_line(cli("sso", "unlink", tenant.name, "entra", "00u-a2", env=env), "is not linked on entra")

    # Three changes, three audit rows; the refusals changed nothing and left none.
    rows = await pool.fetch(
        "SELECT * FROM audit_log WHERE operation LIKE 'sso.%link' ORDER BY id",
    )
    assert [(r["operation"], r["tenant_id"], r["user_name"], r["resource_id"]) for r in rows] == [
        ("sso.link", tenant.id, "alice", alice),
        ("sso.link", tenant.id, "alice", alice),
        ("sso.unlink", tenant.id, "alice", alice),
    ]
    assert all((r["source_kind"], r["source_id"], r["source_label"]) == ("cli", OPERATOR, OPERATOR) for r in rows)
    assert [r["changes"]["sso_identity"] for r in rows] == [
        {"before": None, "after": {"connection": "entra", "name_id": "00u-a", "linked_by": "cli"}},
        {
            "before": {"connection": "entra", "name_id": "00u-a", "linked_by": "cli"},
            "after": {"connection": "entra", "name_id": "00u-a2", "linked_by": "cli"},
        },
        {"before": {"connection": "entra", "name_id": "00u-a2", "linked_by": "cli"}, "after": None},
    ]
    # What an operator reads: the search finds them by who did it, and they are alice's history.
    found = cli("audit", "search", "--connection", OPERATOR, "--json", env=env)
    ops = [(r["operation"], r["source_kind"]) for r in map(json.loads, found.stdout.splitlines())]
    assert ops.count(("sso.link", "cli")) == 2 and ops.count(("sso.unlink", "cli")) == 1, ops
    history = cli("audit", "user", tenant.name, "alice", "--json", env=env)
    assert [json.loads(line).get("operation") for line in history.stdout.splitlines()] == [
        "sso.link",
        "sso.link",
        "sso.unlink",
        None,  # the state line
    ], history.stdout
    table = cli("audit", "search", "--connection", OPERATOR, env=env).stdout
    assert f" {OPERATOR} " in table and "cli:cli:" not in table and "staff:cli:" not in table
