"""Property: under any interleaving of messages, tool outcomes, cancels and LLM errors,
every request is valid, every tool call has one result, every user message is in the
history once, and every turn ends with a reply."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from adapters.memory import MemoryAdapter
from bot.events import CommandName, ReplyKind
from bot.history import validate
from bot.offline import FakeOpenAI
from bot.prompt import to_openai
from bot.runtime import Runtime
from storage.database import sessionmaker
from storage.models import MessageRow, OutboxRow, SessionRow, ToolCallRow
from tests.conftest import core_settings
from tests.support import slow_tools

TEXTS = ["what time is it", "hola", "¿sigues ahí?", "cancela", "ok", "wait 0.05 seconds"]
TOOLS = [
    ("get_current_time", {}),
    ("explode", {"reason": "boom"}),
    ("never_finishes", {}),
    ("no_such_tool", {}),
    ("wait_seconds", '{"seconds": '),
]

actions = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(TEXTS)),
    st.tuples(st.just("tools"), st.lists(st.sampled_from(TOOLS), min_size=1, max_size=3)),
    st.tuples(st.just("llm_error"), st.sampled_from([500, 429, 0])),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.02, 0.1])),
    st.tuples(st.just("cancel"), st.none()),
)


async def _run(steps: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with FakeOpenAI() as fake:
            config = core_settings(
                f"sqlite+aiosqlite:///{folder}/t.db",
                fake,
                tool_timeout_seconds=0.3,
                openai_timeout_seconds=0.5,
                rate_limit_user_per_minute=0,
                rate_limit_chat_per_minute=0,
            )
            async with Runtime(config) as runtime:
                chat = MemoryAdapter(runtime.engine)
                await chat.start()
                await runtime.engine.start()
                said = 0
                for kind, value in steps:
                    if kind == "say":
                        await chat.say(value)
                        said += 1
                    elif kind == "tools":
                        fake.script_tool_calls(value)
                    elif kind == "llm_error":
                        if value:
                            fake.script_error(value)
                        else:
                            fake.script_truncated_json()
                    elif kind == "sleep":
                        await asyncio.sleep(value)
                    else:
                        await chat.command(CommandName.CANCEL)
                await runtime.engine.wait_idle(timeout=30)
                await _check(runtime, fake, chat, said)


async def _check(runtime: Runtime, fake: FakeOpenAI, chat: MemoryAdapter, said: int) -> None:
    assert fake.rejected == []
    for request in fake.requests:
        assert validate(request["messages"]) == []
    # Valid as stored, not only as sent: build_request would repair a broken history.
    assert runtime.engine.prompt_stats.violations == []
    async with sessionmaker(runtime.db)() as tx:
        messages = list(await tx.scalars(select(MessageRow)))
        calls = list(await tx.scalars(select(ToolCallRow)))
        sessions = list(await tx.scalars(select(SessionRow)))
        outbox = list(await tx.scalars(select(OutboxRow)))
    for session in sessions:
        history = await runtime.engine.store.history(session.id)
        stored = [to_openai(entry, name_authors=False) for entry in history]
        assert validate([{"role": "system", "content": "s"}, *stored]) == []
    users = [m for m in messages if m.role == "user"]
    assert len(users) == said
    assert all(m.position is not None for m in users)  # every message made it in, once
    assert all(c.status not in ("pending", "running") for c in calls)
    results = Counter(m.tool_call_id for m in messages if m.role == "tool")
    assert results == Counter(c.call_id for c in calls)
    assert all(s.state == "idle" for s in sessions)
    closing = [o for o in outbox if o.kind in (ReplyKind.ANSWER, ReplyKind.ERROR)]
    assert len(closing) == sum(s.turn for s in sessions)  # one closing reply per turn
    assert all(o.delivered_at is not None for o in outbox)
    assert len(chat.sent) == len(outbox)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(actions, min_size=1, max_size=12))
def test_any_interleaving_keeps_every_promise(steps: list[tuple[str, Any]]) -> None:
    # Opening with a tool call makes the later messages race a running tool.
    slow_tools.DELAY = 0.3
    try:
        asyncio.run(_run([("say", "what time is it"), *steps]))
    finally:
        slow_tools.DELAY = 0.5
