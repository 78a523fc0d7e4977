"""Alembic, driven from code: `stillhere db upgrade`, and the bot on start."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from alembic import command
from storage.database import connected, create_engine, ensure_sqlite_directory

ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    # ConfigParser interpolation would choke on '%' in a password.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    ensure_sqlite_directory(url)
    # Alembic's command API is synchronous and runs its own event loop in env.py.
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)


async def downgrade(url: str, revision: str = "base") -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


class SchemaError(Exception):
    """The database cannot be read, or is not at the schema this code expects."""


class SchemaNotAtHead(SchemaError):
    """The database's schema is at `current` (None: no schema at all), not at `head`;
    `newer`: at a revision this code does not know, which a newer stillhere wrote."""

    def __init__(self, current: str | None, head: str | None) -> None:
        self.current = current
        self.head = head
        self.newer = current is not None and not _known(current)
        if self.newer:
            super().__init__(
                f"the database schema is at revision {current}, newer than this code "
                f"(which knows up to {head}): a newer stillhere migrated it; run that one"
            )
        else:
            super().__init__(
                f"the database schema is at revision {current or 'none (empty database)'} "
                f"but this code needs {head}: run `stillhere db upgrade` (the admin "
                "commands never migrate)"
            )


def _known(revision: str) -> bool:
    try:
        return (
            ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision(revision)
            is not None
        )
    except CommandError:  # no script has that id
        return False


async def _revision(connection: AsyncConnection) -> str | None:
    return await connection.run_sync(
        lambda sync: MigrationContext.configure(sync).get_current_revision()
    )


async def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with connected(engine) as connection:
            return await _revision(connection)
    finally:
        await engine.dispose()


async def check_schema(engine: AsyncEngine) -> None:
    """Raises SchemaNotAtHead unless the database is at the newest migration (never
    migrates), DatabaseUnavailable if it cannot be reached at all."""
    async with connected(engine) as connection:
        try:
            current = await _revision(connection)
        except Exception as exc:
            # Drivers word this differently; the first line is what an operator needs.
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            password = engine.url.password
            if password:
                text = text.replace(str(password), "***")
            raise SchemaError(f"cannot read the database: {text}") from None
    head = head_revision()
    if current != head:
        raise SchemaNotAtHead(current, head)
