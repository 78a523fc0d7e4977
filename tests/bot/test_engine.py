"""The engine end to end: memory adapter -> engine -> storage -> real openai SDK -> strict
fake OpenAI. Runs on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import event, select

from adapters.memory import MemoryAdapter, Sent
from bot.core_api import SubmitOutcome
from bot.events import CommandName, DeliveryError, ReplyKind
from bot.history import validate
from bot.interim.classify import Reading, detect_language
from bot.offline import FakeOpenAI
from bot.session import SessionActor
from bot.settings import GroupMode
from bot.store import ToolCallInfo
from bot.tools import runner as tool_runner
from bot.tools.runner import CANCELLED_BY_OPERATOR, CANCELLED_BY_USER
from storage.admin import AdminStore
from storage.database import sessionmaker
from storage.models import MessageRow, OutboxRow, SessionRow, ToolCallRow
from tests.conftest import CoreFactory
from tests.support import slow_tools
from tests.support.spanish_time import tells_the_time


def kinds(sent: list[Any]) -> list[ReplyKind]:
    return [s.message.kind for s in sent]


async def say_in_turn(chat: MemoryAdapter, *texts: str) -> list[Sent]:
    """Says each text in turn, waiting after each for one more reply; returns all sent by then."""
    first = len(chat.sent)
    for number, text in enumerate(texts, start=1):
        await chat.say(text)
        await chat.wait_for(first + number)
    return list(chat.sent)


async def rows(runtime: Any, model: Any, **where: Any) -> list[Any]:
    async with sessionmaker(runtime.db)() as tx:
        query = select(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        return list(await tx.scalars(query.order_by(model.id)))


async def test_scenario_1_status_while_tool_runs(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.6)
    async with make_core() as (runtime, chat):
        first, outcome = await chat.say("Dame la hora actual")
        assert outcome is SubmitOutcome.ACCEPTED
        await chat.wait_for(1)  # "working on it" once the tool starts
        await chat.say("¿Sigues ahí?")
        sent = await chat.wait_for(3)
        await runtime.engine.wait_idle()
    assert kinds(sent) == [ReplyKind.WORKING, ReplyKind.INTERIM, ReplyKind.ANSWER]
    status = sent[1].message.text
    assert "1 herramienta" in status
    assert "consultar la hora" in status
    final = sent[2].message
    assert final.reply_to_id == first
    assert tells_the_time(final.text)
    assert fake_openai.rejected == []
    requests = fake_openai.chat_requests
    assert len(requests) == 2
    # The deferred message joins the history after the tool result, never before it.
    roles = [m["role"] for m in requests[1]["messages"]]
    assert roles[-3:] == ["assistant", "tool", "user"] or roles[-4:-1] == [
        "assistant",
        "tool",
        "user",
    ]
    assert validate(requests[1]["messages"]) == []


async def test_scenario_2_greeting_and_question_get_different_replies(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.8)
    async with make_core() as (runtime, chat):
        await say_in_turn(chat, "Dame la hora actual", "Hola")
        await chat.say("¿Cómo estás?")
        sent = await chat.wait_for(4)
        await runtime.engine.wait_idle()
        messages = await rows(runtime, MessageRow, status="interim")
    assert kinds(sent) == [
        ReplyKind.WORKING,
        ReplyKind.INTERIM,
        ReplyKind.INTERIM,
        ReplyKind.ANSWER,
    ]
    assert [m.kind for m in messages] == ["greeting", "question"]
    assert sent[1].message.text != sent[2].message.text
    final = sent[3].message.text
    assert tells_the_time(final) and "Hola" in final and "¿Cómo estás?" in final
    assert fake_openai.rejected == []


async def test_scenario_3_four_instant_replies_no_llm_call(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)
        for text in ["¿Sigues ahí?", "Hola", "¿Qué tal?", "Ok"]:
            await chat.say(text)
        await chat.wait_for(5)
        calls_during_tool = len(fake_openai.chat_requests)
        sent = await chat.wait_for(6)
        await runtime.engine.wait_idle()
        interims = await rows(runtime, MessageRow, status="interim")
    assert calls_during_tool == 1
    assert [m.kind for m in interims] == ["status", "greeting", "question", "default"]
    texts = [s.message.text for s in sent if s.message.kind is ReplyKind.INTERIM]
    assert len(texts) == 4 and len(set(texts)) == 4
    assert len(fake_openai.chat_requests) == 2
    assert fake_openai.rejected == []


async def test_a_message_that_tells_no_language_keeps_the_conversations(
    make_core: CoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Spanish conversation's "Ok" is answered in Spanish, and the conversation stays
    Spanish: only a message that tells its language changes it."""
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with make_core() as (runtime, chat):
        sent = await say_in_turn(chat, "Dame la hora actual", "Ok")
        after_ok = (await runtime.engine.store.get_session(1)).language
        await chat.say("thanks, are you still there?")
        await chat.wait_for(3)
        after_english = (await runtime.engine.store.get_session(1)).language
        await runtime.engine.wait_idle()
    assert sent[1].message.kind is ReplyKind.INTERIM
    # Every instant-reply text of the catalog tells its own language to the detector.
    assert detect_language(sent[1].message.text, default="neither") == "es"
    assert (after_ok, after_english) == ("es", "en")


async def test_an_english_request_after_a_spanish_greeting_turns_the_conversation_english(
    make_core: CoreFactory,
) -> None:
    """The demo's own walk-through: "hola", then "wait 600 seconds". The request tells
    English, so its "working on it" notice and the instant reply to an "Ok" that tells no
    language are in English, not in the greeting's Spanish."""
    async with make_core() as (runtime, chat):
        sent = await say_in_turn(chat, "hola", "wait 600 seconds", "Ok")
        language = (await runtime.engine.store.get_session(1)).language
        await chat.command(CommandName.CANCEL)
        await runtime.engine.wait_idle()
    assert kinds(sent) == [ReplyKind.ANSWER, ReplyKind.WORKING, ReplyKind.INTERIM]
    assert detect_language(sent[0].message.text, default="neither") == "es"
    assert detect_language(sent[1].message.text, default="neither") == "en"
    assert detect_language(sent[2].message.text, default="neither") == "en"
    assert language == "en"


async def test_messages_during_llm_call_become_one_follow_up_turn(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.think_seconds = 0.4
    async with make_core() as (runtime, chat):
        await chat.say("hello there")
        await asyncio.sleep(0.1)
        await chat.say("second thing")
        await chat.say("third thing")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    requests = fake_openai.chat_requests
    assert len(requests) == 2
    last_users = [m["content"] for m in requests[1]["messages"] if m["role"] == "user"]
    assert last_users[-2:] == ["second thing", "third thing"]
    assert kinds(sent) == [ReplyKind.ANSWER, ReplyKind.ANSWER]
    assert fake_openai.rejected == []


async def test_cancel_word_cancels_tools_and_answer_says_so(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)
        await chat.say("cancela")
        sent = await chat.wait_for(3)
        await runtime.engine.wait_idle()
        calls = await rows(runtime, ToolCallRow)
    assert [c.status for c in calls] == ["cancelled"]
    assert calls[0].result == "cancelled by the user"
    assert sent[1].message.kind is ReplyKind.INTERIM
    assert "cancelled by the user" in sent[2].message.text
    assert fake_openai.rejected == []


async def test_a_tool_cancelled_before_its_task_ever_ran_still_gets_its_result(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel handled in the same actor step as the spawn (a /cancel right behind the
    model's reply) cancels a task whose body never started, so its own handler cannot
    report; the call must still get "cancelled by the user" and the turn its answer."""
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    real_spawn = SessionActor._spawn_tool

    def spawn_then_cancel(self: SessionActor, call: ToolCallInfo, *, admin: bool) -> None:
        real_spawn(self, call, admin=admin)
        self._cancel_tools(CANCELLED_BY_USER)

    monkeypatch.setattr(SessionActor, "_spawn_tool", spawn_then_cancel)
    async with make_core() as (runtime, chat):
        await chat.say("what time is it?")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
        calls = await rows(runtime, ToolCallRow)
    assert [(c.status, c.result) for c in calls] == [("cancelled", "cancelled by the user")]
    assert [s.message.kind for s in sent] == [ReplyKind.WORKING, ReplyKind.ANSWER]
    assert "cancelled by the user" in sent[1].message.text


async def test_cancel_command_and_status_command(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    async with make_core() as (runtime, chat):
        assert await chat.command(CommandName.CANCEL)  # nothing running: still an answer
        await chat.say("what time is it?")
        await chat.wait_for(1)
        status = await chat.command(CommandName.STATUS)
        assert "checking the time" in status
        answer = await chat.command(CommandName.CANCEL)
        assert "1" in answer
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert "cancelled by the user" in sent[-1].message.text
    assert fake_openai.rejected == []


@asynccontextmanager
async def a_tool_that_ignores_its_cancel(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Lets `ignores_cancel` end on leaving, or some seconds on whatever the test waits
    for, so that its task (which nothing else can end) neither hangs a failing test nor
    outlives the test's event loop."""
    monkeypatch.setattr(slow_tools, "let_go", False)
    monkeypatch.setattr(slow_tools, "stubborn_started", False)
    monkeypatch.setattr(tool_runner, "CANCEL_GRACE_SECONDS", 0.3)
    safety = asyncio.get_running_loop().call_later(6, setattr, slow_tools, "let_go", True)
    try:
        yield
    finally:
        safety.cancel()
        slow_tools.let_go = True
        await asyncio.sleep(0.1)


async def until_the_stubborn_tool_runs() -> None:
    async with asyncio.timeout(5):
        while not slow_tools.stubborn_started:
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("who", ["user", "operator"])
async def test_a_tool_that_ignores_its_cancel_gets_one_result_and_the_chat_goes_on(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    who: str,
) -> None:
    """A tool that swallows CancelledError cannot hold the conversation: after a short
    grace its call is cancelled, the turn is answered and the next message too. Its task,
    which no one can end, stays owned (stopped again at shutdown) and is logged."""
    fake_openai.script_tool_calls([("ignores_cancel", {})])
    outcome = CANCELLED_BY_USER if who == "user" else CANCELLED_BY_OPERATOR
    async with make_core() as (runtime, chat), a_tool_that_ignores_its_cancel(monkeypatch):
        await chat.say("run the stubborn tool")
        await until_the_stubborn_tool_runs()
        if who == "user":
            await asyncio.wait_for(chat.command(CommandName.CANCEL), 2)
        else:
            await asyncio.wait_for(runtime.engine.cancel_tools(1, outcome), 2)
        await chat.wait_for(2, timeout=3)
        await chat.say("are you back?")
        sent = await chat.wait_for(3, timeout=3)
        await runtime.engine.wait_idle(timeout=3)
        left_running = len(runtime.engine.runner.left_running)
        calls = await rows(runtime, ToolCallRow)
    assert kinds(sent) == [ReplyKind.WORKING, ReplyKind.ANSWER, ReplyKind.ANSWER]
    assert [(c.status, c.result) for c in calls] == [("cancelled", outcome.result)]
    assert outcome.result in sent[1].message.text
    last = fake_openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in last if m["role"] == "tool"] == [outcome.result]
    assert left_running == 1
    stuck = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ignores_cancel" in r.getMessage() for r in stuck)
    assert fake_openai.rejected == []


async def test_reset_does_not_wait_for_a_tool_that_ignores_its_cancel(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_openai.script_tool_calls([("ignores_cancel", {})])
    async with make_core() as (runtime, chat), a_tool_that_ignores_its_cancel(monkeypatch):
        await chat.say("run the stubborn tool")
        await until_the_stubborn_tool_runs()
        await asyncio.wait_for(chat.command(CommandName.RESET), 2)
        await chat.say("fresh start")
        sent = await chat.wait_for(2, timeout=3)
        await runtime.engine.wait_idle(timeout=3)
        calls = await rows(runtime, ToolCallRow)
    assert kinds(sent) == [ReplyKind.WORKING, ReplyKind.ANSWER]
    assert [(c.status, c.result) for c in calls] == [
        ("cancelled", "cancelled: the conversation was reset")
    ]
    assert fake_openai.rejected == []


async def test_a_tool_that_ignores_its_timeout_still_times_out(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_openai.script_tool_calls([("ignores_cancel", {})])
    async with (
        make_core(tool_timeout_seconds=0.3) as (runtime, chat),
        a_tool_that_ignores_its_cancel(monkeypatch),
    ):
        await chat.say("run the stubborn tool")
        sent = await chat.wait_for(2, timeout=3)
        await runtime.engine.wait_idle(timeout=3)
        calls = await rows(runtime, ToolCallRow)
    assert kinds(sent) == [ReplyKind.WORKING, ReplyKind.ANSWER]
    assert [(c.status, c.result) for c in calls] == [("timed_out", "timed out after 0.3 s")]
    assert fake_openai.rejected == []


async def test_stop_does_not_wait_forever_for_a_tool_that_ignores_its_cancel(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shutdown abandons work in flight: the call stays running, for recovery to decide
    after the restart, and the task that would not stop is named in the log."""
    fake_openai.script_tool_calls([("ignores_cancel", {})])
    async with make_core() as (runtime, chat), a_tool_that_ignores_its_cancel(monkeypatch):
        await chat.say("run the stubborn tool")
        await until_the_stubborn_tool_runs()
        started = time.monotonic()
        await runtime.engine.stop()
        took = time.monotonic() - started
        left_running = len(runtime.engine.runner.left_running)
        calls = await rows(runtime, ToolCallRow)
    assert took < 3
    assert [c.status for c in calls] == ["running"]
    assert left_running == 1
    stuck = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ignores_cancel" in text for text in stuck)


async def test_stop_ends_every_session_when_one_fails_to_stop(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sessions stop at once; one whose stop raises is logged, and the others (and the
    rest of the shutdown) still end."""
    real_stop = SessionActor.stop
    stopped: list[str] = []

    async def stop(self: SessionActor) -> None:
        if self.label == first:
            raise RuntimeError("stop failed")
        await real_stop(self)
        stopped.append(self.label)

    fake_openai.script_tool_calls([("wait_seconds", {"seconds": 30})])
    fake_openai.script_tool_calls([("wait_seconds", {"seconds": 30})])
    async with make_core() as (runtime, chat):
        await chat.say("wait please", chat="a")
        await chat.say("wait please", chat="b")
        await chat.wait_for(2)
        labels = sorted(actor.label for actor in runtime.engine._actors.values())
        first = labels[0]
        monkeypatch.setattr(SessionActor, "stop", stop)
        await runtime.engine.stop()
        left = len(runtime.engine._actors)
    assert len(labels) == 2
    assert stopped == labels[1:]
    assert left == 0
    failed = [r for r in caplog.records if r.getMessage() == "stopping the session failed"]
    assert [getattr(r, "session", None) for r in failed] == [first]


async def test_every_bad_tool_call_gets_exactly_one_result(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_tool_calls(
        [
            ("no_such_tool", {}),
            ("get_current_time", "{not json"),
            ("get_current_time", {"timezone": 5, "extra": 1}),
            ("explode", {"reason": "boom"}),
            ("never_finishes", {}),
            ("cancels_itself", {}),
        ]
    )
    fake_openai.script_reply("done")
    async with make_core(tool_timeout_seconds=0.3) as (runtime, chat):
        await chat.say("do things")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
        calls = await rows(runtime, ToolCallRow)
    results = {c.name + ":" + c.arguments[:5]: (c.status, c.result or "") for c in calls}
    assert len(calls) == 6
    assert results["no_such_tool:{}"][0] == "failed"
    assert "unknown tool" in results["no_such_tool:{}"][1]
    assert "not valid JSON" in results["get_current_time:{not "][1]
    assert "invalid arguments" in results['get_current_time:{"tim'][1]
    assert results['explode:{"rea'] == ("failed", "error: RuntimeError: boom")
    assert results["never_finishes:{}"] == ("timed_out", "timed out after 0.3 s")
    assert results["cancels_itself:{}"] == (
        "failed",
        "error: the tool was cancelled by its own code, not by anyone",
    )
    second = fake_openai.chat_requests[1]["messages"]
    assert [m["role"] for m in second[-6:]] == ["tool"] * 6
    assert validate(second) == []
    assert fake_openai.rejected == []


async def test_bad_tool_arguments_never_reach_a_later_request_but_stay_on_record(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    """Some OpenAI-compatible servers (vLLM) parse the arguments of every tool call in the
    history and answer 400 to ones that are not a JSON object, which would cost the chat
    every later answer: requests carry "{}" instead, and the operator still sees the text."""
    fake_openai.script_tool_calls([("get_current_time", "{not json")])
    fake_openai.script_reply("sorry, I sent that badly")
    async with make_core() as (runtime, chat):
        await chat.say("what time is it?")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
        await chat.say("never mind")
        await chat.wait_for(3)
        await runtime.engine.wait_idle()
        admin = AdminStore(runtime.db, "s")
        (view,) = [c for m in (await admin.transcript(1)).messages for c in m.calls]
    later = fake_openai.chat_requests[1:]
    assert len(later) == 2
    sent = [
        call["function"]["arguments"]
        for request in later
        for message in request["messages"]
        for call in message.get("tool_calls") or ()
    ]
    assert sent == ["{}", "{}"]
    results = [m["content"] for m in later[-1]["messages"] if m["role"] == "tool"]
    assert len(results) == 1
    assert results[0].startswith("invalid arguments: not valid JSON")
    assert "'{not json'" in results[0]  # the model is told what it sent, not "{}"
    assert (view.arguments, view.status, view.result) == ("{not json", "failed", results[0])
    assert fake_openai.rejected == []


async def test_llm_failure_apologizes_keeps_message_and_recovers(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_error(500, "upstream exploded")
    async with make_core() as (runtime, chat):
        await chat.say("first question")
        sent = await chat.wait_for(1)
        assert sent[0].message.kind is ReplyKind.ERROR
        session = await runtime.engine.store.get_session(1)
        assert session.state == "idle" and "upstream exploded" in (session.last_error or "")
        await chat.say("second question")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert sent[1].message.kind is ReplyKind.ANSWER
    users = [m["content"] for m in fake_openai.chat_requests[-1]["messages"] if m["role"] == "user"]
    assert users == ["first question", "second question"]


async def test_max_tool_rounds_then_a_last_call_without_tools(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_tool_calls([("get_current_time", {})])
    fake_openai.script_tool_calls([("get_current_time", {})])
    async with make_core(max_tool_rounds=1) as (runtime, chat):
        await chat.say("loop please")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    requests = fake_openai.chat_requests
    assert len(requests) == 2
    assert requests[1]["tool_choice"] == "none"
    assert sent[-1].message.kind in (ReplyKind.ANSWER, ReplyKind.ERROR)
    assert fake_openai.rejected == []


async def test_duplicate_and_unaddressed_and_non_text(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core() as (runtime, chat):
        _, first = await chat.say("hi", message_id="42")
        _, again = await chat.say("hi", message_id="42")
        _, chatter = await chat.say("just chatting", private=False, addressed=False, chat="g")
        _, sticker = await chat.say("", unsupported="sticker", message_id="43")
        _, group_sticker = await chat.say(
            "", unsupported="sticker", private=False, addressed=False, chat="g"
        )
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert (first, again, chatter) == (
        SubmitOutcome.ACCEPTED,
        SubmitOutcome.DUPLICATE,
        SubmitOutcome.IGNORED,
    )
    assert sticker is SubmitOutcome.IGNORED and group_sticker is SubmitOutcome.IGNORED
    assert sorted(k.value for k in kinds(chat.sent)) == ["answer", "notice"]
    assert len(fake_openai.chat_requests) == 1


async def test_a_group_answering_everything_ignores_its_photos_unless_they_ask_the_bot(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    # The memory adapter's platform has no group mode of its own: "all" is set for it.
    async with make_core() as (runtime, chat):
        runtime.engine.config = replace(
            runtime.engine.config, group_modes={"memory": GroupMode.ALL}
        )
        _, chatter = await chat.say("", unsupported="photo", private=False, addressed=False)
        _, asked = await chat.say("", unsupported="photo", private=False, addressed=True)
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert (chatter, asked) == (SubmitOutcome.IGNORED, SubmitOutcome.IGNORED)
    assert [k.value for k in kinds(chat.sent)] == ["notice"]
    assert chat.sent[0].message.reply_to_id == "m-2"


async def test_group_messages_carry_author_names(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core() as (runtime, chat):
        await chat.say("hola a todos", private=False, name="Ana", chat="g")
        await chat.wait_for(1)
        await chat.say("y yo", private=False, name="Luis", user="u2", chat="g")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    users = [m["content"] for m in fake_openai.chat_requests[-1]["messages"] if m["role"] == "user"]
    assert users == ["Ana: hola a todos", "Luis: y yo"]


async def test_delivery_retried_and_never_doubled(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core() as (runtime, chat):
        runtime.engine.courier.base_backoff = 0.01
        chat.fail_next = [DeliveryError("flood", retry_after=0.05), DeliveryError("net")]
        await chat.say("hi")
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
        outbox = await rows(runtime, OutboxRow)
    assert len(chat.sent) == 1
    assert outbox[0].attempts == 3 and outbox[0].delivered_at is not None


async def test_reset_starts_a_new_conversation_and_keeps_the_old(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    async with make_core() as (runtime, chat):
        await chat.say("what time is it")
        await chat.wait_for(1)
        await chat.command(CommandName.RESET)
        await chat.say("fresh start")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
        old = await runtime.engine.store.history(1)
    last = fake_openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in last if m["role"] == "user"] == ["fresh start"]
    assert [e.role for e in old] == ["user", "assistant", "tool"]
    assert fake_openai.rejected == []


async def test_sessions_are_independent(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    async with make_core() as (runtime, chat):
        await chat.say("what time is it", chat="slow")
        await chat.wait_for(1)
        await chat.say("hello", chat="fast")
        sent = await chat.wait_for(2)
        assert sent[1].message.conversation.chat_id == "fast"
        assert sent[1].message.kind is ReplyKind.ANSWER
        await chat.command(CommandName.CANCEL, chat="slow")
        await runtime.engine.wait_idle()


def count_store_calls(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the store methods called from now on; the operator control poll (every
    second, whatever the chats do) and the heartbeat it writes are left out."""
    called: list[str] = []
    background = {"pending_controls", "finish_control", "sessions_with_undelivered", "beat"}
    for name in dir(type(store)):
        method = getattr(store, name)
        if name.startswith("_") or not asyncio.iscoroutinefunction(method):
            continue

        def counted(method: Any, name: str) -> Any:
            async def call(*args: Any, **kwargs: Any) -> Any:
                if name not in background:
                    called.append(name)
                return await method(*args, **kwargs)

            return call

        monkeypatch.setattr(store, name, counted(method, name))
    return called


async def test_an_instant_reply_costs_two_storage_transactions(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)
        called = count_store_calls(runtime.engine.store, monkeypatch)
        await chat.say("¿Sigues ahí?")
        sent = await chat.wait_for(2)
        calls_for_the_reply = list(called)
        await runtime.engine.wait_idle()
    assert sent[1].message.kind is ReplyKind.INTERIM
    # Stored, deferred and its reply claimed for sending in one transaction, then marked
    # delivered.
    assert calls_for_the_reply == ["record_inbound", "mark_delivered"]


async def test_an_instant_reply_is_on_its_way_when_submit_returns(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The courier has it before the adapter's handler goes on: a Telegram bot's next
    poll waits for that handler, and must not go out ahead of the reply."""
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)
        courier = runtime.engine.courier
        for _ in range(500):
            if not courier.busy:
                break
            await asyncio.sleep(0.01)
        assert not courier.busy
        await chat.say("¿Sigues ahí?")
        # No await in between: nothing else ran since submit returned.
        assert courier.busy
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert sent[1].message.kind is ReplyKind.INTERIM


TAKING_IN: contextvars.ContextVar[bool] = contextvars.ContextVar("taking_in", default=False)


def count_intake_statements(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL statements run on behalf of `record_inbound` calls from now on: its
    transaction's work runs in its caller's context, whatever else shares the
    transaction."""
    statements: list[str] = []
    store = runtime.engine.store
    record_inbound = store.record_inbound

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        token = TAKING_IN.set(True)
        try:
            return await record_inbound(*args, **kwargs)
        finally:
            TAKING_IN.reset(token)

    def note(*args: Any) -> None:
        if TAKING_IN.get():
            statements.append(args[2])

    monkeypatch.setattr(store, "record_inbound", recorded)
    event.listen(runtime.db.sync_engine, "before_cursor_execute", note)
    return statements


async def test_a_message_is_stored_with_the_status_its_session_gives_it(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not queued first and moved after: a statement fewer for an instant reply (nine)
    and for a turn's start (six, with the history read for the model call)."""
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with make_core() as (runtime, chat):
        statements = count_intake_statements(runtime, monkeypatch)
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)
        statements.clear()
        await chat.say("¿Sigues ahí?")
        sent = await chat.wait_for(2)
        instant_reply = list(statements)
        await chat.wait_for(3)
        await runtime.engine.wait_idle()
        statements.clear()
        await chat.say("hello")
        sent = await chat.wait_for(4)
        starting_a_turn = list(statements)
        history = await runtime.engine.store.history(1)
    assert kinds(sent) == [
        ReplyKind.WORKING,
        ReplyKind.INTERIM,
        ReplyKind.ANSWER,
        ReplyKind.ANSWER,
    ]
    assert len(instant_reply) == 9, "\n".join(instant_reply)
    assert len(starting_a_turn) == 6, starting_a_turn
    for statement in instant_reply + starting_a_turn:
        assert not statement.lstrip().upper().startswith("UPDATE MESSAGES"), statement
    # The deferred message joined the history after the tool's result, as before.
    assert [e.role for e in history] == [
        "user",
        "assistant",
        "tool",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert history[1].tool_calls and history[3].content == "¿Sigues ahí?"
    assert history[5].content == "hello"


async def test_a_message_whose_instant_reply_cannot_be_chosen_is_kept_for_the_answer(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.5)
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)

        def broken(*args: Any, **kwargs: Any) -> str:
            raise RuntimeError("a broken reply template")

        monkeypatch.setattr(runtime.engine.book, "interim", broken)
        _, outcome = await chat.say("¿Sigues ahí?")
        sent = await chat.wait_for(3)
        await runtime.engine.wait_idle()
    assert outcome is SubmitOutcome.ACCEPTED
    # No instant reply; the message stays queued and, once the tool's turn is answered,
    # starts the next turn.
    assert kinds(sent) == [ReplyKind.WORKING, ReplyKind.ANSWER, ReplyKind.ANSWER]
    last_request = fake_openai.chat_requests[-1]["messages"]
    assert last_request[-1]["role"] == "user" and "¿Sigues ahí?" in last_request[-1]["content"]
    assert "no instant reply" in caplog.text


async def test_a_message_that_arrives_while_tools_run_is_read_once(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its language (on the way in) and its kind (choosing the instant reply, in the
    storing transaction) come from one reading of its words."""
    monkeypatch.setattr(slow_tools, "DELAY", 0.5)
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)
        classifier = runtime.engine.book.classifier
        read = classifier.read
        texts: list[str] = []

        def counted(text: str) -> Reading:
            texts.append(text)
            return read(text)

        monkeypatch.setattr(classifier, "read", counted)
        await chat.say("¿Sigues ahí?")
        sent = await chat.wait_for(2)
        interims = await rows(runtime, MessageRow, status="interim")
        await runtime.engine.wait_idle()
    assert kinds(sent)[:2] == [ReplyKind.WORKING, ReplyKind.INTERIM]
    assert [row.kind for row in interims] == ["status"]
    assert texts == ["¿Sigues ahí?"]


async def test_an_instant_reply_waits_behind_an_older_undelivered_reply(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.5)
    async with make_core() as (runtime, chat):
        runtime.engine.courier.base_backoff = 0.001
        # The "working" notice fails until the courier gives up: it stays in the outbox.
        chat.fail_next = [DeliveryError("network down") for _ in range(6)]
        await chat.say("Dame la hora actual")
        async with asyncio.timeout(10):
            while runtime.engine.courier.busy or chat.fail_next:
                await asyncio.sleep(0.01)
        await chat.say("¿Sigues ahí?")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    # The session's replies keep their order: the notice first, then the instant reply.
    assert kinds(sent)[:2] == [ReplyKind.WORKING, ReplyKind.INTERIM]


async def test_typing_shows_while_the_model_writes_not_while_tools_run(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    fake_openai.think_seconds = 0.3
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual")
        await chat.wait_for(1)  # the "working" notice: the tool runs from here on
        await asyncio.sleep(0.1)
        while_tool_runs = len(chat.typing_calls)
        assert while_tool_runs >= 2  # every 50 ms while the model chose the tool
        await asyncio.sleep(0.4)
        assert len(chat.typing_calls) == while_tool_runs  # the notice says it all
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert kinds(sent) == [ReplyKind.WORKING, ReplyKind.ANSWER]
    assert len(chat.typing_calls) > while_tool_runs  # the model writes the answer


async def test_an_answered_message_costs_three_storage_calls(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_core() as (runtime, chat):
        await chat.say("hello")
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
        called = count_store_calls(runtime.engine.store, monkeypatch)
        await chat.say("and again")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert sent[1].message.kind is ReplyKind.ANSWER
    # Storing the message starts the turn and reads the history for the call; recording
    # the answer claims it for sending and sees that nothing came meanwhile.
    assert sorted(called) == sorted(["record_inbound", "record_answer", "mark_delivered"])


# --- the "working on it" notice (TOOL_NOTICE_DELAY_SECONDS) ------------------------------


@pytest.mark.parametrize(
    ("tool_seconds", "notice_delay", "expected"),
    [
        (0.1, 30, [ReplyKind.ANSWER]),  # quicker than the delay: the answer alone
        (1.0, 0.1, [ReplyKind.WORKING, ReplyKind.ANSWER]),  # slower: the notice, then it
    ],
)
async def test_the_working_notice_comes_only_for_tools_that_outlast_its_delay(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    tool_seconds: float,
    notice_delay: float,
    expected: list[ReplyKind],
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", tool_seconds)
    async with make_core(tool_notice_delay_seconds=notice_delay) as (runtime, chat):
        await chat.say("what time is it?")
        sent = await chat.wait_for(len(expected))
        await runtime.engine.wait_idle()
        outbox = await rows(runtime, OutboxRow)
    assert kinds(sent) == expected
    assert [row.kind for row in outbox] == [kind.value for kind in expected]
    assert {s.message.reply_to_id for s in sent} == {sent[0].message.reply_to_id}


async def test_a_message_before_the_notice_gets_its_instant_reply_instead_of_the_notice(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instant reply already says the tools run: the notice would say it twice."""
    monkeypatch.setattr(slow_tools, "DELAY", 1.5)
    async with make_core(tool_notice_delay_seconds=0.5) as (runtime, chat):
        await chat.say("Dame la hora actual")
        await asyncio.wait_for(_tool_running(runtime), 10)
        await chat.say("¿Sigues ahí?")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert kinds(sent) == [ReplyKind.INTERIM, ReplyKind.ANSWER]
    assert "1 herramienta" in sent[0].message.text


async def _tool_running(runtime: Any) -> None:
    while not [c for c in await rows(runtime, ToolCallRow) if c.status == "running"]:
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("phase", ["idle", "tools", "llm"])
async def test_messages_submitted_at_once_each_join_the_history_once(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """A group writing at once to one session, whatever it is doing: every message is
    stored and joins the history exactly once, every request is valid, every reply goes
    out, and the session ends idle."""
    monkeypatch.setattr(slow_tools, "DELAY", 0.3)
    async with make_core(rate_limit_user_per_minute=0, rate_limit_chat_per_minute=0) as (
        runtime,
        chat,
    ):
        if phase == "tools":
            await chat.say("what time is it")
            await chat.wait_for(1)
        elif phase == "llm":
            fake_openai.script_delay(0.3)
            await chat.say("first")
            while not fake_openai.chat_requests:
                await asyncio.sleep(0.01)
        texts = [f"message {n}" for n in range(8)]
        await asyncio.gather(
            *(chat.say(text, user=f"u{n}", private=False) for n, text in enumerate(texts))
        )
        await runtime.engine.wait_idle()
        # Racing first messages each try to create the session: on PostgreSQL the losers'
        # inserts still draw ids from the sequence, so the one session need not be 1.
        (session,) = await rows(runtime, SessionRow)
        history = await runtime.engine.store.history(session.id)
        info = await runtime.engine.store.get_session(session.id)
        outbox = await rows(runtime, OutboxRow)
    joined = [e.content for e in history if e.role == "user"]
    assert sorted(joined[-len(texts) :]) == texts
    assert len(joined) == len(texts) + (phase != "idle")
    assert all(validate(r["messages"]) == [] for r in fake_openai.chat_requests)
    assert info.state == "idle" and history[-1].role == "assistant"
    assert all(o.delivered_at is not None for o in outbox) and len(chat.sent) == len(outbox)
    assert fake_openai.rejected == []
