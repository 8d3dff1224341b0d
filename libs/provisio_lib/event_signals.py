"""Following the provisioner's "events committed" signal (docs/events.md, "Waking
readers"): after a commit it PUBLISHes the tenant's id on ``{prefix}:events``. The App
API's long-polls and the webhook dispatcher's endpoints both wake on it; this is the one
subscription loop they share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from .logging import get_logger

log = get_logger(__name__)

# After a signal, wake the tenant again shortly: an event becomes visible only once every
# older writing transaction has ended (docs/events.md), which may be just after the signal.
RECHECK_AFTER_S = (0.02, 0.1, 0.3)


async def follow(
    redis: Any,
    channel: str,
    wake: Callable[[str | None], None],
    *,
    tick_s: float | None = None,
    max_backoff_s: float = 5.0,
    error_event: str = "event_signal_error",
) -> None:
    """Until cancelled: ``wake(tenant)`` for each signal and again ``RECHECK_AFTER_S``
    later; ``wake(None)`` (everyone) every ``tick_s`` if given — a signal lost while
    Redis restarted is then caught within a tick — and after a connection error, before
    reconnecting with backoff."""
    loop = asyncio.get_running_loop()
    backoff = 0.1
    while True:
        pubsub = None
        try:
            pubsub = redis.pubsub()
            await pubsub.subscribe(channel)
            backoff = 0.1
            next_tick = loop.time() + tick_s if tick_s is not None else None
            while True:
                timeout = 1.0 if next_tick is None else max(0.0, next_tick - loop.time())
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                if msg is not None:
                    data = msg.get("data")
                    tenant = data.decode() if isinstance(data, bytes) else str(data) if data else None
                    wake(tenant)
                    if tenant is not None:
                        for delay in RECHECK_AFTER_S:
                            loop.call_later(delay, wake, tenant)
                if next_tick is not None and tick_s is not None and loop.time() >= next_tick:
                    wake(None)
                    next_tick = loop.time() + tick_s
        except asyncio.CancelledError:
            raise
        except Exception as err:  # RedisError, OSError, a cluster moving: reconnect
            log.warning(error_event, error=str(err), retry_in_s=backoff)
            wake(None)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
