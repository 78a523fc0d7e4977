"""The context budget (CONTEXT_BUDGET_TOKENS) against the turn in progress: the request
after the tools always carries the question and every tool result, whether or not a
message came while the tools ran. Runs on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

from typing import Any

import pytest

from bot.events import ReplyKind
from bot.history import validate
from bot.offline import FakeOpenAI
from bot.prompt import history_rows
from tests.conftest import CoreFactory
from tests.support import slow_tools

QUESTION = "what time is it, and explode"
SLOW: tuple[str, Any] = ("get_current_time", {})
ROUNDS: dict[str, tuple[int, list[tuple[str, Any]]]] = {
    # Over the budget: the model's arguments and the result carry 3000 "x".
    "a round over the budget": (600, [SLOW, ("explode", {"reason": "x" * 3000})]),
    # More rows than a model call reads (history_rows(120) == 21).
    "a round longer than the rows read": (
        120,
        [SLOW, *(("explode", {"reason": str(n)}) for n in range(history_rows(120)))],
    ),
}


@pytest.mark.parametrize("message_meanwhile", [False, True])
@pytest.mark.parametrize("round_", ROUNDS)
async def test_the_answer_after_a_big_round_still_sees_the_question_and_results(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    round_: str,
    message_meanwhile: bool,
) -> None:
    budget, calls = ROUNDS[round_]
    monkeypatch.setattr(slow_tools, "DELAY", 0.3)
    fake_openai.script_tool_calls(calls)
    async with make_core(context_budget_tokens=budget) as (runtime, chat):
        await chat.say(QUESTION)
        await chat.wait_for(1)
        if message_meanwhile:
            await chat.say("are you there?")
            await chat.wait_for(2)
        sent = await chat.wait_for(3 if message_meanwhile else 2)
        await runtime.engine.wait_idle()
    follow_up = fake_openai.chat_requests[1]["messages"]
    users = [m["content"] for m in follow_up if m["role"] == "user"]
    tools = [m for m in follow_up if m["role"] == "tool"]
    assert users == ([QUESTION, "are you there?"] if message_meanwhile else [QUESTION])
    assert len(tools) == len(calls)
    assert validate(follow_up) == []
    assert sent[-1].message.kind is ReplyKind.ANSWER
    assert "explode" in sent[-1].message.text  # the offline model reports the results
