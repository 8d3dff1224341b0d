"""Which path a batch of commands takes through Postgres: the one place that decides.

- ``one_statement``: creates only (an initial sync, a burst of new hires): the rows, their
  inbox rows and events in one INSERT statement, committed alone — one round trip.
- ``one_transaction``: any mix, in one transaction with no savepoints; consecutive creates
  are one INSERT and consecutive full replaces of distinct users one UPDATE (``runs``).
- ``careful``: command by command, each in a savepoint, redeliveries answered from the
  inbox. Every batch could take it; the fast paths are the same result, cheaper
  (tests/integration/test_planner_property.py proves it on generated batches).

A fast path gives up on the first thing it does not handle alone — a command refused
(taken userName, stale version), a redelivered event (the inbox key), any other error —
and the batch is redone on the careful path, where each failure is isolated and
recorded. The worker logs and counts each such fallback by ``fallback_reason``.
"""

from __future__ import annotations

import uuid
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from provisio_lib.contract import Command, CreateUser, DeleteUser, ReplaceUser

from .domain import PermanentError

Path = Literal["one_statement", "one_transaction", "careful"]

# Short fixed codes for the fallback metric's reason label (bounded cardinality).
FALLBACK_REASONS = (
    "duplicate_event",  # planned: the same event twice in one batch
    "unknown_tenant",  # planned: a command for a tenant that does not exist
    "redelivered",  # an event already applied (the inbox key)
    "unique_violation",  # a userName/displayName taken (the fast path's bulk INSERT)
    "database_refused",  # another constraint or data error
    "unexpected",  # anything else: a bug the careful path isolates to its command
    # plus "refused:<ErrorCode>" for a command the rules refused (contract.ErrorCode)
)


@dataclass(frozen=True, slots=True)
class Plan:
    """The path a batch takes first; ``reason``: why the careful path was chosen up front."""

    path: Path
    reason: str | None = None


def plan_batch(commands: Sequence[Command], known_tenants: Container[uuid.UUID], *, fast_paths: bool = True) -> Plan:
    """The first path for ``commands``. The careful path up front for what only it
    handles: the same event twice in one batch (the second is answered with the first's
    outcome) and an unknown tenant (a failure outcome). ``fast_paths`` False: always
    the careful path (tests comparing the paths)."""
    if not fast_paths:
        return Plan("careful")
    if len({c.event_id for c in commands}) != len(commands):
        return Plan("careful", "duplicate_event")
    if any(c.tenant_id not in known_tenants for c in commands):
        return Plan("careful", "unknown_tenant")
    if all(isinstance(c.payload, CreateUser) for c in commands):
        return Plan("one_statement")
    return Plan("one_transaction")


def reads_groups(commands: Sequence[Command]) -> bool:
    """Whether a command of the batch may change groups or memberships: if none does, the
    users' groups are read once for the batch, with the locks."""
    return not all(isinstance(c.payload, CreateUser | ReplaceUser | DeleteUser) for c in commands)


RunKind = Literal["creates", "replaces", "one"]


@dataclass(frozen=True, slots=True)
class Run:
    """Commands ``start:end`` of a batch, written together on the one-transaction path."""

    kind: RunKind
    start: int
    end: int


def runs(commands: Sequence[Command]) -> list[Run]:
    """The one-transaction path's runs, in batch order: two or more consecutive creates
    (one INSERT), two or more consecutive full replaces of distinct users (one UPDATE: a
    PATCH burst), else one command at a time."""
    out: list[Run] = []
    i = 0
    while i < len(commands):
        j = i
        while j < len(commands) and isinstance(commands[j].payload, CreateUser):
            j += 1
        k, seen = i, set()
        while k < len(commands) and isinstance(p := commands[k].payload, ReplaceUser) and p.user_id not in seen:
            seen.add(p.user_id)
            k += 1
        if j - i > 1:
            out.append(Run("creates", i, j))
            i = j
        elif k - i > 1:
            out.append(Run("replaces", i, k))
            i = k
        else:
            out.append(Run("one", i, i + 1))
            i += 1
    return out


def fallback_reason(err: BaseException) -> str:
    """The metric label for why a fast path gave up."""
    if isinstance(err, PermanentError):
        return f"refused:{err.code}"
    if isinstance(err, asyncpg.UniqueViolationError):
        return "redelivered" if err.constraint_name == "inbox_pkey" else "unique_violation"
    if isinstance(
        err, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError | asyncpg.ProgramLimitExceededError
    ):
        return "database_refused"
    return "unexpected"
