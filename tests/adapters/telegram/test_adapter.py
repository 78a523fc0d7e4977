"""The real python-telegram-bot Application against the fake Bot API, with a recording
double of the core (the end-to-end tests with the real core live in test_end_to_end.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from telegram import Update

from adapters.telegram import TelegramAdapter, delivery
from bot.core_api import COMMAND_FAILED, SubmitOutcome
from bot.events import (
    CommandRequest,
    ConversationKey,
    DeliveryError,
    InboundMessage,
    OutgoingMessage,
    ReplyKind,
    ReplySink,
)
from bot.settings import Settings, SettingsError, StartupError
from tests.fakes.telegram_api import FakeTelegram, TgUser
from tests.support.ports import free_port

ANA = TgUser(1001, "Ana", "Pérez", username="ana")
BEN = TgUser(1002, "Ben")
GROUP = -100777


class RecordingCore:
    """Stands in for the engine: records what the adapter hands over."""

    def __init__(self) -> None:
        self.sinks: list[ReplySink] = []
        self.submitted: list[InboundMessage] = []
        self.commands: list[CommandRequest] = []
        self.answer = "Idle."
        self.crash_next = 0
        # Cleared: submit() waits for it (a message whose storing takes long).
        self.storing = asyncio.Event()
        self.storing.set()
        self.entered: list[str] = []
        self.intake_reports: list[tuple[str, str | None]] = []

    def attach(self, sink: ReplySink) -> None:
        self.sinks.append(sink)

    def report_intake(self, platform: str, problem: str | None) -> None:
        self.intake_reports.append((platform, problem))

    async def submit(self, message: InboundMessage) -> SubmitOutcome:
        self.entered.append(message.text)
        await self.storing.wait()
        if self.crash_next:
            self.crash_next -= 1
            raise RuntimeError("core exploded")
        self.submitted.append(message)
        return SubmitOutcome.ACCEPTED

    async def command(self, request: CommandRequest) -> str:
        self.commands.append(request)
        if self.crash_next:
            self.crash_next -= 1
            raise RuntimeError("core exploded")
        return self.answer

    def texts(self) -> list[str]:
        return [m.text for m in self.submitted]


def settings_for(tg: FakeTelegram, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,
        telegram_bot_token=tg.token,
        telegram_base_url=tg.base_url,
        **overrides,
    )


@pytest.fixture
def core() -> RecordingCore:
    return RecordingCore()


@pytest.fixture
async def adapter(tg: FakeTelegram, core: RecordingCore) -> AsyncIterator[TelegramAdapter]:
    adapter = TelegramAdapter(settings_for(tg), core, retry_delays=(0.01, 0.01), poll_timeout=1)
    await adapter.start()
    try:
        yield adapter
    finally:
        core.storing.set()  # a test that failed holding it up
        await adapter.stop()


def reply(
    chat: int, text: str, *, reply_to: int | None = None, thread: str = "", outbox_id: int = 1
) -> OutgoingMessage:
    return OutgoingMessage(
        conversation=ConversationKey("telegram", str(chat), thread),
        text=text,
        reply_to_id=str(reply_to) if reply_to is not None else None,
        kind=ReplyKind.ANSWER,
        outbox_id=outbox_id,
    )


# --- start-up ------------------------------------------------------------------------------


async def test_start_attaches_checks_identity_and_registers_commands(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    assert core.sinks == [adapter]
    assert adapter.platform == "telegram" and adapter.typing_interval == 4.5
    assert tg.calls[0].method == "getMe"
    assert adapter.identity.username == "stillhere_bot"
    assert tg.commands() == ["start", "help", "cancel", "status", "reset", "usage"]
    assert tg.commands({"type": "all_group_chats"}) == [
        "start",
        "help",
        "cancel",
        "status",
        "reset",
        "usage",
        "ask",
    ]
    await tg.wait_for(lambda: bool(tg.calls_to("getUpdates")))


async def test_every_api_call_goes_through_the_aiohttp_transport(
    tg: FakeTelegram, core: RecordingCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_httpx(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("httpx was used")

    monkeypatch.setattr(httpx.AsyncClient, "send", no_httpx)
    adapter = TelegramAdapter(settings_for(tg), core, poll_timeout=1)
    await adapter.start()
    try:
        tg.push_text(ANA.id, ANA, "hi")
        await tg.wait_for(lambda: core.texts() == ["hi"])
        sent = await adapter.send(reply(ANA.id, "hello"))
        assert sent == str(tg.sent_messages(ANA.id)[0].message_id)
    finally:
        await adapter.stop()


async def test_missing_token_is_refused(core: RecordingCore) -> None:
    with pytest.raises(ValueError, match="TELEGRAM_BOT_TOKEN"):
        TelegramAdapter(Settings(_env_file=None), core)


# --- updates in ----------------------------------------------------------------------------


async def test_private_message_reaches_the_core(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    message_id = tg.push_text(ANA.id, ANA, "Dame la hora actual")
    await tg.wait_for(lambda: bool(core.submitted))
    inbound = core.submitted[0]
    assert inbound.conversation == ConversationKey("telegram", str(ANA.id), "")
    assert inbound.text == "Dame la hora actual"
    assert inbound.message_id == str(message_id)
    assert inbound.is_private and inbound.addresses_bot


async def test_group_messages_keep_order_and_say_who_is_addressed(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    tg.push_text(GROUP, ANA, "lunch?", chat_type="group")
    tg.push_text(GROUP, BEN, "@stillhere_bot what time is it?", chat_type="group")
    tg.push_text(GROUP, ANA, "/ask and the weather?", chat_type="group")
    await tg.wait_for(lambda: len(core.submitted) == 3)
    assert core.texts() == ["lunch?", "what time is it?", "and the weather?"]
    assert [m.addresses_bot for m in core.submitted] == [False, True, True]
    ana = "Ana Pérez (@ana)"
    assert [m.display_name for m in core.submitted] == [ana, "Ben", ana]
    assert tg.calls_to("sendMessage") == []


async def test_command_is_answered_as_a_reply_in_its_topic(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    core.answer = "Working on **get_current_time** for 3 s."
    command_id = tg.push_text(GROUP, ANA, "/status", chat_type="supergroup", thread_id=7)
    await tg.wait_for(lambda: bool(tg.sent_messages(GROUP)))
    [sent] = tg.sent_messages(GROUP)
    assert (sent.thread_id, sent.reply_to) == (7, command_id)
    assert sent.plain_text == "Working on get_current_time for 3 s."
    assert core.commands[0].conversation == ConversationKey("telegram", str(GROUP), "7")


async def test_a_command_the_core_fails_on_is_answered_with_an_apology(
    tg: FakeTelegram,
    core: RecordingCore,
    adapter: TelegramAdapter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    core.crash_next = 1
    command_id = tg.push_text(ANA.id, ANA, "/status")
    tg.push_text(ANA.id, ANA, "still there?")
    await tg.wait_for(lambda: bool(tg.sent_messages(ANA.id)) and len(core.submitted) == 1)
    [sent] = tg.sent_messages(ANA.id)
    assert (sent.plain_text, sent.reply_to) == (COMMAND_FAILED, command_id)
    assert core.texts() == ["still there?"]
    assert "could not carry out /status" in caplog.text


async def test_command_for_another_bot_edits_and_bot_senders_are_ignored(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    first = tg.push_text(GROUP, ANA, "first", chat_type="group")
    tg.push_text(GROUP, ANA, "/status@other_bot", chat_type="group")
    tg.push_edited(GROUP, ANA, first, "first (edited)", chat_type="group")
    tg.push_text(
        GROUP, TgUser(555, "Other", username="other_bot", is_bot=True), "beep", chat_type="group"
    )
    tg.push_text(GROUP, BEN, "last", chat_type="group")
    await tg.wait_for(lambda: "last" in core.texts())
    assert core.texts() == ["first", "last"]
    assert core.commands == []


async def test_malformed_update_and_a_crashing_handler_do_not_stop_the_app(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    tg.push_raw({"message": {"message_id": "not a number", "chat": "nope"}})
    core.crash_next = 1
    tg.push_text(ANA.id, ANA, "this one crashes the core")
    tg.push_text(ANA.id, ANA, "still there?")
    await tg.wait_for(lambda: "still there?" in core.texts())
    assert core.texts() == ["still there?"]
    # The bad update was confirmed, not fetched again and again.
    await tg.wait_for(lambda: tg.queued_updates == [])


async def test_a_well_formed_batch_is_parsed_once(
    tg: FakeTelegram,
    core: RecordingCore,
    adapter: TelegramAdapter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only python-telegram-bot parses it: each update is checked apart only in a batch
    the library could not parse."""
    parsed: list[int] = []
    de_json = Update.de_json.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Update], data: Any, bot: Any = None) -> Update:
        parsed.append(data["update_id"])
        return de_json(cls, data, bot)  # type: ignore[no-any-return]

    monkeypatch.setattr(Update, "de_json", classmethod(counted))
    for text in ("one", "two", "three"):
        tg.push_text(ANA.id, ANA, text)
    await tg.wait_for(lambda: core.texts() == ["one", "two", "three"])
    assert len(parsed) == len(set(parsed)) == 3


# --- confirming updates -----------------------------------------------------------------


def confirmed(tg: FakeTelegram, message_id: int, chat_id: int = ANA.id) -> bool:
    """Whether the bot told Telegram to forget the message's update (by a later getUpdates
    offset)."""
    return not any(
        u.get("message", {}).get("message_id") == message_id
        and u["message"]["chat"]["id"] == chat_id
        for u in tg.queued_updates
    )


async def test_an_update_is_confirmed_only_once_the_core_has_taken_it_in(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    """Telegram forgets what a getUpdates offset confirms: a crash between that and the
    storing would lose the message. The next poll waits for the storing instead."""
    core.storing.clear()
    message_id = tg.push_text(ANA.id, ANA, "keep me")
    await tg.wait_for(lambda: core.entered == ["keep me"])
    polls = len(tg.calls_to("getUpdates"))
    # Long enough for any poll: the fixture's long poll is 1 s and ends at once on news.
    await asyncio.sleep(0.3)
    assert not confirmed(tg, message_id)
    assert len(tg.calls_to("getUpdates")) == polls
    core.storing.set()
    await tg.wait_for(lambda: confirmed(tg, message_id))
    assert core.texts() == ["keep me"]


async def test_an_update_whose_storing_failed_is_confirmed_all_the_same(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    # The core gave up on it (and logged why); fetching it forever would stall the bot.
    core.crash_next = 1
    message_id = tg.push_text(ANA.id, ANA, "lost cause")
    await tg.wait_for(lambda: confirmed(tg, message_id))
    tg.push_text(ANA.id, ANA, "next")
    await tg.wait_for(lambda: core.texts() == ["next"])


async def test_polling_goes_on_after_the_wait_limit_and_says_what_it_confirms(
    tg: FakeTelegram, core: RecordingCore, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = TelegramAdapter(settings_for(tg), core, poll_timeout=1, confirm_wait=0.2)
    await adapter.start()
    try:
        core.storing.clear()
        stuck = tg.push_text(ANA.id, ANA, "stuck")
        await tg.wait_for(lambda: confirmed(tg, stuck))
        assert core.texts() == []
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert any("1 update" in r.getMessage() for r in warned), warned
        core.storing.set()
        await tg.wait_for(lambda: core.texts() == ["stuck"])
    finally:
        core.storing.set()
        await adapter.stop()


async def test_a_command_is_confirmed_while_its_answer_is_still_on_its_way(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    """An answer can wait long (flood limits, retries): nothing to store waits on it."""
    tg.hang_next("sendMessage")
    message_id = tg.push_text(ANA.id, ANA, "/status")
    await tg.wait_for(lambda: bool(tg.calls_to("sendMessage")))
    await tg.wait_for(lambda: confirmed(tg, message_id))
    tg.release_hangs()
    await tg.wait_for(lambda: len(tg.sent_messages(ANA.id)) == 1)


async def test_a_command_answer_slow_to_post_holds_up_no_later_message_of_its_chat(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    """Carried out in order with the chat's messages; only its answer waits, in a task of
    its own: the chat's next message is stored and confirmed meanwhile."""
    tg.hang_next("sendMessage")
    tg.push_text(ANA.id, ANA, "/status")
    await tg.wait_for(lambda: bool(tg.calls_to("sendMessage")))
    message_id = tg.push_text(ANA.id, ANA, "still here?")
    await tg.wait_for(lambda: core.texts() == ["still here?"])
    await tg.wait_for(lambda: confirmed(tg, message_id))
    assert tg.sent_messages(ANA.id) == []
    tg.release_hangs()
    await tg.wait_for(lambda: len(tg.sent_messages(ANA.id)) == 1)


async def test_stop_lets_a_command_answer_in_flight_finish(
    tg: FakeTelegram, core: RecordingCore
) -> None:
    adapter = TelegramAdapter(settings_for(tg), core, poll_timeout=1)
    await adapter.start()
    tg.hang_next("sendMessage")
    tg.push_text(ANA.id, ANA, "/status")
    await tg.wait_for(lambda: bool(tg.calls_to("sendMessage")))
    stopping = asyncio.create_task(adapter.stop())
    await asyncio.sleep(0.1)
    tg.release_hangs()
    await stopping
    assert [m.plain_text for m in tg.sent_messages(ANA.id)] == [core.answer]


async def test_stopping_confirms_what_was_taken_in(tg: FakeTelegram, core: RecordingCore) -> None:
    adapter = TelegramAdapter(settings_for(tg), core, poll_timeout=1)
    await adapter.start()
    core.storing.clear()
    message_id = tg.push_text(ANA.id, ANA, "taken in while stopping")
    await tg.wait_for(lambda: bool(core.entered))
    stopping = asyncio.create_task(adapter.stop())
    try:
        await asyncio.sleep(0.1)
        assert not confirmed(tg, message_id)
    finally:
        core.storing.set()
        await stopping
    assert core.texts() == ["taken in while stopping"]
    assert confirmed(tg, message_id)


@pytest.mark.parametrize(
    ("code", "description", "level", "says"),
    [
        (
            409,
            "Conflict: terminated by other getUpdates request; "
            "make sure that only one bot instance is running",
            logging.ERROR,
            "another process uses this TELEGRAM_BOT_TOKEN",
        ),
        (502, "Bad Gateway", logging.WARNING, "fetching updates fails"),
    ],
)
async def test_a_failed_poll_is_one_line_saying_why_and_polling_goes_on(
    tg: FakeTelegram,
    core: RecordingCore,
    caplog: pytest.LogCaptureFixture,
    code: int,
    description: str,
    level: int,
    says: str,
) -> None:
    tg.fail_next("getUpdates", code, description)
    adapter = TelegramAdapter(settings_for(tg), core, poll_timeout=1)
    await adapter.start()
    try:
        tg.push_text(ANA.id, ANA, "are you there?")
        await tg.wait_for(lambda: core.texts() == ["are you there?"], timeout=10)
    finally:
        await adapter.stop()
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, r.exc_info) for r in failures] == [(level, None)]
    assert says in failures[0].getMessage()
    assert description in failures[0].getMessage()
    # The admin CLI shows the problem until a poll works again.
    (platform, problem), *later = core.intake_reports
    assert platform == "telegram" and problem is not None and description in problem
    assert ("telegram", None) in later


async def test_a_token_revoked_while_running_declares_the_intake_lost(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    await tg.wait_for(lambda: bool(tg.calls_to("getUpdates")))
    tg.fail_next("getUpdates", 401, "Unauthorized", count=1000)
    reason = await asyncio.wait_for(adapter.lost.wait(), 15)
    assert "TELEGRAM_BOT_TOKEN" in reason
    assert tg.token not in reason


async def test_sticker_is_submitted_as_unsupported(
    tg: FakeTelegram, core: RecordingCore, adapter: TelegramAdapter
) -> None:
    tg.push_sticker(ANA.id, ANA)
    await tg.wait_for(lambda: bool(core.submitted))
    assert (core.submitted[0].text, core.submitted[0].unsupported) == ("", "sticker")


# --- replies out ---------------------------------------------------------------------------


async def test_send_replies_in_html_to_the_trigger(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    trigger = tg.push_text(ANA.id, ANA, "hora?")
    platform_id = await adapter.send(
        reply(ANA.id, "Son las **12:00** (UTC) & <nada>", reply_to=trigger)
    )
    [sent] = tg.sent_messages(ANA.id)
    assert platform_id == str(sent.message_id)
    assert sent.parse_mode == "HTML"
    assert sent.text == "Son las <b>12:00</b> (UTC) &amp; &lt;nada&gt;"
    assert sent.reply_to == trigger


async def test_send_to_a_topic_and_to_a_deleted_trigger(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(GROUP, ANA, "hi", chat_type="supergroup", thread_id=40)
    await adapter.send(reply(GROUP, "hello topic", thread="40", reply_to=99999))
    [sent] = tg.sent_messages(GROUP, thread_id=40)
    assert sent.plain_text == "hello topic"
    assert sent.reply_to is None  # the trigger is gone: posted anyway


async def test_long_answer_is_split_under_the_limit(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(ANA.id, ANA, "tell me a lot")
    paragraph = "Line with **bold** & <angle> brackets and `code` in it. " * 6
    text = "\n\n".join(f"{i}: {paragraph}" for i in range(40))
    last_id = await adapter.send(reply(ANA.id, text))
    sent = tg.sent_messages(ANA.id)
    assert len(sent) >= 3
    assert all(len(m.text) <= 4096 for m in sent)
    assert last_id == str(sent[-1].message_id)
    visible = "\n".join(m.plain_text for m in sent)
    assert visible.count("Line with bold & <angle> brackets and code in it.") == 40 * 6


async def test_refused_html_falls_back_to_plain_text(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.fail_next("sendMessage", 400, "Bad Request: can't parse entities: Unsupported start tag")
    await adapter.send(reply(ANA.id, "Son las **12:00**"))
    [sent] = tg.sent_messages(ANA.id)
    assert (sent.text, sent.parse_mode) == ("Son las **12:00**", None)


async def test_429_is_waited_out_and_delivered_once(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    await adapter.send(reply(ANA.id, "hello"))
    assert [c.status for c in tg.calls_to("sendMessage")] == [429, 200]
    assert [m.plain_text for m in tg.sent_messages(ANA.id)] == ["hello"]


async def test_429s_beyond_the_retries_are_left_to_the_core_with_the_wait(
    tg: FakeTelegram, adapter: TelegramAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "RATE_LIMIT_RETRIES", 1)
    tg.push_text(ANA.id, ANA, "hi")
    tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1, count=2)
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(reply(ANA.id, "hello"))
    assert (caught.value.permanent, caught.value.retry_after) == (False, 1.0)
    assert [c.status for c in tg.calls_to("sendMessage")] == [429, 429]


async def test_server_errors_are_retried(tg: FakeTelegram, adapter: TelegramAdapter) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.fail_next("sendMessage", 502, "Bad Gateway", count=2)
    await adapter.send(reply(ANA.id, "hello"))
    assert [c.status for c in tg.calls_to("sendMessage")] == [502, 502, 200]


async def test_lasting_server_errors_are_a_temporary_delivery_error(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.fail_next("sendMessage", 500, "Internal Server Error", count=10)
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(reply(ANA.id, "hello"))
    assert not caught.value.permanent
    assert len(tg.calls_to("sendMessage")) == 3


@pytest.mark.parametrize(
    ("code", "description"),
    [(403, "Forbidden: bot was blocked by the user"), (400, "Bad Request: chat not found")],
)
async def test_forbidden_and_missing_chats_are_permanent(
    tg: FakeTelegram, adapter: TelegramAdapter, code: int, description: str
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.fail_next("sendMessage", code, description)
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(reply(ANA.id, "hello"))
    assert caught.value.permanent
    assert len(tg.calls_to("sendMessage")) == 1


async def test_retried_reply_does_not_repost_parts_already_delivered(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    text = "A" * 3000 + "\n\n" + "B" * 3000
    tg.fail_next("sendMessage", 502, "Bad Gateway", count=3, after=1)
    with pytest.raises(DeliveryError):
        await adapter.send(reply(ANA.id, text, outbox_id=42))
    await adapter.send(reply(ANA.id, text, outbox_id=42))
    assert [m.plain_text[0] for m in tg.sent_messages(ANA.id)] == ["A", "B"]


async def test_typing_goes_to_the_topic_and_never_raises(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(GROUP, ANA, "hi", chat_type="supergroup", thread_id=3)
    await adapter.typing(ConversationKey("telegram", str(GROUP), "3"))
    tg.fail_next("sendChatAction", 500, "Internal Server Error")
    await adapter.typing(ConversationKey("telegram", str(GROUP), "3"))
    calls = tg.calls_to("sendChatAction")
    assert [(c.params["action"], c.params["message_thread_id"], c.status) for c in calls] == [
        ("typing", 3, 200),
        ("typing", 3, 500),
    ]


async def test_send_after_stop_is_a_temporary_delivery_error(
    tg: FakeTelegram, core: RecordingCore
) -> None:
    adapter = TelegramAdapter(settings_for(tg), core, poll_timeout=1)
    await adapter.start()
    await adapter.stop()
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(reply(ANA.id, "late"))
    assert not caught.value.permanent


# --- webhook mode --------------------------------------------------------------------------


def webhook_adapter(
    tg: FakeTelegram, core: RecordingCore, url: str, port: int, confirm_wait: float = 5.0
) -> TelegramAdapter:
    """An adapter in webhook mode: Telegram calls `url`, it listens on 127.0.0.1:`port`."""
    settings = settings_for(
        tg,
        telegram_webhook_url=url,
        telegram_webhook_listen="127.0.0.1",
        telegram_webhook_port=port,
        telegram_webhook_secret=WEBHOOK_SECRET,
    )
    return TelegramAdapter(settings, core, confirm_wait=confirm_wait)


WEBHOOK_SECRET = "s3cret-Token"


@pytest.fixture
async def hooked(
    tg: FakeTelegram, core: RecordingCore
) -> AsyncIterator[tuple[str, TelegramAdapter]]:
    """A started adapter in webhook mode, and the URL Telegram calls."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/tg-hook"
    adapter = webhook_adapter(tg, core, url, port, confirm_wait=0.5)
    await adapter.start()
    try:
        yield url, adapter
    finally:
        core.storing.set()
        await adapter.stop()


async def test_a_webhook_call_is_answered_only_once_its_update_is_taken_in(
    tg: FakeTelegram, core: RecordingCore, hooked: tuple[str, TelegramAdapter]
) -> None:
    """Answering Telegram's call confirms the update: a crash before the storing would
    lose the message. Unanswered, the call makes Telegram send it again."""
    core.storing.clear()
    tg.push_text(ANA.id, ANA, "keep me")
    await tg.wait_for(lambda: core.entered == ["keep me"])
    await asyncio.sleep(0.2)
    assert tg.webhook_deliveries == []
    core.storing.set()
    await tg.wait_for(lambda: [status for _, status in tg.webhook_deliveries] == [200])
    assert core.texts() == ["keep me"]


async def test_a_webhook_call_is_answered_after_the_wait_limit_and_says_so(
    tg: FakeTelegram,
    core: RecordingCore,
    hooked: tuple[str, TelegramAdapter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    core.storing.clear()
    tg.push_text(ANA.id, ANA, "slow to store")
    await tg.wait_for(lambda: [status for _, status in tg.webhook_deliveries] == [200])
    assert core.entered == ["slow to store"] and core.texts() == []
    assert "confirming 1 update to Telegram not yet stored" in caplog.text


async def test_a_malformed_webhook_update_is_answered_and_the_next_one_taken_in(
    tg: FakeTelegram,
    core: RecordingCore,
    hooked: tuple[str, TelegramAdapter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, _ = hooked
    headers = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=b"{not json", headers=headers) as response:
            assert response.status == 400
        malformed = {"update_id": 7, "message": {"message_id": "x", "chat": "nope"}}
        async with http.post(url, json=malformed, headers=headers) as response:
            assert response.status == 200
    assert "skipping a malformed webhook update" in caplog.text
    tg.push_text(ANA.id, ANA, "after it")
    await tg.wait_for(lambda: core.texts() == ["after it"])


async def test_webhook_mode_sets_the_webhook_and_receives_updates(
    tg: FakeTelegram, core: RecordingCore
) -> None:
    port = free_port()
    adapter = webhook_adapter(tg, core, f"http://127.0.0.1:{port}/tg-hook", port)
    await adapter.start()
    try:
        [hook] = tg.calls_to("setWebhook")
        assert hook.params["url"] == f"http://127.0.0.1:{port}/tg-hook"
        assert hook.params["secret_token"] == WEBHOOK_SECRET
        tg.push_text(ANA.id, ANA, "via webhook")
        await tg.wait_for(lambda: core.texts() == ["via webhook"])
        assert tg.calls_to("getUpdates") == []
        assert [status for _, status in tg.webhook_deliveries] == [200]
        forged = {
            "update_id": 999,
            "message": {
                "message_id": 99,
                "date": 0,
                "chat": {"id": ANA.id, "type": "private", "first_name": ANA.first_name},
                "from": ANA.to_dict(),
                "text": "forged",
            },
        }
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "guessed"}):
                url = f"http://127.0.0.1:{port}/tg-hook"
                async with http.post(url, json=forged, headers=headers) as response:
                    assert response.status == 403
        assert core.texts() == ["via webhook"]
    finally:
        await adapter.stop()


async def test_webhook_mode_without_a_secret_is_refused(
    tg: FakeTelegram, core: RecordingCore
) -> None:
    settings = settings_for(tg, telegram_webhook_url="https://bot.example.org/hook")
    with pytest.raises(SettingsError, match=r"^setting TELEGRAM_WEBHOOK_SECRET:"):
        TelegramAdapter(settings, core)


# --- failures around the process -----------------------------------------------------------


WRONG_TOKEN = "42:WrongTokenWrongTokenWrongToken"


@pytest.mark.parametrize(
    ("token", "path"),
    [(WRONG_TOKEN, "/bot"), (None, "/wrong-path/bot")],
    ids=["401-wrong-token", "404-wrong-base-url"],
)
async def test_rejected_token_fails_start_in_one_line_without_the_token(
    tg: FakeTelegram, core: RecordingCore, token: str | None, path: str
) -> None:
    token = token or tg.token
    settings = Settings(
        _env_file=None,
        telegram_bot_token=token,
        telegram_base_url=f"http://127.0.0.1:{tg.port}{path}",
    )
    adapter = TelegramAdapter(settings, core)
    with pytest.raises(SettingsError) as caught:
        await adapter.start()
    await adapter.stop()  # harmless a second time, as bot.app does after a failed start
    message = str(caught.value)
    assert message.startswith("setting TELEGRAM_BOT_TOKEN:")
    assert "TELEGRAM_BASE_URL" in message and "\n" not in message
    # The whole traceback as Python prints it, chained exceptions included.
    printed = "".join(traceback.format_exception(caught.value))
    assert token not in printed
    assert tg.calls_to("getUpdates") == []


async def test_an_unreachable_bot_api_fails_start_in_one_line_without_the_token(
    core: RecordingCore,
) -> None:
    with socket.socket() as refusing:  # bound, not listening: connections are refused
        refusing.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{refusing.getsockname()[1]}/bot"
        settings = Settings(
            _env_file=None, telegram_bot_token=WRONG_TOKEN, telegram_base_url=base_url
        )
        adapter = TelegramAdapter(settings, core)
        with pytest.raises(StartupError) as caught:
            await adapter.start()
    await adapter.stop()
    message = str(caught.value)
    # Not a SettingsError: the token may be right, the network is what failed.
    assert not isinstance(caught.value, SettingsError)
    assert message.startswith(f"could not reach the Telegram Bot API at {base_url} (")
    assert "TELEGRAM_BASE_URL" in message and "\n" not in message
    assert WRONG_TOKEN not in message


async def test_a_webhook_port_in_use_fails_start_in_one_line(
    tg: FakeTelegram, core: RecordingCore
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        adapter = webhook_adapter(tg, core, f"https://bot.example.org:{port}/tg-hook", port)
        with pytest.raises(StartupError) as caught:
            await adapter.start()
    await adapter.stop()
    message = str(caught.value)
    assert message.startswith(
        f"could not listen for Telegram's webhook calls on 127.0.0.1:{port} ("
    )
    assert "TELEGRAM_WEBHOOK_PORT" in message and "\n" not in message


async def test_api_dying_mid_send_is_a_temporary_delivery_error(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.hang_next("sendMessage")
    sending = asyncio.create_task(adapter.send(reply(ANA.id, "hello")))
    await tg.wait_for(lambda: bool(tg.calls_to("sendMessage")))
    await tg.stop()
    with pytest.raises(DeliveryError) as caught:
        await sending
    assert not caught.value.permanent
    assert tg.sent_messages(ANA.id) == []


async def test_hung_request_answers_once_released(
    tg: FakeTelegram, adapter: TelegramAdapter
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.hang_next("sendMessage")
    sending = asyncio.create_task(adapter.send(reply(ANA.id, "hello")))
    await tg.wait_for(lambda: bool(tg.calls_to("sendMessage")))
    assert not sending.done()
    tg.release_hangs()
    assert await sending == str(tg.sent_messages(ANA.id)[0].message_id)
