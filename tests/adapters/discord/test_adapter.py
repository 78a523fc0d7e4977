"""The real discord.py client, driven over the wire by the fake Discord, feeding a recording
core: what the adapter submits, what it posts, and how it starts, fails and resumes."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import discord
import discord.backoff
import pytest

from adapters.discord import DiscordAdapter, DiscordStartError
from bot.core_api import COMMAND_FAILED, SubmitOutcome
from bot.events import (
    CommandName,
    CommandRequest,
    ConversationKey,
    DeliveryError,
    InboundMessage,
    OutgoingMessage,
    ReplyKind,
)
from tests.adapters.discord.conftest import (
    AdapterFactory,
    HeldCommandsCore,
    RecordingCore,
    discord_settings,
)
from tests.fakes.discord_api import EPHEMERAL, RESUME_GATEWAY_PATH, FakeDiscord

POST = "POST /channels/{channel_id}/messages"


def reply(
    fake: FakeDiscord, channel_id: str, text: str, *, outbox_id: int = 1, **kw: str | None
) -> OutgoingMessage:
    chat = fake.general_id if channel_id == fake.thread_id else channel_id
    thread = channel_id if channel_id == fake.thread_id else ""
    return OutgoingMessage(
        conversation=ConversationKey("discord", chat, thread),
        text=text,
        reply_to_id=kw.get("reply_to_id"),
        kind=ReplyKind.ANSWER,
        outbox_id=outbox_id,
        reply_to_user_id=kw.get("reply_to_user_id"),
    )


async def submitted(fake: FakeDiscord, core: RecordingCore, count: int) -> None:
    await fake.wait_for(lambda: len(core.submitted) >= count)


# --- what gets submitted ------------------------------------------------------------------


async def test_a_dm_is_for_the_bot_and_keyed_by_its_channel(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    dm = fake.dm_channel(fake.bob)
    async with running_adapter() as (adapter, core):
        sent = await fake.push_message(dm, fake.bob, "hola", guild=False)
        await submitted(fake, core, 1)
    [message] = core.submitted
    assert core.sinks == [adapter]
    assert message.conversation == ConversationKey("discord", dm, "")
    assert (message.is_private, message.addresses_bot) == (True, True)
    assert (message.text, message.message_id, message.user_id) == ("hola", sent["id"], fake.bob.id)
    assert message.display_name == "Bob"
    assert message.guild_id is None and message.chat_title is None


async def test_a_mention_addresses_the_bot_and_is_stripped(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (_, core):
        await fake.push_message(fake.general_id, fake.alice, "what time is it?", mentions_bot=True)
        await submitted(fake, core, 1)
    [message] = core.submitted
    assert message.text == "what time is it?"
    assert (message.is_private, message.addresses_bot) == (False, True)
    assert message.conversation == ConversationKey("discord", fake.general_id, "")
    assert message.guild_id == fake.guild_id
    assert message.roles == (fake.mod_role_id,)
    assert message.display_name == "Alice"
    assert message.chat_title == "Test Server #general"


async def test_chatter_is_submitted_unaddressed_and_a_reply_to_the_bot_is_addressed(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (adapter, core):
        await fake.push_message(fake.general_id, fake.bob, "lunch anyone?")
        bot_post = await adapter.send(reply(fake, fake.general_id, "I am here"))
        assert bot_post is not None
        await fake.push_message(fake.general_id, fake.alice, "thanks!", reply_to=bot_post)
        people = await fake.push_message(fake.general_id, fake.bob, "pizza")
        await fake.push_message(fake.general_id, fake.alice, "re pizza", reply_to=people["id"])
        await submitted(fake, core, 4)
    assert [(m.text, m.addresses_bot) for m in core.submitted] == [
        ("lunch anyone?", False),
        ("thanks!", True),
        ("pizza", False),
        ("re pizza", False),
    ]
    assert core.submitted[1].reply_to_id == bot_post


async def test_own_echoes_and_other_bots_are_not_submitted(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (adapter, core):
        await adapter.send(reply(fake, fake.general_id, "an answer"))
        await fake.push_message(fake.general_id, fake.other_bot, "beep", mentions_bot=True)
        await fake.push_message(fake.general_id, fake.bob, "last")
        await submitted(fake, core, 1)
        await adapter.stop()
    # The inbox keeps gateway order, so anything before "last" would have been submitted first.
    assert [m.text for m in core.submitted] == ["last"]


async def test_a_thread_is_its_own_session_under_its_channel(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (_, core):
        await fake.push_message(fake.thread_id, fake.alice, "in the thread", mentions_bot=True)
        await fake.push_message(fake.general_id, fake.alice, "in the channel", mentions_bot=True)
        await submitted(fake, core, 2)
    assert [m.conversation for m in core.submitted] == [
        ConversationKey("discord", fake.general_id, fake.thread_id),
        ConversationKey("discord", fake.general_id, ""),
    ]


async def test_stickers_and_attachments_are_submitted_as_unsupported(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    dm = fake.dm_channel(fake.bob)
    async with running_adapter() as (_, core):
        await fake.push_message(dm, fake.bob, "", guild=False, sticker=True)
        await fake.push_message(
            dm,
            fake.bob,
            "",
            guild=False,
            attachments=[{"filename": "a.png", "content_type": "image/png"}],
        )
        await fake.push_message(fake.general_id, fake.alice, "", sticker=True)
        await fake.push_message(
            fake.general_id,
            fake.alice,
            "look at this",
            attachments=[{"filename": "b.pdf", "content_type": "application/pdf"}],
        )
        await submitted(fake, core, 4)
    assert [(m.text, m.unsupported, m.is_private) for m in core.submitted] == [
        ("", "sticker", True),
        ("", "photo", True),
        ("", "sticker", False),
        ("look at this", None, False),
    ]


async def test_edits_and_deletions_are_ignored_and_logged(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    caplog.set_level(logging.INFO, logger="adapters.discord")
    async with running_adapter() as (_, core):
        first = await fake.push_message(fake.general_id, fake.alice, "hi", mentions_bot=True)
        await fake.edit_message(first["id"], "hi, EDITED")
        await fake.delete_message(first["id"])
        await fake.push_message(fake.general_id, fake.alice, "after", mentions_bot=True)
        await submitted(fake, core, 2)
        await fake.wait_for(lambda: "deletion" in caplog.text)
    assert [m.text for m in core.submitted] == ["hi", "after"]
    assert f"ignored an edit of Discord message {first['id']}" in caplog.text
    assert f"ignored the deletion of Discord message {first['id']}" in caplog.text


# --- commands -----------------------------------------------------------------------------


async def test_typed_commands_go_to_the_core_and_are_answered_in_reply(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    dm = fake.dm_channel(fake.bob)
    async with running_adapter() as (_, core):
        in_dm = await fake.push_message(dm, fake.bob, "/status", guild=False)
        await fake.push_message(fake.general_id, fake.bob, "/cancel")  # not addressed: chatter
        in_server = await fake.push_message(
            fake.general_id, fake.alice, "/reset please", mentions_bot=True
        )
        await fake.wait_for(lambda: len(fake.posted_messages(fake.general_id)) == 1)
        await fake.wait_for(lambda: len(fake.posted_messages(dm)) == 1)
    assert [(c.name, c.args, c.is_private) for c in core.commands] == [
        (CommandName.STATUS, "", True),
        (CommandName.RESET, "please", False),
    ]
    assert core.commands[1].is_admin  # alice's role has Manage Server
    # What the access lists check (ALLOWED_GUILDS, ALLOWED_ROLES), as for her messages.
    assert (core.commands[0].guild_id, core.commands[0].roles) == (None, ())
    assert core.commands[1].guild_id == fake.guild_id
    assert core.commands[1].roles == (fake.mod_role_id,)
    assert not any(c.answered_privately for c in core.commands)  # posted in the chat
    assert [m.text for m in core.submitted] == ["/cancel"]
    [answer] = fake.posted_messages(fake.general_id)
    assert answer["content"] == "reset answered"
    assert answer["message_reference"]["message_id"] == in_server["id"]
    assert fake.posted_messages(dm)[0]["message_reference"]["message_id"] == in_dm["id"]


async def test_an_answer_slow_to_post_holds_up_no_other_message(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    dm = fake.dm_channel(fake.bob)
    # As discord.py sitting out a 429 on that channel: the answer's post does not come back.
    release = fake.hold(f"POST /channels/{dm}/messages")
    async with running_adapter() as (_, core):
        asked = await fake.push_message(dm, fake.bob, "/status", guild=False)
        await fake.wait_for(lambda: len(fake.held_calls) == 1)
        await fake.push_message(fake.general_id, fake.alice, "anyone there?", mentions_bot=True)
        await fake.push_message(dm, fake.bob, "and you?", guild=False)
        await submitted(fake, core, 2)
        # Submitted while the answer still waits to be posted.
        assert fake.posted_messages(dm) == []
        release.set()
        await fake.wait_for(lambda: len(fake.posted_messages(dm)) == 1)
    assert [m.text for m in core.submitted] == ["anyone there?", "and you?"]
    [answer] = fake.posted_messages(dm)
    assert answer["content"] == "status answered"
    assert answer["message_reference"]["message_id"] == asked["id"]


@dataclass
class CallOrderCore(RecordingCore):
    """A RecordingCore noting when each command() begins and ends and each submit() comes;
    a /reset ends only once `release` is set, as one waiting for its session's actor."""

    calls: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def command(self, request: CommandRequest) -> str:
        self.calls.append(f"/{request.name} begun")
        if request.name is CommandName.RESET:
            await self.release.wait()
        self.calls.append(f"/{request.name} done")
        return await super().command(request)

    async def submit(self, message: InboundMessage) -> SubmitOutcome:
        self.calls.append(f"submit {message.text}")
        return await super().submit(message)


async def test_a_typed_command_is_carried_out_before_the_next_message_is_submitted(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    core = CallOrderCore()
    async with running_adapter(core=core):
        await fake.push_message(fake.general_id, fake.alice, "/reset", mentions_bot=True)
        await fake.push_message(fake.general_id, fake.alice, "hello", mentions_bot=True)
        # The gateway delivers in order and discord.py hands events on in that order, so
        # once a slash command pushed after "hello" has been carried out, the adapter has
        # had "hello" for at least an interaction's round trip.
        await fake.push_slash("help", fake.random_id, fake.alice)
        await fake.wait_for(lambda: "/help done" in core.calls)
        # Submitted now, "hello" would start a turn in the session the reset then archives.
        assert "submit hello" not in core.calls
        core.release.set()
        await submitted(fake, core, 1)
        await fake.wait_for(lambda: len(fake.posted_messages(fake.general_id)) == 1)
    assert [c for c in core.calls if "help" not in c] == [
        "/reset begun",
        "/reset done",
        "submit hello",
    ]
    assert fake.posted_messages(fake.general_id)[0]["content"] == "reset answered"


class FailingCommandsCore(RecordingCore):
    async def command(self, request: CommandRequest) -> str:
        await super().command(request)
        raise RuntimeError("the core broke")


async def test_a_command_that_fails_is_logged_answered_with_an_apology_and_the_rest_goes_on(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    dm = fake.dm_channel(fake.bob)
    async with running_adapter(core=FailingCommandsCore()) as (_, core):
        await fake.push_message(dm, fake.bob, "/status", guild=False)
        await fake.push_message(dm, fake.bob, "hola", guild=False)
        await submitted(fake, core, 1)
        await fake.wait_for(lambda: bool(fake.posted_messages(dm)))
    [failure] = [r for r in caplog.records if "could not carry out" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert failure.exc_info is not None and "the core broke" in str(failure.exc_info[1])
    assert [m.text for m in core.submitted] == ["hola"]
    assert [m["content"] for m in fake.posted_messages(dm)] == [COMMAND_FAILED]


async def test_stop_with_commands_in_flight_loses_no_message_and_leaves_no_task(
    fake_discord: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    core = HeldCommandsCore()  # the slash /status waits in the core
    dm = fake.dm_channel(fake.bob)
    fake.hold(f"POST /channels/{dm}/messages")  # the typed /help's answer is never posted
    before = asyncio.all_tasks()
    adapter = DiscordAdapter(
        discord_settings(fake), core, guild_ready_timeout=0.05, command_grace=0.1
    )
    await adapter.start()
    try:
        await fake.push_message(dm, fake.bob, "/help", guild=False)
        await fake.push_slash("status", fake.general_id, fake.alice)
        await fake.wait_for(lambda: len(core.commands) == 2 and len(fake.held_calls) == 1)
        await fake.push_message(dm, fake.bob, "are you there?", guild=False)
        await fake.push_message(fake.general_id, fake.alice, "hello", mentions_bot=True)
        # The gateway delivers in order and discord.py hands events on in that order, so
        # once a slash command pushed after the two messages reaches the core, the adapter
        # has received both of them.
        await fake.push_slash("help", fake.random_id, fake.alice)
        await fake.wait_for(lambda: len(core.commands) == 3)
    finally:
        await adapter.stop()
    assert [m.text for m in core.submitted] == ["are you there?", "hello"]
    assert core.cancelled == [CommandName.STATUS]
    assert "still running at shutdown" in caplog.text
    assert fake.posted_messages(dm) == []
    left = [t for t in asyncio.all_tasks() - before if not t.done() and not fake.is_serving(t)]
    assert left == []


async def test_slash_commands_are_synced_deferred_and_answered_ephemerally(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (_, core):
        assert {c["name"] for c in fake.synced_commands["global"]} == {
            "cancel",
            "status",
            "reset",
            "help",
            "usage",
        }
        await fake.push_slash("cancel", fake.thread_id, fake.bob)
        await fake.push_slash("status", fake.dm_channel(fake.alice), fake.alice)
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 4)
    # Each interaction is handled in its own task, so the two may finish in either order.
    assert {(c.name, c.conversation, c.is_private) for c in core.commands} == {
        (CommandName.CANCEL, ConversationKey("discord", fake.general_id, fake.thread_id), False),
        (CommandName.STATUS, ConversationKey("discord", fake.dm_channel(fake.alice)), True),
    }
    assert {(c.name, c.guild_id) for c in core.commands} == {
        (CommandName.CANCEL, fake.guild_id),
        (CommandName.STATUS, None),
    }
    assert all(c.answered_privately for c in core.commands)  # ephemeral answers
    deferred = [c for c in fake.interaction_callbacks if not c.get("followup")]
    answers = [c for c in fake.interaction_callbacks if c.get("followup")]
    assert [(c["type"], c["data"]["flags"] & EPHEMERAL) for c in deferred] == [(5, EPHEMERAL)] * 2
    assert {c["content"] for c in answers} == {"cancel answered", "status answered"}
    assert all(c["flags"] & EPHEMERAL for c in answers)


async def test_a_slash_command_is_deferred_before_a_slow_answer(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    core = HeldCommandsCore()
    async with running_adapter(core=core):
        await fake.push_slash("status", fake.general_id, fake.alice)
        # Acknowledged while the core has not answered: Discord drops an interaction
        # left unacknowledged for 3 s.
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 1)
        await fake.wait_for(lambda: len(core.commands) == 1)
        core.release.set()
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 2)
    deferred, answer = fake.interaction_callbacks
    assert (deferred["type"], deferred["data"]["flags"]) == (5, EPHEMERAL)
    assert (answer.get("followup"), answer["content"]) == (True, "status answered")
    assert answer["flags"] & EPHEMERAL


async def test_a_slash_command_the_core_fails_on_ends_in_an_apology_not_thinking(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    async with running_adapter(core=FailingCommandsCore()):
        await fake.push_slash("status", fake.general_id, fake.alice)
        # Without a followup, Discord would show "thinking…" for the interaction's 15 minutes.
        await fake.wait_for(lambda: len(fake.interaction_callbacks) == 2)
    deferred, apology = fake.interaction_callbacks
    assert deferred["type"] == 5
    assert apology.get("followup") and apology["content"] == COMMAND_FAILED
    assert apology["flags"] & EPHEMERAL
    [failure] = [r for r in caplog.records if "could not carry out /status" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert failure.exc_info is not None and "the core broke" in str(failure.exc_info[1])


async def test_a_slash_command_that_cannot_be_acknowledged_is_not_run(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fake = fake_discord
    async with running_adapter() as (_, core):
        # As if the interaction had reached the bot too late: the person was already told
        # it failed, so /reset must not go ahead unseen.
        fake.interaction_ack_seconds = 0.0
        await fake.push_slash("reset", fake.general_id, fake.alice)
        await fake.wait_for(lambda: "could not acknowledge /reset" in caplog.text)
    assert core.commands == []
    assert fake.interaction_callbacks == []


# --- what gets posted ---------------------------------------------------------------------


async def test_a_reply_references_its_message_and_pings_nobody_else(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (adapter, _):
        asked = await fake.push_message(fake.general_id, fake.alice, "hi", mentions_bot=True)
        posted = await adapter.send(
            reply(
                fake,
                fake.general_id,
                "@everyone and @here, <@&1> too",
                outbox_id=17,
                reply_to_id=asked["id"],
                reply_to_user_id=fake.alice.id,
            )
        )
    [call] = fake.calls(POST)
    assert call.body["content"] == "@everyone and @here, <@&1> too"
    assert call.body["allowed_mentions"] == {
        "parse": [],
        "users": [int(fake.alice.id)],
        "replied_user": True,
    }
    assert call.body["message_reference"]["message_id"] == int(asked["id"])
    assert call.body["message_reference"]["fail_if_not_exists"] is False
    assert (call.body["nonce"], call.body["enforce_nonce"]) == ("17", True)
    assert posted == fake.posted_messages(fake.general_id)[0]["id"]


async def test_a_long_answer_with_code_is_split_under_2000(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    code = "\n".join(f"print('line {i:03d}')" for i in range(140))
    text = "Here is the script:\n\n```python\n" + code + "\n```\n\nThat is all."
    assert len(text) > 2000
    async with running_adapter() as (adapter, _):
        last = await adapter.send(reply(fake, fake.thread_id, text, outbox_id=5))
    parts = fake.posted_messages(fake.thread_id)
    assert len(parts) >= 2
    assert all(len(p["content"]) <= 2000 for p in parts)
    assert all(p["content"].count("```") % 2 == 0 for p in parts)  # each part's block closed
    assert parts[1]["content"].startswith("```python\n")
    joined = "".join(p["content"] for p in parts)
    assert all(f"print('line {i:03d}')" in joined for i in range(140))
    assert [c.body["nonce"] for c in fake.calls(POST)] == ["5"] + [
        f"5.{i}" for i in range(1, len(parts))
    ]
    assert last == parts[-1]["id"]


async def test_a_retried_send_does_not_post_twice(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (adapter, _):
        first = await adapter.send(reply(fake, fake.general_id, "once", outbox_id=9))
        again = await adapter.send(reply(fake, fake.general_id, "once", outbox_id=9))
    assert first == again
    assert [m["content"] for m in fake.posted_messages(fake.general_id)] == ["once"]


async def test_a_429_is_waited_out_and_the_reply_posted_once(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    fake.fail_next(POST, 429, retry_after=0.05)
    async with running_adapter() as (adapter, _):
        await adapter.send(reply(fake, fake.general_id, "patience", outbox_id=3))
    assert [m["content"] for m in fake.posted_messages(fake.general_id)] == ["patience"]
    assert [c.status for c in fake.calls(POST)] == [429, 200]


@pytest.mark.parametrize(
    ("status", "code"), [(403, 50013), (404, 10003), (400, 50035)], ids=["403", "404", "400"]
)
async def test_refusals_are_permanent_delivery_errors(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory, status: int, code: int
) -> None:
    fake = fake_discord
    fake.fail_next(POST, status, code=code, message="nope")
    async with running_adapter() as (adapter, _):
        with pytest.raises(DeliveryError) as caught:
            await adapter.send(reply(fake, fake.general_id, "hello"))
    assert caught.value.permanent
    assert fake.posted_messages(fake.general_id) == []


async def test_an_unknown_channel_is_a_permanent_delivery_error(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    async with running_adapter() as (adapter, _):
        with pytest.raises(DeliveryError) as caught:
            await adapter.send(reply(fake_discord, "123456789", "hello"))
    assert caught.value.permanent


async def test_an_empty_reply_is_refused_before_calling_discord(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    async with running_adapter() as (adapter, _):
        with pytest.raises(DeliveryError) as caught:
            await adapter.send(reply(fake_discord, fake_discord.general_id, "  \n "))
    assert caught.value.permanent
    assert fake_discord.calls(POST) == []


async def test_typing_goes_to_the_thread(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (adapter, _):
        assert (adapter.platform, adapter.typing_interval) == ("discord", 8.0)
        await adapter.typing(ConversationKey("discord", fake.general_id, fake.thread_id))
    assert [c.path for c in fake.calls("POST /channels/{channel_id}/typing")] == [
        f"/channels/{fake.thread_id}/typing"
    ]


# --- start-up, resume, shutdown -----------------------------------------------------------


async def test_the_intents_asked_for_include_message_content(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    async with running_adapter():
        pass
    intents = fake_discord.identify_payloads[0]["intents"]
    guilds, guild_messages, dm_messages, message_content = 1 << 0, 1 << 9, 1 << 12, 1 << 15
    assert intents == guilds | guild_messages | dm_messages | message_content


async def test_a_missing_message_content_intent_fails_start_up_clearly() -> None:
    async with FakeDiscord(message_content_enabled=False) as fake:
        adapter = DiscordAdapter(discord_settings(fake), RecordingCore(), guild_ready_timeout=0.05)
        with pytest.raises(DiscordStartError) as caught:
            await adapter.start()
    message = str(caught.value)
    assert '"Message Content Intent"' in message
    assert "Developer Portal > Applications > your app > Bot > Privileged Gateway Intents" in (
        message
    )
    assert "\n" not in message


async def test_a_rejected_token_fails_start_up_clearly() -> None:
    async with FakeDiscord() as fake:
        settings = discord_settings(fake, discord_bot_token="X" * 40)
        adapter = DiscordAdapter(settings, RecordingCore(), guild_ready_timeout=0.05)
        with pytest.raises(DiscordStartError, match="DISCORD_BOT_TOKEN was rejected"):
            await adapter.start()
    assert fake.identify_payloads == []


async def test_a_token_the_gateway_rejects_fails_start_up_clearly() -> None:
    async with FakeDiscord() as fake:
        fake.gateway_token = "revoked-meanwhile"
        adapter = DiscordAdapter(discord_settings(fake), RecordingCore(), guild_ready_timeout=0.05)
        with pytest.raises(DiscordStartError, match="DISCORD_BOT_TOKEN was rejected"):
            await adapter.start()
    assert len(fake.identify_payloads) == 1


async def test_an_unreachable_gateway_fails_start_up_naming_the_connection_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # discord.py waits a random 0-2 s before its first retry; the test need not.
    monkeypatch.setattr(discord.backoff.ExponentialBackoff, "delay", lambda self: 0.01)
    async with FakeDiscord() as fake:
        settings = discord_settings(fake, discord_gateway_url="ws://127.0.0.1:9/nowhere")
        adapter = DiscordAdapter(settings, RecordingCore(), guild_ready_timeout=0.05)
        with pytest.raises(
            DiscordStartError, match=r"could not connect to Discord: .*127\.0\.0\.1:9"
        ):
            await adapter.start()


async def test_a_gateway_that_never_answers_fails_start_up_after_the_timeout() -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with FakeDiscord() as fake:
            settings = discord_settings(fake, discord_gateway_url=f"ws://127.0.0.1:{port}/")
            adapter = DiscordAdapter(
                settings, RecordingCore(), guild_ready_timeout=0.05, start_timeout=0.3
            )
            with pytest.raises(DiscordStartError, match="did not finish connecting in time"):
                await adapter.start()
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_dropped_gateway_resumes_and_replays_what_was_missed(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (_, core):
        await fake.push_message(fake.general_id, fake.alice, "before", mentions_bot=True)
        await submitted(fake, core, 1)
        await fake.drop_connection()
        await fake.push_message(fake.general_id, fake.alice, "during", mentions_bot=True)
        await submitted(fake, core, 2)
        await fake.wait_for(lambda: fake.connected)
        await fake.push_message(fake.general_id, fake.alice, "after", mentions_bot=True)
        await submitted(fake, core, 3)
    assert [m.text for m in core.submitted] == ["before", "during", "after"]
    assert fake.connection_paths[-1] == RESUME_GATEWAY_PATH
    assert len(fake.identify_payloads) == 1 and len(fake.resume_payloads) == 1
    # The admin CLI would have shown the drop while it lasted, and nothing after.
    problems = [problem for platform, problem in core.intake_reports if platform == "discord"]
    assert problems[0] is None and problems[-1] is None
    assert "the gateway connection dropped; reconnecting" in problems


async def test_stop_leaves_no_task_behind(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    before = asyncio.all_tasks()
    async with running_adapter():
        pass
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []


async def test_a_token_revoked_while_running_declares_the_intake_lost(
    fake_discord: FakeDiscord, running_adapter: AdapterFactory
) -> None:
    fake = fake_discord
    async with running_adapter() as (adapter, _):
        fake.gateway_token = "revoked"
        await fake.drop_connection()
        reason = await asyncio.wait_for(adapter.lost.wait(), 15)
    assert "DISCORD_BOT_TOKEN" in reason
    assert fake.token not in reason
