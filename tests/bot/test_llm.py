"""The model client against the strict fake, through the real openai SDK."""

from __future__ import annotations

import pytest

from bot.llm import LLMClient
from bot.offline import FakeOpenAI

MESSAGES = [{"role": "system", "content": "You are a bot."}, {"role": "user", "content": "hi"}]


def client(fake: FakeOpenAI, api_key: str) -> LLMClient:
    return LLMClient(
        api_key=api_key, base_url=fake.base_url, model="gpt-4o-mini", timeout=10, max_retries=0
    )


async def test_the_request_carries_the_api_key_and_never_an_admin_key(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An organisation's admin key in the environment must never reach the model server.
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-secret")
    llm = client(fake_openai, "sk-chat")
    try:
        completion = await llm.complete(MESSAGES, [])
    finally:
        await llm.close()
    assert completion.content
    assert fake_openai.authorizations == ["Bearer sk-chat"]
