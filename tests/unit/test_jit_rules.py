"""Pure JIT rules (issue 13): who a login may adopt, ssoName routing, group claims,
tenant policies for every source, claim limits."""

from __future__ import annotations

import uuid

import pytest

from provisio_lib import sso
from provisioner.core import Policy
from provisioner.domain import (
    adoption_basis,
    email_domain,
    groups_claim,
    immutable_change,
    looks_like_object_id,
    match_group_claims,
    one_group_refusals,
    sso_name_refusal,
)
from saml_gateway.mapping import ClaimTooLong, MappedLogin, check_claims

pytestmark = pytest.mark.unit


def basis(**kw: object) -> str | None:
    args: dict[str, object] = dict(
        connection_name="partner",
        connection_names=["corp", "partner"],
        verified_domains=[],
        linked_here=False,
        user_sso_name=None,
        user_email="victim@acme.test",
        user_name="victim@acme.test",
    )
    return adoption_basis(**{**args, **kw})  # type: ignore[arg-type]


def test_adoption_needs_an_authoritative_connection() -> None:
    assert basis() is None  # another IdP's claim alone proves nothing
    assert basis(linked_here=True) == "linked"
    assert basis(user_sso_name="Partner") == "sso_name"
    assert basis(verified_domains=["acme.test"]) == "verified_domain"
    assert basis(verified_domains=["ACME.test"], user_email=None, user_name="Victim@Acme.Test") == "verified_domain"
    assert basis(verified_domains=["other.test"]) is None
    assert basis(connection_names=["partner"]) == "only_connection"
    # The stored user's email decides, not its userName, when it has one.
    assert basis(verified_domains=["acme.test"], user_email="v@corp.test") is None


def test_sso_name_restricts_to_the_connection_it_names() -> None:
    assert sso_name_refusal("corp", "partner", ["corp", "partner"]) is not None
    assert sso_name_refusal("CORP", "corp", ["corp", "partner"]) is None
    assert sso_name_refusal("some-label", "partner", ["corp", "partner"]) is None  # names no connection
    assert sso_name_refusal(None, "partner", ["corp"]) is None


def test_email_domain_and_domain_names() -> None:
    assert email_domain("a@Example.COM.") == "example.com"
    assert email_domain("no-at") is None and email_domain(None) is None
    assert sso.normalize_domain(" @Example.com ") == "example.com"
    assert sso.normalize_domain("bücher.de") == "xn--bcher-kva.de"
    for bad in ("example", "a..b", "-a.com", "a b.com", ""):
        with pytest.raises(sso.MappingError):
            sso.normalize_domain(bad)


def test_group_claims_match_external_id_then_name() -> None:
    g1, g2 = uuid.uuid4(), uuid.uuid4()
    oid = str(uuid.uuid4())
    groups = [
        {"id": g1, "display_name": "Sales", "external_id": oid},
        {"id": g2, "display_name": "Ops", "external_id": None},
    ]
    found, missing = match_group_claims([oid, "ops", " New ", "", "ops"], groups)
    assert found == {oid: g1, "ops": g2} and missing == ["New"]
    assert looks_like_object_id(oid) and not looks_like_object_id("Sales") and not looks_like_object_id(oid + "x")


def test_absent_groups_claim() -> None:
    assert groups_claim(("a",), "none", False) == ("a",)
    assert groups_claim(None, "auto", False) is None  # never sent groups: says nothing
    assert groups_claim(None, "auto", True) == ()  # sent them before: absent = none
    assert groups_claim(None, "none", False) == ()
    assert groups_claim(None, "unchanged", True) is None


def test_one_group_per_user() -> None:
    assert one_group_refusals([], ["a"]) == (["a"], [])
    assert one_group_refusals([], ["a", "b"]) == ([], ["a", "b"])
    assert one_group_refusals(["a"], ["a"]) == ([], [])
    assert one_group_refusals(["a"], ["b"]) == ([], ["b"])


def test_immutable_covers_user_name_and_email() -> None:
    on, off = Policy(immutable_user_name=True), Policy(immutable_user_name=False)
    before = {"user_name": "Al", "email": "al@acme.test"}
    assert immutable_change(off, before, {"user_name": "Bo", "email": "x@y"}) is None
    assert immutable_change(on, before, {"user_name": "AL", "email": "AL@acme.test"}) is None
    assert immutable_change(on, before, {"user_name": "Bo", "email": "al@acme.test"}) == "userName"
    assert immutable_change(on, before, {"user_name": "Al", "email": "new@acme.test"}) == "emails"
    assert immutable_change(on, before, {"user_name": "Al", "email": None}) == "emails"
    assert immutable_change(on, {"user_name": "Al", "email": None}, {"user_name": "Al", "email": "a@b.c"}) is None


def _login(**kw: object) -> MappedLogin:
    base: dict[str, object] = dict(
        user_name="alice@acme.test",
        email="alice@acme.test",
        given_name="A",
        family_name="L",
        display_name=None,
        custom={},
        groups=None,
        groups_overage=False,
    )
    return MappedLogin(**{**base, **kw})  # type: ignore[arg-type]


def test_claim_limits() -> None:
    check_claims(_login(groups=("g" * 512,), custom={"dept": ["x" * 4096]}), "n" * 512)
    cases = [
        (_login(), "n" * 513, "NameID"),
        (_login(email="e" * 513), "n", "email"),
        (_login(given_name="g" * 1025), "n", "given_name"),
        (_login(groups=("g" * 513,)), "n", "groups"),
        (_login(groups=tuple(str(i) for i in range(1001))), "n", "groups"),
        (_login(custom={"dept": "x" * 4097}), "n", "dept"),
        (_login(custom={"dept": ["x"] * 101}), "n", "dept"),
    ]
    for login, name_id, field in cases:
        with pytest.raises(ClaimTooLong) as err:
            check_claims(login, name_id)
        assert err.value.field == field
