"""Malformed getUpdates batches must not wedge polling; one chat's 429 must not pause all."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from telegram.error import RetryAfter
from telegram.request import RequestData
from telegram.request._requestparameter import RequestParameter

from adapters.telegram.http_client import AiohttpRequest
from adapters.telegram.transport import (
    ApiResult,
    ChatActionExemptRateLimiter,
    UpdateGuardRequest,
    sanitize_updates,
)

GOOD = {
    "update_id": 3,
    "message": {
        "message_id": 1,
        "date": 0,
        "chat": {"id": 1, "type": "private"},
        "from": {"id": 1, "is_bot": False, "first_name": "A"},
        "text": "hi",
    },
}


def test_malformed_update_becomes_an_empty_update_with_its_id() -> None:
    bad = {"update_id": 2, "message": {"message_id": "x", "chat": "nope"}}
    cleaned = sanitize_updates({"ok": True, "result": [bad, GOOD]})
    assert cleaned["result"] == [{"update_id": 2}, GOOD]


def test_entries_without_an_update_id_are_dropped() -> None:
    cleaned = sanitize_updates({"ok": True, "result": ["garbage", {"message": {}}, GOOD]})
    assert cleaned["result"] == [GOOD]


@pytest.mark.parametrize(
    "payload",
    [
        {"ok": False, "error_code": 409, "description": "Conflict"},
        {"ok": True, "result": True},
    ],
)
def test_other_payloads_pass_through(payload: dict[str, object]) -> None:
    assert sanitize_updates(payload) == payload


async def test_a_batch_goes_as_sent_and_is_sanitized_when_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The library parses a batch itself; one it could not parse it asks for again from
    the same offset, and then the updates it cannot parse come as empty ones."""
    bad = {"update_id": 2, "message": 5}
    body = json.dumps({"ok": True, "result": [bad, GOOD]}).encode()

    async def answered(self: object, *args: object, **kwargs: object) -> tuple[int, bytes]:
        return 200, body

    monkeypatch.setattr(AiohttpRequest, "do_request", answered)
    request = UpdateGuardRequest()

    def poll(offset: int) -> Any:
        data = RequestData([RequestParameter.from_input("offset", offset)])
        return request.post("http://127.0.0.1:9/bot/getUpdates", data)

    assert await poll(0) == [bad, GOOD]
    assert await poll(0) == [{"update_id": 2}, GOOD]
    # Past it: the next batch goes as sent again.
    assert await poll(4) == [bad, GOOD]


async def test_a_429_goes_back_to_its_caller_and_holds_up_no_other_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = ChatActionExemptRateLimiter()
    sent: list[int] = []

    async def send(chat_id: int) -> ApiResult:
        if chat_id == 1:
            raise RetryAfter(30)
        sent.append(chat_id)
        return True

    def request(chat_id: int) -> Any:
        data = {"chat_id": chat_id, "text": "hi"}
        return limiter.process_request(send, (chat_id,), {}, "sendMessage", data, None)

    with pytest.raises(RetryAfter):
        await asyncio.wait_for(request(1), 5)  # AIORateLimiter itself would sleep 30 s
    assert await asyncio.wait_for(request(2), 5) is True
    assert sent == [2]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
