"""Attribute presets of the SAML IdPs Provisio knows: pure data, nothing else.

Each preset maps a Provisio user field to the SAML attribute name(s) the IdP sends by
default (the first name found in an assertion wins). ``user_name`` comes from the
NameID unless a connection maps it to a claim with ``--map user_name=CLAIM``; every
``--map`` key that is not a standard field becomes a custom field
(``attributes["custom"][KEY]`` on the user).

Sources:
- Entra ID: "Customize claims issued in the SAML token for enterprise applications"
  (claim namespaces ``http://schemas.xmlsoap.org/ws/2005/05/identity/claims/…``) and
  "Configure group claims" (``…/ws/2008/06/identity/claims/groups``; above 150 groups in
  a SAML token Entra sends the overage claim ``http://schemas.microsoft.com/claims/groups.link``
  instead of the groups).
- Okta: the attribute statements of an app integration (firstName, lastName, email) and
  its group attribute statement, conventionally named ``groups``.
- Google Workspace: a custom SAML app sends only the attributes its admin maps under
  "Attribute mapping"; these are the names our setup guide asks for.
- JumpCloud: its SAML connector's user attributes (email, firstname, lastname) and the
  group attribute ``memberOf`` ("Include group attribute").
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

STANDARD_FIELDS: Final = ("user_name", "email", "given_name", "family_name", "display_name", "groups", "groups_overage")

ENTRA_CLAIMS: Final = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/"

PRESETS: Final = MappingProxyType(
    {
        "entra": MappingProxyType(
            {
                "email": (ENTRA_CLAIMS + "emailaddress", ENTRA_CLAIMS + "name"),
                "given_name": (ENTRA_CLAIMS + "givenname",),
                "family_name": (ENTRA_CLAIMS + "surname",),
                "display_name": ("http://schemas.microsoft.com/identity/claims/displayname",),
                "groups": ("http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",),
                "groups_overage": ("http://schemas.microsoft.com/claims/groups.link",),
            }
        ),
        "okta": MappingProxyType(
            {
                "email": ("email",),
                "given_name": ("firstName",),
                "family_name": ("lastName",),
                "display_name": ("displayName",),
                "groups": ("groups",),
            }
        ),
        "google": MappingProxyType(
            {
                "email": ("email",),
                "given_name": ("firstName",),
                "family_name": ("lastName",),
                "display_name": ("displayName",),
                "groups": ("groups",),
            }
        ),
        "jumpcloud": MappingProxyType(
            {
                "email": ("email",),
                "given_name": ("firstname",),
                "family_name": ("lastname",),
                "display_name": ("displayname",),
                "groups": ("memberOf",),
            }
        ),
        # Any SAML 2.0 IdP: the common short names plus the LDAP OIDs (urn:oid, RFC 4519 /
        # eduPerson) that Shibboleth-style IdPs send.
        "generic": MappingProxyType(
            {
                "email": ("email", "mail", "urn:oid:0.9.2342.19200300.100.1.3"),
                "given_name": ("firstName", "givenName", "urn:oid:2.5.4.42"),
                "family_name": ("lastName", "sn", "urn:oid:2.5.4.4"),
                "display_name": ("displayName", "urn:oid:2.16.840.1.113730.3.1.241"),
                "groups": ("groups", "memberOf", "urn:oid:1.3.6.1.4.1.5923.1.5.1.1"),
            }
        ),
    }
)
