"""Bounding Redis memory: processed stream entries are trimmed by age, and Redis's memory
use is read for the ``ProvisioRedisMemoryHigh`` alert (issue 13 §2: every write kept its
command and full outcome on streams trimmed only by count, 1,000,000 entries each).

**Age trimming, never past what a consumer still needs.** Every ``interval_s`` each
worker trims the streams its consumer group reads (provisioner: the command streams,
auditor: the audit streams) with ``XTRIM MINID``. The MINID is the older of

- now - ``PROVISIO_STREAM_MAX_AGE_S`` (entries are ids in milliseconds), and
- for every consumer group of the stream, its oldest pending (delivered, not yet
  acknowledged) entry, or, with none pending, the entry after its last delivered one,

so an entry a group has not yet read or not yet acknowledged is never trimmed, however
old: a stopped provisioner loses nothing, it only lets the stream grow (MAXLEN stays the
last resort, and the memory alert fires first). Exact trimming (not ``~``): the trimmed
entries are whole radix nodes' worth at most every interval, and a small stream is then
really trimmed too.

Reply streams are trimmed by their reader (``OutcomeWaiter``) up to what it has read;
dead-letter streams keep their entries until an operator replays or drops them
(``PROVISIO``'s dlq MAXLEN bounds them).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

from .logging import get_logger

log = get_logger(__name__)


def _id(raw: Any) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def safe_min_id(
    now_ms: int, max_age_ms: int, groups: Iterable[dict[Any, Any]], oldest_pending: dict[str, Any]
) -> tuple[int, int] | None:
    """The MINID to trim to (entries older than it go), or None for "trim nothing". Pure.

    ``groups``: XINFO GROUPS of the stream; ``oldest_pending``: group name → the id of its
    oldest pending entry (XPENDING's "min"), for groups with pending entries."""
    bound = (max(0, now_ms - max_age_ms), 0)
    any_group = False
    for g in groups:
        any_group = True
        name = g.get("name")
        name = name.decode() if isinstance(name, bytes) else str(name)
        last = g.get("last-delivered-id")
        if last is None:
            return None
        if name in oldest_pending:
            keep = _id(oldest_pending[name])
        else:  # everything up to the last delivered entry is acknowledged: it may go too
            ms, seq = _id(last)
            if (ms, seq) == (0, 0):
                return None  # this group has read nothing yet
            keep = (ms, seq + 1)
        bound = min(bound, keep)
    if not any_group:
        return None  # nobody has read it yet (groups are made before any write)
    return bound if bound > (0, 0) else None


async def trim_stream(redis: Any, stream: str, max_age_s: float, now_ms: int | None = None) -> int:
    """Trim one stream by age, never past an unread or unacknowledged entry; returns the
    number of entries removed."""
    from redis.exceptions import ResponseError

    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        return 0
    pending: dict[str, Any] = {}
    for g in groups:
        if int(g.get("pending") or 0):
            name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
            summary = await redis.xpending(stream, name)
            if summary.get("min") is not None:
                pending[name] = summary["min"]
    now = int(time.time() * 1000) if now_ms is None else now_ms
    minid = safe_min_id(now, int(max_age_s * 1000), groups, pending)
    if minid is None:
        return 0
    return int(await redis.xtrim(stream, minid=f"{minid[0]}-{minid[1]}", approximate=False))


async def trim_streams(redis: Any, streams: Iterable[str], max_age_s: float) -> int:
    removed = 0
    for stream in streams:
        removed += await trim_stream(redis, stream, max_age_s)
    return removed


async def trim_forever(redis: Any, streams: list[str], max_age_s: float) -> None:
    """The workers' background task (started by ``worker_runtime``): every half the age,
    at most every 30 s, so an entry lives at most 1.5 × the age once processed."""
    interval_s = max(0.1, min(30.0, max_age_s / 2))
    while True:
        try:
            removed = await trim_streams(redis, streams, max_age_s)
            if removed:
                log.debug("streams_trimmed", entries=removed)
        except Exception as err:  # Redis down: try again next round
            log.warning("stream_trim_failed", error=str(err))
        await asyncio.sleep(interval_s)


async def stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# --------------------------------------------------------------------------- memory


async def redis_memory(redis: Any) -> tuple[int, int]:
    """(used_memory, maxmemory) of Redis in bytes; maxmemory 0 = no limit set. On a
    cluster, the node closest to its limit (the one that fills first)."""
    info = await redis.info("memory")
    nodes = [info] if "used_memory" in info else [v for v in info.values() if isinstance(v, dict)]
    best = (0, 0)
    best_ratio = -1.0
    for node in nodes:
        used, limit = int(node.get("used_memory", 0)), int(node.get("maxmemory", 0))
        ratio = used / limit if limit else 0.0
        if ratio > best_ratio or (ratio == best_ratio and used > best[0]):
            best, best_ratio = (used, limit), ratio
    return best
