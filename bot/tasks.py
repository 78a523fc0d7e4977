"""Owned background tasks: every task is referenced, its failure logged, and all of them
cancelled and awaited on shutdown (for a bounded time: see STOP_GRACE_SECONDS)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

# How long `cancel_all` waits for the cancelled tasks to end: one that swallows its
# CancelledError would otherwise hold a shutdown forever.
STOP_GRACE_SECONDS = 5.0


class TaskSet:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.owner}:{name}")
        self.adopt(task)
        return task

    def adopt(self, task: asyncio.Task[Any]) -> None:
        """Owns a task created elsewhere from now on."""
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self, grace: float = STOP_GRACE_SECONDS) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            # Nothing can force it to end; it stays in the set, so that its end (and any
            # exception) is still seen if it ever comes.
            log.warning(
                "task %s did not stop within %g s of being cancelled; left running",
                task.get_name(),
                grace,
            )
