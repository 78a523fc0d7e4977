"""Reads lines from stdin without blocking the loop, prints replies as they come.

The prompt stays usable while tools run: reading and replying are independent, so typing
"are you there?" during a long tool shows the instant reply at once.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
import itertools
import logging
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from typing import BinaryIO, TextIO

from bot.core_api import ChatCore
from bot.events import (
    CommandName,
    CommandRequest,
    ConversationKey,
    InboundMessage,
    OutgoingMessage,
)
from bot.lost import LostIntake
from bot.tasks import TaskSet

log = logging.getLogger(__name__)

COMMANDS = {f"/{c.value}": c for c in CommandName}

# How much of a line that could not be handled the error line quotes, so the user can
# tell which one it was without a 100 KB line flooding the terminal.
_QUOTED_CHARS = 60

ReadLine = Callable[[], Awaitable[bytes]]  # one line with its newline; b"" at end of input


class ConsoleAdapter:
    def __init__(
        self,
        core: ChatCore,
        *,
        stdin: asyncio.StreamReader | None = None,
        stdout: TextIO | None = None,
        user: str | None = None,
    ) -> None:
        self.core = core
        self._stdin = stdin
        self._stdout = stdout or sys.stdout
        self.user = user or getpass.getuser()
        self.key = ConversationKey("console", "console")
        self._ids = itertools.count(1)
        self._tasks = TaskSet("console")
        self.finished = asyncio.Event()  # stdin reached its end
        self.lost = LostIntake()  # a terminal is never lost: its end is `finished`

    @property
    def platform(self) -> str:
        return "console"

    @property
    def typing_interval(self) -> float:
        return 3600.0  # a terminal needs no typing indicator

    async def typing(self, conversation: ConversationKey) -> None:
        return None

    def _print(self, text: str) -> None:
        self._stdout.write(text + "\n")
        self._stdout.flush()

    async def send(self, message: OutgoingMessage) -> str | None:
        self._print(f"bot> {message.text}")
        return f"console-out-{message.outbox_id}"

    async def start(self) -> None:
        self.core.attach(self)
        if self._stdin is not None:
            readline: ReadLine = functools.partial(read_whole_line, self._stdin)
        else:
            readline = await _stdin_lines()
        self._tasks.spawn(self._read(readline), "stdin")

    async def stop_intake(self) -> None:
        await self._tasks.cancel_all()

    async def stop(self) -> None:
        # Printing needs nothing released: stopping intake is all there is.
        await self.stop_intake()

    async def _read(self, readline: ReadLine) -> None:
        # A message id that survives restarts: time-ordered, unique per line read.
        run = str(time.time_ns())
        try:
            while raw := await readline():
                text = raw.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                try:
                    await self._handle(text, f"{run}-{next(self._ids)}")
                except Exception as exc:
                    # One line's failure must not end the chat: the lines after it are
                    # still the user's, and a piped script would otherwise hang here.
                    log.exception("handling a console line failed")
                    self._print(_failure_notice(text, exc))
        finally:
            # However reading ends (end of input, a read error, shutdown), `run` waits on
            # this to finish the work in hand and exit; unset, it would wait forever.
            self.finished.set()

    async def _handle(self, text: str, message_id: str) -> None:
        command = COMMANDS.get(text.split()[0].lower())
        if command is not None:
            answer = await self.core.command(
                CommandRequest(
                    self.key, command, self.user, self.user, is_private=True, is_admin=True
                )
            )
            if answer is not None:
                self._print(f"bot> {answer}")
            return
        await self.core.submit(
            InboundMessage(
                conversation=self.key,
                user_id=self.user,
                display_name=self.user,
                text=text,
                message_id=message_id,
                is_private=True,
                addresses_bot=True,
                is_admin=True,
            )
        )


def _failure_notice(text: str, exc: Exception) -> str:
    quoted = text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + "…"
    return (
        f"bot> error: could not handle {quoted!r} ({type(exc).__name__}: {exc}); "
        "it may not have reached the bot, so send it again (details in the log)."
    )


async def read_whole_line(reader: asyncio.StreamReader) -> bytes:
    """The next line however long, with its newline; what is left at end of input (b"" if
    nothing).

    StreamReader.readline raises ValueError on a line over the reader's limit (64 KiB)
    and throws the line away; readuntil instead leaves it buffered and says how much of it
    is there, so it can be taken in pieces. The core cuts an over-long message itself.
    """
    pieces: list[bytes] = []
    while True:
        try:
            pieces.append(await reader.readuntil(b"\n"))
        except asyncio.IncompleteReadError as end:
            pieces.append(end.partial)
        except asyncio.LimitOverrunError as overrun:
            pieces.append(await reader.readexactly(overrun.consumed))
            continue
        return b"".join(pieces)


async def _stdin_lines() -> ReadLine:
    """How to read stdin's lines without blocking the loop."""
    fd = sys.stdin.fileno()
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd):
        # Pipes, sockets and terminals can be watched by the loop, so no thread waits on
        # them: a thread blocked reading a terminal could not be stopped at shutdown.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return functools.partial(read_whole_line, reader)
    # A regular file or a device such as /dev/null cannot be watched by epoll
    # (connect_read_pipe refuses the first and the second fails later), but reading one
    # never waits for input, so a thread's read always ends soon, shutdown included.
    return functools.partial(_read_in_thread, sys.stdin.buffer)


async def _read_in_thread(file: BinaryIO) -> bytes:
    return await asyncio.to_thread(file.readline)
