"""Malformed getUpdates batches must not wedge polling; one chat's 429 must not pause all."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from telegram.error import RetryAfter

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


def test_the_request_parses_and_sanitizes_raw_bytes() -> None:
    raw = json.dumps({"ok": True, "result": [{"update_id": 9, "message": 5}]}).encode()
    parsed = UpdateGuardRequest().parse_json_payload(raw)
    assert parsed == {"ok": True, "result": [{"update_id": 9}]}


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
