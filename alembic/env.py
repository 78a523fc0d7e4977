"""Alembic environment: async engines, batch mode so SQLite can alter tables."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from alembic.runtime.migration import MigrationInfo
from sqlalchemy.engine import Connection

from alembic import context
from storage.database import connected, create_engine
from storage.models import Base

config = context.config
target_metadata = Base.metadata
log = logging.getLogger("storage.migrate")


def _applied(*, step: MigrationInfo, **_: Any) -> None:
    """One line per migration applied: bot.logs silences alembic's own INFO lines, which
    are mostly noise, and this is the one of them an operator wants after a deploy."""
    before = ", ".join(step.source_revision_ids) or "empty"
    after = ", ".join(step.destination_revision_ids) or "empty"
    log.info("database schema migrated: %s -> %s", before, after)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        on_version_apply=_applied,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        # Out of reach or not creatable: one line naming DATABASE_URL, not a traceback.
        async with connected(engine) as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
