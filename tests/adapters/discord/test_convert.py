"""The Discord adapter's pure pieces: mentions, commands, attachment kinds, routing, errors."""

from __future__ import annotations

import discord
import discord.gateway
import discord.http
import pytest
import yarl

from adapters.discord import point_discord_at
from adapters.discord.convert import (
    attachment_kind,
    conversation_of,
    name_mentions,
    parse_command,
    strip_mentions,
)
from adapters.discord.sender import allowed_mentions, channel_id_of
from adapters.discord.startup import explain_start_failure
from bot.events import CommandName, ConversationKey


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("<@42> what time is it?", "what time is it?"),
        ("<@!42> hi", "hi"),
        ("hey <@42>, are you there?", "hey , are you there?"),
        ("<@&7> ping the bot role", "ping the bot role"),
        ("<@42>", ""),
        ("<@99> and <@42> together", "<@99> and together"),
        ("line one <@42>\nline two", "line one\nline two"),
        ("no mention at all", "no mention at all"),
    ],
)
def test_strip_mentions_removes_only_the_bots(content: str, expected: str) -> None:
    assert strip_mentions(content, {"42", "7"}) == expected


def test_name_mentions_writes_people_by_name_and_leaves_roles_and_unknowns() -> None:
    names = {"99": "Bob", "5": "Role?"}
    text = "ask <@99> or <@!99>, not <@&5> nor <@123>"
    assert name_mentions(text, names) == "ask @Bob or @Bob, not <@&5> nor <@123>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/cancel", (CommandName.CANCEL, "")),
        ("/STATUS", (CommandName.STATUS, "")),
        ("  /reset  everything ", (CommandName.RESET, "everything")),
        ("/help", (CommandName.HELP, "")),
        ("/usage", (CommandName.USAGE, "")),
        ("/unknown", None),
        ("please /cancel", None),
        ("/cancelled", None),
        ("", None),
    ],
)
def test_parse_command(text: str, expected: tuple[CommandName, str] | None) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("content_type", "voice", "kind"),
    [
        ("image/png", False, "photo"),
        ("video/mp4", False, "video"),
        ("audio/ogg", False, "audio"),
        ("audio/ogg", True, "voice"),
        ("application/pdf", False, "document"),
        (None, False, "document"),
    ],
)
def test_attachment_kind(content_type: str | None, voice: bool, kind: str) -> None:
    assert attachment_kind(content_type, voice=voice) == kind


def test_a_channel_that_is_not_a_thread_is_its_own_session() -> None:
    assert conversation_of(object(), 123) == ConversationKey("discord", "123")


def test_replies_go_to_the_thread_when_there_is_one() -> None:
    assert channel_id_of(ConversationKey("discord", "10", "20")) == 20
    assert channel_id_of(ConversationKey("discord", "10")) == 10


def test_allowed_mentions_ping_only_the_person_answered() -> None:
    assert allowed_mentions("55").to_dict() == {
        "parse": [],
        "users": [55],
        "replied_user": True,
    }
    assert allowed_mentions(None).to_dict() == {"parse": [], "replied_user": True}


def test_point_discord_at_redirects_rest_and_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket,
        "DEFAULT_GATEWAY",
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
    )
    point_discord_at("http://127.0.0.1:9/api/v10/", "ws://127.0.0.1:9/gw")
    assert discord.http.Route("GET", "/users/@me").url == "http://127.0.0.1:9/api/v10/users/@me"
    assert yarl.URL("ws://127.0.0.1:9/gw") == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


def test_start_failures_are_explained_in_one_actionable_line() -> None:
    intents = explain_start_failure(discord.PrivilegedIntentsRequired(None))
    assert "Message Content Intent" in intents
    assert "Developer Portal > Applications > your app > Bot > Privileged Gateway Intents" in (
        intents
    )
    assert "DISCORD_BOT_TOKEN was rejected" in explain_start_failure(discord.LoginFailure("x"))
    assert "in time" in explain_start_failure(TimeoutError())
    for text in (intents, explain_start_failure(OSError("refused"))):
        assert "\n" not in text
