"""The bots that bench.telegram_latency measures, each run in a process of its own.

    python -m bench.telegram_bots VARIANT --base-url URL --token TOKEN --db PATH [--profile F]

Variants:
  stillhere          the real thing: TelegramAdapter + Runtime (SQLite file, offline model,
                     bench.long_tools), exactly as `stillhere run` wires them.
  stillhere-nolimit  the same with python-telegram-bot's flood limiter switched off (a
                     benchmark-only patch), to separate our cost from the 30 messages/s cap.
  stillhere+X+Y      stillhere with what-if experiments applied (bench.experiments).
  echo               the library's floor: Application + MessageHandler replying with the text.
  echo-limited       that echo bot behind the same rate limiter stillhere uses.
  echo-aiohttp       that echo bot on stillhere's HTTP transport (AiohttpRequest) instead of
                     the library's httpx: what the library's floor would be on it.
  echo-stored        the echo bot that also keeps what stillhere's goal demands: each message
                     stored (deduped) in a transaction before its reply, the delivery
                     recorded after it, with stillhere's driver and SQLite settings. The
                     floor for a bot that stores every message before it answers.

The process prints "READY" once it polls, and stops cleanly when its stdin closes. A bot in
its own process keeps the fake Bot API and the load generator off its CPU, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, bindparam, insert, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from telegram import Update
from telegram.ext import Application, ApplicationBuilder, MessageHandler, filters

from adapters.telegram import TelegramAdapter
from adapters.telegram.http_client import AiohttpRequest
from adapters.telegram.transport import ChatActionExemptRateLimiter
from bench import experiments
from bench.profiling import Profiles
from bot import heap
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from bot.settings import Settings
from storage.database import create_engine
from storage.transaction import run_transaction

VARIANTS = (
    "stillhere",
    "stillhere-nolimit",
    "echo",
    "echo-limited",
    "echo-stored",
    "echo-aiohttp",
)
OURS = ("stillhere", "stillhere-nolimit")
POLL_TIMEOUT = 10


def parse_variant(variant: str) -> tuple[str, frozenset[str]]:
    """stillhere+notyping -> ("stillhere", {"notyping"}) (see bench.experiments)."""
    base, *options = variant.split("+")
    if base not in VARIANTS or (options and base not in OURS):
        raise ValueError(f"unknown bot {base!r}; use one of {', '.join(VARIANTS)}")
    chosen = experiments.check(options)
    if base == "stillhere-nolimit":
        chosen |= {"nolimit"}
    return base, chosen


def is_ours(variant: str) -> bool:
    return parse_variant(variant)[0] in OURS


@asynccontextmanager
async def stillhere(
    base_url: str, token: str, db: Path, switches: frozenset[str]
) -> AsyncIterator[AsyncEngine]:
    model = FakeOpenAI(record=False)
    await model.start()
    try:
        settings = Settings(
            _env_file=None,
            database_url=f"sqlite+aiosqlite:///{db}",
            openai_api_key="bench",
            openai_base_url=model.base_url,
            tool_modules=["bench.long_tools"],
            telegram_bot_token=token,
            telegram_base_url=base_url,
            log_level="WARNING",
        )
        with experiments.applied(switches):
            async with Runtime(settings) as runtime:
                adapter = TelegramAdapter(settings, runtime.engine, poll_timeout=POLL_TIMEOUT)
                await adapter.start()
                try:
                    await runtime.engine.start()
                    heap.settle()  # as `stillhere run` does
                    yield runtime.db
                finally:
                    await adapter.stop()
    finally:
        await model.stop()


async def _echo(update: Update, context: Any) -> None:
    message = update.effective_message
    if message is not None and message.text:
        # Quoting makes the reply point at the message, as stillhere's replies do.
        await message.reply_text(message.text, do_quote=True)


_STORED = MetaData()
_ECHOES = Table(
    "echoes",
    _STORED,
    Column("id", Integer, primary_key=True),
    Column("update_key", String(64), unique=True, nullable=False),
    Column("text", Text, nullable=False),
    Column("sent_id", String(32)),
)
_STORE_ECHO = insert(_ECHOES).prefix_with("OR IGNORE")
_ECHO_SENT = (
    update(_ECHOES)
    .where(_ECHOES.c.update_key == bindparam("key"))
    .values(sent_id=bindparam("sent"))
)


class StoredEcho:
    """The echo handler, storing each message before its reply and recording the
    delivery after it: two short transactions, as stillhere's instant reply, written as
    stillhere writes them (storage.transaction: on SQLite one trip each)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def __call__(self, update: Update, context: Any) -> None:
        message = update.effective_message
        if message is None or not message.text:
            return
        key, text = f"{message.chat_id}:{message.message_id}", message.text

        def store(conn: Connection) -> int:
            return conn.execute(_STORE_ECHO, {"update_key": key, "text": text}).rowcount

        if not await run_transaction(self.engine, store):
            return  # seen before
        sent = await message.reply_text(text, do_quote=True)
        sent_id = str(sent.message_id)
        await run_transaction(
            self.engine, lambda conn: conn.execute(_ECHO_SENT, {"key": key, "sent": sent_id})
        )


@asynccontextmanager
async def echo(
    base_url: str, token: str, limited: bool, db: Path | None = None, on_aiohttp: bool = False
) -> AsyncIterator[AsyncEngine | None]:
    builder: Any = ApplicationBuilder().token(token).base_url(base_url).job_queue(None)
    if on_aiohttp:
        builder = builder.request(AiohttpRequest()).get_updates_request(
            AiohttpRequest(connection_pool_size=1)
        )
    # Concurrent like stillhere's per-chat processor (256 updates in flight), so the floor
    # is the library at its fastest, not one reply at a time.
    builder = builder.concurrent_updates(256)
    if limited:
        # As TelegramAdapter builds it, so echo-limited is throttled exactly as stillhere is.
        builder = builder.rate_limiter(ChatActionExemptRateLimiter())
    app: Application[Any, Any, Any, Any, Any, Any] = builder.build()
    engine = None
    handler: Any = _echo
    if db is not None:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        async with engine.begin() as conn:
            await conn.run_sync(_STORED.create_all)
        handler = StoredEcho(engine)
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, handler))
    try:
        async with app:
            updater = app.updater
            assert updater is not None
            await updater.start_polling(timeout=POLL_TIMEOUT)
            await app.start()
            try:
                yield engine
            finally:
                await updater.stop()
                await app.stop()
    finally:
        if engine is not None:
            await engine.dispose()


def bot_context(
    variant: str, base_url: str, token: str, db: Path
) -> AbstractAsyncContextManager[AsyncEngine | None]:
    """The bot running; its database engine, if it has one."""
    base, switches = parse_variant(variant)
    if base in OURS:
        return stillhere(base_url, token, db, switches)
    return echo(
        base_url,
        token,
        limited=base == "echo-limited",
        db=db if base == "echo-stored" else None,
        on_aiohttp=base == "echo-aiohttp",
    )


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def serve(variant: str, base_url: str, token: str, db: Path, profile: bool) -> str | None:
    """Runs the bot until stdin closes. A "profile" line starts pyinstrument
    (bench.profiling), so only the measured phase is profiled; the report is returned."""
    profiles: Profiles | None = None
    async with bot_context(variant, base_url, token, db) as engine:
        commands = await _stdin()
        print("READY", flush=True)
        while line := await commands.readline():
            if line.strip() == b"profile" and profile and profiles is None:
                profiles = Profiles()
                await profiles.start(engine)
        return None if profiles is None else await profiles.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.telegram_bots")
    parser.add_argument("variant", help=f"{', '.join(VARIANTS)}, stillhere+EXPERIMENT...")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="pyinstrument text report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    db = args.db or Path(tempfile.gettempdir()) / "stillhere-bench.db"
    report = asyncio.run(
        serve(args.variant, args.base_url, args.token, db, args.profile is not None)
    )
    if report is not None and args.profile is not None:
        args.profile.write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
