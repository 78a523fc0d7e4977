"""Telegram end to end: the fake Bot API -> the real Application and adapter -> the real core
(storage, sessions, tools) -> the real openai SDK -> the strict fake OpenAI, and back."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.telegram import TelegramAdapter
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from tests.conftest import core_settings
from tests.fakes.telegram_api import FakeTelegram, SentMessage, TgUser
from tests.support import slow_tools
from tests.support.spanish_time import tells_the_time

ANA = TgUser(1001, "Ana", "Pérez", username="ana")
BEN = TgUser(1002, "Ben")
GROUP = -100900


def request_text(request: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in request["messages"])


@asynccontextmanager
async def running_bot(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, **overrides: Any
) -> AsyncIterator[Runtime]:
    """The real core and Telegram adapter against both fakes; `overrides` are settings."""
    values: dict[str, Any] = {"telegram_bot_token": tg.token, "telegram_base_url": tg.base_url}
    values.update(overrides)
    settings = core_settings(f"sqlite+aiosqlite:///{tmp_path}/t.db", fake_openai, **values)
    async with Runtime(settings) as runtime:
        adapter = TelegramAdapter(settings, runtime.engine, retry_delays=(0.01,), poll_timeout=1)
        await adapter.start()
        try:
            await runtime.engine.start()
            yield runtime
            await runtime.engine.wait_idle(timeout=10)
        finally:
            await adapter.stop()


async def sent_count(tg: FakeTelegram, chat: int, count: int) -> list[SentMessage]:
    await tg.wait_for(lambda: len(tg.sent_messages(chat)) >= count, timeout=10)
    return tg.sent_messages(chat)


# --- the three original-design scenarios, in a private chat --------------------------------


async def test_scenario_1_status_reply_then_the_time(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.6)
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        first = tg.push_text(ANA.id, ANA, "Dame la hora actual")
        await sent_count(tg, ANA.id, 1)  # the tool started
        tg.push_text(ANA.id, ANA, "¿Sigues ahí?")
        sent = await sent_count(tg, ANA.id, 3)
        await runtime.engine.wait_idle(timeout=10)
    status, final = sent[1], sent[-1]
    assert "consultar la hora" in status.plain_text
    assert tells_the_time(final.plain_text)
    assert final.reply_to == first
    assert len(tg.sent_messages(ANA.id)) == 3
    assert fake_openai.rejected == []


async def test_scenario_2_greeting_and_question_then_an_answer_quoting_them(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 0.8)
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        first = tg.push_text(ANA.id, ANA, "Dame la hora actual")
        await sent_count(tg, ANA.id, 1)
        hola = tg.push_text(ANA.id, ANA, "Hola")
        await sent_count(tg, ANA.id, 2)
        como = tg.push_text(ANA.id, ANA, "¿Cómo estás?")
        sent = await sent_count(tg, ANA.id, 4)
        await runtime.engine.wait_idle(timeout=10)
    greeting, question, final = sent[1], sent[2], sent[3]
    assert (greeting.reply_to, question.reply_to) == (hola, como)
    assert greeting.plain_text != question.plain_text
    assert final.reply_to == first
    assert tells_the_time(final.plain_text)
    assert "Hola" in final.plain_text and "¿Cómo estás?" in final.plain_text
    assert fake_openai.rejected == []


async def test_scenario_3_four_instant_replies_and_two_llm_calls(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_text(ANA.id, ANA, "Dame la hora actual")
        await sent_count(tg, ANA.id, 1)
        asked = [tg.push_text(ANA.id, ANA, t) for t in ("¿Sigues ahí?", "Hola", "¿Qué tal?", "Ok")]
        sent = await sent_count(tg, ANA.id, 6)
        await runtime.engine.wait_idle(timeout=10)
    instant = [m for m in sent if m.reply_to in asked]
    assert len(instant) == 4
    assert len({m.plain_text for m in instant}) == 4
    assert len(fake_openai.chat_requests) == 2
    assert fake_openai.rejected == []


# --- groups and topics ---------------------------------------------------------------------


async def test_group_answers_mentions_replies_and_ask_but_not_chatter(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_text(GROUP, ANA, "lunch anyone?", chat_type="group")
        mention = tg.push_text(GROUP, BEN, "@stillhere_bot hello there", chat_type="group")
        [answer] = await sent_count(tg, GROUP, 1)
        tg.push_text(GROUP, BEN, "pizza works for me", chat_type="group")
        replied = tg.push_text(
            GROUP, ANA, "thanks! and you?", chat_type="group", reply_to=answer.message_id
        )
        await sent_count(tg, GROUP, 2)
        asked = tg.push_text(GROUP, BEN, "/ask who are you?", chat_type="group")
        await sent_count(tg, GROUP, 3)
        await runtime.engine.wait_idle(timeout=10)
    sent = tg.sent_messages(GROUP)
    assert [m.reply_to for m in sent] == [mention, replied, asked]
    requests = fake_openai.chat_requests
    # One shared session: the last request holds every addressed message, each speaker
    # named, the mention stripped, and none of the chatter.
    users = [m["content"] for m in requests[-1]["messages"] if m["role"] == "user"]
    assert [u for u in users if "hello there" in u or "and you?" in u or "who are" in u] == [
        "Ben: hello there",
        "Ana Pérez (@ana): thanks! and you?",
        "Ben: who are you?",
    ]
    everything = "\n".join(request_text(r) for r in requests)
    assert "lunch anyone?" not in everything and "pizza" not in everything
    assert "@stillhere_bot" not in everything
    assert len(requests) == 3
    assert fake_openai.rejected == []


async def test_forum_topic_replies_in_its_topic_with_its_own_session(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        first = tg.push_text(
            GROUP,
            ANA,
            "@stillhere_bot my secret word is BANANA",
            chat_type="supergroup",
            thread_id=11,
        )
        await tg.wait_for(lambda: bool(tg.sent_messages(GROUP, thread_id=11)), timeout=10)
        second = tg.push_text(
            GROUP, BEN, "@stillhere_bot what time is it?", chat_type="supergroup", thread_id=12
        )
        await tg.wait_for(lambda: bool(tg.sent_messages(GROUP, thread_id=12)), timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    assert tg.sent_messages(GROUP, thread_id=11)[0].reply_to == first
    assert tg.sent_messages(GROUP, thread_id=12)[-1].reply_to == second
    topic_12 = [r for r in fake_openai.chat_requests if "what time is it?" in request_text(r)]
    assert topic_12 and all("BANANA" not in request_text(r) for r in topic_12)
    assert fake_openai.rejected == []


# --- commands during a tool ----------------------------------------------------------------


async def test_cancel_during_a_tool(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 5.0)
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_text(ANA.id, ANA, "Dame la hora actual")
        await sent_count(tg, ANA.id, 1)
        cancel = tg.push_text(ANA.id, ANA, "/cancel")
        await tg.wait_for(
            lambda: any(m.reply_to == cancel for m in tg.sent_messages(ANA.id)), timeout=10
        )
        await runtime.engine.wait_idle(timeout=10)
    final = tg.sent_messages(ANA.id)[-1]
    assert "cancel" in final.plain_text.lower()
    assert fake_openai.rejected == []


async def test_status_during_a_tool(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 1.0)
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_text(ANA.id, ANA, "Dame la hora actual")
        await sent_count(tg, ANA.id, 1)
        status = tg.push_text(ANA.id, ANA, "/status")
        await tg.wait_for(
            lambda: any(m.reply_to == status for m in tg.sent_messages(ANA.id)), timeout=10
        )
        await runtime.engine.wait_idle(timeout=10)
    [answer] = [m for m in tg.sent_messages(ANA.id) if m.reply_to == status]
    assert "consultar la hora" in answer.plain_text
    assert tells_the_time(tg.sent_messages(ANA.id)[-1].plain_text)
    # A command is not part of the conversation the model sees.
    assert all("/status" not in request_text(r) for r in fake_openai.chat_requests)


# --- delivery ------------------------------------------------------------------------------


async def test_long_answer_is_split_under_4096_with_html(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    paragraph = "Una línea con **negrita**, `código` y <signos> & más. " * 8
    fake_openai.script_reply("\n\n".join(f"{i}. {paragraph}" for i in range(12)))
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        question = tg.push_text(ANA.id, ANA, "Cuéntame mucho")
        await sent_count(tg, ANA.id, 2)
        await runtime.engine.wait_idle(timeout=10)
    sent = tg.sent_messages(ANA.id)
    assert len(sent) >= 2
    assert all(len(m.text) <= 4096 and m.parse_mode == "HTML" for m in sent)
    assert sent[0].reply_to == question
    visible = "\n".join(m.plain_text for m in sent)
    assert visible.count("Una línea con negrita, código y <signos> & más.") == 12 * 8


async def test_429_on_send_is_honoured_and_the_reply_delivered_once(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    fake_openai.script_reply("Hola, Ana.")
    tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_text(ANA.id, ANA, "Hola")
        await sent_count(tg, ANA.id, 1)
        await runtime.engine.wait_idle(timeout=10)
    assert [m.plain_text for m in tg.sent_messages(ANA.id)] == ["Hola, Ana."]
    assert [c.status for c in tg.calls_to("sendMessage")] == [429, 200]


async def test_429_in_one_chat_does_not_hold_up_another_chat(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    tg.fail_next(
        "sendMessage", 429, "Too Many Requests: retry after 2", retry_after=2, chat_id=ANA.id
    )
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_text(ANA.id, ANA, "Hola")
        await tg.wait_for(lambda: [c.status for c in tg.calls_to("sendMessage")] == [429])
        tg.push_text(BEN.id, BEN, "Hello")
        await sent_count(tg, BEN.id, 1)
        await sent_count(tg, ANA.id, 1)
        await runtime.engine.wait_idle(timeout=10)
    calls = tg.calls_to("sendMessage")
    ana = [c for c in calls if c.params["chat_id"] == ANA.id]
    [ben] = [c for c in calls if c.params["chat_id"] == BEN.id]
    assert [c.status for c in ana] == [429, 200]
    assert len(tg.sent_messages(ANA.id)) == 1
    # Ana's retry waits out her 2 s; Ben's reply goes out meanwhile, not after it.
    assert ben.status == 200
    assert ben.at < ana[1].at - 0.5
    assert ana[1].at - ana[0].at >= 1.9


# --- non-text, malformed and edited messages -----------------------------------------------


async def test_sticker_gets_a_text_only_notice_in_private_and_silence_in_a_group(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_sticker(ANA.id, ANA)
        [notice] = await sent_count(tg, ANA.id, 1)
        tg.push_sticker(GROUP, BEN, chat_type="group")
        addressed = tg.push_text(GROUP, BEN, "@stillhere_bot hola", chat_type="group")
        await sent_count(tg, GROUP, 1)
        await runtime.engine.wait_idle(timeout=10)
    assert notice.plain_text
    assert [m.reply_to for m in tg.sent_messages(GROUP)] == [addressed]
    # Only the addressed text reached the model; the stickers never did.
    assert len(fake_openai.chat_requests) == 1


async def test_malformed_update_does_not_stop_the_app(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        tg.push_raw({"message": {"message_id": "broken", "chat": None}})
        later = tg.push_text(ANA.id, ANA, "Hola")
        [answer] = await sent_count(tg, ANA.id, 1)
        await runtime.engine.wait_idle(timeout=10)
    assert answer.reply_to == later


async def test_edited_message_is_ignored(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        first = tg.push_text(ANA.id, ANA, "Hola")
        await sent_count(tg, ANA.id, 1)
        tg.push_edited(ANA.id, ANA, first, "Hola, EDITADO")
        second = tg.push_text(ANA.id, ANA, "¿Qué tal?")
        await sent_count(tg, ANA.id, 2)
        await runtime.engine.wait_idle(timeout=10)
    assert [m.reply_to for m in tg.sent_messages(ANA.id)] == [first, second]
    assert all("EDITADO" not in request_text(r) for r in fake_openai.chat_requests)


async def test_redelivered_update_is_handled_once(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.engine")
    async with running_bot(tmp_path, fake_openai, tg) as runtime:
        first = tg.push_text(ANA.id, ANA, "Hola")
        original = dict(tg.queued_updates[-1]["message"])  # read before the bot polls
        await sent_count(tg, ANA.id, 1)
        # Telegram hands the same message out again (a webhook retry, a lost offset).
        tg.push_raw({"message": original})
        later = tg.push_text(ANA.id, ANA, "¿Qué tal?")
        await sent_count(tg, ANA.id, 2)
        await runtime.engine.wait_idle(timeout=10)
    assert [m.reply_to for m in tg.sent_messages(ANA.id)] == [first, later]
    assert len(fake_openai.chat_requests) == 2
    assert f"duplicate message {first} ignored" in caplog.text
