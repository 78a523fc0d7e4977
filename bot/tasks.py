"""Owned background tasks: every task is referenced, its failure logged, and all of them
cancelled and awaited on shutdown (for a bounded time: see STOP_GRACE_SECONDS)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Coroutine
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

    async def finish(self, grace: float) -> None:
        """Lets the tasks end on their own for up to `grace` seconds, then cancels the
        ones left (`cancel_all`)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        await self.cancel_all()

    async def cancel_all(self, grace: float = STOP_GRACE_SECONDS) -> None:
        # One that does not stop stays in the set, so that its end (and any exception)
        # is still seen if it ever comes.
        await cancel_and_wait(list(self._tasks), grace)


async def cancel_and_wait(
    tasks: Collection[asyncio.Task[Any]], grace: float
) -> set[asyncio.Task[Any]]:
    """Cancels `tasks` and waits at most `grace` seconds for them; the ones that ended.
    One still running (it swallows its CancelledError) is logged and left: nothing can
    force it to end."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return set()
    ended, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        log.warning(
            "task %s did not stop within %g s of being cancelled; left running",
            task.get_name(),
            grace,
        )
    return ended
