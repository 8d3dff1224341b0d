"""The SAML 2.0 gateway: SP metadata, SP-initiated logins, the ACS, the code exchange."""
