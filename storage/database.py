"""Opening the database: one async engine per process, SQLite tuned for a bot and a CLI
sharing one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as SqlSession

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


def ensure_sqlite_directory(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)


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
