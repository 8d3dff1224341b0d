"""What an operator can do about each failure: the wording of the failure mails
(services/auditor/digest.py) and of the console's user page. Pure."""

from __future__ import annotations

# What an operator can do about each contract.ErrorCode.
ADVICE: dict[str, str] = {
    "uniqueness": (
        "A user or group with this userName/displayName already exists in the tenant (letter case "
        "is ignored). Match the existing account in the IdP (Entra ID: matching attribute; Okta: "
        "'import' and link) or rename the new one."
    ),
    "not_found": (
        "The IdP referred to a user or group Provisio does not have (deleted here, or created before "
        "provisioning was set up). Re-provision it from the IdP (Entra ID: 'Provision on demand'; "
        "Okta: 'Force sync')."
    ),
    "version_mismatch": (
        "Two updates of the same resource crossed; the older one was refused so it cannot overwrite "
        "the newer. The IdP sends it again on its next cycle; act only if it repeats."
    ),
    "invalid_value": (
        "The IdP sent a value Provisio refuses (see the messages, e.g. an unknown member id). Check "
        "the attribute mappings of the provisioning app in the IdP."
    ),
    "mutability": (
        "The tenant does not allow userName/email to change. Undo the rename in the IdP, or relax "
        "the policy: provisio tenant policy TENANT --mutable-user-name."
    ),
    "policy": (
        "A tenant policy refused the change (e.g. one group per user). Fix the group assignments "
        "in the IdP, or the policy: provisio tenant policy TENANT."
    ),
    "user_not_found": (
        "A SAML login for a user who does not exist, on a connection with JIT off. Provision the "
        "user by SCIM first, or switch the connection's JIT mode to create."
    ),
    "dead_letter": (
        "A command failed repeatedly and was moved to the dead-letter stream. Fix the cause, then "
        "look at it with `provisio dlq list --tenant TENANT` and replay it with `provisio dlq replay`."
    ),
    "internal": (
        "An error inside Provisio. Please report it to the Provisio operators with the correlation ids below."
    ),
}
DEFAULT_ADVICE = "See the messages below; `provisio audit search` shows each attempt in full."


def advice(code: str | None) -> str:
    return ADVICE.get(code or "", DEFAULT_ADVICE)
