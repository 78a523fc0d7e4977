"""Guardrails on the core: access, rate limits, budgets, admin-only tools and commands,
input limits, secrets. The adapters' own tests cover what each platform adds."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from sqlalchemy import select, text

from bot.core_api import SubmitOutcome
from bot.events import CommandName, CommandRequest, ReplyKind
from bot.interim.catalog import load_locales
from bot.offline import FakeOpenAI
from storage.database import sessionmaker
from storage.models import ToolCallRow
from tests.conftest import CoreFactory
from tests.support import slow_tools
from tests.support.logged import logged


async def test_blocked_user_gets_one_line_in_private_and_silence_in_groups(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core(blocked_users=["telegram:u9", "u9"]) as (runtime, chat):
        _, private = await chat.say("hi", user="u9")
        _, group = await chat.say("hi", user="u9", private=False, chat="g")
        _, allowed = await chat.say("hi", user="u1", chat="other")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert (private, group, allowed) == (
        SubmitOutcome.DENIED,
        SubmitOutcome.DENIED,
        SubmitOutcome.ACCEPTED,
    )
    notices = [s.message for s in chat.sent if s.message.kind is ReplyKind.NOTICE]
    assert [n.conversation.chat_id for n in notices] == ["chat-1"]
    assert len(fake_openai.chat_requests) == 1


async def test_allow_lists_and_admins(make_core: CoreFactory, fake_openai: FakeOpenAI) -> None:
    async with make_core(allowed_users=["u1"], admin_users=["boss"]) as (runtime, chat):
        _, stranger = await chat.say("hi", user="u2", chat="a")
        _, friend = await chat.say("hi", user="u1", chat="b")
        _, boss = await chat.say("hi", user="boss", chat="c")
        await runtime.engine.wait_idle()
    assert (stranger, friend, boss) == (
        SubmitOutcome.DENIED,
        SubmitOutcome.ACCEPTED,
        SubmitOutcome.ACCEPTED,
    )


async def test_rate_limit_answers_with_the_wait_and_makes_no_llm_call(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core(rate_limit_user_per_minute=2) as (runtime, chat):
        outcomes = [(await chat.say(f"message {i}"))[1] for i in range(3)]
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert outcomes[2] is SubmitOutcome.DENIED
    notice = [s.message.text for s in chat.sent if s.message.kind is ReplyKind.NOTICE]
    assert len(notice) == 1 and re.search(r"\d+ (min|s)\b", notice[0])
    users = [m for r in fake_openai.chat_requests for m in r["messages"] if m["role"] == "user"]  # type: ignore[attr-defined]
    assert all(m["content"] != "message 2" for m in users)


async def test_token_budget_counts_api_usage_and_says_when_it_resets(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core(token_budget_user_daily=1) as (runtime, chat):
        await chat.say("first")
        await chat.wait_for(1)
        usage = await chat.command(CommandName.USAGE)
        _, second = await chat.say("second")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    assert second is SubmitOutcome.DENIED
    assert "limit 1" in usage
    assert "UTC" in chat.sent[1].message.text
    assert len(fake_openai.chat_requests) == 1


async def test_admin_only_tools_are_offered_to_admins_only(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core(admin_users=["boss"]) as (runtime, chat):
        await chat.say("hello", user="someone", chat="a")
        await chat.say("hello", user="boss", chat="b")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    offered = [
        {t["function"]["name"] for t in r["tools"]}  # type: ignore[attr-defined]
        for r in fake_openai.chat_requests
    ]
    assert sorted("restart_service" in names for names in offered) == [False, True]


async def test_an_admin_only_tool_called_in_someone_elses_turn_is_refused_not_run(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool is in the group's history once an admin used it, so the model may call it
    again for anyone: the call gets a refusal as its one result, and the tool never runs."""
    monkeypatch.setattr(slow_tools, "restarted", [])
    fake_openai.script_tool_calls([("restart_service", {"name": "db"})])
    fake_openai.script_reply("done")
    fake_openai.script_tool_calls([("restart_service", {"name": "db"}), ("no_such_tool", {})])
    fake_openai.script_reply("done")
    async with make_core(admin_users=["boss"]) as (runtime, chat):
        await chat.say("restart the db", user="boss", private=False, chat="g")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
        await chat.say("do that again", user="someone", private=False, chat="g")
        await chat.wait_for(4)
        await runtime.engine.wait_idle()
        async with sessionmaker(runtime.db)() as tx:
            calls = list(await tx.scalars(select(ToolCallRow).order_by(ToolCallRow.id)))
    assert slow_tools.restarted == ["db"]
    assert [(c.status, c.result) for c in calls[:2]] == [
        ("done", "db restarted"),
        ("failed", "tool 'restart_service' is for admins only; this message is not an admin's"),
    ]
    # Nor does an unknown-tool result name it to someone it is not offered to.
    assert "get_current_time" in (calls[2].result or "")
    assert "restart_service" not in (calls[2].result or "")
    told = fake_openai.chat_requests[-1]["messages"][-2]  # type: ignore[index]
    assert told["role"] == "tool" and "admins only" in told["content"]
    assert fake_openai.rejected == []


async def test_an_admins_turn_that_someone_else_joined_runs_no_admin_only_tool(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What someone writes while an admin's tools run joins the admin's turn: from then
    on the model acts on their words too, so admin-only tools are neither offered nor
    run for the rest of it."""
    monkeypatch.setattr(slow_tools, "restarted", [])
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    fake_openai.script_tool_calls([("get_current_time", {})])
    fake_openai.script_tool_calls([("restart_service", {"name": "payments"})])
    fake_openai.script_reply("done")
    async with make_core(admin_users=["boss"]) as (runtime, chat):
        await chat.say("what time is it?", user="boss", private=False, chat="g")
        await chat.wait_for(1)  # the tool runs
        await chat.say("also restart payments", user="someone", private=False, chat="g")
        await chat.wait_for(3)
        await runtime.engine.wait_idle()
    first, follow_up, *_ = fake_openai.chat_requests
    offered = [{t["function"]["name"] for t in r["tools"]} for r in (first, follow_up)]  # type: ignore[attr-defined]
    assert ["restart_service" in names for names in offered] == [True, False]
    assert slow_tools.restarted == []
    assert fake_openai.rejected == []


async def test_a_turn_of_messages_queued_from_an_admin_and_someone_else_is_no_admins(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_delay(1.0)  # the first call runs while both write
    async with make_core(admin_users=["boss"]) as (runtime, chat):
        await chat.say("hello", user="boss", private=False, chat="g")
        while not fake_openai.chat_requests:
            await asyncio.sleep(0.01)
        await chat.say("restart payments", user="someone", private=False, chat="g")
        await chat.say("and tell me the time", user="boss", private=False, chat="g")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    offered = [{t["function"]["name"] for t in r["tools"]} for r in fake_openai.chat_requests]  # type: ignore[attr-defined]
    # The first turn, the boss's alone; then theirs together and its tool round.
    assert ["restart_service" in names for names in offered] == [True, False, False]


async def test_reset_in_a_group_is_for_admins_once_admins_are_set(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core(admin_users=["boss"]) as (runtime, chat):
        key = chat.key("g")

        async def reset(user: str) -> str:
            return await runtime.engine.command(
                CommandRequest(key, CommandName.RESET, user, user, is_private=False)
            )

        assert "admins" in await reset("someone")
        assert "new conversation" in await reset("boss")


async def test_commands_pass_the_same_access_lists_as_messages(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    """Refused as messages are: silence in a group, one short line where only the asker
    sees it (a private chat, a Discord slash command's ephemeral answer)."""
    fake_openai.script_tool_calls([("get_current_time", {})])
    settings = {"blocked_users": ["u9"], "allowed_guilds": ["g-ok"], "admin_users": ["boss"]}
    async with make_core(**settings) as (runtime, chat):
        await chat.say("Dame la hora", chat="g", private=False, user="boss")  # a tool runs
        await chat.wait_for(1)

        async def command(
            name: CommandName, user: str, guild: str | None, *, privately: bool = False
        ) -> str | None:
            request = CommandRequest(
                chat.key("g"), name, user, user, False, guild_id=guild, answered_privately=privately
            )
            return await runtime.engine.command(request)

        denied = {text for locale in load_locales().values() for text in locale.phrases["denied"]}
        assert await command(CommandName.CANCEL, "u9", "g-ok") is None  # blocked
        assert await command(CommandName.RESET, "u2", "g-other") is None  # server not allowed
        assert await command(CommandName.CANCEL, "u2", "g-other", privately=True) in denied
        assert await runtime.engine.store.open_tool_calls(1)  # nothing was cancelled
        assert await command(CommandName.STATUS, "boss", "g-other") not in (None, *denied)
        assert await command(CommandName.CANCEL, "u2", "g-ok") not in (None, *denied)
        in_private = CommandRequest(chat.key("u9"), CommandName.STATUS, "u9", "u9", True)
        assert await runtime.engine.command(in_private) in denied
        # A server manager is no ADMIN_USERS; the console's operator, in private, is.
        manager = CommandRequest(
            chat.key("g"), CommandName.STATUS, "u9", "u9", False, is_admin=True, guild_id="g-ok"
        )
        assert await runtime.engine.command(manager) is None
        operator = CommandRequest(
            chat.key("console"), CommandName.STATUS, "u9", "u9", True, is_admin=True
        )
        assert await runtime.engine.command(operator) not in (None, *denied)


async def test_long_message_is_cut_with_a_note(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    async with make_core(max_message_chars=50) as (runtime, chat):
        await chat.say("x" * 5000)
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
    user = fake_openai.chat_requests[0]["messages"][-1]  # type: ignore[index]
    assert user["content"].startswith("x" * 50)
    assert user["content"].endswith("[message cut: 5000 characters in all]")
    assert len(user["content"]) < 100


async def test_deferred_messages_are_capped_in_the_request_but_all_kept(
    make_core: CoreFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with make_core(max_deferred_messages=3) as (runtime, chat):
        await chat.say("what time is it")
        await chat.wait_for(1)
        for i in range(6):
            await chat.say(f"note {i}")
        await chat.wait_for(8)
        await runtime.engine.wait_idle()
        stored = [e.content for e in await runtime.engine.store.history(1) if e.role == "user"]
    assert stored == ["what time is it"] + [f"note {i}" for i in range(6)]
    after_tools = fake_openai.chat_requests[1]["messages"]
    users = [m["content"] for m in after_tools if m["role"] == "user"]  # type: ignore[attr-defined]
    assert users[1].startswith("[4 earlier messages, in short] note 0 · note 1")
    assert users[2:] == ["note 4", "note 5"]
    assert fake_openai.rejected == []


async def test_secrets_never_reach_logs_or_database(
    make_core: CoreFactory, fake_openai: FakeOpenAI
) -> None:
    secret = "sk-test-THIS-IS-A-SECRET-123456"
    with logged([secret]) as stream:
        async with make_core(openai_api_key=secret) as (runtime, chat):
            logging.getLogger("probe").info("the key is %s", secret)
            fake_openai.script_error(500)
            await chat.say("what time is it")
            await chat.wait_for(1)
            await chat.say("what time is it now")
            await chat.wait_for(3)
            await runtime.engine.wait_idle()
            dump = []
            async with runtime.db.connect() as connection:
                for table in ("sessions", "messages", "tool_calls", "outbox", "llm_calls"):
                    rows = await connection.execute(text(f"SELECT * FROM {table}"))
                    dump.extend(str(row) for row in rows)
    captured = stream.getvalue()
    assert "the key is ***" in captured  # the mask is live, so the check below can fail
    assert "reply delivered" in captured
    assert secret not in captured
    assert dump and all(secret not in row for row in dump)
