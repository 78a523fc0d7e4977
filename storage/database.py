"""Opening the database: one async engine per process, SQLite tuned for a bot and a CLI
sharing one file."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

from bot.settings import SettingsError
from storage.sqlite_driver import OneTripDBAPI

SQLITE_BUSY_TIMEOUT_MS = 5000
POOL_TIMEOUT_SECONDS = 600


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the admin CLI read while the bot writes; NORMAL is durable across process
    # crashes in WAL mode (only an OS crash can lose the last commits).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class DatabaseUnavailable(SettingsError):
    """The database DATABASE_URL names cannot be reached, or its SQLite file cannot be
    created or opened: one line naming the setting and why, the password masked. A
    StartupError, so every `stillhere` command stops on it with that line and exit 2."""


def _sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(os.path.abspath(url.database or ""))


def _reason(error: BaseException, password: str | None) -> str:
    """Why, in the driver's first line: the OS's words for an OS error ("connection
    refused"), without the password should a driver quote it."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    if isinstance(cause, OSError) and cause.errno is not None:
        text = os.strerror(cause.errno)
        text = text[:1].lower() + text[1:]
    else:
        lines = str(cause).strip().splitlines()
        text = lines[0] if lines else type(cause).__name__
    return text.replace(password, "***") if password else text


def ensure_sqlite_directory(url: str) -> None:
    path = _sqlite_path(make_url(url))
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"setting DATABASE_URL: cannot create the folder {path.parent} for the SQLite "
            f"file: {_reason(exc, None)}"
        ) from exc


@asynccontextmanager
async def connected(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection, for the first contact a command makes with the database: if it cannot
    be opened (server down, credentials refused, a SQLite file that cannot be opened, an
    option the driver does not take), DatabaseUnavailable says so. Errors once connected
    are the caller's: they are not about DATABASE_URL."""
    try:
        connection = await engine.connect()
    except Exception as exc:
        url = engine.url
        path = _sqlite_path(url)
        where = (
            f"open the SQLite file {path}"
            if path is not None
            else f"connect to {url.render_as_string(hide_password=True)}"
        )
        raise DatabaseUnavailable(
            f"setting DATABASE_URL: cannot {where}: {_reason(exc, url.password)}"
        ) from exc
    try:
        yield connection
    finally:
        await connection.close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    ensure_sqlite_directory(url)
    if make_url(url).get_backend_name() == "sqlite":
        # SQLite has one writer at a time. With several pooled connections, a transaction
        # that read before writing fails at once with "database is locked" when another
        # commits first (its busy handler cannot help there). One connection per process
        # makes transactions queue in asyncio instead, which is also faster.
        kwargs.setdefault("pool_size", 1)
        kwargs.setdefault("max_overflow", 0)
        if make_url(url).get_driver_name() == "aiosqlite":
            kwargs.setdefault("module", OneTripDBAPI())
    # A burst (thousands of sessions recovering after a restart) must queue for a
    # connection, not fail after SQLAlchemy's default 30 s wait.
    kwargs.setdefault("pool_timeout", POOL_TIMEOUT_SECONDS)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[SqlSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
