"""The aiosqlite adapter that makes one trip to the driver's thread per statement, or one
per transaction run there whole: what SQLAlchemy reads from a cursor is unchanged, errors
are SQLAlchemy's, and the trips are counted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.sqlite_driver import OneTripDBAPI
from storage.transaction import run_transaction
from tests.support.tables import engine_with

ITEMS = Table(
    "driver_items",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String(50), unique=True, nullable=False),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with engine_with(
        f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}", ITEMS.metadata
    ) as engine:
        yield engine


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of every function sent to aiosqlite's thread, in order."""
    sent: list[str] = []
    real = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    yield sent


async def test_sqlite_engines_use_the_one_trip_adapter(engine: AsyncEngine) -> None:
    assert isinstance(engine.dialect.dbapi, OneTripDBAPI)


async def test_each_statement_is_one_trip(engine: AsyncEngine, trips: list[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(ITEMS), {"name": "a"})  # no rows back
        returned = await conn.execute(insert(ITEMS).returning(ITEMS.c.id), {"name": "b"})
        assert returned.scalar_one() == 2
        names = await conn.scalars(select(ITEMS.c.name).order_by(ITEMS.c.id))
        assert list(names) == ["a", "b"]
        del trips[:]
        await conn.execute(update(ITEMS).values(name="c").where(ITEMS.c.name == "a"))
        assert trips == ["_run"]
    assert trips == ["_run", "commit"]


async def test_what_sqlalchemy_reads_from_the_cursor(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        many = await conn.execute(insert(ITEMS), [{"name": n} for n in "xyz"])
        assert many.rowcount == 3
        single = await conn.execute(insert(ITEMS), {"name": "w"})
        assert single.inserted_primary_key == (4,)  # from the cursor's lastrowid
        changed = await conn.execute(update(ITEMS).values(name=ITEMS.c.name + "!"))
        assert changed.rowcount == 4
        none = await conn.execute(select(ITEMS).where(ITEMS.c.id > 99))
        assert none.all() == []
        row = (await conn.execute(select(ITEMS.c.id, ITEMS.c.name).where(ITEMS.c.id == 2))).one()
        assert row._mapping == {"id": 2, "name": "y!"}
        removed = await conn.execute(delete(ITEMS).where(ITEMS.c.id > 2))
        assert removed.rowcount == 2
        assert await conn.scalar(text("select count(*) from driver_items")) == 2


async def test_a_failing_statement_raises_sqlalchemys_error_and_rolls_back(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(ITEMS), {"name": "kept"})
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(ITEMS), {"name": "lost"})
            await conn.execute(insert(ITEMS), {"name": "kept"})
    with pytest.raises(OperationalError, match="no such table"):
        async with engine.connect() as conn:
            await conn.execute(text("select * from missing"))
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(ITEMS.c.name))) == ["kept"]


async def test_rollback_goes_to_the_thread_only_inside_a_transaction(
    engine: AsyncEngine, trips: list[str]
) -> None:
    async with engine.connect() as conn:
        await conn.execute(insert(ITEMS), {"name": "undone"})
        await conn.rollback()
        assert trips == ["_run", "rollback"]
        assert await conn.scalar(select(func.count()).select_from(ITEMS)) == 0
    # Returning the connection to the pool rolls it back: nothing was open, no trip.
    assert trips == ["_run", "rollback", "_run"]


async def test_a_write_cancelled_before_its_thread_ran_it_is_rolled_back(
    engine: AsyncEngine, trips: list[str]
) -> None:
    """The caller stops waiting, but the statement is still queued for aiosqlite's thread
    and runs later, opening a transaction: that transaction must not outlive the caller
    (the rollback skips its trip when sqlite3 says no transaction is open, which it
    says before the statement ran)."""
    async with engine.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
    release = threading.Event()
    busy = asyncio.ensure_future(driver._execute(release.wait, 5))  # holds the thread

    async def write() -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(ITEMS), {"name": "lost"})

    task = asyncio.create_task(write())
    while driver._tx.qsize() == 0:  # the insert waits behind the held thread
        await asyncio.sleep(0.001)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await busy
    # SQLAlchemy closed the connection behind the insert rather than rolling it back.
    assert trips == ["wait", "_run", "close"]
    async with engine.begin() as conn:
        await conn.execute(insert(ITEMS), {"name": "kept"})
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(ITEMS.c.name))) == ["kept"]


async def test_a_whole_transaction_in_the_drivers_thread_is_one_trip(
    engine: AsyncEngine, trips: list[str]
) -> None:
    """`storage.transaction` runs its work there: statements, commit and rollback run at
    once, without a trip each."""

    def work(conn: Connection) -> list[str]:
        conn.execute(insert(ITEMS), [{"name": "a"}, {"name": "b"}])
        conn.execute(update(ITEMS).values(name="c").where(ITEMS.c.name == "a"))
        return list(conn.scalars(select(ITEMS.c.name).order_by(ITEMS.c.id)))

    def broken(conn: Connection) -> None:
        conn.execute(insert(ITEMS).values(name="undone"))
        conn.execute(insert(ITEMS).values(name="b"))  # unique: fails, rolls back

    assert await run_transaction(engine, work) == ["c", "b"]
    assert trips == ["inline"]
    with pytest.raises(IntegrityError):
        await run_transaction(engine, broken)
    assert trips == ["inline", "inline"]
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(ITEMS.c.name))) == ["c", "b"]
