"""bot.logs: lines leave the logging thread, keep their order and masks, and none is lost."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import logs
from bot.settings import SettingsError


class GatedStream(io.StringIO):
    """A stream whose writes wait until the gate opens, as a full pipe would, noting the
    threads they were made in."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writers: set[int] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.get_ident())
        self.gate.wait(timeout=10)
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[GatedStream]:
    gated = GatedStream()
    yield gated
    gated.gate.set()
    logs.close()
    logging.getLogger().handlers.clear()


async def test_a_stalled_log_stream_does_not_stall_the_event_loop(stream: GatedStream) -> None:
    logs.configure("INFO", [], stream)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    for n in range(3):
        logging.getLogger("probe").info("line %d", n)
        await asyncio.sleep(0)
    ticked_while_stalled = ticks
    ticker.cancel()
    stream.gate.set()
    logs.close()
    assert ticked_while_stalled >= 3
    assert threading.get_ident() not in stream.writers
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["line 0", "line 1", "line 2"]


def test_close_writes_every_queued_line_masked_with_its_traceback() -> None:
    secret = "sk-test-SECRET-0123456789"
    out = io.StringIO()
    logs.configure("DEBUG", [secret], out)
    try:
        for n in range(200):
            logging.getLogger("probe").debug("line %d", n, extra={"session": n})
        try:
            raise ValueError(f"bad key {secret}")
        except ValueError:
            logging.getLogger("probe").exception("failed with %s", secret)
        logs.close()
        text = out.getvalue()
        logging.getLogger("probe").warning("after close")
    finally:
        logging.getLogger().handlers.clear()
    assert text.count("probe: line ") == 200
    assert "probe: line 199 session=199" in text
    assert "failed with ***" in text
    assert "ValueError: bad key ***" in text
    assert secret not in text
    assert "after close" in out.getvalue()  # the last words of a shutdown are kept too


def test_a_log_file_gets_its_folder_and_the_masked_lines(tmp_path: Path) -> None:
    file = tmp_path / "logs" / "bot.log"
    logs.configure("INFO", ["hunter2"], file=str(file))
    try:
        logging.getLogger("probe").info("the secret is %s", "hunter2")
        logs.close()
    finally:
        for handler in logging.getLogger().handlers:
            handler.close()
        logging.getLogger().handlers.clear()
    assert "the secret is ***" in file.read_text(encoding="utf-8")


def test_a_log_file_that_cannot_be_written_is_a_setting_error_naming_log_file(
    tmp_path: Path,
) -> None:
    """The README: a wrong setting stops the start with one line naming it."""
    (tmp_path / "a-file").write_text("")
    wanted = tmp_path / "a-file" / "bot.log"  # its "folder" is a file
    with pytest.raises(SettingsError) as caught:
        logs.configure("INFO", [], file=str(wanted))
    message = str(caught.value)
    assert message.startswith(f"setting LOG_FILE: cannot write to {wanted}: ")
    assert "\n" not in message
