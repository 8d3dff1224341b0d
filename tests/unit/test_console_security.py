"""The console's security rules without a server: signed cookies, CSRF comparison, the
login limiter's rule and keys, and the shared audit filters the console adds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from console.security import Session, Signer, csrf_ok, limiter_keys, locked_out
from provisio_lib.admin.audit import SearchFilters, parse_since, search_query
from provisio_lib.admin.errors import AdminError
from provisio_lib.admin.staff import check_password, normalise_email

pytestmark = pytest.mark.unit


def test_session_cookies_are_signed_and_expire():
    signer = Signer("s" * 40)
    cookie = signer.session_cookie("abc")
    assert signer.session_id(cookie, max_age=60) == "abc"
    assert signer.session_id(cookie[:-1] + ("A" if cookie[-1] != "A" else "B"), max_age=60) is None
    assert Signer("t" * 40).session_id(cookie, max_age=60) is None  # another key
    assert signer.session_id(None, 60) is None and signer.session_id("x" * 600, 60) is None
    # A cookie signed long ago is refused whatever the browser kept (absolute expiry).
    assert signer.session_id(cookie, max_age=-1) is None  # older than the maximum age


def test_form_tokens_are_bound_to_their_nonce_and_salt():
    signer = Signer("s" * 40)
    token = signer.form_token("nonce-1")
    assert signer.form_token_ok(token, "nonce-1")
    assert not signer.form_token_ok(token, "nonce-2")
    assert not signer.form_token_ok(token, None) and not signer.form_token_ok(None, "nonce-1")
    # A session cookie is not a form token (different salt), though signed with the same key.
    assert not signer.form_token_ok(signer.session_cookie("nonce-1"), "nonce-1")


def test_csrf_token_must_match_the_session():
    s = Session(b"h", uuid.uuid4(), "a@example.com", "support", "tok-123", datetime.now(UTC))
    assert csrf_ok(s, "tok-123")
    assert not csrf_ok(s, "tok-124") and not csrf_ok(s, "") and not csrf_ok(s, None)


def test_login_limiter_rule_and_keys():
    assert not locked_out(4, 19, per_account=5, per_address=20)
    assert locked_out(5, 0, per_account=5, per_address=20)
    assert locked_out(0, 20, per_account=5, per_address=20)
    a1, ip1 = limiter_keys("p", "Ann@Example.com ", "10.0.0.1")
    a2, _ = limiter_keys("p", "ann@example.com", "10.0.0.2")
    assert a1 == a2 and "ann" not in a1  # one counter per account, whatever the case; email hashed
    assert ip1 == "p:console:login:address:10.0.0.1"


def test_passwords_and_emails():
    check_password("a long enough passphrase", "a@example.com")
    for bad in ("short", "x" * 2000):
        with pytest.raises(AdminError):
            check_password(bad, "a@example.com")
    with pytest.raises(AdminError):
        check_password("Someone@Example.com", "someone@example.com")
    assert normalise_email(" a@example.com ") == "a@example.com"
    with pytest.raises(AdminError):
        normalise_email("not an email")


def test_search_adds_result_until_and_pages():
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    f = SearchFilters(result="noop", until=parse_since("1h", now), limit=51, offset=100)
    sql, args = search_query(f)
    assert "a.completed_at < $1" in sql and "a.result = $2" in sql
    assert sql.endswith("LIMIT $3 OFFSET $4") and args[2:] == [51, 100]
    assert "ORDER BY a.completed_at DESC" in sql
    # --failed (the CLI's flag) wins over a result filter: the same rows either way.
    sql, _ = search_query(SearchFilters(failed=True, result="applied"))
    assert "a.result = 'failed'" in sql and "$1" not in sql.split("LIMIT")[0]
    with pytest.raises(AdminError):
        parse_since("99999999999w", now)
