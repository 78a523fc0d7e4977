"""bench.telegram_latency at --size tiny: every bot answers every message through the real
python-telegram-bot stack, and stillhere stored every one of them."""

from __future__ import annotations

import json
from pathlib import Path

from bench import telegram_latency


def test_tiny_run_answers_every_message_on_every_bot(tmp_path: Path) -> None:
    assert telegram_latency.main(["--size", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "telegram_latency.json").read_text())
    trials = {t["variant"]: t for t in result["trials"]}
    assert set(trials) == {"stillhere", "echo", "echo-stored", "echo-aiohttp"}
    for trial in trials.values():
        assert trial["answered"] == trial["messages"] > 0
        assert trial["burst"]["count"] > 0 and trial["paced"]["count"] > 0
        assert trial["extra_replies"] == 0
    ours = trials["stillhere"]
    setup_messages = ours["chats"]
    assert ours["setup_lost"] == 0
    assert ours["stored"] == {
        "user_messages": ours["messages"] + setup_messages,
        "deferred": ours["messages"],
        "instant_replies": ours["messages"],
    }
    # The echo bot that stores: every message stored before its reply, each delivery noted.
    stored_echo = trials["echo-stored"]
    assert stored_echo["stored"] == {
        "user_messages": stored_echo["messages"],
        "delivered": stored_echo["messages"],
    }
    ratios = result["summary"]["2"]["ratios"]["stillhere/echo"]
    assert ratios["burst_p50_ms"] > 0
