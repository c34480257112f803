"""Typed keys for what the app and each request carry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from datetime import datetime

import asyncpg
from aiohttp import web

from inventoryd.config import Settings
from inventoryd.http.auth import Principal

if TYPE_CHECKING:
    from inventoryd.accounts import Accounts
    from inventoryd.http.app import RateLimits
    from inventoryd.http.events import StreamBudget
from inventoryd.idempotency import IdempotencyStore
from inventoryd.metrics import Metrics
from inventoryd.registry import Registry
from persistence.journal import Journal

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
JOURNAL = web.AppKey("journal", Journal)
REGISTRY = web.AppKey("registry", Registry)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
STREAMS: web.AppKey[StreamBudget] = web.AppKey("streams")
ACCOUNTS: web.AppKey[Accounts] = web.AppKey("accounts")
RATE_LIMITS: web.AppKey[RateLimits] = web.AppKey("rate_limits")
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", bytes)

PRINCIPAL = web.RequestKey("principal", Principal)  # absent on public routes called without a token
REQUEST_ID = web.RequestKey("request_id", str)
