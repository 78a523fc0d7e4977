"""run_transaction: a sync function of a connection, committed or rolled back as a whole,
in the caller's context, and never abandoned halfway: a caller cancelled meanwhile hears
of it once the transaction is over. Runs on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

import storage.database
from storage.transaction import _connection_at_hand, _give_back, run_transaction
from tests.support.held import Hold
from tests.support.tables import engine_with

ITEMS = Table(
    "transaction_items",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String(50), unique=True, nullable=False),
)
NAMED = {"name": "named"}
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="nobody")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with(database_url, ITEMS.metadata) as engine:
        yield engine


async def stored(engine: AsyncEngine) -> list[str]:
    return await run_transaction(
        engine, lambda conn: list(conn.scalars(select(ITEMS.c.name).order_by(ITEMS.c.id)))
    )


async def test_work_is_committed_and_its_result_returned(engine: AsyncEngine) -> None:
    def add_two(conn: Connection) -> int:
        conn.execute(insert(ITEMS), [{"name": "a"}, {"name": "b"}])
        return int(conn.scalar(select(ITEMS.c.id).where(ITEMS.c.name == "b")) or 0)

    assert await run_transaction(engine, add_two) == 2
    assert await stored(engine) == ["a", "b"]


async def test_work_that_raises_is_rolled_back_and_its_error_reaches_the_caller(
    engine: AsyncEngine,
) -> None:
    await run_transaction(engine, lambda conn: conn.execute(insert(ITEMS).values(name="kept")))

    def broken(conn: Connection) -> None:
        conn.execute(insert(ITEMS).values(name="lost"))
        raise ValueError("a bug")

    def conflicting(conn: Connection) -> None:
        conn.execute(insert(ITEMS).values(name="lost too"))
        conn.execute(insert(ITEMS).values(name="kept"))

    with pytest.raises(ValueError, match="a bug"):
        await run_transaction(engine, broken)
    with pytest.raises(IntegrityError):  # SQLAlchemy's error, as from an awaited statement
        await run_transaction(engine, conflicting)
    assert await stored(engine) == ["kept"]


async def test_work_runs_in_the_callers_context(engine: AsyncEngine) -> None:
    CALLER.set("the caller")
    assert await run_transaction(engine, lambda conn: CALLER.get()) == "the caller"


async def test_a_caller_cancelled_mid_transaction_hears_it_once_it_is_committed(
    engine: AsyncEngine,
) -> None:
    """On SQLite the driver's thread finishes a transaction whatever happens to its
    caller; on PostgreSQL it is let finish too, so a write is never half-known."""
    held = Hold()

    def slow(conn: Connection) -> None:
        conn.execute(insert(ITEMS).values(name="committed"))
        held.hold()

    task = asyncio.create_task(run_transaction(engine, slow))
    await held.inside.wait()
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waits for its transaction
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored(engine) == ["committed"]
    # The connection is whole: the next transaction runs as usual.
    await run_transaction(engine, lambda conn: conn.execute(insert(ITEMS).values(name="next")))
    assert await stored(engine) == ["committed", "next"]


async def test_a_caller_cancelled_before_its_transaction_began_still_has_it_run(
    engine: AsyncEngine,
) -> None:
    """Cancelled while it waits for a connection (on SQLite: behind another
    transaction), the transaction still runs, as a group commit's other writers need
    it to; the caller hears of the cancellation once it is committed."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's pool has a connection for it at once")
    held = Hold()

    def first(conn: Connection) -> None:
        conn.execute(insert(ITEMS).values(name="first"))
        held.hold()

    holding = asyncio.create_task(run_transaction(engine, first))
    await held.inside.wait()
    waiting = asyncio.create_task(
        run_transaction(engine, lambda conn: conn.execute(insert(ITEMS).values(name="second")))
    )
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.sleep(0.05)
    held.release()
    await holding
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert sorted(await stored(engine)) == ["first", "second"]


async def test_a_transaction_that_fails_after_its_caller_was_cancelled_is_logged(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    held = Hold()

    def failing(conn: Connection) -> None:
        held.hold()
        raise ValueError("broken after the caller left")

    task = asyncio.create_task(run_transaction(engine, failing))
    await held.inside.wait()
    task.cancel()
    await asyncio.sleep(0.05)
    held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "a storage call failed after its caller was cancelled" in caplog.text
    assert "broken after the caller left" in caplog.text
    assert await stored(engine) == []


# --- SQLite: when the write lock is taken ------------------------------------------------


def another_process_writes(path: Path) -> bool:
    """Whether another connection (the admin CLI, say) can commit a write right now; it
    does not wait for the lock."""
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute("INSERT INTO transaction_items (name) VALUES ('from elsewhere')")
        other.commit()
        return True
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    finally:
        other.close()


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, Path]]:
    path = tmp_path / "locks.db"
    async with engine_with(f"sqlite+aiosqlite:///{path}", ITEMS.metadata) as engine:
        yield engine, path


async def test_on_sqlite_a_writing_transaction_reads_under_its_write_lock(
    sqlite_file: tuple[AsyncEngine, Path],
) -> None:
    """sqlite3 sends BEGIN only before the first write: the reads before it would see a
    state that another process may change before this transaction writes from it."""
    engine, path = sqlite_file

    def read_then_write(conn: Connection) -> bool:
        count = conn.scalar(select(func.count()).select_from(ITEMS))
        interleaved = another_process_writes(path)
        conn.execute(insert(ITEMS).values(name=f"after {count}"))
        return interleaved

    assert not await run_transaction(engine, read_then_write)
    assert await stored(engine) == ["after 0"]


async def test_on_sqlite_a_reading_transaction_takes_no_write_lock(
    sqlite_file: tuple[AsyncEngine, Path],
) -> None:
    engine, path = sqlite_file

    def read(conn: Connection) -> bool:
        conn.scalar(select(func.count()).select_from(ITEMS))
        return another_process_writes(path)

    assert await run_transaction(engine, read, writes=False)
    assert await stored(engine) == ["from elsewhere"]


async def test_on_sqlite_a_write_lock_not_had_in_time_is_sqlalchemys_error_and_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the write lock past the busy timeout fails the transaction
    as a statement would fail it, and leaves the connection fit for the next one."""
    monkeypatch.setattr(storage.database, "SQLITE_BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "locks.db"
    async with engine_with(f"sqlite+aiosqlite:///{path}", ITEMS.metadata) as engine:
        other = sqlite3.connect(path, timeout=0)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(OperationalError, match="locked"):
                await run_transaction(engine, lambda conn: conn.execute(insert(ITEMS), NAMED))
        finally:
            other.rollback()
            other.close()
        await run_transaction(engine, lambda conn: conn.execute(insert(ITEMS), NAMED))
        assert await stored(engine) == ["named"]


# --- SQLite: the pooled connection taken at once, or waited for ----------------------------


async def test_on_sqlite_a_connection_ready_in_the_pool_is_taken_without_the_async_checkout(
    sqlite_file: tuple[AsyncEngine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = sqlite_file
    await stored(engine)  # the pool holds a connection now

    def no_async_checkout(*args: object, **kwargs: object) -> None:
        raise AssertionError("the async checkout was used")

    monkeypatch.setattr(AsyncEngine, "connect", no_async_checkout)
    await run_transaction(engine, lambda conn: conn.execute(insert(ITEMS), NAMED))
    assert await stored(engine) == ["named"]
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_on_sqlite_a_transaction_waits_for_the_connection_another_caller_holds(
    sqlite_file: tuple[AsyncEngine, Path],
) -> None:
    engine, _ = sqlite_file
    async with engine.connect() as held:
        await held.scalar(select(func.count()).select_from(ITEMS))
        waiting = asyncio.create_task(
            run_transaction(engine, lambda conn: conn.execute(insert(ITEMS), NAMED))
        )
        await asyncio.sleep(0.05)
        assert not waiting.done()
    await waiting
    assert await stored(engine) == ["named"]


async def test_on_sqlite_a_pooled_connection_that_must_connect_again_is_opened_in_a_greenlet(
    sqlite_file: tuple[AsyncEngine, Path], recwarn: pytest.WarningsRecorder
) -> None:
    """An invalidated connection goes back to the pool closed: the next checkout opens
    a new one, which needs SQLAlchemy's async checkout, with nothing left half-done."""
    engine, _ = sqlite_file
    async with engine.connect() as conn:
        await conn.invalidate()
    assert engine.sync_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    await run_transaction(engine, lambda conn: conn.execute(insert(ITEMS), NAMED))
    assert await stored(engine) == ["named"]
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


async def test_on_sqlite_a_connection_given_back_in_a_transaction_is_rolled_back(
    sqlite_file: tuple[AsyncEngine, Path],
) -> None:
    """What a failed rollback in the driver's thread would leave: the return to the pool
    rolls the transaction back (a trip to that thread, in a greenlet), and the next
    transaction begins afresh."""
    engine, _ = sqlite_file
    await stored(engine)
    at_hand = _connection_at_hand(engine)
    assert at_hand is not None
    sync, driver = at_hand

    def begin_and_insert() -> None:
        raw = driver.sqlite_connection
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO transaction_items (name) VALUES ('left open')")

    await driver.in_thread(begin_and_insert)
    assert driver.in_transaction_now()
    await _give_back(sync, driver)
    assert not driver.in_transaction_now()
    assert engine.sync_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    await run_transaction(engine, lambda conn: conn.execute(insert(ITEMS), NAMED))
    assert await stored(engine) == ["named"]
