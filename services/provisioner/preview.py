"""Dry runs of JIT logins: what a real login would do, for the test login (issue 14).

A ``jit.login`` command with ``dry_run`` runs the very handler a real login runs
(``apply.HANDLERS["jit.login"]``), in a transaction of its own that is always rolled
back, so the preview cannot drift from the rules: nothing is stored (no user, link,
membership, group, inbox row or event), and the outcome goes to the waiting gateway
only — never to the audit stream, so no audit row and no failure mail. A dry run is
never part of a real batch's transaction (``split``), and a redelivered one simply
runs again.

Policy failures of an otherwise successful login (one group per user, an email the
tenant keeps) become notes ``would_fail:<code>:<message>`` of the outcome, since a dry
run has no side outcomes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from provisio_lib.admin.sso_test import WOULD_FAIL
from provisio_lib.contract import Command, JitLogin, Outcome, encode
from provisio_lib.delivery import Delivery
from provisio_lib.logging import get_logger
from provisio_lib.outcomes import outcome_fields
from provisio_lib.topology import Topology

from .apply import HANDLERS, Ctx, make_outcome, parse_seq
from .domain import PermanentError

log = get_logger(__name__)

Policies = Callable[[asyncpg.Connection, set[Any]], Awaitable[dict[Any, Any]]]


def is_dry_run(cmd: Command) -> bool:
    return isinstance(cmd.payload, JitLogin) and cmd.payload.dry_run


def split(
    items: list[tuple[Delivery, Command]],
) -> tuple[list[tuple[Delivery, Command]], list[tuple[Delivery, Command]]]:
    """(real commands, dry runs), each in stream order."""
    real = [(d, c) for d, c in items if not is_dry_run(c)]
    dry = [(d, c) for d, c in items if is_dry_run(c)]
    return real, dry


async def run_all(
    pool: asyncpg.Pool,
    policies: Policies,
    dry: list[tuple[Delivery, Command]],
    transient: tuple[type[BaseException], ...],
) -> list[tuple[Command, Outcome, bytes]]:
    """Each dry run in its own rolled-back transaction. Errors in ``transient`` propagate
    (the batch is retried); anything else is answered as a failed outcome, never retried
    into the dead letters (whose hook would announce it on the audit stream)."""
    if not dry:
        return []
    out: list[tuple[Command, Outcome, bytes]] = []
    async with pool.acquire() as conn:
        known = await policies(conn, {c.tenant_id for _, c in dry})
        for d, cmd in dry:
            outcome = await run_one(conn, cmd, known.get(cmd.tenant_id), parse_seq(d.entry_id), transient)
            out.append((cmd, outcome, encode(outcome)))
    return out


async def run_one(
    conn: asyncpg.Connection,
    cmd: Command,
    policy: Any,
    seq: tuple[int, int],
    transient: tuple[type[BaseException], ...] = (),
) -> Outcome:
    tx = conn.transaction()
    await tx.start()
    try:
        if policy is None:
            raise PermanentError("invalid_value", f"unknown tenant {cmd.tenant_id}", field="tenant")
        applied = await HANDLERS[cmd.type](conn, cmd, cmd.payload, Ctx(policy, seq))
        outcome = make_outcome(cmd, applied)
        would_fail = tuple(f"{WOULD_FAIL}{e.code}:{e.message}" for e in applied.failures)
        return outcome.model_copy(update={"notes": (*outcome.notes, *would_fail)}) if would_fail else outcome
    except PermanentError as err:
        return make_outcome(cmd, error=err)
    except transient:
        raise
    except Exception as err:  # a refusal of the database or a bug: the test login says so
        log.warning("dry_run_failed", event_id=str(cmd.event_id), error=f"{type(err).__name__}: {err}"[:500])
        return make_outcome(cmd, error=PermanentError("internal", f"the dry run failed: {type(err).__name__}"))
    finally:
        await tx.rollback()


def add_replies(pipe: Any, topology: Topology, results: list[tuple[Command, Outcome, bytes]]) -> None:
    """The dry runs' outcomes to their waiting gateways only (no audit stream, no events
    channel)."""
    replies: dict[str, list[bytes]] = {}
    for cmd, _, data in results:
        if cmd.reply_to:
            replies.setdefault(cmd.reply_to, []).append(data)
    for stream, datas in replies.items():
        pipe.xadd(stream, outcome_fields(datas), maxlen=topology.reply_maxlen, approximate=True)
        pipe.expire(stream, topology.reply_ttl_s)
