"""Update processing: concurrent across chats, in arrival order within one chat (or topic)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from telegram import Update
from telegram.ext import BaseUpdateProcessor

log = logging.getLogger(__name__)

ChatKey = tuple[int, int | None]


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def chat_key(update: object) -> ChatKey | None:
    """Chat id plus topic id; None for updates that belong to no chat."""
    if not isinstance(update, Update) or update.effective_chat is None:
        return None
    message = update.effective_message
    topic = message.message_thread_id if message is not None and message.is_topic_message else None
    return (update.effective_chat.id, topic)


class PerChatUpdateProcessor(BaseUpdateProcessor):
    """One slow chat never blocks another, and one chat's messages reach the core in order.

    Updates arrive here in update_id order and asyncio.Lock wakes waiters first in, first
    out, so taking the chat's lock before anything else that could yield keeps the order.
    The lock comes before a concurrency slot too: a chat's queued updates wait holding no
    slot, so a slow chat takes one slot at most, however many of its updates wait.
    Slots are dropped once no update of the chat is in flight, so idle chats cost nothing.
    """

    def __init__(self, max_concurrent_updates: int = 256) -> None:
        super().__init__(max_concurrent_updates)
        self._slots: dict[ChatKey, _Slot] = {}

    # BaseUpdateProcessor marks process_update final, but its version takes a slot before
    # do_process_update can take the chat's lock, so queued updates of one chat would hold
    # every slot and starve the others.
    async def process_update(  # type: ignore[misc]
        self, update: object, coroutine: Awaitable[Any]
    ) -> None:
        key = chat_key(update)
        try:
            if key is None:
                await super().process_update(update, coroutine)
                return
            slot = self._slots.setdefault(key, _Slot())
            slot.users += 1
            try:
                async with slot.lock:
                    await super().process_update(update, coroutine)
            finally:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]
        finally:
            if inspect.iscoroutine(coroutine) and (
                inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED
            ):
                # Cancelled while it waited for the chat's lock or a slot: close it so it
                # is not reported as "never awaited".
                coroutine.close()

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        await coroutine

    @property
    def active_chats(self) -> int:
        return len(self._slots)

    async def initialize(self) -> None:
        """Nothing to allocate: slots are created on demand."""

    async def shutdown(self) -> None:
        """Nothing to free: the application awaits in-flight updates before this."""
