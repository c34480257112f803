"""Typed keys for what the app and each request carry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime

import aiohttp
import asyncpg
from aiohttp import web

from inventoryd.accounts import Accounts
from inventoryd.catalogue import CatalogueFeed
from inventoryd.cluster import Membership
from inventoryd.config import Settings
from inventoryd.http.peers import Peers
from inventoryd.http.views import EncodedEvents, ListingAnswers
from inventoryd.idempotency import IdempotencyStore
from inventoryd.metrics import Metrics
from inventoryd.outbox import Outbox
from inventoryd.principal import Principal
from inventoryd.ratelimit import RateLimits, Verdict
from inventoryd.registry import Registry
from inventoryd.streams import StreamBudget
from inventoryd.tasks import TaskSupervisor
from persistence.journal import Journal

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
JOURNAL = web.AppKey("journal", Journal)
REGISTRY = web.AppKey("registry", Registry)
CATALOGUE = web.AppKey("catalogue", CatalogueFeed)
OUTBOX = web.AppKey("outbox", Outbox)
ENCODED_EVENTS = web.AppKey("encoded_events", EncodedEvents)
LISTING_ANSWERS = web.AppKey("listing_answers", ListingAnswers)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
STREAMS = web.AppKey("streams", StreamBudget)
ACCOUNTS = web.AppKey("accounts", Accounts)
RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI = web.AppKey("openapi", bytes)
# The app's own background tasks (recovery, maintenance).
TASKS = web.AppKey("tasks", TaskSupervisor)
# The cluster: this node's leases, the client that forwards to other nodes (and how many forwards
# may be in flight), and the key the nodes sign forwarded requests with.
CLUSTER = web.AppKey("cluster", Membership)
FORWARDER = web.AppKey("forwarder", aiohttp.ClientSession)
PEERS = web.AppKey("peers", Peers)
FORWARDS_IN_FLIGHT = web.AppKey("forwards_in_flight", asyncio.Semaphore)
FORWARD_KEY = web.AppKey("forward_key", bytes)
# Signs the waiting room's admission tokens (the same on every node: read from the database).
ADMISSION_KEY = web.AppKey("admission_key", bytes)

PRINCIPAL = web.RequestKey("principal", Principal)  # absent on public routes called without a token
REQUEST_ID = web.RequestKey("request_id", str)
RATE_VERDICT = web.RequestKey("rate_verdict", Verdict)
