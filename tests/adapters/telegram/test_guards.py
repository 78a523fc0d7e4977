"""Guardrails through the real Telegram stack: strangers, floods, secrets."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from tests.adapters.telegram.test_end_to_end import running_bot
from tests.fakes.telegram_api import FakeTelegram, TgUser
from tests.support.logged import logged

ANA = TgUser(1001, "Ana")
LOCALES = Path(__file__).resolve().parents[3] / "bot" / "interim" / "locales"


def phrases(key: str) -> list[str]:
    texts: list[str] = json.loads((LOCALES / "en.json").read_text())["phrases"][key]
    return texts


EVE = TgUser(1666, "Eve")
GROUP = -100900


@asynccontextmanager
async def bot(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram, **overrides: Any
) -> AsyncIterator[Runtime]:
    async with running_bot(
        tmp_path,
        fake_openai,
        tg,
        openai_api_key="sk-telegram-test-SECRET-987654",
        telegram_group_mode="all",
        **overrides,
    ) as runtime:
        yield runtime


async def test_blocked_user_private_notice_group_silence(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    async with bot(tmp_path, fake_openai, tg, blocked_users=[str(EVE.id)]):
        tg.push_text(EVE.id, EVE, "hi", chat_type="private")
        tg.push_text(GROUP, EVE, "hi all", chat_type="supergroup")
        tg.push_text(GROUP, ANA, "hi bot", chat_type="supergroup")
        await tg.wait_for(lambda: len(tg.sent_messages(GROUP)) >= 1, timeout=10)
        await tg.wait_for(lambda: len(tg.sent_messages(EVE.id)) >= 1, timeout=10)
    [notice] = tg.sent_messages(EVE.id)
    assert notice.text in phrases("denied")
    [answer] = tg.sent_messages(GROUP)
    assert "hi bot" in answer.text
    assert len([r for r in fake_openai.requests if "messages" in r]) == 1


async def test_flood_gets_a_rate_limit_notice_and_no_llm_call(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    async with bot(tmp_path, fake_openai, tg, rate_limit_user_per_minute=2) as runtime:
        for i in range(3):
            tg.push_text(ANA.id, ANA, f"message {i}")

        def notice_and_answer() -> bool:
            texts = [m.text for m in tg.sent_messages(ANA.id)]
            limited = [t for t in texts if re.search(r"\d+ (min|s)\b", t)]
            return len(limited) == 1 and len(texts) >= 2

        await tg.wait_for(notice_and_answer, timeout=10)
        await runtime.engine.wait_idle(timeout=10)
    # Messages 0 and 1 reached the model (in one turn or two); message 2 never did.
    said = [
        m["content"]
        for r in fake_openai.requests
        if "messages" in r
        for m in r["messages"]
        if m["role"] == "user"
    ]
    assert {"message 0", "message 1"} <= set(said)
    assert "message 2" not in said


async def test_tokens_and_keys_never_reach_the_logs(
    tmp_path: Path, fake_openai: FakeOpenAI, tg: FakeTelegram
) -> None:
    secrets = [tg.token, "sk-telegram-test-SECRET-987654"]
    with logged(secrets) as stream:
        fake_openai.script_error(500)
        async with bot(tmp_path, fake_openai, tg):
            tg.push_text(ANA.id, ANA, "what time is it")
            await tg.wait_for(lambda: len(tg.sent_messages(ANA.id)) >= 1, timeout=10)
            tg.push_text(ANA.id, ANA, "and now?")
            await tg.wait_for(lambda: len(tg.sent_messages(ANA.id)) >= 2, timeout=10)
            logging.getLogger("probe").warning("token %s", tg.token)
    captured = stream.getvalue()
    assert "token ***" in captured  # the mask works, so the checks below can fail
    assert "reply delivered" in captured
    for secret in secrets:
        assert secret not in captured
