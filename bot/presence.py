"""Keeps the platform's typing indicator alive while a session works."""

from __future__ import annotations

import asyncio
import logging

from bot.events import ConversationKey, ReplySink
from bot.tasks import TaskSet

log = logging.getLogger(__name__)


class TypingKeeper:
    def __init__(self) -> None:
        self._tasks = TaskSet("typing")
        self._running: dict[int, asyncio.Task[None]] = {}

    def start(self, session_id: int, key: ConversationKey, sink: ReplySink | None) -> None:
        if sink is None or session_id in self._running:
            return
        self._running[session_id] = self._tasks.spawn(
            self._keep(key, sink), f"session-{session_id}"
        )

    def stop(self, session_id: int) -> None:
        task = self._running.pop(session_id, None)
        if task is not None:
            task.cancel()

    async def _keep(self, key: ConversationKey, sink: ReplySink) -> None:
        while True:
            try:
                await sink.typing(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A lost typing indicator is cosmetic; the reply itself is what matters.
                log.debug("typing indicator failed for %s: %s", key, exc)
            await asyncio.sleep(sink.typing_interval)

    async def stop_all(self) -> None:
        await self._tasks.cancel_all()
        self._running.clear()
