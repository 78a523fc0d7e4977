"""LLM calls per turn, counted in the strict fake OpenAI's request log.

The three scenarios of the original design, each in a chat of its own on the real core
(SQLite file, MemoryAdapter, the offline model through the openai SDK). The time tool is
held open until every later message got its instant reply, so those messages always arrive
while it runs. Expected for every scenario: one call to start the turn, one after the tool,
none for the messages in between; each of those gets exactly one instant reply, and the
call after the tool carries them after the tool result. Exits 1 when any count differs.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.memory import MemoryAdapter
from bench import gated_tools
from bench.common import JSON, parse_args, table, write_result
from bot.events import ReplyKind
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from bot.settings import Settings

NAME = "llm_calls"
START = "Dame la hora actual"
SCENARIOS: dict[str, tuple[str, ...]] = {
    "1": ("¿Sigues ahí?",),
    "2": ("Hola", "¿Cómo estás?"),
    "3": ("¿Sigues ahí?", "Hola", "¿Qué tal?", "Ok"),
}
EXPECTED_CALLS = 2
REPEATS = {"tiny": 1, "small": 3, "full": 10}
STEP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Outcome:
    scenario: str
    repeat: int
    interim_messages: int
    instant_replies: int
    llm_calls: int
    answers: int
    deferred_after_tool: bool
    rejected: int

    @property
    def ok(self) -> bool:
        return (
            self.llm_calls == EXPECTED_CALLS
            and self.instant_replies == self.interim_messages
            and self.answers == 1
            and self.deferred_after_tool
            and self.rejected == 0
        )


def _after_tool_result(request: JSON, texts: Sequence[str]) -> bool:
    """The deferred messages follow the tool result in the call that ends the tool round."""
    messages: list[dict[str, Any]] = request["messages"]
    tool_at = max((i for i, m in enumerate(messages) if m.get("role") == "tool"), default=None)
    if tool_at is None:
        return False
    later = " ".join(str(m.get("content") or "") for m in messages[tool_at + 1 :])
    return all(text in later for text in texts)


async def run_scenario(
    runtime: Runtime, chat: MemoryAdapter, model: FakeOpenAI, name: str, repeat: int
) -> Outcome:
    chat_id = f"scenario-{name}-{repeat}"
    gate = gated_tools.hold()
    calls_before = len(model.chat_requests)
    rejected_before = len(model.rejected)
    sent_before = len(chat.sent)
    await chat.say(START, chat=chat_id, user=f"user-{chat_id}")
    await chat.wait_for(sent_before + 1, timeout=STEP_TIMEOUT)  # the "working" notice
    for text in SCENARIOS[name]:
        await chat.say(text, chat=chat_id, user=f"user-{chat_id}")
        await chat.wait_for(len(chat.sent) + 1, timeout=STEP_TIMEOUT)
    gate.set()
    await runtime.engine.wait_idle(timeout=STEP_TIMEOUT)
    mine = [s.message for s in chat.sent[sent_before:] if s.message.conversation.chat_id == chat_id]
    requests = model.chat_requests[calls_before:]
    return Outcome(
        scenario=name,
        repeat=repeat,
        interim_messages=len(SCENARIOS[name]),
        instant_replies=sum(1 for m in mine if m.kind == ReplyKind.INTERIM),
        llm_calls=len(requests),
        answers=sum(1 for m in mine if m.kind == ReplyKind.ANSWER),
        deferred_after_tool=bool(requests) and _after_tool_result(requests[-1], SCENARIOS[name]),
        rejected=len(model.rejected) - rejected_before,
    )


async def measure(repeats: int) -> list[Outcome]:
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="stillhere-bench-") as tmp:
        async with FakeOpenAI() as model:
            settings = Settings(
                _env_file=None,
                database_url=f"sqlite+aiosqlite:///{Path(tmp) / 'llm_calls.db'}",
                openai_api_key="bench",
                openai_base_url=model.base_url,
                openai_max_retries=0,
                tool_modules=["bench.gated_tools"],
            )
            async with Runtime(settings) as runtime:
                chat = MemoryAdapter(runtime.engine)
                await chat.start()
                await runtime.engine.start()
                for repeat in range(repeats):
                    for name in SCENARIOS:
                        outcomes.append(await run_scenario(runtime, chat, model, name, repeat))
    return outcomes


def report(outcomes: Sequence[Outcome]) -> str:
    rows = [
        (
            o.scenario,
            o.repeat + 1,
            START + " + " + ", ".join(SCENARIOS[o.scenario]),
            o.instant_replies,
            o.llm_calls,
            EXPECTED_CALLS,
            "yes" if o.deferred_after_tool else "NO",
            "ok" if o.ok else "DIFFERS",
        )
        for o in outcomes
    ]
    return table(
        "LLM calls per turn (the fake's request log)",
        (
            "scenario",
            "run",
            "messages",
            "instant replies",
            "LLM calls",
            "expected",
            "after the tool",
            "verdict",
        ),
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(NAME, argv, __doc__ or NAME)
    outcomes = asyncio.run(measure(REPEATS[args.size]))
    print(report(outcomes))
    path = write_result(
        NAME,
        args.size,
        args.out,
        {
            "expected_calls_per_turn": EXPECTED_CALLS,
            "scenarios": {name: [START, *texts] for name, texts in SCENARIOS.items()},
            "outcomes": [{**vars(o), "ok": o.ok} for o in outcomes],
            "all_ok": all(o.ok for o in outcomes),
        },
    )
    print(f"\nwritten {path}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
