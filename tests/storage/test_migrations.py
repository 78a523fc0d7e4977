"""Alembic owns the schema: it migrates both ways on both engines and matches the models."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from storage.database import create_engine
from storage.migrate import current_revision, downgrade, head_revision, upgrade
from storage.models import Base


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            names: list[str] = await connection.run_sync(
                lambda sync: inspect(sync).get_table_names()
            )
            return set(names) - {"alembic_version"}
    finally:
        await engine.dispose()


async def _diff(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


async def test_empty_to_head_to_base_to_head(database_url: str) -> None:
    assert await _tables(database_url) == set()
    await upgrade(database_url)
    assert await current_revision(database_url) == head_revision()
    assert await _tables(database_url) == set(Base.metadata.tables)
    await downgrade(database_url, "base")
    assert await current_revision(database_url) is None
    assert await _tables(database_url) == set()
    await upgrade(database_url)
    assert await current_revision(database_url) == head_revision()


async def test_models_match_head(database_url: str) -> None:
    await upgrade(database_url)
    assert await _diff(database_url) == []
