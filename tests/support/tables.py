"""An engine on a test database with a test's own tables, made afresh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.database import create_engine


@asynccontextmanager
async def engine_with(url: str, tables: MetaData) -> AsyncIterator[AsyncEngine]:
    """`create_engine(url)` with `tables` dropped and created again, disposed after."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(tables.drop_all)
            await conn.run_sync(tables.create_all)
        yield engine
    finally:
        await engine.dispose()
