"""The in-process adapter the core benchmarks drive: adapters.memory.MemoryAdapter, timed.

It notes when each reply to a message was sent (for latency), counts replies per chat (so a
chat can wait for its own answer), and keys typing on Telegram's interval instead of the
tests' 50 ms, which at thousands of busy sessions would measure the typing loop, not the bot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from adapters.memory import MemoryAdapter
from bot.core_api import ChatCore
from bot.events import ConversationKey, OutgoingMessage, ReplyKind
from bot.runtime import Runtime
from bot.settings import Settings

log = logging.getLogger(__name__)

TELEGRAM_TYPING_INTERVAL = 4.5


class TimedChat(MemoryAdapter):
    def __init__(self, core: ChatCore, platform: str = "memory") -> None:
        super().__init__(core, platform)
        self.replied_at: dict[str, float] = {}
        self.per_chat: Counter[str] = Counter()
        self.kinds: Counter[ReplyKind] = Counter()
        self.typings = 0
        self.refused: list[str] = []
        self._chat_changed = asyncio.Condition()

    @property
    def typing_interval(self) -> float:
        return TELEGRAM_TYPING_INTERVAL

    async def send(self, message: OutgoingMessage) -> str | None:
        sent_at = time.perf_counter()
        platform_id = await super().send(message)
        if message.reply_to_id is not None:
            self.replied_at.setdefault(message.reply_to_id, sent_at)
        self.kinds[message.kind] += 1
        async with self._chat_changed:
            self.per_chat[message.conversation.chat_id] += 1
            self._chat_changed.notify_all()
        return platform_id

    async def typing(self, conversation: ConversationKey) -> None:
        # Counted, not kept: 10,000 sessions would otherwise grow a list for the whole run.
        self.typings += 1

    async def submit(
        self, text: str, *, chat: str, user: str, message_id: str | None = None
    ) -> bool:
        """`say()`, except that a submit that raises is counted (and logged) instead of
        ending the benchmark: an adapter would drop that message, and so it is reported."""
        try:
            await self.say(text, chat=chat, user=user, message_id=message_id)
        except Exception as exc:
            self.refused.append(f"{type(exc).__name__}: {exc}"[:300])
            log.error("submit failed in %s: %s", chat, self.refused[-1])
            return False
        return True

    async def wait_chat(self, chat: str, count: int, timeout: float) -> None:
        """Until `chat` has received at least `count` replies."""
        async with asyncio.timeout(timeout), self._chat_changed:
            await self._chat_changed.wait_for(lambda: self.per_chat[chat] >= count)


@asynccontextmanager
async def running_core(settings: Settings) -> AsyncIterator[tuple[Runtime, TimedChat]]:
    """The core started as `stillhere run` starts it, with a TimedChat attached."""
    async with Runtime(settings) as runtime:
        chat = TimedChat(runtime.engine)
        await chat.start()
        await runtime.engine.start()
        yield runtime, chat
