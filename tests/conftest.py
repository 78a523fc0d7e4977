"""Shared fixtures: the strict fake OpenAI, databases (SQLite always, PostgreSQL when
configured), and a running core with the in-memory adapter."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.memory import MemoryAdapter
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from bot.settings import Settings

POSTGRES_URL_VARIABLE = "STILLHERE_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def _collect_what_a_bot_froze() -> Iterator[None]:
    """`stillhere run` freezes the heap once started (bot.heap); in a test process what
    was alive then would never be collected, however soon it became garbage."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _reset_postgres(url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every engine test runs on both databases; PostgreSQL skips (loudly) when no server
    is configured. CI sets STILLHERE_TEST_POSTGRES_URL to a server it starts itself."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/stillhere.db"
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"PostgreSQL not configured: set {POSTGRES_URL_VARIABLE} to run this test")
    await _reset_postgres(url)
    return url


def core_settings(database_url: str, fake: FakeOpenAI, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "openai_api_key": "test-key",
        "openai_base_url": fake.base_url,
        "openai_max_retries": 0,
        "tool_modules": ["tests.support.slow_tools"],
        # At once, so a test's tools are said to be running however quick they are; the
        # delay has tests of its own.
        "tool_notice_delay_seconds": 0,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


CoreFactory = Callable[..., AbstractAsyncContextManager[tuple[Runtime, MemoryAdapter]]]


@pytest.fixture
def make_core(database_url: str, fake_openai: FakeOpenAI) -> CoreFactory:
    """`async with make_core(**setting_overrides) as (runtime, chat):` a started core."""

    def factory(**overrides: Any) -> AbstractAsyncContextManager[tuple[Runtime, MemoryAdapter]]:
        return started_core(core_settings(database_url, fake_openai, **overrides))

    return factory


@asynccontextmanager
async def started_core(settings: Settings) -> AsyncIterator[tuple[Runtime, MemoryAdapter]]:
    """A running core with the in-memory adapter attached; stopped (not drained) on exit,
    as a deploy would stop it."""
    async with Runtime(settings) as runtime:
        chat = MemoryAdapter(runtime.engine)
        await chat.start()
        await runtime.engine.start()
        yield runtime, chat
        # The history is valid by construction: build_request repairs a broken one before
        # sending, so without this check a stored-history bug would pass every test.
        assert runtime.engine.prompt_stats.violations == []
