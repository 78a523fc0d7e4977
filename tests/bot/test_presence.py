"""The typing indicator: kept alive while a session works, but not for ever."""

from __future__ import annotations

import asyncio

from bot.events import ConversationKey, OutgoingMessage
from bot.presence import TypingKeeper

KEY = ConversationKey("memory", "chat-1", "")


class CountingSink:
    platform = "memory"
    typing_interval = 0.01

    def __init__(self) -> None:
        self.indicators = 0

    async def send(self, message: OutgoingMessage) -> str | None:
        raise AssertionError("the keeper never sends messages")

    async def typing(self, conversation: ConversationKey) -> None:
        assert conversation == KEY
        self.indicators += 1


async def settle(sink: CountingSink) -> int:
    """Waits until no indicator came for a while; returns how many came in all."""
    while True:
        before = sink.indicators
        await asyncio.sleep(0.1)
        if sink.indicators == before:
            return before


async def test_indicators_stop_after_the_limit_and_start_again_on_request() -> None:
    keeper, sink = TypingKeeper(limit_seconds=0.05), CountingSink()
    keeper.start(1, KEY, sink)
    first_stretch = await asyncio.wait_for(settle(sink), 5)
    assert 1 <= first_stretch <= 7  # one every 10 ms for 50 ms, then nothing
    keeper.start(1, KEY, sink)  # the model is asked again: typing again
    assert await asyncio.wait_for(settle(sink), 5) > first_stretch
    await keeper.stop_all()


async def test_stop_ends_the_indicators_at_once() -> None:
    keeper, sink = TypingKeeper(limit_seconds=60), CountingSink()
    keeper.start(1, KEY, sink)
    await asyncio.sleep(0.05)
    keeper.stop(1)
    stopped_at = sink.indicators
    await asyncio.sleep(0.05)
    assert stopped_at >= 1 and sink.indicators == stopped_at
    await keeper.stop_all()
