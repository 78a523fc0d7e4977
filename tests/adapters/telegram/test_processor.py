"""Per-chat ordering and cross-chat concurrency of the update processor."""

from __future__ import annotations

import asyncio

from telegram import Update

from adapters.telegram.processor import PerChatUpdateProcessor, chat_key
from tests.fakes.telegram_api import FakeTelegram, TgUser

ANA = TgUser(1, "Ana")
BEN = TgUser(2, "Ben")


def updates(tg: FakeTelegram) -> list[Update]:
    return [Update.de_json(raw, None) for raw in tg.queued_updates]


async def test_one_slow_chat_does_not_block_another() -> None:
    tg = FakeTelegram()
    tg.push_text(ANA.id, ANA, "slow")
    tg.push_text(BEN.id, BEN, "fast")
    slow_update, fast_update = updates(tg)
    release = asyncio.Event()
    fast_done = asyncio.Event()

    async def slow() -> None:
        await release.wait()

    async def fast() -> None:
        fast_done.set()

    processor = PerChatUpdateProcessor()
    slow_task = asyncio.create_task(processor.process_update(slow_update, slow()))
    fast_task = asyncio.create_task(processor.process_update(fast_update, fast()))
    await asyncio.wait_for(fast_done.wait(), 2)
    assert not slow_task.done()
    release.set()
    await asyncio.gather(slow_task, fast_task)
    assert processor.active_chats == 0


async def test_a_blocked_chat_takes_one_slot_however_many_of_its_updates_wait() -> None:
    tg = FakeTelegram()
    for text in ("one", "two", "three", "four"):
        tg.push_text(ANA.id, ANA, text)
    tg.push_text(BEN.id, BEN, "hi")
    *ana_updates, ben_update = updates(tg)
    release = asyncio.Event()
    ben_done = asyncio.Event()

    async def blocked() -> None:
        await release.wait()

    async def ben() -> None:
        ben_done.set()

    processor = PerChatUpdateProcessor(max_concurrent_updates=2)
    # In arrival order, as the application hands them over.
    tasks = [asyncio.create_task(processor.process_update(u, blocked())) for u in ana_updates]
    tasks.append(asyncio.create_task(processor.process_update(ben_update, ben())))
    try:
        await asyncio.wait_for(ben_done.wait(), 2)
        assert not any(task.done() for task in tasks[:-1])
    finally:
        release.set()
        await asyncio.gather(*tasks)
    assert processor.active_chats == 0


async def test_one_chat_is_processed_in_arrival_order() -> None:
    tg = FakeTelegram()
    for text in ("one", "two", "three"):
        tg.push_text(ANA.id, ANA, text)
    order: list[str] = []
    gate = asyncio.Event()

    async def handle(text: str, wait: bool) -> None:
        if wait:
            await gate.wait()
        order.append(text)

    processor = PerChatUpdateProcessor()
    tasks = [
        asyncio.create_task(processor.process_update(update, handle(text, text == "one")))
        for update, text in zip(updates(tg), ("one", "two", "three"), strict=True)
    ]
    await asyncio.sleep(0)
    assert order == []  # "two" and "three" wait behind "one"
    gate.set()
    await asyncio.gather(*tasks)
    assert order == ["one", "two", "three"]
    assert processor.active_chats == 0


async def test_topics_of_one_chat_are_independent() -> None:
    tg = FakeTelegram()
    tg.push_text(-100, ANA, "a", chat_type="supergroup", thread_id=10)
    tg.push_text(-100, ANA, "b", chat_type="supergroup", thread_id=20)
    tg.push_text(-100, ANA, "c", chat_type="supergroup")
    keys = [chat_key(update) for update in updates(tg)]
    assert keys == [(-100, 10), (-100, 20), (-100, None)]


async def test_cancelled_while_queued_closes_the_coroutine_and_frees_the_slot() -> None:
    tg = FakeTelegram()
    tg.push_text(ANA.id, ANA, "one")
    tg.push_text(ANA.id, ANA, "two")
    first, second = updates(tg)
    gate = asyncio.Event()
    ran: list[str] = []

    async def blocker() -> None:
        await gate.wait()

    async def never() -> None:
        ran.append("never")

    processor = PerChatUpdateProcessor()
    holder = asyncio.create_task(processor.process_update(first, blocker()))
    queued = asyncio.create_task(processor.process_update(second, never()))
    await asyncio.sleep(0)
    queued.cancel()
    gate.set()
    await holder
    assert queued.cancelled()
    assert ran == []
    assert processor.active_chats == 0
