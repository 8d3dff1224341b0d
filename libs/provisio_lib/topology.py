"""Where every message lives in Redis: one place for stream names, groups and limits.

Command streams are partitioned by tenant: ``{prefix}:{p<N>}:commands``. The braces are
a Redis Cluster hash tag, so each partition's command, audit and dead-letter streams
sit on one node while the partitions spread over the cluster. One tenant always maps to
one partition, so a tenant's commands keep the order the gateway accepted them in.

Consumer groups are created at id ``0`` (the start of the stream), never ``$``: a group
made after the first XADD must still see that message.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID

PROVISIONER_GROUP = "provisioner"
AUDITOR_GROUP = "auditor"
DATA_FIELD = "__data__"  # the one field holding the JSON message (FastStream's name)
# Reply and audit streams: one entry holding several Outcomes as a JSON array (the
# provisioner writes a batch's outcomes to each stream as one XADD; docs/events.md).
OUTCOMES_FIELD = "__outcomes__"
# At most this many Outcomes per audit entry, so a reader's batch of entries is bounded in
# outcomes (the auditor reads batch_size / MAX_OUTCOMES_PER_ENTRY entries at a time).
MAX_OUTCOMES_PER_ENTRY = 50


@dataclass(frozen=True, slots=True)
class Topology:
    prefix: str = "provisio"
    partitions: int = 8
    maxlen: int = 1_000_000
    reply_maxlen: int = 10_000
    reply_ttl_s: int = 300

    def partition_of(self, tenant_id: UUID | str) -> int:
        return zlib.crc32(str(tenant_id).encode()) % self.partitions

    def _tag(self, partition: int) -> str:
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition} outside 0..{self.partitions - 1}")
        return f"{self.prefix}:{{p{partition}}}"

    def command_stream(self, partition: int) -> str:
        return f"{self._tag(partition)}:commands"

    def dead_letter_stream(self, partition: int) -> str:
        return f"{self._tag(partition)}:commands:dlq"

    def audit_stream(self, partition: int) -> str:
        return f"{self._tag(partition)}:audit"

    def audit_dead_letter_stream(self, partition: int) -> str:
        """Where the auditor puts audit entries it could not record (ReliableConsumer's
        ``{stream}:dlq``): undecodable, or refused by Postgres."""
        return f"{self.audit_stream(partition)}:dlq"

    def command_stream_for(self, tenant_id: UUID | str) -> str:
        return self.command_stream(self.partition_of(tenant_id))

    def audit_stream_for(self, tenant_id: UUID | str) -> str:
        return self.audit_stream(self.partition_of(tenant_id))

    def dead_letter_stream_for(self, tenant_id: UUID | str) -> str:
        return self.dead_letter_stream(self.partition_of(tenant_id))

    def command_streams(self) -> list[str]:
        return [self.command_stream(p) for p in range(self.partitions)]

    def audit_streams(self) -> list[str]:
        return [self.audit_stream(p) for p in range(self.partitions)]

    def dead_letter_streams(self) -> list[str]:
        return [self.dead_letter_stream(p) for p in range(self.partitions)]

    def audit_dead_letter_streams(self) -> list[str]:
        return [self.audit_dead_letter_stream(p) for p in range(self.partitions)]

    def reply_stream(self, instance: str) -> str:
        """Private reply stream of one gateway process (its own hash tag)."""
        return f"{self.prefix}:{{r:{instance}}}:replies"

    def events_channel(self) -> str:
        """Pub/sub channel the provisioner publishes a tenant id on after committing events
        for it: the App API's long-polls wake on it (a hint; the feed is in Postgres)."""
        return f"{self.prefix}:events"

    def key(self, *parts: str) -> str:
        """A plain key under the prefix (e.g. SAML replay cache, rate limits)."""
        return ":".join((self.prefix, *parts))

    def groups(self) -> list[tuple[str, str]]:
        """(stream, group) pairs that must exist before any worker reads."""
        return [(s, PROVISIONER_GROUP) for s in self.command_streams()] + [
            (s, AUDITOR_GROUP) for s in self.audit_streams()
        ]


async def ensure_groups(redis: Any, topology: Topology) -> None:
    """Create every stream and consumer group at id 0; existing groups are kept."""
    for stream, group in topology.groups():
        try:
            await redis.xgroup_create(stream, group, id="0", mkstream=True)
        except Exception as err:  # redis ResponseError "BUSYGROUP": already there
            if "BUSYGROUP" not in str(err):
                raise


def command_fields(data: bytes) -> dict[str, bytes]:
    return {DATA_FIELD: data}
