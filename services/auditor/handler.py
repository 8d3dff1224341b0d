"""The batch handler: audit-stream entries → audit rows (+ notifications), with verdicts
for provisio_lib.delivery.ReliableConsumer."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg

from provisio_lib.contract import Outcome
from provisio_lib.delivery import Delivery, TransientError, Verdicts
from provisio_lib.logging import get_logger
from provisio_lib.observability import AUDIT_RECORDS_WRITTEN
from provisio_lib.outcomes import entry_outcomes

from .records import AuditRow, audit_row
from .store import WriteResult, write_batch

log = get_logger(__name__)

# Postgres is down, restarting, overloaded, or two transactions collided: try again.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
)


class AuditHandler:
    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool | None],
        window_s: float,
        on_first_mail: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self.window_s = window_s
        self.on_first_mail = on_first_mail
        self.counters = {"rows": 0, "duplicates": 0, "failures": 0, "undecodable": 0}

    async def __call__(self, batch: list[Delivery]) -> Verdicts:
        verdicts = Verdicts()
        rows: list[tuple[Delivery, AuditRow]] = []
        for d in batch:
            try:
                outcomes: list[Outcome] = entry_outcomes(d.fields)
                if not outcomes:
                    raise ValueError("entry has neither a '__data__' nor an '__outcomes__' field")
                rows.extend((d, audit_row(outcome)) for outcome in outcomes)
            except Exception as err:  # not Outcomes: keep it for a human, don't block the stream
                verdicts.dead[d.entry_id] = f"undecodable outcome: {err}"[:2000]
                self.counters["undecodable"] += 1
        if rows:
            await self._write(rows, verdicts)
        return verdicts

    async def _write(self, rows: list[tuple[Delivery, AuditRow]], verdicts: Verdicts) -> None:
        pool = self._pool()
        if pool is None:
            raise TransientError("database pool not open yet")
        # Dedupe inside the batch (a redelivery can sit next to the original).
        unique: dict[tuple[object, str], AuditRow] = {}
        for _, row in rows:
            unique.setdefault(row.key, row)
        try:
            async with pool.acquire() as conn:
                result = await write_batch(conn, list(unique.values()), self.window_s)
        except TRANSIENT as err:
            raise TransientError(f"{type(err).__name__}: {err}") from err
        except asyncpg.PostgresError as err:
            # One row Postgres refuses must not hold back the others: write one by one.
            log.warning("audit_batch_refused_writing_rows_singly", error=str(err), size=len(rows))
            result = await self._write_singly(rows, verdicts)
        except Exception as err:  # a bug: leave the entries pending; claimed again, dead-lettered after N
            log.exception("audit_batch_failed", error=str(err), size=len(rows))
            for d, _ in rows:
                verdicts.retry[d.entry_id] = f"{type(err).__name__}: {err}"[:2000]
            return
        self._account(result)

    async def _write_singly(self, rows: list[tuple[Delivery, AuditRow]], verdicts: Verdicts) -> WriteResult:
        pool = self._pool()
        assert pool is not None
        total = WriteResult()
        for d, row in rows:
            try:
                async with pool.acquire() as conn:
                    r = await write_batch(conn, [row], self.window_s)
            except TRANSIENT as err:
                raise TransientError(f"{type(err).__name__}: {err}") from err
            except asyncpg.PostgresError as err:
                # The whole entry goes to the dead letters, with all its outcomes (a batch's
                # entry may hold several); rows already written are skipped on a replay.
                verdicts.dead[d.entry_id] = f"audit row refused by Postgres: {err}"[:2000]
                continue
            total.inserted += r.inserted
            total.duplicates += r.duplicates
            total.failures += r.failures
            total.first_mails += r.first_mails
            for k, v in r.by_result.items():
                total.by_result[k] = total.by_result.get(k, 0) + v
        return total

    def _account(self, result: WriteResult) -> None:
        self.counters["rows"] += result.inserted
        self.counters["duplicates"] += result.duplicates
        self.counters["failures"] += result.failures
        for res, n in result.by_result.items():
            AUDIT_RECORDS_WRITTEN.labels(result=res).inc(n)
        if result.first_mails:
            self.on_first_mail()
