"""The `stillhere` command: run the bot, manage the database, run the offline model, admin.

Exit codes: 0 ok, 1 problems found (admin), 2 usage or configuration error, or a platform
that cannot be reached or refuses the bot at start, 3 no running bot applied an admin
request in time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from bot import logs
from bot.settings import Settings, StartupError, check_startup, load_settings
from bot.tasks import cancel_and_wait

# Not __name__: run as `python -m bot.cli` this module is __main__.
log = logging.getLogger("bot.cli")

# How long the tasks still running once the bot has stopped get to end after their cancel.
EXIT_GRACE_SECONDS = 5.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stillhere",
        description="A chatbot for Telegram and Discord that keeps talking while its tools work.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run", help="run the bot (platforms chosen by the tokens configured; console if none)"
    )
    db = commands.add_parser("db", help="database schema (Alembic)")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply every migration")
    db_commands.add_parser("current", help="print the schema revision of the database")
    fake = commands.add_parser(
        "fake-openai", help="run the offline model alone, as an OpenAI-compatible server"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8765)
    from bot.admin_cli import add_admin_parser

    add_admin_parser(commands)
    return parser


async def _db(command: str, settings: Settings) -> int:
    from storage.migrate import current_revision, head_revision, upgrade

    if command == "upgrade":
        await upgrade(settings.database_url)
        print(f"database at revision {await current_revision(settings.database_url)}")
        return 0
    current = await current_revision(settings.database_url)
    head = head_revision()
    print(f"current: {current or 'empty'} (head: {head})")
    return 0 if current == head else 1


async def _fake_openai(host: str, port: int) -> int:
    from bot.offline import serve_forever

    print(f"offline model listening on http://{host}:{port}/v1 (Ctrl-C stops it)", flush=True)
    await serve_forever(host, port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "run":
            check_startup(settings)
    except StartupError as exc:
        print(f"stillhere: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level
    if (
        args.command == "run"
        and not settings.log_file
        and settings.enabled_platforms() == ["console"]
        and logging.getLevelName(level) < logging.WARNING
    ):
        # The replies are on stdout, and stderr is nearly always the same terminal, whether
        # a person types or a script is piped in: event lines would bury the conversation.
        # LOG_FILE keeps them all.
        level = "WARNING"
    try:
        logs.configure(level, settings.secrets(), file=settings.log_file)
    except StartupError as exc:
        print(f"stillhere: {exc}", file=sys.stderr)
        return 2
    try:
        return _command(args, settings)
    finally:
        logs.close()


def _command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.command == "run":
            from bot.app import run

            _run_to_the_end(run(settings))
            return 0
        if args.command == "db":
            return asyncio.run(_db(args.db_command, settings))
        if args.command == "fake-openai":
            return asyncio.run(_fake_openai(args.host, args.port))
        from bot.admin_cli import run_admin

        return asyncio.run(run_admin(args, settings))
    except KeyboardInterrupt:
        return 0
    except StartupError as exc:
        return _cannot_start(exc, settings)


def _run_to_the_end(main: Coroutine[Any, Any, None]) -> None:
    """`asyncio.run(main)`, but for its end: asyncio.run waits without limit for every task
    still running to end once cancelled, and a tool that ignores its cancel never does.
    Those get EXIT_GRACE_SECONDS, are named in the log and are left to the process's
    exit, so a stop signal always ends the bot."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        try:
            _end_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _end_tasks(loop: asyncio.AbstractEventLoop) -> None:
    ended = loop.run_until_complete(cancel_and_wait(asyncio.all_tasks(loop), EXIT_GRACE_SECONDS))
    for task in ended:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())


def _cannot_start(error: StartupError, settings: Settings) -> int:
    """One line on stderr, what an operator acts on; the traceback only in LOG_FILE, since
    on stderr it would bury that line (and the log masks the secrets it may quote)."""
    line = logs.SecretMask(settings.secrets()).mask(str(error))
    if settings.log_file:
        log.error("cannot go on: %s", line, exc_info=error)
    print(f"stillhere: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
