"""Telegram messages to InboundMessage / CommandRequest, built from the fake's own updates."""

from __future__ import annotations

from typing import Any

import pytest
from telegram import Update

from adapters.telegram.convert import BotIdentity, Command, Ignore, Route, Submit, route
from bot.events import CommandName, ConversationKey
from tests.fakes.telegram_api import FakeTelegram, TgUser

BOT = BotIdentity(id=123456789, username="stillhere_bot")
ANA = TgUser(1001, "Ana", "Pérez", username="ana")
BEN = TgUser(1002, "Ben")
GROUP = -100500


@pytest.fixture
def tg() -> FakeTelegram:
    # Only the push helpers are used here: no server needed.
    return FakeTelegram()


def routed(tg: FakeTelegram) -> Route:
    update = Update.de_json(tg.queued_updates[-1], None)
    assert update.message is not None
    return route(update.message, BOT)


def submitted(tg: FakeTelegram) -> Any:
    decision = routed(tg)
    assert isinstance(decision, Submit), decision
    return decision.message


def bot_message(
    tg: FakeTelegram, chat: int, *, chat_type: str, thread_id: int | None = None
) -> int:
    """A message authored by the bot, as if it had answered earlier."""
    bot_user = TgUser(BOT.id, "Stillhere", username=BOT.username, is_bot=True)
    message_id = tg.push_text(
        chat, bot_user, "Earlier answer", chat_type=chat_type, thread_id=thread_id
    )
    return message_id


def test_private_text_is_for_the_bot() -> None:
    tg = FakeTelegram()
    message_id = tg.push_text(ANA.id, ANA, "Dame la hora actual")
    inbound = submitted(tg)
    assert inbound.conversation == ConversationKey("telegram", str(ANA.id), "")
    assert inbound.is_private and inbound.addresses_bot
    assert inbound.text == "Dame la hora actual"
    assert inbound.message_id == str(message_id)
    assert inbound.user_id == str(ANA.id)
    assert inbound.display_name == "Ana Pérez (@ana)"
    assert inbound.unsupported is None and inbound.reply_to_id is None
    assert inbound.timestamp.tzinfo is not None


def test_group_chatter_is_submitted_unaddressed(tg: FakeTelegram) -> None:
    tg.push_text(GROUP, BEN, "anyone up for lunch?", chat_type="group")
    inbound = submitted(tg)
    assert not inbound.is_private and not inbound.addresses_bot
    assert inbound.display_name == "Ben"
    assert inbound.chat_title == f"Group {GROUP}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@stillhere_bot what time is it?", "what time is it?"),
        ("hey @stillhere_bot, what time is it?", "hey, what time is it?"),
        ("what time is it @StillHere_Bot?", "what time is it?"),
        ("👋🏽 @stillhere_bot hola", "👋🏽 hola"),
    ],
)
def test_group_mention_addresses_the_bot_and_is_stripped(
    tg: FakeTelegram, text: str, expected: str
) -> None:
    tg.push_text(GROUP, ANA, text, chat_type="supergroup")
    inbound = submitted(tg)
    assert inbound.addresses_bot
    assert inbound.text == expected


def test_mention_of_someone_else_does_not_address_the_bot(tg: FakeTelegram) -> None:
    tg.push_text(GROUP, ANA, "@ben_smith are you there?", chat_type="group")
    inbound = submitted(tg)
    assert not inbound.addresses_bot
    assert inbound.text == "@ben_smith are you there?"


def test_text_mention_of_the_bot_addresses_it(tg: FakeTelegram) -> None:
    entity = {
        "type": "text_mention",
        "offset": 0,
        "length": 9,
        "user": {"id": BOT.id, "is_bot": True, "first_name": "Stillhere"},
    }
    tg.push_text(GROUP, ANA, "Stillhere, ¿qué hora es?", chat_type="group", entities=[entity])
    inbound = submitted(tg)
    assert inbound.addresses_bot
    assert inbound.text == "¿qué hora es?"


def test_reply_to_the_bot_addresses_it(tg: FakeTelegram) -> None:
    answer = bot_message(tg, GROUP, chat_type="group")
    tg.push_text(GROUP, BEN, "and tomorrow?", chat_type="group", reply_to=answer)
    inbound = submitted(tg)
    assert inbound.addresses_bot
    assert inbound.reply_to_id == str(answer)


def test_reply_to_a_person_does_not_address_the_bot(tg: FakeTelegram) -> None:
    first = tg.push_text(GROUP, ANA, "lunch?", chat_type="group")
    tg.push_text(GROUP, BEN, "sure", chat_type="group", reply_to=first)
    inbound = submitted(tg)
    assert not inbound.addresses_bot
    assert inbound.reply_to_id == str(first)


def test_ask_command_addresses_the_bot_with_its_argument(tg: FakeTelegram) -> None:
    tg.push_text(GROUP, ANA, "/ask what time is it?", chat_type="group")
    inbound = submitted(tg)
    assert inbound.addresses_bot
    assert inbound.text == "what time is it?"


def test_ask_for_this_bot_by_name(tg: FakeTelegram) -> None:
    tg.push_text(GROUP, ANA, "/ask@stillhere_bot hola", chat_type="group")
    assert submitted(tg).text == "hola"


@pytest.mark.parametrize("text", ["/status", "/status@stillhere_bot", "/STATUS extra words"])
def test_known_commands_become_command_requests(tg: FakeTelegram, text: str) -> None:
    message_id = tg.push_text(GROUP, BEN, text, chat_type="group")
    decision = routed(tg)
    assert isinstance(decision, Command)
    assert decision.request.name is CommandName.STATUS
    assert decision.request.user_id == str(BEN.id)
    assert not decision.request.is_private
    assert decision.message_id == message_id


def test_command_arguments_are_kept(tg: FakeTelegram) -> None:
    tg.push_text(ANA.id, ANA, "/cancel now please")
    decision = routed(tg)
    assert isinstance(decision, Command)
    assert decision.request.name is CommandName.CANCEL
    assert decision.request.args == "now please"
    assert decision.request.is_private


def test_command_for_another_bot_is_ignored(tg: FakeTelegram) -> None:
    tg.push_text(GROUP, ANA, "/status@other_bot", chat_type="group")
    assert isinstance(routed(tg), Ignore)


def test_unknown_command_in_private_is_plain_text(tg: FakeTelegram) -> None:
    tg.push_text(ANA.id, ANA, "/weather Madrid")
    inbound = submitted(tg)
    assert inbound.text == "/weather Madrid"
    assert inbound.addresses_bot


def test_forum_topic_has_its_own_conversation(tg: FakeTelegram) -> None:
    tg.push_text(GROUP, ANA, "@stillhere_bot hi", chat_type="supergroup", thread_id=77)
    inbound = submitted(tg)
    assert inbound.conversation == ConversationKey("telegram", str(GROUP), "77")
    # Telegram marks topic messages as replies to the topic's first message: not a reply.
    assert inbound.reply_to_id is None
    assert inbound.addresses_bot


def test_plain_topic_message_is_not_a_reply_to_the_bot_even_if_it_opened_the_topic(
    tg: FakeTelegram,
) -> None:
    bot_user = TgUser(BOT.id, "Stillhere", username=BOT.username, is_bot=True)
    tg.push_text(GROUP, bot_user, "opening", chat_type="supergroup", thread_id=5)
    tg.push_text(GROUP, ANA, "chatter", chat_type="supergroup", thread_id=5)
    assert not submitted(tg).addresses_bot


def test_reply_to_the_bot_inside_a_topic(tg: FakeTelegram) -> None:
    answer = bot_message(tg, GROUP, chat_type="supergroup", thread_id=9)
    tg.push_text(GROUP, BEN, "thanks", chat_type="supergroup", thread_id=9, reply_to=answer)
    inbound = submitted(tg)
    assert inbound.addresses_bot and inbound.reply_to_id == str(answer)
    assert inbound.conversation.thread_id == "9"


def test_sticker_is_unsupported_with_empty_text(tg: FakeTelegram) -> None:
    tg.push_sticker(ANA.id, ANA)
    inbound = submitted(tg)
    assert inbound.text == ""
    assert inbound.unsupported == "sticker"


def test_photo_without_caption_is_unsupported(tg: FakeTelegram) -> None:
    tg.push_photo(ANA.id, ANA)
    inbound = submitted(tg)
    assert (inbound.text, inbound.unsupported) == ("", "photo")


def test_photo_caption_counts_as_text(tg: FakeTelegram) -> None:
    tg.push_photo(GROUP, ANA, "@stillhere_bot what is this?", chat_type="group")
    inbound = submitted(tg)
    assert inbound.text == "what is this?"
    assert inbound.unsupported is None
    assert inbound.addresses_bot


def test_messages_from_bots_are_ignored(tg: FakeTelegram) -> None:
    other_bot = TgUser(555, "Other", username="other_bot", is_bot=True)
    tg.push_text(GROUP, other_bot, "@stillhere_bot ping", chat_type="group")
    assert isinstance(routed(tg), Ignore)
