"""An in-process adapter: push messages in, pop replies out.

The engine's own tests and the benchmarks drive the core through it, with no platform in
the way; it records what the core asked for exactly as a real adapter receives it.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from bot.core_api import ChatCore, SubmitOutcome
from bot.events import (
    CommandName,
    CommandRequest,
    ConversationKey,
    DeliveryError,
    InboundMessage,
    OutgoingMessage,
)
from bot.lost import LostIntake


@dataclass(frozen=True)
class Sent:
    message: OutgoingMessage
    platform_id: str


class MemoryAdapter:
    def __init__(self, core: ChatCore, platform: str = "memory") -> None:
        self.core = core
        self._platform = platform
        self.sent: list[Sent] = []
        self.typing_calls: list[ConversationKey] = []
        self.fail_next: list[DeliveryError] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self.lost = LostIntake()

    @property
    def platform(self) -> str:
        return self._platform

    @property
    def typing_interval(self) -> float:
        return 0.05

    async def start(self) -> None:
        self.core.attach(self)

    async def stop_intake(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, message: OutgoingMessage) -> str | None:
        if self.fail_next:
            raise self.fail_next.pop(0)
        sent = Sent(message, f"bot-{next(self._ids)}")
        async with self._changed:
            self.sent.append(sent)
            self._changed.notify_all()
        return sent.platform_id

    async def typing(self, conversation: ConversationKey) -> None:
        self.typing_calls.append(conversation)

    def key(self, chat: str = "chat-1", thread: str = "") -> ConversationKey:
        return ConversationKey(self._platform, chat, thread)

    async def say(
        self,
        text: str,
        *,
        chat: str = "chat-1",
        user: str = "u1",
        name: str = "Ana",
        private: bool = True,
        addressed: bool = True,
        message_id: str | None = None,
        unsupported: str | None = None,
        thread: str = "",
    ) -> tuple[str, SubmitOutcome]:
        message_id = message_id or f"m-{next(self._ids)}"
        outcome = await self.core.submit(
            InboundMessage(
                conversation=self.key(chat, thread),
                user_id=user,
                display_name=name,
                text=text,
                message_id=message_id,
                is_private=private,
                addresses_bot=addressed,
                unsupported=unsupported,
            )
        )
        return message_id, outcome

    async def command(
        self, name: CommandName, *, chat: str = "chat-1", user: str = "u1"
    ) -> str | None:
        return await self.core.command(
            CommandRequest(self.key(chat), name, user_id=user, display_name=user, is_private=True)
        )

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Sent]:
        """Waits until at least `count` replies were sent; returns them all."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.sent) >= count)
        return list(self.sent)
