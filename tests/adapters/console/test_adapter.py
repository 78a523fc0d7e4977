"""The console adapter in process, on the real core: what one line's failure leaves behind."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest

from adapters.console import ConsoleAdapter
from adapters.console.adapter import read_whole_line
from bot.core_api import ChatCore, SubmitOutcome
from bot.events import CommandRequest, InboundMessage, ReplySink
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from tests.conftest import core_settings


class _FailsOn:
    """The real core, except that handling `line` raises, as a bug in the core would."""

    def __init__(self, core: ChatCore, line: str) -> None:
        self._core = core
        self._line = line

    def attach(self, sink: ReplySink) -> None:
        self._core.attach(sink)

    async def submit(self, message: InboundMessage) -> SubmitOutcome:
        if message.text == self._line:
            raise RuntimeError("the core broke")
        return await self._core.submit(message)

    async def command(self, request: CommandRequest) -> str:
        if f"/{request.name.value}" == self._line:
            raise RuntimeError("the core broke")
        return await self._core.command(request)


@pytest.mark.parametrize("failing", ["boom", "/status"])
async def test_a_line_whose_handling_raises_leaves_the_next_lines_answered(
    tmp_path: Path, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture, failing: str
) -> None:
    settings = core_settings(f"sqlite+aiosqlite:///{tmp_path}/bot.db", fake_openai)
    stdin = asyncio.StreamReader()
    stdout = io.StringIO()
    async with Runtime(settings) as runtime:
        console = ConsoleAdapter(
            _FailsOn(runtime.engine, failing), stdin=stdin, stdout=stdout, user="tester"
        )
        await console.start()
        await runtime.engine.start()
        try:
            stdin.feed_data(f"{failing}\nstill there?\n".encode())
            stdin.feed_eof()
            # End of input must end the run even after a failure (it used to hang here).
            await asyncio.wait_for(console.finished.wait(), timeout=30)
            await runtime.engine.wait_idle(timeout=30)
        finally:
            await console.stop()
    replies = [line for line in stdout.getvalue().splitlines() if line.startswith("bot> ")]
    assert replies[0] == (
        f"bot> error: could not handle {failing!r} (RuntimeError: the core broke); "
        "it may not have reached the bot, so send it again (details in the log)."
    )
    assert replies[-1] == 'bot> Got it: "still there?".'
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert [r.getMessage() for r in failures] == ["handling a console line failed"]


async def test_lines_over_the_reader_limit_are_read_whole() -> None:
    # A limit of 16 stands for the 64 KiB default. The first line's newline is in the
    # buffer but past the limit; the last line has none before the end of input.
    reader = asyncio.StreamReader(limit=16)
    reader.feed_data(b"x" * 40 + b"\nshort\n" + b"y" * 40)
    reader.feed_eof()
    lines = [await read_whole_line(reader) for _ in range(4)]
    assert lines == [b"x" * 40 + b"\n", b"short\n", b"y" * 40, b""]
