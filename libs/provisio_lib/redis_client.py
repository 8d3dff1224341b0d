"""Redis connections from a URL: one server (redis://, rediss://, unix://) or a cluster
(redis+cluster://seed-host:port — redis-py discovers the other nodes)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster


def is_cluster_url(url: str) -> bool:
    return url.startswith("redis+cluster://")


def connect_redis(url: str, **kw: Any) -> Any:
    """A redis.asyncio client (Redis or RedisCluster); bytes in, bytes out."""
    kw.setdefault("health_check_interval", 30)
    kw.setdefault("socket_keepalive", True)
    if is_cluster_url(url):
        kw.pop("health_check_interval", None)
        return RedisCluster.from_url("redis://" + url.removeprefix("redis+cluster://"), **kw)
    return aioredis.from_url(url, **kw)
