"""The fake Bot API itself: strict where Telegram is strict, so adapter tests mean something."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.telegram_api import FakeTelegram, TgUser

ANA = TgUser(1001, "Ana")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, tg: FakeTelegram, method: str, **data: Any
) -> tuple[int, dict[str, Any]]:
    url = f"{tg.base_url}{tg.token}/{method}"
    async with http.post(url, data={k: str(v) for k, v in data.items()}) as response:
        return response.status, await response.json()


async def test_unknown_method_and_bad_token_fail_loudly(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    assert await call(http, tg, "sendPigeon") == (
        404,
        {"ok": False, "error_code": 404, "description": "Not Found"},
    )
    async with http.post(f"{tg.base_url}1:wrong/getMe") as response:
        assert response.status == 401


async def test_long_poll_returns_as_soon_as_an_update_arrives(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    poll = asyncio.create_task(call(http, tg, "getUpdates", timeout=30))
    await tg.wait_for(lambda: bool(tg.calls_to("getUpdates")))
    tg.push_text(ANA.id, ANA, "hi")
    status, body = await asyncio.wait_for(poll, 5)
    assert status == 200
    assert [u["message"]["text"] for u in body["result"]] == ["hi"]


async def test_offset_confirms_earlier_updates(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    tg.push_text(ANA.id, ANA, "one")
    tg.push_text(ANA.id, ANA, "two")
    _, body = await call(http, tg, "getUpdates", timeout=0)
    last = body["result"][-1]["update_id"]
    _, body = await call(http, tg, "getUpdates", timeout=0, offset=last)
    assert [u["message"]["text"] for u in body["result"]] == ["two"]
    _, body = await call(http, tg, "getUpdates", timeout=0, offset=last + 1)
    assert body["result"] == []


@pytest.mark.parametrize(
    ("data", "description"),
    [
        ({"text": "x" * 4097}, "Bad Request: message is too long"),
        ({"text": "   "}, "Bad Request: message text is empty"),
        ({"text": "<b>x</b>" * 600, "parse_mode": "HTML"}, None),  # 2400 visible: fine
        ({"text": "<b>open", "parse_mode": "HTML"}, "Bad Request: can't parse entities: "),
        ({"text": "a", "message_thread_id": 99}, "Bad Request: message thread not found"),
    ],
)
async def test_send_message_validation(
    tg: FakeTelegram, http: aiohttp.ClientSession, data: dict[str, Any], description: str | None
) -> None:
    tg.push_text(ANA.id, ANA, "hi")  # makes the chat known
    status, body = await call(http, tg, "sendMessage", chat_id=ANA.id, **data)
    if description is None:
        assert status == 200 and body["ok"]
    else:
        assert status == 400
        assert body["description"].startswith(description)


async def test_numeric_text_stays_a_string(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    status, _ = await call(http, tg, "sendMessage", chat_id=ANA.id, text="123")
    assert status == 200
    assert [m.text for m in tg.sent_messages(ANA.id)] == ["123"]


async def test_unknown_chat_is_not_found(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, tg, "sendMessage", chat_id=42, text="hello")
    assert (status, body["description"]) == (400, "Bad Request: chat not found")


async def test_injected_429_carries_retry_after_then_works(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 3", retry_after=3)
    status, body = await call(http, tg, "sendMessage", chat_id=ANA.id, text="a")
    assert status == 429 and body["parameters"] == {"retry_after": 3}
    status, _ = await call(http, tg, "sendMessage", chat_id=ANA.id, text="a")
    assert status == 200
    assert len(tg.sent_messages(ANA.id)) == 1


async def test_a_failure_for_one_chat_leaves_other_chats_alone(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    ben = TgUser(1002, "Ben")
    tg.push_text(ANA.id, ANA, "hi")
    tg.push_text(ben.id, ben, "hi")
    tg.fail_next("sendMessage", 429, "Too Many Requests: retry after 2", 2, chat_id=ANA.id)
    assert (await call(http, tg, "sendMessage", chat_id=ben.id, text="b"))[0] == 200
    assert (await call(http, tg, "sendMessage", chat_id=ANA.id, text="a"))[0] == 429
    assert (await call(http, tg, "sendMessage", chat_id=ANA.id, text="a"))[0] == 200
    calls = tg.calls_to("sendMessage")
    assert [(c.params["chat_id"], c.status) for c in calls] == [
        (ben.id, 200),
        (ANA.id, 429),
        (ANA.id, 200),
    ]
    assert calls[0].at <= calls[1].at <= calls[2].at


async def test_commands_are_kept_per_scope(tg: FakeTelegram, http: aiohttp.ClientSession) -> None:
    commands = '[{"command": "status", "description": "What I am doing"}]'
    group = '{"type": "all_group_chats"}'
    assert (await call(http, tg, "setMyCommands", commands=commands, scope=group))[0] == 200
    _, body = await call(http, tg, "getMyCommands", scope=group)
    assert body["result"] == [{"command": "status", "description": "What I am doing"}]
    _, body = await call(http, tg, "getMyCommands")
    assert body["result"] == []
    await call(http, tg, "deleteMyCommands", scope=group)
    assert tg.commands({"type": "all_group_chats"}) == []
    status, body = await call(http, tg, "setMyCommands", commands='[{"command": "Bad Name!"}]')
    assert (status, body["description"]) == (400, "Bad Request: BOT_COMMAND_INVALID")


async def test_edit_rejects_an_unchanged_text(
    tg: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    tg.push_text(ANA.id, ANA, "hi")
    _, body = await call(http, tg, "sendMessage", chat_id=ANA.id, text="v1")
    message_id = body["result"]["message_id"]
    status, _ = await call(
        http, tg, "editMessageText", chat_id=ANA.id, message_id=message_id, text="v2"
    )
    assert status == 200
    status, body = await call(
        http, tg, "editMessageText", chat_id=ANA.id, message_id=message_id, text="v2"
    )
    assert status == 400
    assert body["description"].startswith("Bad Request: message is not modified")
    assert [m.text for m in tg.sent_messages(ANA.id)] == ["v2"]
