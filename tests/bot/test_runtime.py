"""Building the core from settings: which model server the bot talks to."""

from __future__ import annotations

from bot.llm import ChatModel
from bot.offline import FakeOpenAI
from bot.runtime import build_llm
from bot.settings import Settings

MESSAGES = [{"role": "user", "content": "hello there"}]


async def answer(llm: ChatModel) -> str | None:
    try:
        completion = await llm.complete(MESSAGES, [])
    finally:
        await llm.close()
    return completion.content


async def test_a_base_url_without_a_key_reaches_that_server(fake_openai: FakeOpenAI) -> None:
    """A local server (Ollama, the fake-openai command) needs no key: the SDK still wants
    one, so a placeholder goes with the request."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, openai_base_url=fake_openai.base_url, openai_max_retries=0
    )
    assert await answer(build_llm(settings))
    assert len(fake_openai.requests) == 1
    assert fake_openai.authorizations[0] is not None


async def test_a_base_url_with_a_key_sends_the_key(fake_openai: FakeOpenAI) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        openai_base_url=fake_openai.base_url,
        openai_api_key="sk-chat",
        openai_max_retries=0,
    )
    assert await answer(build_llm(settings))
    assert fake_openai.authorizations == ["Bearer sk-chat"]
