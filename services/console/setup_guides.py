"""Step-by-step instructions the setup wizard shows for each IdP: pure data.

Sources (see /work/shared/seeds and PRODUCT.md): Microsoft Learn's Entra ID enterprise-app
SAML and provisioning pages (Tenant URL + Secret Token, "Provisioning Status: On", ~40
minute cycles), Okta's SAML app integration wizard and its SCIM provisioning tab
(Splashtop's Okta guide: API Token, Push Groups), Google Workspace's custom SAML app,
JumpCloud's SAML connector (user attributes, "Include group attribute" memberOf).
``{acs}``, ``{entity_id}``, ``{metadata}``, ``{login}`` and ``{scim}`` are filled in with
the connection's own values.
"""

from __future__ import annotations

from typing import Final

IDPS: Final = {
    "entra": "Microsoft Entra ID",
    "okta": "Okta",
    "google": "Google Workspace",
    "jumpcloud": "JumpCloud",
    "generic": "Another SAML 2.0 IdP",
}

SSO_STEPS: Final[dict[str, tuple[str, ...]]] = {
    "entra": (
        "In the Microsoft Entra admin center, go to Entra ID → Enterprise apps → New application → "
        "Create your own application; choose “Integrate any other application you don't find in the gallery”.",
        "Open Single sign-on → SAML. Under Basic SAML Configuration, set Identifier (Entity ID) to {entity_id} "
        "and Reply URL (Assertion Consumer Service URL) to {acs}. Set Sign on URL to {login}.",
        "Under Attributes & Claims, keep the default claims (email, given name, surname, name). To send groups, "
        "choose Add a group claim → Security groups (more than 150 groups: Entra sends a link instead; Provisio "
        "reports it).",
        "Under SAML Certificates, copy the App Federation Metadata Url (or download Federation Metadata XML) "
        "and give it to this page below.",
        "Under Users and groups, assign the people who may sign in.",
    ),
    "okta": (
        "In the Okta Admin Console, go to Applications → Create App Integration → SAML 2.0.",
        "Single sign-on URL: {acs} (tick “Use this for Recipient URL and Destination URL”). "
        "Audience URI (SP Entity ID): {entity_id}. Name ID format: EmailAddress (or Persistent).",
        "Attribute Statements: email → user.email, firstName → user.firstName, lastName → user.lastName, "
        "displayName → user.displayName. Group Attribute Statement: name groups, filter Matches regex .* "
        "(or only the groups this app needs).",
        "Finish, then on the Sign On tab copy the Metadata URL (or download the IdP metadata) and give it to "
        "this page below.",
        "On the Assignments tab, assign the people or groups who may sign in.",
    ),
    "google": (
        "In the Google Admin console, go to Apps → Web and mobile apps → Add app → Add custom SAML app.",
        "On the Google Identity Provider details step, download the IdP metadata (you upload it below).",
        "Service provider details: ACS URL {acs}, Entity ID {entity_id}, Start URL {login}; Name ID format "
        "EMAIL, Name ID Basic Information → Primary email.",
        "Attribute mapping: Primary email → email, First name → firstName, Last name → lastName. Under Group "
        "membership, pick the groups to send and name the app attribute groups.",
        "Turn the app ON for everyone, or for the organizational units or groups who may sign in "
        "(it can take a few minutes to apply).",
    ),
    "jumpcloud": (
        "In the JumpCloud Admin Portal, go to SSO Applications → Add New Application → Custom SAML App.",
        "IdP Entity ID: any unique name; SP Entity ID: {entity_id}; ACS URL: {acs}; Login URL: {login}. "
        "SAMLSubject NameID: email.",
        "User attributes: email → email, firstname → firstname, lastname → lastname. Tick "
        "“Include group attribute” and name it memberOf.",
        "Activate, then use Export Metadata and upload the file below.",
        "Under User Groups, bind the groups whose members may sign in.",
    ),
    "generic": (
        "Create a SAML 2.0 application (service provider) in your IdP.",
        "Entity ID / audience: {entity_id}. Assertion Consumer Service URL (HTTP-POST binding): {acs}. "
        "Or import our SP metadata from {metadata}.",
        "Send the user's email (email or mail), first name (firstName or givenName), last name (lastName or sn) "
        "and, if you want group memberships, a groups attribute.",
        "Sign the response or the assertion (RSA-SHA256). Encrypting the assertion to our certificate is optional.",
        "Give this page your IdP's metadata (a file, its URL, or the entity ID, SSO URL and certificate).",
    ),
}

SCIM_STEPS: Final[dict[str, tuple[str, ...]]] = {
    "entra": (
        "In the Microsoft Entra admin center, go to Entra ID → Enterprise apps and open your app (the same one "
        "as for SSO is fine) → Provisioning → Get started, Provisioning Mode: Automatic.",
        "Under Admin Credentials, set Tenant URL to {scim} and Secret Token to the token below. Select Test "
        "Connection.",
        "Under Mappings, review Provision Microsoft Entra ID Users and Groups (userName ← userPrincipalName, "
        'emails[type eq "work"].value ← mail, active ← Switch([IsSoftDeleted]…)). Save.',
        "Under Settings, choose the Scope (assigned users and groups), set Provisioning Status to On and Save. "
        "The first cycle starts at once; later ones run about every 40 minutes.",
    ),
    "okta": (
        "In the Okta Admin Console, open your app → General → App Settings → Edit, and enable SCIM provisioning. Save.",
        "On the Provisioning tab → Integration → Edit: SCIM connector base URL {scim}, Unique identifier field "
        "for users userName, Supported provisioning actions: Push New Users, Push Profile Updates, Push Groups; "
        "Authentication Mode: HTTP Header, Authorization: Bearer and the token below. Test Connector "
        "Configuration, then Save.",
        "Provisioning → To App → Edit: enable Create Users, Update User Attributes, Deactivate Users. Save.",
        "Assign people (Assignments) and push groups (Push Groups → by name). Note Okta's limit: adding a user "
        "to a pushed group provisions the user but not the membership until the group is pushed again.",
    ),
}


def fill(steps: tuple[str, ...], values: dict[str, str]) -> list[str]:
    return [step.format(**values) for step in steps]
