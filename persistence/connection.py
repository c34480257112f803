"""What every query function takes: a connection of its own, or one lent by a pool."""

from __future__ import annotations

from typing import Any, TypeAlias

# A string: at run time asyncpg's classes are not generic (the stubs make them so).
Connection: TypeAlias = "asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]"

import asyncpg  # noqa: E402 - after the alias, which names it only for the type checker
import asyncpg.pool  # noqa: E402

__all__ = ["Connection", "asyncpg"]
