"""One structured line per event, with secrets masked wherever they appear.

Lines are written by a thread of their own: a write to a full pipe or a slow disk would
otherwise stall the event loop that logged it, and with it every chat. The loop only
queues the record; `close` writes what is still queued, and runs at exit in any case.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from collections.abc import Iterable
from pathlib import Path

from bot.settings import SettingsError

CONTEXT_FIELDS = ("session", "platform", "chat", "turn", "tool", "outbox", "kind")
MASK = "***"
NOISY_LOGGERS = (
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "telegram",
    "discord",
    "aiosqlite",
    "openai",
    "aiohttp.access",
    # Lines about its own plugins and dialect on every command; alembic/env.py logs the
    # migrations it applies itself.
    "alembic",
)


class SecretMask(logging.Filter):
    """Replaces every configured secret in the final text, arguments included."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 6]

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.mask(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.mask(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


class LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        )
        if not context:
            return line
        head, _, tail = line.partition("\n")
        return f"{head} {context}" + (f"\n{tail}" if tail else "")


_writer: logging.handlers.QueueListener | None = None


def configure(
    level: str, secrets: Iterable[str], stream: object = None, file: str | None = None
) -> None:
    """Logs to `file` when given, else to `stream` (stderr by default), through the
    writer thread; configuring again replaces the previous set-up, its lines written."""
    global _writer
    close()
    handler: logging.Handler
    if file:
        try:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(file, encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SettingsError(f"setting LOG_FILE: cannot write to {file}: {reason}") from exc
    else:
        handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretMask(secrets))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _writer = logging.handlers.QueueListener(records, handler)
    _writer.start()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(level)
    # Client libraries log request URLs (Telegram's carry the bot token) and every request
    # to the offline model; their warnings are enough.
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


def close() -> None:
    """Writes every queued line and stops the writer thread; later lines (the last words
    of a shutdown) are written at once, by whoever logs them."""
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return
    writer.stop()
    root = logging.getLogger()
    for queued in [h for h in root.handlers if isinstance(h, logging.handlers.QueueHandler)]:
        root.removeHandler(queued)
    for handler in writer.handlers:
        root.addHandler(handler)


atexit.register(close)
