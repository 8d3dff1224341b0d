"""Typed application keys (aiohttp ``web.AppKey``) for the gateway's resources."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from provisio_lib.outcomes import OutcomeWaiter
from provisio_lib.ratelimit import WindowLimiter
from provisio_lib.topology import Topology

from .auth import RateLimiter, ReadGate, TenantAuth, TokenCache
from .refusals import RefusalSampler
from .settings import ScimSettings

BASE_PATH = "/scim/v2"

SETTINGS = web.AppKey("settings", ScimSettings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS: web.AppKey[Any] = web.AppKey("redis")
WAITER = web.AppKey("waiter", OutcomeWaiter)
TOKENS = web.AppKey("tokens", TokenCache)
LIMITER = web.AppKey("limiter", RateLimiter)
READS = web.AppKey("reads", ReadGate)
AUTH_FAILURES = web.AppKey("auth_failures", WindowLimiter)
TRUSTED_PROXIES = web.AppKey("trusted_proxies", tuple)
TOPOLOGY = web.AppKey("topology", Topology)
REFUSALS = web.AppKey("refusals", RefusalSampler)

# Per-request values (aiohttp ``web.RequestKey``).
CORRELATION_ID = web.RequestKey("correlation_id", str)
TENANT = web.RequestKey("tenant", TenantAuth)
BODY = web.RequestKey("body", object)  # the parsed JSON body (for the refusal record)
