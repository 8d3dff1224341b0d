"""The provisioner's batch handler: decode, apply in one transaction, publish outcomes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from cachetools import LRUCache
from pydantic import ValidationError

from provisio_lib.contract import (
    ChangeGroupMembers,
    Command,
    CreateUser,
    DeleteGroup,
    DeleteUser,
    ErrorInfo,
    JitLogin,
    Outcome,
    ReplaceGroup,
    ReplaceUser,
    decode_command,
    encode,
)
from provisio_lib.db import UNAVAILABLE_ERRORS
from provisio_lib.delivery import Delivery, TransientError, Verdicts
from provisio_lib.logging import get_logger
from provisio_lib.observability import (
    COMMAND_DURATION,
    COMMAND_LATENCY,
    COMMANDS_DEAD_LETTERED,
    COMMANDS_FAILED,
    COMMANDS_PROCESSED,
    COMMANDS_RETRIED,
    PROVISIONER_BATCHES,
    PROVISIONER_FAST_PATH_FALLBACKS,
)
from provisio_lib.outcomes import outcome_fields
from provisio_lib.topology import MAX_OUTCOMES_PER_ENTRY, Topology

from . import preview, store
from .apply import HANDLERS, Ctx, created_user, make_outcome, parse_seq, replace_users, side_outcomes
from .core import Policy
from .domain import PermanentError
from .events import EventSpec, events_of
from .planner import Path, fallback_reason, plan_batch, reads_groups, runs

log = get_logger(__name__)

# Worth retrying as they are: the database is down, restarting, or two transactions clashed.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    *UNAVAILABLE_ERRORS,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
)
# Never worth retrying: the data itself is refused (SQLSTATE classes 22 data exception,
# 23 integrity constraint violation — but unique violations, which can be races or the
# inbox key, are handled apart — and 54 program limit exceeded, e.g. an index row too big).
PERMANENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.CheckViolationError,
    asyncpg.NotNullViolationError,
    asyncpg.ExclusionViolationError,
    asyncpg.ProgramLimitExceededError,
)


def _db_refusal(err: BaseException) -> str:
    """What the database refused, for the outcome (one line; no values, which may be huge)."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"the database refused this data: {first[:300]}"


# How long a tenant's policies (deprovision, one group per user, immutable userName)
# are reused: `provisio tenant policy` takes effect within this many seconds.
POLICY_CACHE_S = 5.0


class Provisioner:
    """Holds the worker's resources; ``handle`` is the ReliableConsumer batch handler."""

    def __init__(
        self, topology: Topology, pool: asyncpg.Pool | None = None, redis: Any = None, *, fast_paths: bool = True
    ) -> None:
        self.topology = topology
        # False: every batch takes the careful path (the property test that compares them).
        self.fast_paths = fast_paths
        self.pool = pool
        self.redis = redis
        self.health: Any = None  # the health listener, when one runs
        # Bounded (least recently used out); each entry carries its expiry.
        self._policy_cache: LRUCache[uuid.UUID, tuple[Policy, float]] = LRUCache(10_000)
        self.counters: dict[str, int] = {"applied": 0, "unchanged": 0, "failed": 0, "redelivered": 0}
        # Which way the batches went (planner.py); also the provisio_provisioner_batches metric.
        self.paths: dict[str, int] = {"one_statement": 0, "one_transaction": 0, "careful": 0}
        self.fallbacks: dict[str, int] = {}

    async def handle(self, batch: list[Delivery]) -> Verdicts:
        verdicts = Verdicts()
        items: list[tuple[Delivery, Command]] = []
        for d in batch:
            try:
                items.append((d, decode_command(d.data or b"")))
            except (ValidationError, ValueError) as err:
                # Not a command this code can read: no outcome is possible, keep it for an operator.
                verdicts.dead[d.entry_id] = f"undecodable command: {str(err)[:500]}"
        # Test logins' dry runs (preview.py): never inside a real batch's transaction.
        items, dry = preview.split(items)
        try:
            previews = await preview.run_all(self.pool, self._policies, dry, TRANSIENT_DB_ERRORS)
        except TRANSIENT_DB_ERRORS as err:
            raise TransientError(f"postgres: {type(err).__name__}: {err}") from err
        if not items:
            if previews:
                verdicts.publish = lambda pipe: preview.add_replies(pipe, self.topology, previews)
            return verdicts
        started = time.perf_counter()
        try:
            results = await self._apply(items, verdicts)
        except TRANSIENT_DB_ERRORS as err:
            raise TransientError(f"postgres: {type(err).__name__}: {err}") from err
        # Sent with the XACK in one pipeline (ReliableConsumer); if Redis fails there, the
        # batch is handled again and answered from the inbox: committed, then announced.
        if previews:

            def publish(pipe: Any) -> None:
                self._add_outcomes(pipe, results)
                preview.add_replies(pipe, self.topology, previews)

            verdicts.publish = publish
        else:
            verdicts.publish = lambda pipe: self._add_outcomes(pipe, results)
        per_command_s = (time.perf_counter() - started) / max(len(items), 1)
        # Counted once announced: a batch handled again because announcing failed counts once.
        # (The closure must not hold `verdicts`, which holds it: a reference cycle per batch
        # is garbage only the cyclic GC frees: CPU and tail latency, see BENCHMARKS.md.)
        retry = verdicts.retry
        verdicts.announced = lambda: self._observe(results, retry, items, per_command_s)
        return verdicts

    def _observe(
        self,
        results: list[tuple[Command, Outcome, bytes]],
        retry: dict[str, str],
        items: list[tuple[Delivery, Command]],
        per_command_s: float,
    ) -> None:
        seen: set[uuid.UUID] = set()
        for cmd, outcome, _ in results:
            again = outcome.redelivered or cmd.event_id in seen  # from the inbox, or twice in this batch
            seen.add(cmd.event_id)
            self.counters["redelivered" if again else outcome.result] += 1
            COMMANDS_PROCESSED.labels(type=cmd.type, result=outcome.result).inc()
            COMMAND_DURATION.labels(type=cmd.type).observe(per_command_s)
            if outcome.error is not None:
                COMMANDS_FAILED.labels(type=cmd.type, code=outcome.error.code).inc()
            if not outcome.redelivered and outcome.latency_ms is not None:
                COMMAND_LATENCY.labels(type=cmd.type).observe(outcome.latency_ms / 1000)
        for d, cmd in items:
            if d.entry_id in retry:
                COMMANDS_RETRIED.labels(type=cmd.type).inc()

    async def _apply(
        self, items: list[tuple[Delivery, Command]], verdicts: Verdicts
    ) -> list[tuple[Command, Outcome, bytes]]:
        """The planner's path first (planner.plan_batch). A fast path that gives up rolls
        back; the batch is then redone on the careful path, command by command in
        savepoints, where each failure is isolated and recorded — and the fallback is
        logged and counted with its reason."""
        assert self.pool is not None
        commands = [c for _, c in items]
        async with self.pool.acquire() as conn:
            policies = await self._policies(conn, {c.tenant_id for c in commands})
            plan = plan_batch(commands, policies, fast_paths=self.fast_paths)
            if plan.reason is not None:
                self._fell_back(None, plan.reason, len(items))
            if plan.path != "careful":
                try:
                    if plan.path == "one_statement":
                        results = await self._apply_creates(conn, items)
                    else:
                        async with conn.transaction():
                            results = await self._apply_fast(conn, items, policies)
                    self._took(plan.path)
                    return results
                except TRANSIENT_DB_ERRORS:
                    raise
                except Exception as err:  # noqa: BLE001 — redone below, where errors are handled one by one
                    self._fell_back(plan.path, fallback_reason(err), len(items), err)
            async with conn.transaction():
                results = await self._apply_careful(conn, items, verdicts, policies)
            self._took("careful")
            return results

    def _took(self, path: Path) -> None:
        self.paths[path] += 1
        PROVISIONER_BATCHES.labels(path=path).inc()

    def _fell_back(self, path: Path | None, reason: str, size: int, err: BaseException | None = None) -> None:
        """A batch that does not take (``path`` None) or gave up a fast path: logged and
        counted, never silent. Refusals and redeliveries are the normal life of a sync;
        anything else is logged with its traceback."""
        self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        PROVISIONER_FAST_PATH_FALLBACKS.labels(reason=reason).inc()
        fields: dict[str, Any] = {"path": path, "reason": reason, "batch": size}
        if err is not None:
            fields["error"] = f"{type(err).__name__}: {err}"[:300]
        if reason in ("unexpected", "database_refused"):
            log.warning("fast_path_fallback", exc_info=err, **fields)
        else:
            log.info("fast_path_fallback", **fields)

    async def _apply_fast(
        self, conn: asyncpg.Connection, items: list[tuple[Delivery, Command]], policies: dict[uuid.UUID, Policy]
    ) -> list[tuple[Command, Outcome, bytes]]:
        # No inbox lookup here: a redelivered command makes the inbox INSERT at the end
        # fail on its primary key, which rolls this whole transaction back (the change
        # with it), and the careful path then answers it from the inbox.
        commands = [c for _, c in items]
        # Users' groups read once for the batch (with the locks), unless a command of it
        # may change groups.
        users_only = not reads_groups(commands)
        users = await _lock_batch(conn, items, with_groups=users_only)
        groups = {uid: store.locked_groups(row) for uid, row in users.items()} if users and users_only else None
        results: list[tuple[Command, Outcome, bytes]] = []
        inbox: list[tuple[uuid.UUID, uuid.UUID, str, str]] = []
        events: list[tuple[int, EventSpec]] = []
        seqs = [parse_seq(d.entry_id) for d, _ in items]
        for run in runs(commands):
            batch = commands[run.start : run.end]
            if run.kind == "creates":
                creates = [(c, c.payload) for c in batch if isinstance(c.payload, CreateUser)]
                rows = await store.insert_users_bulk(
                    conn,
                    [
                        (c.tenant_id, p.user_id, p.data, q)
                        for (c, p), q in zip(creates, seqs[run.start : run.end], strict=True)
                    ],
                )
                pairs = [(c, created_user(rows[p.user_id])) for c, p in creates]
            else:
                ctxs = [
                    Ctx(policies[c.tenant_id], q, users=users, groups=groups)
                    for c, q in zip(batch, seqs[run.start : run.end], strict=True)
                ]
                if run.kind == "replaces":
                    pairs = list(
                        zip(batch, await replace_users(conn, list(zip(batch, ctxs, strict=True))), strict=True)
                    )
                else:
                    cmd, ctx = batch[0], ctxs[0]
                    pairs = [(cmd, await HANDLERS[cmd.type](conn, cmd, cmd.payload, ctx))]
            for cmd, applied in pairs:
                _record(cmd, applied, results, inbox, events)
        await store.record_outcomes(conn, inbox, events)
        return results

    async def _apply_creates(
        self, conn: asyncpg.Connection, items: list[tuple[Delivery, Command]]
    ) -> list[tuple[Command, Outcome, bytes]]:
        """A batch of creates only (an initial sync, a burst of new hires): the rows and
        outcomes are made here, then written with their inbox rows in one statement."""
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        results: list[tuple[Command, Outcome, bytes]] = []
        inbox: list[tuple[uuid.UUID, uuid.UUID, str, str]] = []
        for d, cmd in items:
            p = cmd.payload
            assert isinstance(p, CreateUser)
            row = store.new_user_row(cmd.tenant_id, p.user_id, p.data, parse_seq(d.entry_id), now)
            rows.append(row)
            _record(cmd, created_user(row), results, inbox)
        await store.insert_users_with_outcomes(conn, rows, now, inbox)
        return results

    async def _policies(self, conn: asyncpg.Connection, tenant_ids: set[uuid.UUID]) -> dict[uuid.UUID, Policy]:
        """Tenant policies, cached for POLICY_CACHE_S: they change rarely (the CLI), and a
        query per batch is a round trip on the hot path. An unknown tenant is not cached."""
        now = time.monotonic()
        found = {t: p for t in tenant_ids if (hit := self._policy_cache.get(t)) and hit[1] > now for p in (hit[0],)}
        missing = [t for t in tenant_ids if t not in found]
        if missing:
            for tid, row in (await store.tenant_policies(conn, missing)).items():
                policy = Policy.of(row)
                self._policy_cache[tid] = (policy, now + POLICY_CACHE_S)
                found[tid] = policy
        return found

    async def _apply_careful(
        self,
        conn: asyncpg.Connection,
        items: list[tuple[Delivery, Command]],
        verdicts: Verdicts,
        policies: dict[uuid.UUID, Policy],
    ) -> list[tuple[Command, Outcome, bytes]]:
        results: list[tuple[Command, Outcome, bytes]] = []
        await _lock_batch(conn, items)
        stored = await store.stored_outcomes(conn, [c.event_id for _, c in items])
        done_in_batch: dict[uuid.UUID, tuple[Outcome, bytes]] = {}
        for d, cmd in items:
            previous = done_in_batch.get(cmd.event_id)
            if previous is None and cmd.event_id in stored:
                previous = self._replayed(stored[cmd.event_id])
            if previous is not None:
                results.append((cmd, *previous))
                continue
            side: list[tuple[Command, Outcome, bytes]] = []  # policy failures of an applied command
            try:
                with structlog.contextvars.bound_contextvars(
                    correlation_id=cmd.correlation_id, event_id=str(cmd.event_id), tenant=str(cmd.tenant_id)
                ):
                    outcome = await self._apply_one(conn, cmd, policies.get(cmd.tenant_id), parse_seq(d.entry_id), side)
            except TRANSIENT_DB_ERRORS:
                raise
            except _AlreadyApplied as race:
                outcome = race.outcome
            except Exception as err:  # a bug or poison: leave pending, dead-letter after N tries
                log.exception(
                    "command_failed_unexpectedly",
                    event_id=str(cmd.event_id),
                    correlation_id=cmd.correlation_id,
                    tenant=str(cmd.tenant_id),
                    type=cmd.type,
                )
                verdicts.retry[d.entry_id] = f"{type(err).__name__}: {err}"[:1000]
                continue
            data = encode(outcome)
            done_in_batch[cmd.event_id] = (outcome, data)
            results.append((cmd, outcome, data))
            results.extend(side)
        return results

    async def _apply_one(
        self,
        conn: asyncpg.Connection,
        cmd: Command,
        policy: Policy | None,
        seq: tuple[int, int],
        side: list[tuple[Command, Outcome, bytes]] | None = None,
    ) -> Outcome:
        refused: BaseException | None = None
        try:
            async with conn.transaction():  # savepoint: a failing command rolls back alone
                if policy is None:
                    raise PermanentError("invalid_value", f"unknown tenant {cmd.tenant_id}", field="tenant")
                applied = await HANDLERS[cmd.type](conn, cmd, cmd.payload, Ctx(policy, seq))
                outcome = make_outcome(cmd, applied)
                await store.record_outcome(
                    conn,
                    cmd.event_id,
                    cmd.tenant_id,
                    cmd.type,
                    encode(outcome).decode(),
                    outcome_events(cmd, outcome, applied.extra_events),
                )
            if side is not None:
                side.extend(side_outcomes(cmd, applied))
            return outcome
        except PermanentError as err:
            outcome = make_outcome(cmd, error=err)
        except PERMANENT_DB_ERRORS as err:
            # The data can never be stored as sent (too long for an index, out of range,
            # against a constraint): a failure now, not retries into the dead letters.
            refused = err
            outcome = make_outcome(cmd, error=PermanentError("invalid_value", _db_refusal(err)))
        except asyncpg.UniqueViolationError as err:
            if err.constraint_name != "inbox_pkey":
                raise
            raise _AlreadyApplied(await self._stored_one(conn, cmd.event_id)) from None
        try:
            async with conn.transaction():
                await store.record_outcome(conn, cmd.event_id, cmd.tenant_id, cmd.type, encode(outcome).decode())
        except asyncpg.UniqueViolationError:
            raise _AlreadyApplied(await self._stored_one(conn, cmd.event_id)) from None
        except PERMANENT_DB_ERRORS:
            # Not even the failure can be stored (e.g. a NUL in the value it quotes):
            # poison, left to the dead letters with the database's first complaint.
            if refused is not None:
                raise refused from None
            raise
        return outcome

    async def _stored_one(self, conn: asyncpg.Connection, event_id: uuid.UUID) -> Outcome:
        """Another worker applied this event concurrently (a claim raced the original)."""
        stored = await store.stored_outcomes(conn, [event_id])
        return self._replayed(stored[event_id])[0]

    @staticmethod
    def _replayed(raw: Any) -> tuple[Outcome, bytes]:
        outcome = Outcome.model_validate({**raw, "redelivered": True})
        return outcome, encode(outcome)

    def _add_outcomes(self, pipe: Any, results: list[tuple[Command, Outcome, bytes]]) -> None:
        """Each outcome to the audit stream and to the gateway waiting for it: one entry per
        stream per batch (fewer Redis commands here, fewer entries for the readers)."""
        topo = self.topology
        replies: dict[str, list[bytes]] = {}
        audits: dict[str, list[bytes]] = {}
        for cmd, outcome, data in results:
            if cmd.reply_to:
                replies.setdefault(cmd.reply_to, []).append(_reply_data(outcome, data))
            audits.setdefault(topo.audit_stream_for(cmd.tenant_id), []).append(data)
        for stream, datas in audits.items():
            for i in range(0, len(datas), MAX_OUTCOMES_PER_ENTRY):
                pipe.xadd(
                    stream, outcome_fields(datas[i : i + MAX_OUTCOMES_PER_ENTRY]), maxlen=topo.maxlen, approximate=True
                )
        for stream, datas in replies.items():
            pipe.xadd(stream, outcome_fields(datas), maxlen=topo.reply_maxlen, approximate=True)
            pipe.expire(stream, topo.reply_ttl_s)
        # Wake the App API's long-polls (docs/events.md): a hint only, after commit, one
        # PUBLISH per tenant with new events; the events themselves are in Postgres.
        changed = {
            str(cmd.tenant_id)
            for cmd, outcome, _ in results
            if outcome.result != "failed"
            and not outcome.redelivered
            and (outcome.result == "applied" or cmd.type == "jit.login")
        }
        for tenant in sorted(changed):
            pipe.publish(topo.events_channel(), tenant)

    async def _publish(self, results: list[tuple[Command, Outcome, bytes]]) -> None:
        if not results:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            self._add_outcomes(pipe, results)
            await pipe.execute()

    async def on_dead_letter(self, d: Delivery, error: str) -> None:
        """Tell the waiting gateway and the audit trail that this command was given up."""
        try:
            cmd = decode_command(d.data or b"")
        except (ValidationError, ValueError):
            return
        outcome = make_outcome(
            cmd, error=PermanentError("dead_letter", f"moved to the dead-letter stream: {error}"[:1000])
        )
        outcome = outcome.model_copy(
            update={"error": ErrorInfo(code="dead_letter", message=outcome.error.message if outcome.error else error)}
        )
        await self._publish([(cmd, outcome, encode(outcome))])
        self.counters["failed"] += 1
        COMMANDS_DEAD_LETTERED.labels(type=cmd.type).inc()
        COMMANDS_FAILED.labels(type=cmd.type, code="dead_letter").inc()


# A waiting gateway reads an outcome's result, error and resource, never its changes
# (field → before/after, for the audit trail): a large outcome goes to the reply stream
# without them, so a big resource is not copied into Redis a third time (issue 13 §2).
REPLY_SLIM_BYTES = 16 * 1024


def _reply_data(outcome: Outcome, data: bytes) -> bytes:
    if len(data) <= REPLY_SLIM_BYTES or not outcome.changes:
        return data
    return encode(outcome.model_copy(update={"changes": {}}))


def _record(
    cmd: Command,
    applied: Any,
    results: list[tuple[Command, Outcome, bytes]],
    inbox: list[tuple[uuid.UUID, uuid.UUID, str, str]],
    events: list[tuple[int, EventSpec]] | None = None,
) -> None:
    """The outcome of an applied command, encoded once for the inbox row and the streams;
    its events (the outbox) joined to the inbox row by position."""
    outcome = make_outcome(cmd, applied)
    data = encode(outcome)
    inbox.append((cmd.event_id, cmd.tenant_id, cmd.type, data.decode()))
    results.append((cmd, outcome, data))
    if applied.failures:
        results.extend(side_outcomes(cmd, applied))
    if events is not None:
        n = len(inbox)
        events.extend((n, e) for e in outcome_events(cmd, outcome, applied.extra_events))


def outcome_events(cmd: Command, outcome: Outcome, extra: list[EventSpec]) -> list[EventSpec]:
    return events_of(
        cmd,
        outcome.result,
        outcome.resource_type,
        outcome.resource_id,
        outcome.user_name,
        outcome.resource,
        outcome.changes,
        outcome.notes,
        extra,
    )


async def _lock_batch(
    conn: asyncpg.Connection, items: list[tuple[Delivery, Command]], *, with_groups: bool = False
) -> dict[uuid.UUID, Any]:
    """Take the row locks of the users and groups the batch changes, in one global order;
    the locked users' rows by id."""
    users: list[uuid.UUID] = []
    groups: list[uuid.UUID] = []
    jit: set[uuid.UUID] = set()
    for _, cmd in items:
        p = cmd.payload
        if isinstance(p, ReplaceUser | DeleteUser):
            users.append(p.user_id)
        elif isinstance(p, ReplaceGroup | ChangeGroupMembers | DeleteGroup):
            groups.append(p.group_id)
        elif isinstance(p, JitLogin) and not p.dry_run:
            jit |= await store.jit_login_resources(conn, cmd.tenant_id, p)
    return await store.lock_in_order(conn, users, groups, with_groups=with_groups, also_ordered=jit)


class _AlreadyApplied(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__("already applied")
        self.outcome = outcome
