"""The fake Discord itself: it must fail loudly where real Discord would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord_api import FakeDiscord


@pytest.fixture
async def http(fake_discord: FakeDiscord) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bot {fake_discord.token}"}
    async with aiohttp.ClientSession(
        base_url=fake_discord.api_base_url + "/", headers=headers
    ) as s:
        yield s


async def post_message(
    http: aiohttp.ClientSession, channel_id: str, body: dict[str, Any]
) -> tuple[int, str, Any]:
    async with http.post(f"channels/{channel_id}/messages", json=body) as response:
        return response.status, response.headers["Content-Type"], await response.json()


async def test_unknown_routes_answer_404_in_discords_shape(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    async with http.get("guilds/1/members") as response:
        assert response.status == 404
        assert await response.json() == {"message": "404: Not Found", "code": 0}


async def test_json_is_served_as_exactly_application_json(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    async with http.get("users/@me") as response:
        assert response.headers["Content-Type"] == "application/json"
        assert (await response.json())["id"] == fake_discord.bot.id


async def test_a_wrong_token_is_unauthorized(fake_discord: FakeDiscord) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            fake_discord.api_base_url + "/users/@me", headers={"Authorization": "Bot nope"}
        ) as response,
    ):
        assert response.status == 401


async def test_empty_and_overlong_messages_are_refused(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    channel = fake_discord.general_id
    status, _, body = await post_message(http, channel, {"content": ""})
    assert (status, body["code"], body["message"]) == (400, 50006, "Cannot send an empty message")
    status, _, body = await post_message(http, channel, {"content": "x" * 2001})
    assert (status, body["code"]) == (400, 50035)
    assert "content" in body["errors"]
    status, _, _ = await post_message(http, channel, {"content": "x" * 2000})
    assert status == 200
    assert len(fake_discord.posted_messages(channel)) == 1


async def test_an_enforced_nonce_returns_the_first_message(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    channel = fake_discord.random_id
    body = {"content": "hi", "nonce": "7", "enforce_nonce": True}
    _, _, first = await post_message(http, channel, body)
    _, _, again = await post_message(http, channel, body)
    assert first["id"] == again["id"]
    assert len(fake_discord.posted_messages(channel)) == 1


async def test_a_429_carries_via_and_retry_after(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake_discord.fail_next("POST /channels/{channel_id}/messages", 429, retry_after=0.25)
    async with http.post(
        f"channels/{fake_discord.general_id}/messages", json={"content": "a"}
    ) as r:
        assert r.status == 429
        assert r.headers["Via"]
        assert (await r.json())["retry_after"] == 0.25
    status, _, _ = await post_message(http, fake_discord.general_id, {"content": "a"})
    assert status == 200


async def interaction_call(
    http: aiohttp.ClientSession, path: str, body: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(path, json=body) as response:
        return response.status, await response.json()


async def status_interaction(
    fake: FakeDiscord, http: aiohttp.ClientSession
) -> tuple[dict[str, Any], str]:
    """Syncs /status, opens Alice's /status interaction and returns it with its callback path."""
    async with http.put(
        f"applications/{fake.application_id}/commands", json=[{"name": "status"}]
    ) as synced:
        assert synced.status == 200
    interaction = fake.new_interaction("status", fake.general_id, fake.alice)
    return interaction, f"interactions/{interaction['id']}/{interaction['token']}/callback"


async def test_an_interaction_is_acknowledged_once_before_any_followup(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake = fake_discord
    interaction, callback = await status_interaction(fake, http)
    followup = f"webhooks/{fake.application_id}/{interaction['token']}?wait=true"
    deferred = {"type": 5, "data": {"flags": 64}}

    status, body = await interaction_call(http, followup, {"content": "too early"})
    assert (status, body["code"]) == (404, 10015)
    status, _ = await interaction_call(http, callback, deferred)
    assert status == 200
    status, body = await interaction_call(http, callback, deferred)
    assert (status, body["code"]) == (400, 40060)
    status, body = await interaction_call(http, followup, {"content": "the answer", "flags": 64})
    assert (status, body["content"]) == (200, "the answer")
    assert [c.get("type", "followup") for c in fake.interaction_callbacks] == [5, "followup"]


async def test_an_interaction_not_acknowledged_in_time_is_unknown(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake = fake_discord
    fake.interaction_ack_seconds = 0.0  # already past, without the test waiting 3 s
    _, callback = await status_interaction(fake, http)
    status, body = await interaction_call(http, callback, {"type": 4, "data": {"content": "late"}})
    assert (status, body["code"], body["message"]) == (404, 10062, "Unknown interaction")
    assert fake.interaction_callbacks == []


async def test_a_held_route_answers_only_once_released(
    fake_discord: FakeDiscord, http: aiohttp.ClientSession
) -> None:
    fake = fake_discord
    release = fake.hold(f"POST /channels/{fake.general_id}/messages")
    held = asyncio.create_task(post_message(http, fake.general_id, {"content": "held"}))
    await fake.wait_for(lambda: fake.held_calls == [f"POST /channels/{fake.general_id}/messages"])
    status, _, _ = await post_message(http, fake.random_id, {"content": "not held"})
    assert status == 200
    assert not held.done() and fake.posted_messages(fake.general_id) == []
    release.set()
    status, _, body = await held
    assert (status, body["content"]) == (200, "held")
