"""`stillhere run`: the core plus one adapter per enabled platform, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any, Protocol

from bot import heap
from bot.core_api import ChatCore
from bot.events import ReplySink
from bot.lost import LostIntake
from bot.runtime import Runtime
from bot.settings import Settings, StartupError

log = logging.getLogger(__name__)

ADAPTERS = {
    "telegram": ("adapters.telegram", "TelegramAdapter"),
    "discord": ("adapters.discord", "DiscordAdapter"),
}

OFFLINE_BANNER = """\
stillhere — console chat on the OFFLINE DEMO MODEL (rule-based, no AI).
It answers plainly, tells the time ("what time is it?" / "dame la hora") and runs a slow
demo tool ("wait 10 seconds"): write again while it runs to see the instant reply.
Commands: /status /cancel /reset /help. For a real model set OPENAI_API_KEY (and
OPENAI_BASE_URL for another OpenAI-compatible server) in .env. LOG_FILE=path keeps the logs.
"""

CONSOLE_BANNER = "stillhere — console chat. Commands: /status /cancel /reset /help."


class PlatformAdapter(ReplySink, Protocol):
    # Declared when the platform stops sending messages for good while the bot runs.
    lost: LostIntake

    async def start(self) -> None: ...

    async def stop_intake(self) -> None:
        """Stops taking messages in: once it returns, none reaches the core any more."""
        ...

    async def stop(self) -> None:
        """Stops intake if it still runs and releases the connections: no reply goes out
        any more."""
        ...


def build_adapter(name: str, settings: Settings, core: ChatCore) -> PlatformAdapter:
    module_name, class_name = ADAPTERS[name]
    factory: Any = getattr(importlib.import_module(module_name), class_name)
    adapter: PlatformAdapter = factory(settings, core)
    return adapter


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Runtime(settings) as runtime:
        engine = runtime.engine
        adapters: list[PlatformAdapter] = []
        console = None
        lost: str | None = None
        try:
            for name in settings.enabled_platforms():
                if name == "console":
                    from adapters.console import ConsoleAdapter

                    console = ConsoleAdapter(engine)
                    adapters.append(console)
                else:
                    adapters.append(build_adapter(name, settings, engine))
            await engine.prepare()
            for adapter in adapters:
                await adapter.start()
                log.info("%s adapter started", adapter.platform)
            if console is not None:
                print(OFFLINE_BANNER if runtime.offline else CONSOLE_BANNER, flush=True)
            await engine.start()
            heap.settle()
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
            waiters += [asyncio.ensure_future(adapter.lost.wait()) for adapter in adapters]
            if console is not None:
                waiters.append(asyncio.ensure_future(console.finished.wait()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            # A lost platform stops the bot like a signal does; `stillhere` then says why.
            lost = next((a.lost.reason for a in adapters if a.lost.is_set()), None)
            if (
                lost is None
                and console is not None
                and console.finished.is_set()
                and not stop.is_set()
            ):
                # Piped input: when it ends, finish what it started, then leave.
                await _drain(engine.wait_idle, stop)
        finally:
            # Intake first, then the engine (a reply in flight finishes and is recorded as
            # delivered, or a restart would post it again), then the connections.
            for adapter in reversed(adapters):
                await _stopping(adapter.platform, adapter.stop_intake())
            await engine.stop()
            for adapter in reversed(adapters):
                await _stopping(adapter.platform, adapter.stop())
    if lost is not None:
        raise StartupError(lost)
    log.info("stopped")


async def _stopping(platform: str, step: Coroutine[Any, Any, None]) -> None:
    """Runs one step of stopping an adapter; a failure is logged and the rest go on."""
    try:
        await step
    except Exception:
        log.exception("stopping the %s adapter failed", platform)


async def _drain(wait_idle: Any, stop: asyncio.Event) -> None:
    idle = asyncio.ensure_future(wait_idle(timeout=24 * 3600))
    halt = asyncio.ensure_future(stop.wait())
    await asyncio.wait([idle, halt], return_when=asyncio.FIRST_COMPLETED)
    for task in (idle, halt):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await idle
    sys.stdout.flush()
