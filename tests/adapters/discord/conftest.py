"""Fixtures for the Discord tests: the fake Discord, a recording core, and a started adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.discord import DiscordAdapter
from bot.core_api import SubmitOutcome
from bot.events import CommandName, CommandRequest, InboundMessage, ReplySink
from bot.settings import Settings
from tests.fakes.discord_api import FakeDiscord


@dataclass
class RecordingCore:
    """A ChatCore double: records what the adapter hands over and answers commands."""

    submitted: list[InboundMessage] = field(default_factory=list)
    commands: list[CommandRequest] = field(default_factory=list)
    sinks: list[ReplySink] = field(default_factory=list)
    intake_reports: list[tuple[str, str | None]] = field(default_factory=list)

    def attach(self, sink: ReplySink) -> None:
        self.sinks.append(sink)

    def report_intake(self, platform: str, problem: str | None) -> None:
        self.intake_reports.append((platform, problem))

    async def submit(self, message: InboundMessage) -> SubmitOutcome:
        self.submitted.append(message)
        return SubmitOutcome.ACCEPTED

    async def command(self, request: CommandRequest) -> str:
        self.commands.append(request)
        return f"{request.name} answered"


@dataclass
class HeldCommandsCore(RecordingCore):
    """A RecordingCore whose `held` commands answer only once `release` is set, as a /cancel
    waiting for its session's actor does."""

    held: frozenset[CommandName] = frozenset({CommandName.STATUS})
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: list[CommandName] = field(default_factory=list)

    async def command(self, request: CommandRequest) -> str:
        answer = await super().command(request)
        if request.name in self.held:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(request.name)
                raise
        return answer


def discord_platform(fake: FakeDiscord) -> dict[str, Any]:
    """The settings that point the bot at the fake."""
    return {
        "discord_bot_token": fake.token,
        "discord_api_base_url": fake.api_base_url,
        "discord_gateway_url": fake.gateway_url,
    }


def discord_settings(fake: FakeDiscord, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"_env_file": None, **discord_platform(fake)}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


AdapterFactory = Callable[..., AbstractAsyncContextManager[tuple[DiscordAdapter, RecordingCore]]]


@pytest.fixture
def running_adapter(fake_discord: FakeDiscord) -> AdapterFactory:
    """`async with running_adapter(**setting_overrides) as (adapter, core):` a connected
    adapter on the recording core (or on `core=` when given)."""

    @asynccontextmanager
    async def factory(
        *, core: RecordingCore | None = None, **overrides: Any
    ) -> AsyncIterator[tuple[DiscordAdapter, RecordingCore]]:
        core = RecordingCore() if core is None else core
        adapter = DiscordAdapter(
            discord_settings(fake_discord, **overrides), core, guild_ready_timeout=0.05
        )
        await adapter.start()
        try:
            yield adapter, core
        finally:
            await adapter.stop()

    return factory
