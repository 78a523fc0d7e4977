"""Capturing what the bot logs, through `bot.logs` itself (its masks and writer thread)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from bot import logs


@contextmanager
def logged(secrets: Iterable[str] = (), level: str = "DEBUG") -> Iterator[io.StringIO]:
    """The log's text, complete once the block is left."""
    stream = io.StringIO()
    logs.configure(level, secrets, stream)
    try:
        yield stream
    finally:
        logs.close()
        logging.getLogger().handlers.clear()
