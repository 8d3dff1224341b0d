"""Pure SAML pieces: presets, attribute maps, claim mapping, IdP metadata checks."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from provisio_lib import sso
from provisio_lib.sso_presets import PRESETS, STANDARD_FIELDS
from saml_gateway.mapping import EMAIL_NAME_ID, MissingClaim, map_claims

pytestmark = pytest.mark.unit

ENTRA = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"
GROUPS = "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups"
OVERAGE = "http://schemas.microsoft.com/claims/groups.link"


def test_presets_carry_each_idps_real_names() -> None:
    assert set(PRESETS) == {"entra", "google", "okta", "jumpcloud", "generic"}
    assert PRESETS["entra"]["given_name"][0] == ENTRA + "givenname"
    assert PRESETS["entra"]["family_name"][0] == ENTRA + "surname"
    assert PRESETS["entra"]["groups"] == (GROUPS,)
    assert PRESETS["entra"]["groups_overage"] == (OVERAGE,)
    assert PRESETS["okta"]["given_name"] == ("firstName",) and PRESETS["okta"]["groups"] == ("groups",)
    assert PRESETS["jumpcloud"]["given_name"] == ("firstname",) and PRESETS["jumpcloud"]["groups"] == ("memberOf",)
    for preset in PRESETS.values():
        assert set(preset) <= set(STANDARD_FIELDS)
    with pytest.raises(TypeError):
        PRESETS["okta"]["email"] = ("x",)  # type: ignore[index]


def test_map_overrides_and_custom_fields() -> None:
    amap = sso.attribute_map("okta", sso.parse_map_options(["email=mail", "department=dept", "user_name=login"]))
    assert amap["email"] == ["mail"] and amap["department"] == ["dept"] and amap["user_name"] == ["login"]
    assert amap["given_name"] == ["firstName"]
    assert sso.attribute_map("okta") == {k: list(v) for k, v in PRESETS["okta"].items()}  # presets untouched
    for bad in (["novalue"], ["=claim"], ["field="]):
        with pytest.raises(sso.MappingError):
            sso.parse_map_options(bad)
    with pytest.raises(sso.MappingError, match="field name"):
        sso.attribute_map("okta", {"bad field!": "x"})
    with pytest.raises(sso.MappingError, match="unknown preset"):
        sso.attribute_map("adfs")
    assert sso.check_required(["given_name", "family_name", "given_name"], amap) == ["given_name", "family_name"]
    with pytest.raises(sso.MappingError, match="not a mapped field"):
        sso.check_required(["shoe_size"], amap)


def _entra_claims(**extra: list[str]) -> dict[str, list[str]]:
    claims = {
        ENTRA + "emailaddress": ["alice@acme.test"],
        ENTRA + "givenname": ["Alice"],
        ENTRA + "surname": ["Liddell"],
    }
    claims.update(extra)
    return claims


def test_map_claims_entra() -> None:
    amap = sso.attribute_map("entra", {"department": ENTRA + "department"})
    m = map_claims(
        amap,
        [],
        "alice@acme.test",
        EMAIL_NAME_ID,
        _entra_claims(**{GROUPS: ["Sales", "Sales", "Eng"], ENTRA + "department": ["R&D"]}),
    )
    assert m.user_name == "alice@acme.test" and m.email == "alice@acme.test"
    assert (m.given_name, m.family_name, m.display_name) == ("Alice", "Liddell", None)
    assert m.groups == ("Sales", "Eng") and m.groups_overage is False
    assert m.custom == {"department": "R&D"}


def test_no_group_claim_is_none_and_overage_is_flagged() -> None:
    amap = sso.attribute_map("entra")
    assert map_claims(amap, [], "a", None, _entra_claims()).groups is None
    over = map_claims(amap, [], "a", None, _entra_claims(**{OVERAGE: ["https://graph…"]}))
    assert over.groups is None and over.groups_overage is True
    assert map_claims(amap, [], "a", None, _entra_claims(**{GROUPS: []})).groups == ()  # in no groups


def test_required_claim_missing_names_the_claim() -> None:
    amap = sso.attribute_map("entra")
    claims = _entra_claims()
    del claims[ENTRA + "surname"]
    with pytest.raises(MissingClaim) as err:
        map_claims(amap, ["given_name", "family_name"], "a", None, claims)
    assert err.value.field == "family_name" and ENTRA + "surname" in str(err.value)
    map_claims(amap, ["user_name", "given_name"], "a", None, claims)  # NameID always there


def test_user_name_from_claim_and_email_from_nameid() -> None:
    amap = sso.attribute_map("jumpcloud", {"user_name": "uid"})
    m = map_claims(amap, [], "bob@x.test", EMAIL_NAME_ID, {"uid": ["bob"], "firstname": ["Bob"]})
    assert m.user_name == "bob" and m.email == "bob@x.test" and m.given_name == "Bob"
    with pytest.raises(MissingClaim, match="uid"):
        map_claims(amap, [], "bob@x.test", EMAIL_NAME_ID, {})
    unspecified = map_claims(sso.attribute_map("okta"), [], "bob", None, {})
    assert unspecified.email is None


def _cert_b64() -> str:
    _key, cert = sso.generate_sp_keypair("idp")
    return sso.cert_b64(cert)


def _metadata(
    cert: str | None = None, sso_binding: str = sso.BINDING_REDIRECT, extra: str = "", root_attrs: str = ""
) -> str:
    kd = (
        (
            f'<md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{cert}'
            "</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>"
        )
        if cert
        else ""
    )
    return (
        f'<md:EntityDescriptor xmlns:md="{sso.MD_NS}" xmlns:ds="{sso.DS_NS}" entityID="https://idp.test/" {root_attrs}>'
        f'<md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">{kd}'
        f'<md:SingleSignOnService Binding="{sso_binding}" Location="https://idp.test/sso"/>'
        f"</md:IDPSSODescriptor>{extra}</md:EntityDescriptor>"
    )


def test_metadata_accepted() -> None:
    info = sso.parse_idp_metadata(_metadata(_cert_b64()))
    assert info.entity_id == "https://idp.test/" and info.sso_url == "https://idp.test/sso"
    assert len(info.signing_certs) == 1 and info.cert_subjects == ("CN=idp",)
    post_only = sso.parse_idp_metadata(_metadata(_cert_b64(), sso.BINDING_POST))
    assert post_only.sso_binding == sso.BINDING_POST


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("not xml at all", "not well-formed"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><x/>', "DTD or entities"),
        ("<root/>", "root must be md:EntityDescriptor"),
        (_metadata(None), "no signing certificate"),
        (_metadata("bm90IGEgY2VydA=="), "not a valid certificate"),
        (_metadata("x", sso_binding="urn:oasis:names:tc:SAML:2.0:bindings:SOAP"), "no SingleSignOnService"),
        (_metadata("x", root_attrs='validUntil="2001-01-01T00:00:00Z"'), "expired"),
        (
            f'<md:EntityDescriptor xmlns:md="{sso.MD_NS}" entityID="sp"><md:SPSSODescriptor/></md:EntityDescriptor>',
            "no IDPSSODescriptor",
        ),
        ("<a>" + "x" * (1024 * 1024) + "</a>", "larger than"),
    ],
)
def test_bad_metadata_is_one_clear_line(xml: str, message: str) -> None:
    with pytest.raises(sso.MetadataError, match=message) as err:
        sso.parse_idp_metadata(xml, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert "\n" not in str(err.value)


def test_sp_keypair_and_urls() -> None:
    from cryptography import x509

    key_pem, cert_pem = sso.generate_sp_keypair("provisio acme/entra")
    assert "PRIVATE KEY" in key_pem
    cert = x509.load_der_x509_certificate(base64.b64decode(sso.cert_b64(cert_pem)))
    assert cert.public_key().key_size == 3072
    urls = sso.sp_urls("https://sso.example.com/", "acme", "entra")
    assert urls.acs == "https://sso.example.com/saml/acme/entra/acs"
    assert urls.login == "https://sso.example.com/saml/acme/entra/login"
    assert urls.entity_id == urls.metadata == "https://sso.example.com/saml/acme/entra/metadata"
