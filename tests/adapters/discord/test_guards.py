"""Guardrails through the real discord.py stack: roles, guilds, blocked users."""

from __future__ import annotations

from pathlib import Path

from bot.offline import FakeOpenAI
from tests.adapters.discord.test_end_to_end import POST, running_bot
from tests.fakes.discord_api import FakeDiscord


def posts(fake: FakeDiscord, channel_id: str) -> int:
    return sum(
        1
        for call in fake.rest_calls
        if call.route == POST and call.path.endswith(f"/channels/{channel_id}/messages")
    )


async def test_only_allowed_roles_talk_in_servers_but_dms_stay_open(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    async with running_bot(tmp_path, fake_openai, fake, allowed_roles=[fake.mod_role_id]):
        await fake.push_message(fake.general_id, fake.bob, "hi", mentions_bot=True)
        mod = await fake.push_message(fake.general_id, fake.alice, "hi", mentions_bot=True)
        await fake.wait_for(lambda: len(fake.posted_messages(fake.general_id)) >= 1, timeout=10)
        dm = fake.dm_channel(fake.bob)
        await fake.push_message(dm, fake.bob, "hello in private", guild=False)
        await fake.wait_for(lambda: len(fake.posted_messages(dm)) >= 1, timeout=10)
    [answer] = fake.posted_messages(fake.general_id)
    assert answer["message_reference"]["message_id"] == mod["id"]
    assert len(fake_openai.chat_requests) == 2


async def test_blocked_user_and_foreign_guild_get_silence_in_servers(
    tmp_path: Path, fake_openai: FakeOpenAI, fake_discord: FakeDiscord
) -> None:
    fake = fake_discord
    async with running_bot(
        tmp_path, fake_openai, fake, blocked_users=[fake.bob.id], allowed_guilds=["42"]
    ):
        await fake.push_message(fake.general_id, fake.bob, "hi", mentions_bot=True)
        await fake.push_message(fake.general_id, fake.alice, "hi", mentions_bot=True)
        dm = fake.dm_channel(fake.bob)
        await fake.push_message(dm, fake.bob, "let me in", guild=False)
        await fake.wait_for(lambda: len(fake.posted_messages(dm)) >= 1, timeout=10)
    assert fake.posted_messages(fake.general_id) == []  # bob blocked, alice's guild not allowed
    [notice] = fake.posted_messages(dm)
    assert "sorry" in notice["content"].lower()
    assert fake_openai.chat_requests == []
