"""`stillhere run` in process: the order it starts things in."""

from __future__ import annotations

import os
import signal
from typing import ClassVar

import pytest
from sqlalchemy import select

from adapters.memory import MemoryAdapter
from bot import app
from bot.core_api import ChatCore
from bot.offline import FakeOpenAI
from bot.settings import Settings
from storage.database import create_engine, sessionmaker
from storage.models import ToolCallRow
from tests.conftest import core_settings, started_core
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
