"""Restarts in-process: the first core is stopped mid-work (as a deploy would), a second
one on the same database carries every turn to exactly one final answer."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from bot import engine as engine_module
from bot.events import DeliveryError, ReplyKind
from bot.history import validate
from bot.llm import Completion, LLMClient
from bot.offline import FakeOpenAI
from bot.prompt import to_openai
from bot.runtime import Runtime
from bot.settings import Settings
from bot.store import TurnEnd
from storage.database import sessionmaker
from storage.models import OutboxRow, ToolCallRow
from storage.repository import SqlStore
from tests.conftest import core_settings, started_core
from tests.support import slow_tools


async def _tool_calls(runtime: Runtime) -> list[ToolCallRow]:
    async with sessionmaker(runtime.db)() as tx:
        return list(await tx.scalars(select(ToolCallRow).order_by(ToolCallRow.seq)))


async def test_restart_reruns_safe_tools_and_interrupts_the_others(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    settings = core_settings(database_url, fake_openai)
    monkeypatch.setattr(slow_tools, "_slow_once_calls", 0)
    fake_openai.script_tool_calls([("get_current_time", {}), ("slow_once", {})])
    async with started_core(settings) as (_first, chat):
        await chat.say("do two things")
        await chat.wait_for(1)
        await chat.say("¿Sigues ahí?")  # deferred before the "crash"
        await chat.wait_for(2)
    # The first core stopped with both tools running; nothing recorded their end.
    async with started_core(settings) as (second, chat2):
        sent = await chat2.wait_for(1)
        await second.engine.wait_idle()
        calls = await _tool_calls(second)
        history = [to_openai(e, name_authors=False) for e in await second.engine.store.history(1)]
    assert [(c.name, c.status) for c in calls] == [
        ("get_current_time", "interrupted"),
        ("slow_once", "done"),
    ]
    assert calls[0].result == "interrupted by a restart"
    assert calls[1].attempts == 2
    assert [s.message.kind for s in sent] == [ReplyKind.ANSWER]
    assert "interrupted by a restart" in sent[0].message.text
    assert [m["role"] for m in history] == [
        "user",
        "assistant",
        "tool",
        "tool",
        "user",
        "assistant",
    ]
    assert validate([{"role": "system", "content": "s"}, *history]) == []
    assert fake_openai.rejected == []


async def test_undelivered_reply_is_sent_once_after_restart(
    database_url: str, fake_openai: FakeOpenAI
) -> None:
    settings = core_settings(database_url, fake_openai)
    async with started_core(settings) as (first, chat):
        first.engine.courier.base_backoff = 30  # the retry would come after the "crash"
        chat.fail_next = [DeliveryError("network down")]
        await chat.say("hello")
        async with sessionmaker(first.db)() as tx:
            while not list(await tx.scalars(select(OutboxRow).where(OutboxRow.attempts > 0))):
                await tx.rollback()
                await asyncio.sleep(0.02)
    assert chat.sent == []
    async with started_core(settings) as (second, chat2):
        sent = await chat2.wait_for(1)
        await second.engine.wait_idle()
    assert len(sent) == 1 and sent[0].message.kind is ReplyKind.ANSWER
    assert len([r for r in fake_openai.requests if "messages" in r]) == 1


async def test_message_stored_but_not_handled_is_handled_after_restart(
    database_url: str, fake_openai: FakeOpenAI
) -> None:
    settings = core_settings(database_url, fake_openai)
    fake_openai.script_delay(30)  # the model never answers before the "crash"
    async with started_core(settings) as (_first, chat):
        await chat.say("are you awake?")
        while not [r for r in fake_openai.requests if "messages" in r]:
            await asyncio.sleep(0.02)
    async with started_core(settings) as (second, chat2):
        sent = await chat2.wait_for(1)
        await second.engine.wait_idle()
    assert [s.message.kind for s in sent] == [ReplyKind.ANSWER]
    assert "are you awake?" in sent[0].message.text


async def test_a_restart_does_not_run_an_admin_only_tool_for_a_non_admins_turn(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery runs a re-runnable call the crash left pending; that path must refuse an
    admin-only tool in a turn that is not an admin's just as the first run does."""
    monkeypatch.setattr(slow_tools, "restarted", [])
    spec = slow_tools.restart_service.__stillhere_tool__  # type: ignore[attr-defined]
    monkeypatch.setattr(
        slow_tools.restart_service, "__stillhere_tool__", replace(spec, rerun_safe=True)
    )
    settings = core_settings(database_url, fake_openai, admin_users=["boss"])
    fake_openai.script_tool_calls([("restart_service", {"name": "db"})])
    reached = asyncio.Event()

    async def never_marked(tool_call_id: int) -> None:
        reached.set()
        await asyncio.Event().wait()

    async with started_core(settings) as (first, chat):
        # The call stays pending, as if the process died before the tool started.
        monkeypatch.setattr(first.engine.store, "mark_tool_running", never_marked)
        await chat.say("restart the db", user="someone", private=False, chat="g")
        await reached.wait()
    async with started_core(settings) as (second, chat2):
        await chat2.wait_for(1)
        await second.engine.wait_idle()
        calls = await _tool_calls(second)
    assert slow_tools.restarted == []
    assert [(c.status, c.result) for c in calls] == [
        ("failed", "tool 'restart_service' is for admins only; this message is not an admin's")
    ]
    assert fake_openai.rejected == []


async def _stopped_with_tools_running(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, list[str]]:
    """Five chats, each with its tool running when the core stops; recovery two at a time."""
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    monkeypatch.setattr(engine_module, "RECOVERY_CONCURRENCY", 2)
    settings = core_settings(database_url, fake_openai)
    chats = [f"chat-{n}" for n in range(5)]
    async with started_core(settings) as (_first, chat):
        for name in chats:
            await chat.say("Dame la hora actual", chat=name)
        await chat.wait_for(len(chats))  # every chat has its tool running
    return settings, chats


async def test_recovery_takes_a_few_sessions_at_a_time_and_reaches_them_all(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of sessions recovering at once would queue every new message behind all
    their transactions; a bounded number at a time leaves room for the living."""
    settings, chats = await _stopped_with_tools_running(database_url, fake_openai, monkeypatch)

    running, most = 0, 0
    real_get_session = SqlStore.get_session

    async def slow_get_session(self: SqlStore, session_id: int) -> object:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(0.05)
            return await real_get_session(self, session_id)
        finally:
            running -= 1

    monkeypatch.setattr(SqlStore, "get_session", slow_get_session)
    async with started_core(settings) as (second, chat2):
        sent = await chat2.wait_for(len(chats))
        await second.engine.wait_idle()
    assert sorted(s.message.conversation.chat_id for s in sent) == chats
    assert all("interrupted by a restart" in s.message.text for s in sent)
    assert most == 2


async def test_recovery_bounds_follow_up_calls_until_their_answers_are_recorded(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the set-wise repair every session waits for its model call. A few at a time
    make it and record its answer: bounding the calls alone would let thousands of quick
    answers queue their writes behind one another, with new chats' writes among them."""
    settings, chats = await _stopped_with_tools_running(database_url, fake_openai, monkeypatch)

    in_flight, most = 0, 0
    real_complete, real_record_answer = LLMClient.complete, SqlStore.record_answer

    async def complete(self: LLMClient, *args: Any, **kwargs: Any) -> Completion:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        return await real_complete(self, *args, **kwargs)

    async def record_answer(self: SqlStore, *args: Any, **kwargs: Any) -> TurnEnd:
        nonlocal in_flight
        await asyncio.sleep(0.05)  # a busy database
        try:
            return await real_record_answer(self, *args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(LLMClient, "complete", complete)
    monkeypatch.setattr(SqlStore, "record_answer", record_answer)
    async with started_core(settings) as (second, chat2):
        sent = await chat2.wait_for(len(chats))
        await second.engine.wait_idle()
        assert second.engine.recovery_slots._value == 2  # every slot given back
    assert sorted(s.message.conversation.chat_id for s in sent) == chats
    assert all(s.message.kind is ReplyKind.ANSWER for s in sent)
    assert most == 2


async def _stopped_with_a_tool_to_run_again(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Two chats stopped mid-tool, recovery one at a time: after the restart "a" (its
    call interrupted) takes the only slot for its follow-up call, and "b" (a tool to run
    again) waits for it."""
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    monkeypatch.setattr(slow_tools, "_slow_once_calls", 0)
    settings = core_settings(database_url, fake_openai)
    async with started_core(settings) as (_first, chat):
        fake_openai.script_tool_calls([("get_current_time", {})])
        await chat.say("Dame la hora", chat="a")
        await chat.wait_for(1)
        fake_openai.script_tool_calls([("slow_once", {})])
        await chat.say("do the slow thing", chat="b")
        await chat.wait_for(2)
    monkeypatch.setattr(engine_module, "RECOVERY_CONCURRENCY", 1)
    return settings


async def test_a_session_waiting_to_recover_still_answers_at_once(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose turn waits for a recovery slot still takes new messages: one
    written while its tool round waits gets its instant reply then, not once the
    sessions recovering before it are done."""
    settings = await _stopped_with_a_tool_to_run_again(database_url, fake_openai, monkeypatch)
    fake_openai.script_delay(30)
    async with started_core(settings) as (_second, chat2):
        await chat2.say("¿Sigues ahí?", chat="b")
        [reply] = await chat2.wait_for(1)
    assert reply.message.conversation.chat_id == "b"
    assert reply.message.kind is ReplyKind.INTERIM


async def test_a_stop_for_a_session_waiting_to_recover_cancels_its_tool(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool a restart left to run again is the user's tool: "stop" written while the
    session waits for a recovery slot cancels it, rather than it running later."""
    settings = await _stopped_with_a_tool_to_run_again(database_url, fake_openai, monkeypatch)
    fake_openai.script_delay(1)  # "a" holds the only slot a while
    async with started_core(settings) as (second, chat2):
        await chat2.say("stop", chat="b")
        await second.engine.wait_idle(timeout=20)
        calls = await _tool_calls(second)
    assert [(c.name, c.status) for c in calls] == [
        ("get_current_time", "interrupted"),
        ("slow_once", "cancelled"),
    ]
    assert calls[1].attempts == 2  # the run the restart cut, then the one cancelled
