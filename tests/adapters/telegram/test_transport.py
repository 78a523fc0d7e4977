"""Malformed getUpdates batches must not wedge polling."""

from __future__ import annotations

import json

import pytest

from adapters.telegram.transport import UpdateGuardRequest, sanitize_updates

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
    assert UpdateGuardRequest.parse_json_payload(raw) == {"ok": True, "result": [{"update_id": 9}]}
