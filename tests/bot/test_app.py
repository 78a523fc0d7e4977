"""`stillhere run` in process: the order it starts and stops things in."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import select

from adapters.memory import MemoryAdapter
from bot import app
from bot.core_api import ChatCore
from bot.offline import FakeOpenAI
from bot.settings import Settings, StartupError
from storage.database import create_engine, sessionmaker
from storage.models import OutboxRow, ToolCallRow
from tests.conftest import core_settings, started_core
from tests.fakes.telegram_api import FakeTelegram, TgUser
from tests.support import slow_tools


class ProbeAdapter(MemoryAdapter):
    """Stands in for a platform: notes the tool calls' states the moment it may first take
    a message, then asks `run` to stop, as SIGTERM from a deploy would."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, settings: Settings, core: ChatCore) -> None:
        super().__init__(core)
        self._url = settings.database_url

    async def start(self) -> None:
        await super().start()
        db = create_engine(self._url)
        try:
            async with sessionmaker(db)() as tx:
                calls = await tx.scalars(select(ToolCallRow).order_by(ToolCallRow.seq))
                ProbeAdapter.seen = [(call.name, call.status) for call in calls]
        finally:
            await db.dispose()
        os.kill(os.getpid(), signal.SIGTERM)


async def test_what_a_crash_left_is_repaired_before_any_adapter_takes_a_message(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    settings = core_settings(
        database_url, fake_openai, telegram_bot_token="42:ProbeTokenProbeTokenProbeToken"
    )
    fake_openai.script_tool_calls([("get_current_time", {})])
    async with started_core(settings) as (_first, chat):
        await chat.say("Dame la hora")
        await chat.wait_for(1)  # the tool runs when this core stops
    monkeypatch.setitem(app.ADAPTERS, "telegram", (__name__, ProbeAdapter.__name__))
    ProbeAdapter.seen = []
    await app.run(settings)
    # Repaired already: a message taken now could start a call, and the repair would
    # take that live call for one the last process left.
    assert ProbeAdapter.seen == [("get_current_time", "interrupted")]


async def test_a_reply_in_flight_when_run_stops_is_finished_and_recorded(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """Stopping takes messages in no more, then lets the engine finish its sends, and only
    then closes the connections: a reply cut off would be posted again after a restart
    (the Bot API has no idempotency key)."""
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    ana = TgUser(1001, "Ana")
    async with FakeTelegram() as tg:
        settings = core_settings(
            url, fake_openai, telegram_bot_token=tg.token, telegram_base_url=tg.base_url
        )
        tg.hang_next("sendMessage")
        running = asyncio.create_task(app.run(settings))
        tg.push_text(ana.id, ana, "hello")
        await tg.wait_for(lambda: bool(tg.calls_to("sendMessage")), timeout=15)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.5)  # well into stopping, within the courier's grace
        tg.release_hangs()
        await asyncio.wait_for(running, timeout=30)
        [sent] = tg.sent_messages(ana.id)
    db = create_engine(url)
    try:
        async with sessionmaker(db)() as tx:
            outbox = list(await tx.scalars(select(OutboxRow)))
    finally:
        await db.dispose()
    assert [(row.text, row.delivered_at is not None) for row in outbox] == [(sent.text, True)]


async def test_a_platform_lost_while_running_stops_the_bot_with_one_line(
    tmp_path: Path, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bot that can take no message in any more must not look alive: it stops, its
    replies sent, with the line `stillhere` prints before exiting 2."""
    url = f"sqlite+aiosqlite:///{tmp_path}/t.db"
    ana = TgUser(1001, "Ana")
    async with FakeTelegram() as tg:
        settings = core_settings(
            url, fake_openai, telegram_bot_token=tg.token, telegram_base_url=tg.base_url
        )
        settled: list[bool] = []
        monkeypatch.setattr(app.heap, "settle", lambda: settled.append(True))
        running = asyncio.create_task(app.run(settings))
        tg.push_text(ana.id, ana, "hello")
        await tg.wait_for(lambda: bool(tg.sent_messages(ana.id)), timeout=15)
        assert settled == [True]  # once started, as `bot.heap` asks
        tg.fail_next("getUpdates", 401, "Unauthorized", count=1000)
        with pytest.raises(StartupError, match="TELEGRAM_BOT_TOKEN") as stopped:
            await asyncio.wait_for(running, timeout=30)
    assert tg.token not in str(stopped.value)
