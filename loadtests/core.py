"""inventoryd's core in this process, as `inventoryd serve` runs it minus HTTP: a pool, the journal,
this node's cluster membership (one node: it takes every shard) and the registry, started in that
order and stopped in the reverse, for the harnesses that measure the core alone."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from inventoryd.cluster import Membership
from inventoryd.registry import Registry
from persistence import store
from persistence.journal import Journal

# Nothing is forwarded to a node of one: the URL it would advertise is never called.
LOCAL_NODE_URL = "http://127.0.0.1:0"


@dataclass
class Core:
    pool: asyncpg.Pool
    journal: Journal
    registry: Registry


@contextlib.asynccontextmanager
async def local_core(database_url: str, *, pool_size: int = 4, start: bool = True) -> AsyncIterator[Core]:
    """The core on `database_url`; with `start`, the registry started (ready, recovery under way)."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await store.create_pool(database_url, max_size=pool_size)
        stack.push_async_callback(pool.close)
        journal = Journal(database_url)
        await journal.start()
        stack.push_async_callback(journal.close)
        membership = Membership(database_url, LOCAL_NODE_URL)
        stack.push_async_callback(membership.stop)
        registry = Registry(journal, pool, membership)
        stack.push_async_callback(registry.stop)
        if start:
            await registry.start()
        yield Core(pool, journal, registry)
