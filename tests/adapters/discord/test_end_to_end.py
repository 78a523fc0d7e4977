"""Discord end to end: the fake Discord (REST + websocket gateway) -> the real discord.py
client and adapter -> the real core (storage, sessions, tools) -> the real openai SDK -> the
strict fake OpenAI, and back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.discord import DiscordAdapter
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from tests.adapters.discord.conftest import discord_platform
from tests.conftest import core_settings
from tests.fakes.discord_api import EPHEMERAL, FakeDiscord, FakeUser, Json
from tests.support import slow_tools
from tests.support.spanish_time import tells_the_time

POST = "POST /channels/{channel_id}/messages"


def request_text(request: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in request["messages"])


def replied_to(message: Json) -> str | None:
    reference = message.get("message_reference")
    return None if reference is None else str(reference["message_id"])


@asynccontextmanager
async def running_bot(
    tmp_path: Path, fake_openai: FakeOpenAI, fake: FakeDiscord, **overrides: Any
) -> AsyncIterator[Runtime]:
    values = {**discord_platform(fake), **overrides}
    settings = core_settings(f"sqlite+aiosqlite:///{tmp_path}/t.db", fake_openai, **values)
    async with Runtime(settings) as runtime:
        adapter = DiscordAdapter(settings, runtime.engine, guild_ready_timeout=0.05)
        await adapter.start()
        try:
            await runtime.engine.start()
            yield runtime
            await runtime.engine.wait_idle(timeout=10)
        finally:
            await adapter.stop()


@dataclass
class Place:
    """Where a person talks to the bot: their DM, or a server channel (by @mention)."""

    fake: FakeDiscord
    channel_id: str
    in_server: bool
    person: FakeUser

    async def say(self, text: str) -> str:
        message = await self.fake.push_message(
            self.channel_id,
            self.person,
            text,
            guild=self.in_server,
            mentions_bot=self.in_server,
        )
        return str(message["id"])

    async def posted(self, count: int) -> list[Json]:
        await self.fake.wait_for(
            lambda: len(self.fake.posted_messages(self.channel_id)) >= count, timeout=10
        )
        return self.fake.posted_messages(self.channel_id)


@pytest.fixture(params=["dm", "server"])
def place(request: pytest.FixtureRequest, fake_discord: FakeDiscord) -> Place:
    fake = fake_discord
    if request.param == "dm":
        return Place(fake, fake.dm_channel(fake.alice), False, fake.alice)
    return Place(fake, fake.general_id, True, fake.alice)


# --- the three original-design scenarios, in a DM and in a server channel ------------------


async def test_scenario_1_status_reply_then_the_time(
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_discord: FakeDiscord,
    place: Place,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.6)
    async with running_bot(tmp_path, fake_openai, fake_discord) as runtime:
        first = await place.say("Dame la hora actual")
        await place.posted(1)  # the tool started
        await place.say("¿Sigues ahí?")
        posted = await place.posted(3)
        await runtime.engine.wait_idle(timeout=10)
    status, final = posted[1], posted[-1]
    assert "consultar la hora" in status["content"]
    assert tells_the_time(final["content"])
    assert replied_to(final) == first
    assert len(fake_discord.posted_messages(place.channel_id)) == 3
    assert fake_openai.rejected == []


async def test_scenario_2_greeting_and_question_then_an_answer_quoting_them(
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_discord: FakeDiscord,
    place: Place,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.8)
    async with running_bot(tmp_path, fake_openai, fake_discord) as runtime:
        first = await place.say("Dame la hora actual")
        await place.posted(1)
        hola = await place.say("Hola")
        await place.posted(2)
        como = await place.say("¿Cómo estás?")
        posted = await place.posted(4)
        await runtime.engine.wait_idle(timeout=10)
    greeting, question, final = posted[1], posted[2], posted[3]
    assert (replied_to(greeting), replied_to(question)) == (hola, como)
    assert greeting["content"] != question["content"]
    assert replied_to(final) == first
    assert tells_the_time(final["content"])
    assert "Hola" in final["content"] and "¿Cómo estás?" in final["content"]
    assert fake_openai.rejected == []


async def test_scenario_3_four_instant_replies_and_two_llm_calls(
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_discord: FakeDiscord,
    place: Place,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with running_bot(tmp_path, fake_openai, fake_discord) as runtime:
        await place.say("Dame la hora actual")
        await place.posted(1)
        asked = [await place.say(t) for t in ("¿Sigues ahí?", "Hola", "¿Qué tal?", "Ok")]
        posted = await place.posted(6)
        await runtime.engine.wait_idle(timeout=10)
    instant = [m for m in posted if replied_to(m) in asked]
    assert len(instant) == 4
    assert len({m["content"] for m in instant}) == 4
    assert len(fake_openai.chat_requests) == 2
    assert fake_openai.rejected == []


# --- server triggers and threads -----------------------------------------------------------


async def test_server_answers_mentions_and_replies_but_not_chatter(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    channel = fake.general_id
    async with running_bot(tmp_path, fake_openai, fake) as runtime:
        await fake.push_message(channel, fake.bob, "lunch anyone?")
        mention = await fake.push_message(channel, fake.alice, "hello there", mentions_bot=True)
        await fake.wait_for(lambda: len(fake.posted_messages(channel)) == 1, timeout=10)
        answer = fake.posted_messages(channel)[0]
        await fake.push_message(channel, fake.bob, "pizza works for me")
        replied = await fake.push_message(
            channel, fake.bob, "thanks! and you?", reply_to=answer["id"]
        )
        await fake.wait_for(lambda: len(fake.posted_messages(channel)) == 2, timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    assert [replied_to(m) for m in fake.posted_messages(channel)] == [mention["id"], replied["id"]]
    requests = fake_openai.chat_requests
    users = [m["content"] for m in requests[-1]["messages"] if m["role"] == "user"]
    # One shared session with each speaker named, the mention stripped, no chatter.
    assert [u for u in users if "hello there" in u or "and you?" in u] == [
        "Alice: hello there",
        "Bob: thanks! and you?",
    ]
    everything = "\n".join(request_text(r) for r in requests)
    assert "lunch" not in everything and "pizza" not in everything
    assert f"<@{fake.bot.id}>" not in everything
    assert len(requests) == 2


async def test_a_thread_is_its_own_session(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake_openai, fake) as runtime:
        in_channel = await fake.push_message(
            fake.general_id, fake.alice, "my secret word is BANANA", mentions_bot=True
        )
        await fake.wait_for(lambda: bool(fake.posted_messages(fake.general_id)), timeout=10)
        in_thread = await fake.push_message(
            fake.thread_id, fake.bob, "what time is it?", mentions_bot=True
        )
        await fake.wait_for(lambda: bool(fake.posted_messages(fake.thread_id)), timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    assert replied_to(fake.posted_messages(fake.general_id)[0]) == in_channel["id"]
    assert replied_to(fake.posted_messages(fake.thread_id)[-1]) == in_thread["id"]
    in_thread_requests = [r for r in fake_openai.chat_requests if "what time" in request_text(r)]
    assert in_thread_requests
    assert all("BANANA" not in request_text(r) for r in in_thread_requests)
    assert fake_openai.rejected == []


# --- slash commands during a tool ----------------------------------------------------------


async def test_status_and_cancel_as_slash_commands_during_a_tool(
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_discord: FakeDiscord,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    monkeypatch.setattr(slow_tools, "DELAY", 5.0)
    async with running_bot(tmp_path, fake_openai, fake) as runtime:
        await fake.push_message(
            fake.general_id, fake.alice, "Dame la hora actual", mentions_bot=True
        )
        await fake.wait_for(lambda: bool(fake.posted_messages(fake.general_id)), timeout=10)
        await fake.push_slash("status", fake.general_id, fake.alice)
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 2, timeout=10)
        await fake.push_slash("cancel", fake.general_id, fake.alice)
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 4, timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    # Each is deferred (ephemeral) first, then answered in a followup.
    deferred = fake.interaction_callbacks[0::2]
    status, cancel = fake.interaction_callbacks[1::2]
    assert all(c["type"] == 5 and c["data"]["flags"] & EPHEMERAL for c in deferred)
    assert all(c.get("followup") and c["flags"] & EPHEMERAL for c in (status, cancel))
    assert "consultar la hora" in status["content"]
    assert "cancel" in fake.posted_messages(fake.general_id)[-1]["content"].lower()
    # Commands answer the one who ran them; the model never sees them.
    assert all("/status" not in request_text(r) for r in fake_openai.chat_requests)
    assert fake_openai.rejected == []


# --- delivery ------------------------------------------------------------------------------


async def test_an_answer_with_everyone_pings_nobody(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    fake_openai.script_reply("Claro: @everyone y @here, a comer.")
    async with running_bot(tmp_path, fake_openai, fake) as runtime:
        asked = await fake.push_message(
            fake.general_id, fake.alice, "avisa a todos", mentions_bot=True
        )
        await fake.wait_for(lambda: bool(fake.posted_messages(fake.general_id)), timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    [call] = [c for c in fake.calls(POST) if c.status == 200]
    assert call.body["content"] == "Claro: @everyone y @here, a comer."
    assert call.body["allowed_mentions"] == {
        "parse": [],
        "users": [int(fake.alice.id)],
        "replied_user": True,
    }
    assert call.body["message_reference"]["message_id"] == int(asked["id"])


async def test_a_2500_character_answer_with_code_is_split_under_2000(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    code = "\n".join(f"    total += step({i})  # paso {i:03d}" for i in range(72))
    answer = "Aquí tienes:\n\n```python\ndef run():\n    total = 0\n" + code + "\n```\n\nListo."
    assert 2400 < len(answer) < 2700
    fake_openai.script_reply(answer)
    dm = fake.dm_channel(fake.bob)
    async with running_bot(tmp_path, fake_openai, fake) as runtime:
        asked = await fake.push_message(dm, fake.bob, "Escríbeme el script", guild=False)
        await fake.wait_for(lambda: len(fake.posted_messages(dm)) >= 2, timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    parts = [m["content"] for m in fake.posted_messages(dm)]
    assert len(parts) == 2
    assert all(len(p) <= 2000 and p.count("```") == 2 for p in parts)
    assert parts[1].startswith("```python\n")
    assert all(f"# paso {i:03d}" in "".join(parts) for i in range(72))
    assert replied_to(fake.posted_messages(dm)[0]) == asked["id"]


async def test_a_429_is_honoured_and_the_reply_delivered_once(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    fake_openai.script_reply("Hola, Bob.")
    fake.fail_next(POST, 429, retry_after=0.1)
    dm = fake.dm_channel(fake.bob)
    async with running_bot(tmp_path, fake_openai, fake) as runtime:
        await fake.push_message(dm, fake.bob, "Hola", guild=False)
        await fake.wait_for(lambda: bool(fake.posted_messages(dm)), timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    assert [m["content"] for m in fake.posted_messages(dm)] == ["Hola, Bob."]
    assert [c.status for c in fake.calls(POST)] == [429, 200]


async def test_the_socket_closing_mid_turn_loses_and_doubles_nothing(
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_discord: FakeDiscord,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_discord
    caplog.set_level(logging.INFO, logger="bot.engine")
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    dm = fake.dm_channel(fake.alice)
    async with running_bot(tmp_path, fake_openai, fake) as runtime:
        first = await fake.push_message(dm, fake.alice, "Dame la hora actual", guild=False)
        await fake.wait_for(lambda: bool(fake.posted_messages(dm)), timeout=10)
        # The resume replays the last events again, the question among them, as a real
        # gateway may: the core must not answer it twice.
        await fake.drop_connection(replay_overlap=3)
        hola = await fake.push_message(dm, fake.alice, "Hola", guild=False)
        await fake.wait_for(lambda: fake.connected, timeout=10)
        await fake.wait_for(lambda: len(fake.posted_messages(dm)) >= 3, timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    posted = fake.posted_messages(dm)
    assert [replied_to(m) for m in posted] == [first["id"], hola["id"], first["id"]]
    assert tells_the_time(posted[-1]["content"]) and "Hola" in posted[-1]["content"]
    assert len(fake.resume_payloads) == 1 and len(fake.identify_payloads) == 1
    assert f"duplicate message {first['id']} ignored" in caplog.text  # it was replayed
    assert len(fake_openai.chat_requests) == 2
    assert fake_openai.rejected == []
