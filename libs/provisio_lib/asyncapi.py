"""The AsyncAPI document of Provisio's streams, generated from the code.

FastStream builds AsyncAPI from a broker's declared subscribers and publishers; here a
broker that never connects declares who reads and writes each stream of the topology,
typed with the contract's models, so the document's schemas are the contract's. The
result is committed as ``docs/asyncapi.yaml`` (a test keeps it in step)::

    python -m provisio_lib.asyncapi            # rewrite docs/asyncapi.yaml
    python -m provisio_lib.asyncapi -          # print it
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from .contract import SCHEMA_VERSION, Command, Outcome
from .topology import AUDITOR_GROUP, DATA_FIELD, OUTCOMES_FIELD, PROVISIONER_GROUP

DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"

# Channel addresses use the default prefix and a literal "{pN}" / "{r:<instance>}": the
# braces are part of the stream name (a Redis Cluster hash tag), not AsyncAPI parameters.
COMMANDS = "provisio:{pN}:commands"
AUDIT = "provisio:{pN}:audit"
DEAD_LETTERS = "provisio:{pN}:commands:dlq"
REPLIES = "provisio:{r:<instance>}:replies"

_WIRE = (
    f"Each stream entry has one field, `{DATA_FIELD}`, holding the message as compact JSON "
    "(readable with `redis-cli XRANGE`). "
)
_BATCH = (
    f"An entry may instead have one field `{OUTCOMES_FIELD}`, a JSON array of Outcomes in commit "
    "order: the provisioner writes one batch's outcomes as one entry. "
)


def _broker() -> Any:
    from faststream.redis import RedisBroker, StreamSub

    # Never connected: it only carries the declarations the document is made from.
    broker = RedisBroker("redis://redis:6379/0", description="The Redis (or Redis Cluster) holding the streams")

    @broker.publisher(
        stream=COMMANDS,
        schema=Command,
        title="commands",
        description=_WIRE + "Commands for one partition of tenants (N = crc32(tenant_id) % PROVISIO_PARTITIONS), "
        "written by the SCIM and SAML gateways and by `provisio dlq replay`, trimmed at "
        "PROVISIO_STREAM_MAXLEN. Consumer group `provisioner`.",
    )
    @broker.subscriber(
        stream=StreamSub(COMMANDS, group=PROVISIONER_GROUP, consumer="<worker>"),
        title="commands:provisioner",
        description="The provisioner applies each command exactly once in effect and "
        "publishes its Outcome to the command's reply_to stream and to the audit stream.",
    )
    async def apply(command: Command) -> None: ...

    @broker.publisher(
        stream=AUDIT,
        schema=Outcome,
        title="audit",
        description=_WIRE + "Every Outcome of the partition's commands, success or failure (including "
        "`dead_letter` failures), published by the provisioner after commit, and a failed "
        "Outcome (code `refused`) for each SAML login the SAML gateway refuses. " + _BATCH + "Consumer "
        "group `auditor`; other consumers add their own group.",
    )
    @broker.subscriber(
        stream=StreamSub(AUDIT, group=AUDITOR_GROUP, consumer="<worker>"),
        title="audit:auditor",
        description="The auditor writes each Outcome to audit_log and emails failures.",
    )
    async def audit(outcome: Outcome) -> None: ...

    @broker.publisher(
        stream=REPLIES,
        schema=Outcome,
        title="replies",
        description=_WIRE + "Private reply stream of one gateway process (Command.reply_to): the Outcome of "
        "each command it is waiting for. " + _BATCH + "Read with XREAD (no group); "
        "expires when the gateway is gone.",
    )
    async def reply(outcome: Outcome) -> None: ...

    @broker.publisher(
        stream=DEAD_LETTERS,
        schema=Command,
        title="dead-letters",
        description=f"Commands that failed too often. `{DATA_FIELD}` holds the original Command "
        "JSON; the other fields say why: `error` (text), `deliveries`, `failed_at` (ISO time), "
        "`stream` and `entry_id` (where it came from), `group`. Listed and replayed with "
        "`provisio dlq`.",
    )
    async def dead_letter(command: Command) -> None: ...

    return broker


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document as plain data."""
    from faststream.specification import AsyncAPI

    spec = AsyncAPI(
        _broker(),
        title="Provisio provisioning events",
        version=f"{SCHEMA_VERSION}.0.0",
        description=(
            "Commands and outcomes on Redis streams. Delivery is at least once (consumer "
            "groups); `event_id` is the idempotency key. Messages carry `version` (schema "
            f"version, now {SCHEMA_VERSION}); changes within a version are additive only. "
            "See docs/events.md."
        ),
        schema_version="3.0.0",
    ).to_specification()
    doc: dict[str, Any] = spec.to_jsonable()
    for message in doc.get("components", {}).get("messages", {}).values():
        # FastStream assumes its own header envelope; Provisio's correlation id is a field
        # of the message itself.
        if "correlationId" in message:
            message["correlationId"] = {"location": "$message.payload#/correlation_id"}
    for channel in doc.get("channels", {}).values():
        binding = channel.get("bindings", {}).get("redis", {})
        binding.pop("consumerName", None)  # one per worker process, not part of the contract
    return doc


def render() -> str:
    text: str = yaml.safe_dump(build(), sort_keys=False, allow_unicode=True, width=100)
    return text


def main(argv: list[str]) -> None:
    text = render()
    if argv and argv[0] == "-":
        sys.stdout.write(text)
        return
    out = Path(argv[0]) if argv else DEFAULT_OUTPUT
    out.write_text(text)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
