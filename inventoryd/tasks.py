"""One supervisor for background tasks: every task the service starts is started here, and none
outlives `close()`. No fire-and-forget `create_task`: a task that fails is logged, not lost."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("inventoryd.tasks")
T = TypeVar("T")


class TaskSupervisor:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(
        self, coroutine: Coroutine[Any, Any, T], *, name: str, expected: tuple[type[Exception], ...] = ()
    ) -> asyncio.Task[T]:
        """Run `coroutine` as a task this supervisor owns. An exception it ends with is logged,
        unless it is one of `expected` (whoever awaits the task deals with those)."""
        if self._closed:
            coroutine.close()
            raise RuntimeError(f"{self.name}: spawn({name}) after close()")
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(done, expected))
        return task

    def _finished(self, task: asyncio.Task[Any], expected: tuple[type[Exception], ...]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, expected):
            log.error("task_failed", supervisor=self.name, task=task.get_name(), error=repr(error))

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every task still running and wait until all have ended."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
