"""Text a database cannot store, from each place text comes from: a message (and its
author's name), the model's answer and tool calls, a tool's result. Lone surrogates (what
JSON escapes such as "\\ud800" decode to) cannot be encoded at all; NUL is refused by
PostgreSQL. Each write of such text failed again on every retry: the message was lost,
the answer never sent, the tool call left without a result. Runs on SQLite and on
PostgreSQL (see conftest)."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core_api import SubmitOutcome
from bot.events import ReplyKind
from bot.history import validate
from bot.offline import FakeOpenAI
from bot.storable import storable
from storage.models import ToolCallRow
from tests.bot.test_engine import rows
from tests.conftest import CoreFactory

ODD = {
    "lone surrogate": ("bad \ud800 text", "bad \ufffd text"),
    "NUL": ("bad \x00 text", "bad \ufffd text"),
}


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the fix, each write failed again on every retry: let them fail quickly."""
    from bot import engine, session

    monkeypatch.setattr(engine, "INTAKE_RETRY_SECONDS", (0.01,))
    monkeypatch.setattr(session, "STEP_RETRY_SECONDS", 0.01)


def test_storable_replaces_only_what_cannot_be_stored() -> None:
    assert storable("plain, é, 😀") == "plain, é, 😀"
    assert storable("\ud83d\ude00") == "😀"  # a pair given as two code points
    assert storable("a\udc00b\ud800") == "a\ufffdb\ufffd"
    assert storable("a\x00b") == "a\ufffdb"


@pytest.mark.parametrize("odd", ODD)
async def test_a_message_with_unstorable_text_is_kept_and_answered(
    make_core: CoreFactory, fake_openai: FakeOpenAI, odd: str
) -> None:
    text, kept = ODD[odd]
    async with make_core() as (runtime, chat):
        _, outcome = await chat.say(text, name=text, private=False)
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
        history = await runtime.engine.store.history(1)
    assert outcome is SubmitOutcome.ACCEPTED
    first = history[0]
    assert (first.role, first.content, first.author_name) == ("user", kept, kept)
    assert sent[0].message.kind is ReplyKind.ANSWER
    (request,) = fake_openai.chat_requests
    assert request["messages"][-1] == {"role": "user", "content": f"{kept}: {kept}"}


@pytest.mark.parametrize("odd", ODD)
async def test_a_model_answer_with_unstorable_text_is_sent(
    make_core: CoreFactory, fake_openai: FakeOpenAI, odd: str
) -> None:
    text, kept = ODD[odd]
    fake_openai.script_reply(text)
    async with make_core() as (runtime, chat):
        await chat.say("hello")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
        history = await runtime.engine.store.history(1)
    assert [(s.message.kind, s.message.text) for s in sent] == [(ReplyKind.ANSWER, kept)]
    assert [(e.role, e.content) for e in history] == [("user", "hello"), ("assistant", kept)]
    assert len(fake_openai.chat_requests) == 1  # recorded at once, not asked again


async def one_tool_round(
    make_core: CoreFactory, fake_openai: FakeOpenAI, name: str, arguments: Any
) -> list[Any]:
    """A turn whose model calls `name` once and then answers: its stored calls, once the
    notice and the answer are sent."""
    fake_openai.script_tool_calls([(name, arguments)])
    fake_openai.script_reply("done")
    async with make_core() as (runtime, chat):
        await chat.say("go")
        sent = await chat.wait_for(2)
        await runtime.engine.wait_idle()
        calls = await rows(runtime, ToolCallRow)
    assert [s.message.kind for s in sent] == [ReplyKind.WORKING, ReplyKind.ANSWER]
    return calls


@pytest.mark.parametrize(
    ("arguments", "result"),
    [
        # The arguments text itself carries the character (the model's JSON had "\ud800").
        ({"reason": "bad \ud800 text"}, "error: RuntimeError: bad \ufffd text"),
        ({"reason": "bad \x00 text"}, "error: RuntimeError: bad \ufffd text"),
        # Clean arguments text whose escapes decode to one: only the result carries it.
        ('{"reason": "bad \\ud800 text"}', "error: RuntimeError: bad \ufffd text"),
        ('{"reason": "bad \\u0000 text"}', "error: RuntimeError: bad \ufffd text"),
    ],
)
async def test_a_tool_call_with_unstorable_text_gets_its_result(
    make_core: CoreFactory, fake_openai: FakeOpenAI, arguments: Any, result: str
) -> None:
    calls = await one_tool_round(make_core, fake_openai, "explode", arguments)
    assert [(c.status, c.result) for c in calls] == [("failed", result)]
    requests = fake_openai.chat_requests
    assert len(requests) == 2
    follow_up = requests[1]["messages"]
    assert follow_up[-1] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": result}
    assert validate(follow_up) == []


async def test_a_tool_call_with_a_name_too_long_to_store_gets_its_result(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    """A model may call a tool by a made-up name of any length; the names column holds
    128 characters (enforced on PostgreSQL), OpenAI's function names 64."""
    calls = await one_tool_round(make_core, fake_openai, "x" * 300, {})
    assert [(c.name, c.status) for c in calls] == [("x" * 64, "failed")]
    assert (calls[0].result or "").startswith("unknown tool 'xxxx")
    assert len(fake_openai.chat_requests) == 2
