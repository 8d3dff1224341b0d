"""Pure parts of the test login (issue 14): the return_to check (no open redirect), the
preview read from a dry-run outcome, the checks list, and reading a refused response."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import pytest

from provisio_lib.admin.errors import AdminError
from provisio_lib.admin.sso_test import (
    Check,
    TestLoginSettings,
    check_return_to,
    login_url_for_test,
    preview_from_outcome,
)
from provisio_lib.contract import Change, ErrorInfo, Outcome, Source
from saml_gateway.testmode import CHECK_NAMES, RELAY_PREFIX, checks, inspect_unverified

pytestmark = pytest.mark.unit

BASE = "https://console.example.com"


@pytest.mark.parametrize(
    "value",
    [
        "https://evil.example/setup",
        "//evil.example/setup",
        "/\\evil.example",
        "\\\\evil.example",
        "https://console.example.com@evil.example/",
        "https://console.example.com.evil.example/",
        "http://console.example.com/setup",  # scheme downgrade
        "https://console.example.com:8443/setup",
        "javascript:alert(1)",
        "data:text/html,x",
        "/setup\t/x",
        "/setup\n",
        " ",
        "",
        "/setup#frag",
        "https://user:pw@console.example.com/setup",
    ],
)
def test_return_to_outside_the_console_is_refused(value: str) -> None:
    with pytest.raises(AdminError) as err:
        check_return_to(value, BASE)
    assert "return_to" in str(err.value)


def test_return_to_on_the_console_is_made_absolute() -> None:
    assert check_return_to("/setup/abc/sso?step=3", BASE) == f"{BASE}/setup/abc/sso?step=3"
    assert check_return_to(f"{BASE}/setup/abc", BASE) == f"{BASE}/setup/abc"
    assert check_return_to("HTTPS://Console.Example.com/x".replace("HTTPS", "https"), BASE)
    # A console under a path prefix: only pages under it.
    assert check_return_to("/console/setup", f"{BASE}/console/") == f"{BASE}/console/setup"
    with pytest.raises(AdminError):
        check_return_to("/other/setup", f"{BASE}/console")
    with pytest.raises(AdminError):
        check_return_to("/consolex/setup", f"{BASE}/console")


def test_settings_default_console_url_and_login_url() -> None:
    s = TestLoginSettings(saml_public_url="https://sso.example.com/", console_port=9000)
    assert s.console_base() == "http://localhost:9000"
    tid = uuid.UUID(int=1)
    assert login_url_for_test(s.saml_public_url, "acme", "okta", tid) == (
        f"https://sso.example.com/saml/acme/okta/login?test={tid}"
    )


def _outcome(**kw: object) -> Outcome:
    base: dict[str, object] = dict(
        event_id=uuid.uuid4(),
        command_type="jit.login",
        tenant_id=uuid.uuid4(),
        source=Source(kind="saml", id="c", label="okta"),
        correlation_id="x",
        occurred_at=datetime.now(UTC),
        result="applied",
        resource_type="User",
        resource={"user_name": "alice"},
    )
    return Outcome.model_validate({**base, **kw})


def test_preview_of_a_create() -> None:
    p = preview_from_outcome(
        _outcome(
            changes={"user_name": Change(after="alice"), "groups.jit": Change(before=[], after=["Sales", "Eng"])},
            notes=("created", "would_fail:policy:this tenant allows one group per user: not added to 'Eng'"),
        )
    )
    assert p.action == "create"
    assert p.changes == {"user_name": {"before": None, "after": "alice"}}
    assert p.groups_added == ["Sales", "Eng"] and p.groups_removed == []
    assert p.refusals == ["this tenant allows one group per user: not added to 'Eng'"]
    assert p.user == {"user_name": "alice"}


def test_preview_of_an_update_a_match_a_link_and_a_refusal() -> None:
    p = preview_from_outcome(
        _outcome(
            changes={
                "given_name": Change(before="Alice", after="Alicia"),
                "groups.jit": Change(before=["Beta", "Sales"], after=["Eng", "Sales"]),
            }
        )
    )
    assert p.action == "update" and p.changes == {"given_name": {"before": "Alice", "after": "Alicia"}}
    assert p.groups_added == ["Eng"] and p.groups_removed == ["Beta"]
    assert preview_from_outcome(_outcome(result="unchanged")).action == "match"
    linked = preview_from_outcome(_outcome(result="unchanged", notes=("linked:verified_domain",)))
    assert linked.action == "update" and linked.changes == {"linked": {"before": None, "after": "verified_domain"}}
    refused = preview_from_outcome(
        _outcome(result="failed", resource=None, error=ErrorInfo(code="user_not_found", message="no user 'alice'"))
    )
    assert refused.action == "refuse" and refused.refusals == ["no user 'alice'"] and refused.user is None


def test_checks_stop_at_the_one_that_refused() -> None:
    assert [c.name for c in checks()] == list(CHECK_NAMES) and all(c.ok for c in checks())
    failed = checks("audience", "meant for another service")
    assert [c.name for c in failed][-1] == "audience"
    assert failed[-1] == Check("audience", False, "meant for another service")
    assert all(c.ok for c in failed[:-1]) and "signature" in [c.name for c in failed[:-1]]
    assert checks("replay", "used")[-2].name == "recipient"
    # A reason no check names is still reported, after the others.
    assert checks("something_new", "why")[-1] == Check("something_new", False, "why")
    assert len(RELAY_PREFIX) + 36 <= 80  # saml-bindings §3.4.3


def _b64(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


RESPONSE = """<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"
 xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" ID="r">
 <saml:Issuer>https://idp.example/</saml:Issuer>
 <saml:Assertion ID="a"><saml:Issuer>https://idp.example/</saml:Issuer>
  <ds:Signature><ds:SignedInfo>
   <ds:SignatureMethod Algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1"/>
   <ds:Reference><ds:DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/></ds:Reference>
  </ds:SignedInfo></ds:Signature>
  <saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">alice@x</saml:NameID>
  </saml:Subject>
  <saml:AttributeStatement>
   <saml:Attribute Name="groups"><saml:AttributeValue>Sales</saml:AttributeValue>
   <saml:AttributeValue>Eng</saml:AttributeValue></saml:Attribute>
  </saml:AttributeStatement>
 </saml:Assertion></samlp:Response>"""


def test_a_refused_response_is_read_without_trusting_it() -> None:
    r = inspect_unverified(_b64(RESPONSE), 64 * 1024)
    assert r.issuer == "https://idp.example/" and r.name_id == "alice@x"
    assert r.name_id_format and r.name_id_format.endswith("emailAddress")
    assert r.attributes == {"groups": ["Sales", "Eng"]}
    assert r.signature_algorithms == [
        "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
        "http://www.w3.org/2000/09/xmldsig#sha1",
    ]
    assert r.encryption_algorithms == []


@pytest.mark.parametrize(
    "raw",
    [
        "not base64!",
        _b64("not xml"),
        _b64('<!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>'),
        _b64("<r/>" + " " * 70_000),  # larger than allowed
        "",
    ],
)
def test_unreadable_responses_show_nothing(raw: str) -> None:
    r = inspect_unverified(raw, 64 * 1024)
    assert r.issuer is None and r.attributes == {} and r.signature_algorithms == []


def test_received_values_are_bounded() -> None:
    many = "".join(
        f'<saml:Attribute Name="a{i}"><saml:AttributeValue>{"x" * 5000}</saml:AttributeValue></saml:Attribute>'
        for i in range(150)
    )
    xml = RESPONSE.replace("<saml:AttributeStatement>", f"<saml:AttributeStatement>{many}")
    r = inspect_unverified(_b64(xml), 4 * 1024 * 1024)
    assert len(r.attributes) == 100 and all(len(v[0]) <= 1000 for v in r.attributes.values())
