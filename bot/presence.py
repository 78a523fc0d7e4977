"""Keeps the platform's typing indicator alive while the model writes, for a while.

The session shows it while the model is asked and stops it when tools start: a tool may
run for an hour, and an hour of "typing…" says nothing the "working on it" notice did not,
while it costs one platform call per chat every few seconds (with a thousand busy chats,
more calls than their replies). The limit ends it for a model call that hangs.
"""

from __future__ import annotations

import asyncio
import logging

from bot.events import ConversationKey, ReplySink
from bot.tasks import TaskSet

log = logging.getLogger(__name__)

TYPING_LIMIT_SECONDS = 60.0


class TypingKeeper:
    def __init__(self, limit_seconds: float = TYPING_LIMIT_SECONDS) -> None:
        self.limit_seconds = limit_seconds
        self._tasks = TaskSet("typing")
        self._running: dict[int, asyncio.Task[None]] = {}

    def start(self, session_id: int, key: ConversationKey, sink: ReplySink | None) -> None:
        if sink is None or session_id in self._running:
            return
        self._running[session_id] = self._tasks.spawn(
            self._keep(session_id, key, sink), f"session-{session_id}"
        )

    def stop(self, session_id: int) -> None:
        task = self._running.pop(session_id, None)
        if task is not None:
            task.cancel()

    async def _keep(self, session_id: int, key: ConversationKey, sink: ReplySink) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limit_seconds
        try:
            while True:
                try:
                    await sink.typing(key)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A lost typing indicator is cosmetic; the reply itself is what matters.
                    log.debug("typing indicator failed for %s: %s", key, exc)
                if loop.time() + sink.typing_interval > deadline:
                    return
                await asyncio.sleep(sink.typing_interval)
        finally:
            if self._running.get(session_id) is asyncio.current_task():
                del self._running[session_id]

    async def stop_all(self) -> None:
        await self._tasks.cancel_all()
        self._running.clear()
