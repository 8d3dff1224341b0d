"""Redis connections from a URL: one server (redis://, rediss://, unix://) or a cluster
(redis+cluster://seed-host:port — redis-py discovers the other nodes)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster


def is_cluster_url(url: str) -> bool:
    return url.startswith("redis+cluster://")


def connect_redis(url: str, *, max_connections: int = 64, **kw: Any) -> Any:
    """A redis.asyncio client (Redis or RedisCluster); bytes in, bytes out.

    The pool is bounded and *waits* for a free connection (up to 10 s) rather than
    failing, so a burst of requests queues instead of erroring."""
    kw.setdefault("socket_keepalive", True)
    if is_cluster_url(url):
        return RedisCluster.from_url(
            "redis://" + url.removeprefix("redis+cluster://"), max_connections=max_connections, **kw
        )
    kw.setdefault("health_check_interval", 30)
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10, **kw)
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool


def dedicated(client: Any) -> Any:
    """A client on one connection of ``client``'s pool, held for its life: for a task
    that sends one command at a time (a reply reader). It skips the pool's checkout and
    return on every command (a large share of redis-py's CPU per round trip: BENCHMARKS.md). Not for
    pipelines: redis-py's pipelines check a connection out of the pool whatever client
    made them. A cluster client is returned as it is. Close it with ``aclose()``: that
    returns the connection, the pool stays open."""
    if isinstance(client, RedisCluster):
        return client
    return aioredis.Redis(connection_pool=client.connection_pool, single_connection_client=True)
