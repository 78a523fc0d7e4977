"""LLM faults: whatever the model's server does, the user is told, nothing is lost, the
history stays valid, and the next message works."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from bot.core_api import SubmitOutcome
from bot.events import ReplyKind
from bot.history import validate
from bot.interim.classify import detect_language
from bot.offline import FakeOpenAI
from bot.tools.runner import ToolOutcome
from storage.admin import AdminStore
from storage.database import sessionmaker
from storage.models import ToolCallRow
from tests.conftest import CoreFactory
from tests.support import slow_tools


async def test_429_with_retry_after_is_retried_by_the_sdk(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_error(429, retry_after_ms=10)
    async with make_core(openai_max_retries=2) as (runtime, chat):
        await chat.say("hello")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ANSWER
    assert len(fake_openai.chat_requests) == 2


FAULTS: dict[str, Callable[[FakeOpenAI], None]] = {
    "500": lambda fake: fake.script_error(500),
    "timeout": lambda fake: fake.script_delay(5),
    "truncated JSON": lambda fake: fake.script_truncated_json(),
    "dropped connection": lambda fake: fake.script_disconnect(),
    "400": lambda fake: fake.script_error(400, "Invalid value for 'model'."),
    "empty answer": lambda fake: fake.script_reply(" \n "),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_ends_with_apology_and_valid_history(
    make_core: CoreFactory, fake_openai: FakeOpenAI, fault: str
) -> None:
    FAULTS[fault](fake_openai)
    async with make_core(openai_max_retries=0, openai_timeout_seconds=0.5) as (runtime, chat):
        await chat.say("first")
        sent = await chat.wait_for(1)
        assert sent[0].message.kind is ReplyKind.ERROR
        assert sent[0].message.text.strip()
        info = await runtime.engine.store.get_session(1)
        assert info.state == "idle" and info.last_error
        await chat.say("second")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert sent[1].message.kind is ReplyKind.ANSWER
    last = fake_openai.chat_requests[-1]["messages"]
    assert isinstance(last, list)
    assert [m["content"] for m in last if m["role"] == "user"] == ["first", "second"]
    assert validate(last) == []
    assert fake_openai.rejected == []


@pytest.mark.parametrize("text", ["Hola, ¿qué tal estás hoy?", "Hello, how are you today?"])
async def test_the_apology_is_in_the_users_language(
    make_core: CoreFactory, fake_openai: FakeOpenAI, text: str
) -> None:
    fake_openai.script_error(500)
    async with make_core(openai_max_retries=0) as (runtime, chat):
        await chat.say(text)
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ERROR
    told = detect_language(text, default="neither")
    assert told in ("es", "en")
    assert detect_language(sent[0].message.text, default="neither") == told


async def test_fault_after_tools_keeps_the_tool_block_whole(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_tool_calls([("get_current_time", {"timezone": "UTC"})])
    fake_openai.script_error(500)
    async with make_core(openai_max_retries=0) as (runtime, chat):
        await chat.say("what time is it")
        sent = await chat.wait_for(2)
        assert [s.message.kind for s in sent] == [ReplyKind.WORKING, ReplyKind.ERROR]
        await chat.say("try again please")
        await chat.wait_for(3)
        await runtime.engine.wait_idle()
    last = fake_openai.chat_requests[-1]["messages"]
    assert isinstance(last, list)
    assert [m["role"] for m in last][1:] == ["user", "assistant", "tool", "user"]
    assert validate(last) == []
    assert fake_openai.rejected == []


async def test_tool_call_ids_openai_would_refuse_are_replaced_before_they_are_stored(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some OpenAI-compatible servers send call ids that OpenAI refuses in a later request
    (repeated within a message, empty, over 40 characters): each call still gets one
    result, under an id of its own, and every later request is valid."""
    from bot import offline

    sent_ids = iter(["call_same", "call_same", "", "c" * 41])
    real_random_id = offline._random_id

    def scripted_ids(prefix: str, length: int) -> str:
        return next(sent_ids) if prefix == "call_" else real_random_id(prefix, length)

    monkeypatch.setattr(offline, "_random_id", scripted_ids)
    fake_openai.script_tool_calls([("get_current_time", {"timezone": "UTC"})] * 4)
    async with make_core() as (runtime, chat):
        await chat.say("what time is it, four times")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
        async with sessionmaker(runtime.db)() as tx:
            calls = list(await tx.scalars(select(ToolCallRow).order_by(ToolCallRow.seq)))
    ids = [c.call_id for c in calls]
    assert ids[0] == "call_same"
    assert len(set(ids)) == 4 and all(0 < len(i) <= 40 for i in ids)
    assert all(c.status == "done" for c in calls)
    follow_up = fake_openai.chat_requests[1]["messages"]
    assert [m["tool_call_id"] for m in follow_up if m["role"] == "tool"] == ids
    assert validate(follow_up) == []  # type: ignore[arg-type]
    assert fake_openai.rejected == []


async def test_invalid_tool_arguments_reach_the_model_as_a_validation_error(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_tool_calls([("wait_seconds", '{"seconds": "soon"')])
    async with make_core() as (runtime, chat):
        await chat.say("wait a bit")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    tool_message = fake_openai.chat_requests[1]["messages"][-1]  # type: ignore[index]
    assert tool_message["role"] == "tool"
    assert "invalid arguments" in tool_message["content"]


async def test_a_failed_storage_step_is_retried_and_the_message_answered(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import session

    monkeypatch.setattr(session, "STEP_RETRY_SECONDS", 0.05)
    async with make_core() as (runtime, chat):
        store = runtime.engine.store
        real_record_answer = store.record_answer
        failures = iter([ConnectionError("database went away"), None])

        async def flaky_record_answer(session_id: int, *args: Any) -> object:
            error = next(failures, None)
            if error is not None:
                raise error
            return await real_record_answer(session_id, *args)

        # The step after the model call fails: the session looks at its stored state
        # again, calls the model again and records that answer.
        monkeypatch.setattr(store, "record_answer", flaky_record_answer)
        await chat.say("hello after a hiccup")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ANSWER
    assert "hello after a hiccup" in sent[0].message.text


async def test_a_message_whose_storing_fails_is_stored_again_before_submit_returns(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import engine

    # The platform has moved past the message once submit returns: a failure to store it
    # (a locked or restarting database) must not lose it.
    monkeypatch.setattr(engine, "INTAKE_RETRY_SECONDS", (0.01, 0.01))
    async with make_core() as (runtime, chat):
        store = runtime.engine.store
        real_record_inbound = store.record_inbound
        failures = iter([ConnectionError("database went away"), TimeoutError("locked")])

        async def flaky_record_inbound(*args: Any) -> object:
            error = next(failures, None)
            if error is not None:
                raise error
            return await real_record_inbound(*args)

        monkeypatch.setattr(store, "record_inbound", flaky_record_inbound)
        _, outcome = await chat.say("hello through a hiccup")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert outcome is SubmitOutcome.ACCEPTED
    assert "hello through a hiccup" in sent[0].message.text


def _commit_then_fail_once(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next message is stored, and then its storing reports a failure (a connection
    that dropped after the commit); storing works from then on."""
    real_record_inbound = store.record_inbound
    tries = 0

    async def commits_then_fails(*args: Any) -> object:
        nonlocal tries
        tries += 1
        intake = await real_record_inbound(*args)
        if tries == 1:
            raise ConnectionError("the connection dropped after the commit")
        return intake

    monkeypatch.setattr(store, "record_inbound", commits_then_fails)


async def test_a_message_stored_by_a_try_that_then_failed_is_still_answered(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import engine

    monkeypatch.setattr(engine, "INTAKE_RETRY_SECONDS", (0.01,))
    async with make_core() as (runtime, chat):
        _commit_then_fail_once(runtime.engine.store, monkeypatch)
        _, outcome = await chat.say("did you get this?")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert outcome is SubmitOutcome.DUPLICATE  # the retry found it stored
    assert [s.message.kind for s in sent] == [ReplyKind.ANSWER]
    assert "did you get this?" in sent[0].message.text


async def test_an_instant_reply_stored_by_a_try_that_then_failed_goes_out_at_once(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import engine

    monkeypatch.setattr(engine, "INTAKE_RETRY_SECONDS", (0.01,))
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    fake_openai.script_tool_calls([("get_current_time", {})])
    async with make_core() as (runtime, chat):
        await chat.say("what time is it")
        await chat.wait_for(1)  # the tool runs
        _commit_then_fail_once(runtime.engine.store, monkeypatch)
        await chat.say("are you still there?")
        sent = await chat.wait_for(2, timeout=5)  # not once the tool's 30 s are over
    assert [s.message.kind for s in sent] == [ReplyKind.WORKING, ReplyKind.INTERIM]


async def test_a_message_that_cannot_be_stored_at_all_fails_its_submit(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot import engine

    monkeypatch.setattr(engine, "INTAKE_RETRY_SECONDS", (0.01,))
    attempts = 0

    async def broken_record_inbound(*args: Any) -> object:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("database gone for good")

    async with make_core() as (runtime, chat):
        monkeypatch.setattr(runtime.engine.store, "record_inbound", broken_record_inbound)
        with pytest.raises(ConnectionError):
            await chat.say("hello into the void")
    assert attempts == 2  # the first try and one retry
    assert chat.sent == []


@pytest.mark.parametrize(
    ("name", "arguments", "real_result"),
    [
        ("get_current_time", {"timezone": "UTC"}, "(UTC)"),  # not re-runnable
        ("wait_seconds", {"seconds": 0}, "waited 0 s"),  # re-runnable
    ],
)
async def test_a_tool_result_whose_recording_failed_is_recorded_by_the_retry(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    arguments: dict[str, object],
    real_result: str,
) -> None:
    """The retry must record the outcome the tool had, not run the tool again nor call
    it "interrupted by a restart"."""
    from bot import session

    monkeypatch.setattr(session, "STEP_RETRY_SECONDS", 0.05)
    fake_openai.script_tool_calls([(name, arguments)])
    fake_openai.script_reply("done")
    async with make_core() as (runtime, chat):
        store = runtime.engine.store
        real_finish_tool = store.finish_tool
        failures = iter([ConnectionError("database went away")])

        async def flaky_finish_tool(tool_call_id: int, outcome: ToolOutcome) -> bool:
            error = next(failures, None)
            if error is not None:
                raise error
            return await real_finish_tool(tool_call_id, outcome)

        monkeypatch.setattr(store, "finish_tool", flaky_finish_tool)
        await chat.say("do it")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
        async with sessionmaker(runtime.db)() as tx:
            calls = list(await tx.scalars(select(ToolCallRow)))
    assert next(failures, None) is None  # the failure did happen
    assert [(c.status, c.attempts) for c in calls] == [("done", 1)]
    assert real_result in (calls[0].result or "")
    follow_up = fake_openai.chat_requests[1]["messages"]
    results = [m for m in follow_up if m["role"] == "tool"]  # type: ignore[index]
    assert [m["content"] for m in results] == [calls[0].result]  # type: ignore[index]
    assert [s.message.kind for s in sent] == [ReplyKind.WORKING, ReplyKind.ANSWER]
    assert validate(follow_up) == []  # type: ignore[arg-type]


async def test_an_answer_that_comes_after_an_operator_archived_the_session_is_dropped(
    make_core: CoreFactory, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """The actor records the answer against the session as the call began, with no read
    first: the write's compare-and-set is what notices the session moved on."""
    caplog.set_level(logging.INFO)
    fake_openai.script_delay(0.5)
    async with make_core() as (runtime, chat):
        await chat.say("hello")
        while not fake_openai.chat_requests:
            await asyncio.sleep(0.01)
        admin = AdminStore(runtime.engine.store.engine, "s")  # type: ignore[attr-defined]
        assert await admin.archive(1)  # as `stillhere admin archive 1` would
        await asyncio.sleep(0.6)
        await runtime.engine.wait_idle()
        await chat.say("hello again")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert [(s.message.kind, s.message.conversation.chat_id) for s in sent] == [
        (ReplyKind.ANSWER, sent[0].message.conversation.chat_id)
    ]
    assert "hello again" in sent[0].message.text and "hello\n" not in sent[0].message.text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("moved on; dropped" in r.getMessage() for r in caplog.records)


class _Said(logging.Handler):
    """Sets `event` once a record starting with `text` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.text):
            self.event.set()


@pytest.mark.parametrize("failing", ["record_answer", "close_tool_round"])
async def test_a_session_whose_steps_keep_failing_gives_up_then_carries_on_when_written_to(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    """The database refuses a session's step for good: after MAX_STEP_RETRIES retries
    the session gives up, in the state it was in, with no more model calls (a retry in a
    model call's state calls the model again). A message its user writes once the
    database is back is a living user reaching it, as one reaching a session waiting to
    recover: it carries on from its stored state and answers both messages at once."""
    from bot import session

    monkeypatch.setattr(session, "STEP_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(slow_tools, "DELAY", 0.01)
    if failing == "close_tool_round":
        fake_openai.script_tool_calls([("get_current_time", {})])
    gave_up = _Said("session gave up")
    logging.getLogger(session.__name__).addHandler(gave_up)
    try:
        async with make_core() as (runtime, chat):
            store = runtime.engine.store
            real = getattr(store, failing)
            failures = 0
            once_too_many = asyncio.Event()

            async def down(*args: Any) -> object:
                nonlocal failures
                failures += 1
                if failures > session.MAX_STEP_RETRIES + 1:
                    once_too_many.set()
                raise ConnectionError("database down")

            monkeypatch.setattr(store, failing, down)
            await chat.say("first")
            ends = [asyncio.create_task(e.wait()) for e in (gave_up.event, once_too_many)]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            for end in ends:
                end.cancel()
            assert gave_up.event.is_set() and not once_too_many.is_set()
            await runtime.engine.wait_idle()
            monkeypatch.setattr(store, failing, real)  # the database is back
            calls_before = len(fake_openai.chat_requests)
            await chat.say("are you back?")
            sent = await chat.wait_for(len(chat.sent) + 1)
            while sent[-1].message.kind is not ReplyKind.ANSWER:
                sent = await chat.wait_for(len(sent) + 1)
            await runtime.engine.wait_idle()
            info = await store.get_session(1)
    finally:
        logging.getLogger(session.__name__).removeHandler(gave_up)
    assert failures == session.MAX_STEP_RETRIES + 1
    # Recording the answer: each failure and each retry of it followed a model call.
    assert calls_before == (failures if failing == "record_answer" else 1)
    assert info.state == "idle"
    assert [s.message.kind for s in sent].count(ReplyKind.ANSWER) == 1
    last = fake_openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in last if m["role"] == "user"] == ["first", "are you back?"]
    assert fake_openai.rejected == []
