"""Two workers on one database (two processes' worth of engines): they never run the same
turn, never post a reply twice, and lose no message."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import select

from adapters.memory import MemoryAdapter
from bot.events import ConversationKey, InboundMessage, ReplyKind
from bot.history import validate
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from storage.database import create_engine, sessionmaker
from storage.migrate import upgrade
from storage.models import MessageRow, OutboxRow, SessionRow, ToolCallRow
from storage.repository import SqlStore
from tests.conftest import core_settings
from tests.support import slow_tools


async def test_two_workers_share_a_conversation(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.3)
    fake_openai.think_seconds = 0.05
    settings = core_settings(database_url, fake_openai, worker_id="one")
    other = core_settings(database_url, fake_openai, worker_id="two")
    async with Runtime(settings) as one, Runtime(other) as two:
        chats = [MemoryAdapter(one.engine), MemoryAdapter(two.engine)]
        for chat in chats:
            await chat.start()
        await one.engine.start()
        await two.engine.start()
        texts = ["what time is it", "hola", "¿sigues ahí?", "ok", "and now?", "gracias"]
        for round_start in range(0, len(texts), 2):
            await asyncio.gather(
                *(
                    chats[i % 2].say(texts[round_start + i], message_id=f"m{round_start + i}")
                    for i in range(2)
                )
            )
            await asyncio.sleep(0.1)
        for _ in range(100):
            await one.engine.wait_idle()
            await two.engine.wait_idle()
            async with sessionmaker(one.db)() as tx:
                sessions = list(await tx.scalars(select(SessionRow)))
                busy = [s for s in sessions if s.state != "idle"]
                waiting = list(
                    await tx.scalars(
                        select(MessageRow).where(
                            MessageRow.position.is_(None), MessageRow.role == "user"
                        )
                    )
                )
            if not busy and not waiting:
                break
            await asyncio.sleep(0.05)
        async with sessionmaker(one.db)() as tx:
            outbox = list(await tx.scalars(select(OutboxRow)))
            users = list(await tx.scalars(select(MessageRow).where(MessageRow.role == "user")))
            sessions = list(await tx.scalars(select(SessionRow)))
    sent = Counter(s.message.outbox_id for chat in chats for s in chat.sent)
    assert sent and max(sent.values()) == 1  # no reply posted twice
    assert set(sent) == {o.id for o in outbox}  # and none lost
    assert len(sessions) == 1
    assert sorted(u.content for u in users) == sorted(texts)
    assert all(u.position is not None for u in users)
    closing = [o for o in outbox if o.kind in (ReplyKind.ANSWER, ReplyKind.ERROR)]
    assert len(closing) == sessions[0].turn
    assert fake_openai.rejected == []
    assert all(validate(r["messages"]) == [] for r in fake_openai.requests)


async def test_a_worker_claims_a_sessions_replies_only_up_to_one_another_worker_holds(
    database_url: str,
) -> None:
    """Replies go out in order: while worker two holds the second reply, worker one may
    send the first but must leave the third alone, even though nobody holds it."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        store = SqlStore(engine)
        conversation = ConversationKey("memory", "chat-1", "")
        for number in range(3):
            message = InboundMessage(
                conversation, "u1", "Ana", "a sticker", f"m{number}", True, True
            )
            session_id = await store.record_notice(message, f"reply {number}")
        assert session_id is not None
        async with engine.connect() as conn:
            ids = list(await conn.scalars(select(OutboxRow.id).order_by(OutboxRow.id)))
        first, second, third = ids
        assert await store.claim_delivery(second, "two", lease_seconds=60)

        claim = await store.claim_undelivered(session_id, "one", lease_seconds=60)
        assert [item.id for item in claim.items] == [first] and claim.blocked
        # The third is not held for worker one: two, which sends the second, sends it next.
        assert await store.claim_delivery(third, "two", lease_seconds=60)

        await store.mark_delivered(first, "p1")
        await store.mark_delivered(second, "p2")
        claim = await store.claim_undelivered(session_id, "one", lease_seconds=60)
        assert claim.items == [] and claim.blocked
        await store.mark_delivered(third, "p3")
        async with engine.connect() as conn:
            sent = list(
                await conn.scalars(select(OutboxRow.platform_message_id).order_by(OutboxRow.id))
            )
        assert sent == ["p1", "p2", "p3"]
    finally:
        await engine.dispose()


async def test_a_worker_started_mid_tool_interrupts_it_and_the_turn_ends_with_one_answer(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's limit: tool calls carry no owner yet, so a worker that starts while
    another runs a tool takes the call for one a crash left behind and closes it (this
    tool is not rerun-safe). The turn still ends with one answer; the first run's result
    is lost."""
    release = asyncio.Event()
    monkeypatch.setattr(slow_tools, "DELAY", 0)
    # Held until the second worker has started: on a slow machine a fixed delay could end
    # the first run before the second worker's recovery looks.
    monkeypatch.setattr(slow_tools, "release", release)
    settings = core_settings(database_url, fake_openai, worker_id="one")
    other = core_settings(database_url, fake_openai, worker_id="two")
    async with Runtime(settings) as one:
        first = MemoryAdapter(one.engine)
        await first.start()
        await one.engine.start()
        await first.say("what time is it")
        await first.wait_for(1)  # the "working on it" notice: the tool runs
        async with Runtime(other) as two:
            second = MemoryAdapter(two.engine)
            await second.start()
            await two.engine.start()
            release.set()  # the first run ends now, after the second worker closed its call
            for _ in range(3):
                await one.engine.wait_idle()
                await two.engine.wait_idle()
            async with sessionmaker(one.db)() as tx:
                calls = list(await tx.scalars(select(ToolCallRow)))
                outbox = list(await tx.scalars(select(OutboxRow)))
                sessions = list(await tx.scalars(select(SessionRow)))
    assert [(c.status, c.result) for c in calls] == [("interrupted", "interrupted by a restart")]
    closing = [o for o in outbox if o.kind in (ReplyKind.ANSWER, ReplyKind.ERROR)]
    assert len(closing) == 1 and closing[0].delivered_at is not None
    assert [s.state for s in sessions] == ["idle"]
    sent = Counter(s.message.outbox_id for chat in (first, second) for s in chat.sent)
    assert sorted(sent) == sorted(o.id for o in outbox) and max(sent.values()) == 1
    assert fake_openai.rejected == []
    assert all(validate(r["messages"]) == [] for r in fake_openai.requests)
