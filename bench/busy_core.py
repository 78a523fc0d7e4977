"""The core with a few sessions each running an hour-long tool, for the benchmarks that
time an instant reply in process (bench.profile_core instant, bench.cold_path): every
message to one of those sessions gets an instant reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bench.memory_chat import TimedChat, running_core
from bench.scale import CountingModel, settings_for, start_tools
from bot.runtime import Runtime

BUSY_SESSIONS = 10
REPLY_TIMEOUT = 10.0
# A question the busy sessions' instant replies answer (it asks about the tool).
QUESTION = "¿Sigues ahí?"


@asynccontextmanager
async def busy_core(db: Path) -> AsyncIterator[tuple[Runtime, TimedChat]]:
    """The core on the SQLite file `db`, rate limits off, with BUSY_SESSIONS sessions
    running the tool."""
    async with CountingModel() as model:
        settings = settings_for(
            db, model, rate_limit_user_per_minute=0, rate_limit_chat_per_minute=0
        )
        async with running_core(settings) as (runtime, chat):
            await start_tools(chat, 0, BUSY_SESSIONS, BUSY_SESSIONS)
            yield runtime, chat


async def ask(chat: TimedChat, number: int, prefix: str) -> float:
    """Message `number` (id `<prefix>-<number>`) to one busy session after another; once
    its instant reply is out, the `time.perf_counter()` at which it was sent."""
    index = number % BUSY_SESSIONS
    message_id = f"{prefix}-{number}"
    expected = len(chat.sent) + 1
    await chat.submit(QUESTION, chat=f"chat-{index}", user=f"user-{index}", message_id=message_id)
    await chat.wait_for(expected, timeout=REPLY_TIMEOUT)
    return chat.replied_at[message_id]
