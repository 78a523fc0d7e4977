"""UnconfirmedUpdates: what a getUpdates offset waits for before Telegram may forget."""

from __future__ import annotations

import asyncio
import logging

import pytest

from adapters.telegram.confirmation import UnconfirmedUpdates


async def test_nothing_fetched_waits_for_nothing() -> None:
    await asyncio.wait_for(UnconfirmedUpdates().before_confirming(100), timeout=1)


async def test_the_offset_waits_for_every_update_below_it() -> None:
    updates = UnconfirmedUpdates()
    updates.fetched([5, 6])
    waiting = asyncio.create_task(updates.before_confirming(7))
    updates.taken_in(6)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    updates.taken_in(5)
    await asyncio.wait_for(waiting, timeout=1)


async def test_updates_at_or_above_the_offset_are_not_waited_for() -> None:
    updates = UnconfirmedUpdates()
    updates.fetched([5, 6])
    updates.taken_in(5)
    # 6 is not confirmed by offset 6: python-telegram-bot never handed it on.
    await asyncio.wait_for(updates.before_confirming(6), timeout=1)


async def test_past_the_limit_it_goes_on_once_and_names_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    updates = UnconfirmedUpdates(wait_limit=0.05)
    updates.fetched([3, 4])
    updates.taken_in(3)
    with caplog.at_level(logging.WARNING):
        await updates.before_confirming(10)
    assert "confirming 1 update to Telegram not yet stored" in caplog.text
    assert "(ids 4)" in caplog.text
    # Not waited for twice: the next poll goes at once.
    await asyncio.wait_for(updates.before_confirming(11), timeout=0.04)
