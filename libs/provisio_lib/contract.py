"""The event contract: every message that crosses a Redis stream.

A ``Command`` asks the provisioner to change state; an ``Outcome`` says what happened.
Both are frozen, versioned pydantic models that travel as compact JSON (one stream field,
``__data__``) so that ``redis-cli XRANGE`` shows them as they are.

Rules:
- ``event_id`` is the idempotency key: the provisioner records it with the change, in
  one transaction, and a redelivered command gets the recorded outcome back.
- ``version`` is the schema version of the envelope and payload. A reader upcasts older
  versions with the pure functions in ``UPCASTERS`` before validation.
- The committed JSON Schemas under ``schemas/`` are kept in step by a test; regenerate
  them with ``python -m provisio_lib.contract``.

The payloads are protocol neutral: the gateways translate SCIM resources and SAML
assertions into these shapes, and the workers never see SCIM or SAML.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

SCHEMA_VERSION: Final = 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- sources


class Source(_Model):
    """Who asked: a SCIM token (by label), an SSO connection, or an operator's CLI."""

    kind: Literal["scim", "saml", "cli"]
    id: str = Field(description="SCIM token id, SSO connection id, or the operator's name")
    label: str = Field(description="Human name: token label, connection name, 'cli'")


# --------------------------------------------------------------------------- resource data


class Email(_Model):
    value: str
    type: str | None = None
    primary: bool = False
    display: str | None = None  # SCIM emails[].display (RFC 7643 §4.1.2), kept as sent


class UserData(_Model):
    """A user as Provisio stores it. ``attributes`` holds everything else the IdP sent
    (SCIM extension attributes, phone numbers, custom JIT fields), keyed as in SCIM."""

    user_name: str = Field(min_length=1, max_length=512)
    external_id: str | None = None
    active: bool = True
    display_name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    emails: tuple[Email, ...] = ()
    sso_name: str | None = Field(default=None, description="SSO connection this user signs in with (Splashtop ssoName)")
    attributes: dict[str, Any] = Field(default_factory=dict)


class GroupData(_Model):
    display_name: str = Field(min_length=1, max_length=512)
    external_id: str | None = None
    members: tuple[uuid.UUID, ...] | None = Field(
        default=None, description="Full member list (user ids); None leaves members unchanged"
    )
    attributes: dict[str, Any] = Field(default_factory=dict)


class GroupRef(_Model):
    id: uuid.UUID
    display_name: str


class UserState(UserData):
    """A user as committed (``Outcome.resource`` of user commands and JIT logins)."""

    id: uuid.UUID
    version: int
    created_at: datetime
    updated_at: datetime
    created_by: Literal["scim", "jit", "cli"] = "scim"
    groups: tuple[GroupRef, ...] = ()


class GroupState(_Model):
    """A group as committed (``Outcome.resource`` of group commands). Members are not
    carried (a group may have thousands): readers query ``memberships``."""

    id: uuid.UUID
    display_name: str
    external_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    version: int
    created_at: datetime
    updated_at: datetime
    created_by: Literal["scim", "jit", "cli"] = "scim"


# --------------------------------------------------------------------------- command payloads


class CreateUser(_Model):
    type: Literal["user.create"] = "user.create"
    user_id: uuid.UUID = Field(description="Minted by the gateway, so a retried create is the same user")
    data: UserData


class ReplaceUser(_Model):
    """Full replace (SCIM PUT, or a PATCH the gateway applied to the state it read).
    ``expected_version`` makes a stale write fail instead of overwriting a newer one."""

    type: Literal["user.replace"] = "user.replace"
    user_id: uuid.UUID
    data: UserData
    expected_version: int | None = None


class DeleteUser(_Model):
    """Deprovision. The tenant's policy decides: deactivate (default) or delete."""

    type: Literal["user.delete"] = "user.delete"
    user_id: uuid.UUID
    expected_version: int | None = None


class CreateGroup(_Model):
    type: Literal["group.create"] = "group.create"
    group_id: uuid.UUID
    data: GroupData


class ReplaceGroup(_Model):
    type: Literal["group.replace"] = "group.replace"
    group_id: uuid.UUID
    data: GroupData
    expected_version: int | None = None


class ChangeGroupMembers(_Model):
    """Add and remove members without a full replace (SCIM PATCH on members); both are
    set operations, so they commute and need no version check."""

    type: Literal["group.members"] = "group.members"
    group_id: uuid.UUID
    add: tuple[uuid.UUID, ...] = ()
    remove: tuple[uuid.UUID, ...] = ()


class DeleteGroup(_Model):
    type: Literal["group.delete"] = "group.delete"
    group_id: uuid.UUID


class JitLogin(_Model):
    """A SAML login that passed every check, with the claims mapped to user fields."""

    type: Literal["jit.login"] = "jit.login"
    connection_id: uuid.UUID
    connection_name: str
    mode: Literal["off", "create", "sync"]
    name_id: str
    user_name: str = Field(min_length=1, max_length=512)
    email: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    display_name: str | None = None
    custom: dict[str, Any] = Field(default_factory=dict, description="Mapped custom fields")
    groups: tuple[str, ...] | None = Field(
        default=None, description="Group names from the group claim; None when the IdP sent none"
    )
    groups_overage: bool = Field(
        default=False, description="Entra sent the groups.link overage claim instead of groups"
    )
    session_index: str | None = None
    dry_run: bool = Field(
        default=False,
        description="A test login (issue 14): the provisioner runs the same code in a transaction it rolls "
        "back and answers what a real login would do; nothing is stored, announced or audited",
    )


CommandPayload = Annotated[
    CreateUser | ReplaceUser | DeleteUser | CreateGroup | ReplaceGroup | ChangeGroupMembers | DeleteGroup | JitLogin,
    Field(discriminator="type"),
]

CommandType = Literal[
    "user.create",
    "user.replace",
    "user.delete",
    "group.create",
    "group.replace",
    "group.members",
    "group.delete",
    "jit.login",
]


# --------------------------------------------------------------------------- envelope


class Command(_Model):
    """The envelope of a command on a ``…:commands`` stream."""

    event_id: uuid.UUID = Field(default_factory=new_id, description="Idempotency key")
    type: CommandType
    version: Literal[1] = SCHEMA_VERSION
    tenant_id: uuid.UUID
    source: Source
    correlation_id: str = Field(min_length=1, max_length=128)
    occurred_at: datetime = Field(default_factory=utcnow)
    reply_to: str | None = Field(default=None, description="Stream the waiting gateway listens on, if any")
    attempt: int = Field(default=0, ge=0, description="Times re-published from a dead letter")
    payload: CommandPayload

    @model_validator(mode="before")
    @classmethod
    def _type_from_payload(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data:
            payload = data.get("payload")
            ptype = payload.get("type") if isinstance(payload, dict) else getattr(payload, "type", None)
            if ptype is not None:
                data = {**data, "type": ptype}
        return data

    @model_validator(mode="after")
    def _type_matches_payload(self) -> Command:
        if self.type != self.payload.type:
            raise ValueError(f"envelope type {self.type!r} != payload type {self.payload.type!r}")
        return self


# --------------------------------------------------------------------------- outcome


ErrorCode = Literal[
    "uniqueness",  # userName / displayName taken (any letter case)
    "not_found",  # the resource does not exist (or not in this tenant)
    "version_mismatch",  # expected_version is stale
    "invalid_value",  # data the provisioner refuses (e.g. unknown member id)
    "mutability",  # tenant policy: userName immutable
    "policy",  # tenant policy refused it (e.g. one group per user)
    "user_not_found",  # JIT off and no such user
    "not_linked",  # a JIT login matched a user its connection is not authoritative for
    "dead_letter",  # failed too often, moved to the dead-letter stream
    "refused",  # a SAML login the gateway refused (signature, audience, replay, ...)
    "internal",  # a bug: the message says what
]


class ErrorInfo(_Model):
    code: ErrorCode
    message: str
    field: str | None = None


class Change(_Model):
    before: Any = None
    after: Any = None


class Outcome(_Model):
    """What the provisioner did with a command; published after commit to the waiting
    gateway (``reply_to``) and to the audit stream."""

    event_id: uuid.UUID = Field(description="The command's event_id")
    type: Literal["outcome"] = "outcome"
    version: Literal[1] = SCHEMA_VERSION
    command_type: CommandType
    tenant_id: uuid.UUID
    source: Source
    correlation_id: str
    occurred_at: datetime = Field(description="When the gateway accepted the command")
    completed_at: datetime = Field(default_factory=utcnow)
    result: Literal["applied", "unchanged", "failed"]
    error: ErrorInfo | None = None
    resource_type: Literal["User", "Group"] | None = None
    resource_id: uuid.UUID | None = None
    user_name: str | None = None
    resource: dict[str, Any] | None = Field(
        default=None,
        description="Committed state: UserState or GroupState as JSON (None after a delete)",
    )
    changes: dict[str, Change] = Field(default_factory=dict, description="Field → before/after; no secrets")
    notes: tuple[str, ...] = Field(default=(), description="e.g. 'groups_overage', 'deactivated instead of deleted'")
    redelivered: bool = Field(default=False, description="Answered from the inbox, not applied again")
    latency_ms: float | None = Field(default=None, description="occurred_at → commit")

    @property
    def ok(self) -> bool:
        return self.result != "failed"


# --------------------------------------------------------------------------- versioning

# (type-or-"*", from_version) → pure function dict → dict producing from_version + 1.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[int, Upcaster] = {}


def upcast(raw: dict[str, Any]) -> dict[str, Any]:
    version = int(raw.get("version", 1))
    if version > SCHEMA_VERSION:
        raise ValueError(f"message version {version} is newer than this code ({SCHEMA_VERSION})")
    while version < SCHEMA_VERSION:
        raw = UPCASTERS[version](raw)
        version = int(raw["version"])
    return raw


def encode(message: Command | Outcome) -> bytes:
    return message.model_dump_json(exclude_none=False).encode()


def decode_command(data: bytes | str) -> Command:
    try:  # the current version: pydantic-core parses and validates in one pass
        return Command.model_validate_json(data)
    except ValidationError:
        return Command.model_validate(upcast(json.loads(data)))


def decode_outcome(data: bytes | str) -> Outcome:
    try:
        return Outcome.model_validate_json(data)
    except ValidationError:
        return Outcome.model_validate(upcast(json.loads(data)))


_OUTCOME_LIST: TypeAdapter[list[Outcome]] = TypeAdapter(list[Outcome])


def encode_outcomes(encoded: list[bytes]) -> bytes:
    """Outcomes already ``encode``d, as one JSON array."""
    return b"[" + b",".join(encoded) + b"]"


def decode_outcomes(data: bytes | str) -> list[Outcome]:
    """A JSON array of Outcomes (``encode_outcomes``); older versions are upcast one by one."""
    try:
        return _OUTCOME_LIST.validate_json(data)
    except ValidationError:
        return [Outcome.model_validate(upcast(raw)) for raw in json.loads(data)]


# --------------------------------------------------------------------------- JSON Schemas

SCHEMA_DIR = Path(__file__).with_name("schemas")
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "command": Command,
    "outcome": Outcome,
    "user-state": UserState,
    "group-state": GroupState,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema() for name, model in SCHEMA_MODELS.items()}


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.v{SCHEMA_VERSION}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_schemas():
        print(p)
    # The AsyncAPI document (docs/asyncapi.yaml) embeds these schemas: keep it in step too.
    from provisio_lib import asyncapi

    asyncapi.main([])
