"""Reads lines from stdin without blocking the loop, prints replies as they come.

The prompt stays usable while tools run: reading and replying are independent, so typing
"are you there?" during a long tool shows the instant reply at once.
"""

from __future__ import annotations

import asyncio
import getpass
import itertools
import logging
import sys
import time
from typing import TextIO

from bot.core_api import ChatCore
from bot.events import (
    CommandName,
    CommandRequest,
    ConversationKey,
    InboundMessage,
    OutgoingMessage,
)
from bot.tasks import TaskSet

log = logging.getLogger(__name__)

COMMANDS = {f"/{c.value}": c for c in CommandName}


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
        if self._stdin is None:
            self._stdin = await _stdin_reader()
        self._tasks.spawn(self._read(self._stdin), "stdin")

    async def stop(self) -> None:
        await self._tasks.cancel_all()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        # A message id that survives restarts: time-ordered, unique per line read.
        run = str(time.time_ns())
        while True:
            raw = await reader.readline()
            if not raw:
                self.finished.set()
                return
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            command = COMMANDS.get(text.split()[0].lower())
            if command is not None:
                answer = await self.core.command(
                    CommandRequest(
                        self.key, command, self.user, self.user, is_private=True, is_admin=True
                    )
                )
                self._print(f"bot> {answer}")
                continue
            await self.core.submit(
                InboundMessage(
                    conversation=self.key,
                    user_id=self.user,
                    display_name=self.user,
                    text=text,
                    message_id=f"{run}-{next(self._ids)}",
                    is_private=True,
                    addresses_bot=True,
                    is_admin=True,
                )
            )


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader
