"""Transactions as plain functions: `run_transaction(engine, work)` runs `work(connection)`
in a transaction, with SQLAlchemy's sync `Connection`, and commits it.

Why sync functions: on SQLite each statement an async caller awaits is a round trip to
aiosqlite's thread, and those trips, not SQLite, were most of what storing a message
cost (an instant reply: ten of them). `work` runs in that thread instead
(`storage.sqlite_driver`), statements, commit and all: one trip per transaction, and the
event loop blocks on nothing. On PostgreSQL it runs through SQLAlchemy's `run_sync`, each
statement awaited on the loop as before. Same code, either database.

On SQLite a transaction that writes takes the write lock at its start (BEGIN IMMEDIATE),
so what it reads before its first write is read inside it; one that only reads says so
(`writes=False`) and takes none, leaving the admin CLI and other readers alone.

`work` must not touch the event loop (it may run in another thread) and may run twice
(storage.group_commit retries a failed group's units alone): database work only, plus
pure computation.

A transaction once begun runs to its end: on SQLite the driver's thread finishes what it
was given whether or not anyone waits, so a caller cancelled meanwhile is told only once
the transaction is over, committed or not. Nothing runs unowned, and a write is never
half-known.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.util.concurrency import greenlet_spawn

from storage.prepared import begin_immediate
from storage.sqlite_driver import OneTripConnection, OneTripDBAPI

log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[Connection], T]


class Cancellations:
    """Whether the caller was cancelled while work that cannot stop halfway ran: it is
    told once everything it started is over (`run_transaction`, storage.group_commit)."""

    __slots__ = ("noted",)

    def __init__(self) -> None:
        self.noted = False

    def note(self) -> None:
        self.noted = True


async def run_transaction(engine: AsyncEngine, work: Work[T], *, writes: bool = True) -> T:
    """`work(connection)` done in a transaction and committed (rolled back if it raises);
    its result. Runs in a copy of the caller's context, as `asyncio.to_thread` does.
    `writes=False`: `work` only reads (see the module's docstring)."""
    cancellations = Cancellations()
    try:
        result = await transaction(engine, work, cancellations, writes=writes)
    except Exception:
        if cancellations.noted:
            log.warning("a storage call failed after its caller was cancelled", exc_info=True)
            raise asyncio.CancelledError() from None
        raise
    if cancellations.noted:
        raise asyncio.CancelledError()
    return result


async def transaction(
    engine: AsyncEngine, work: Work[T], cancellations: Cancellations, *, writes: bool = True
) -> T:
    """`run_transaction` for a caller that raises the cancellation itself: one that
    comes meanwhile is noted in `cancellations`, and the transaction goes on to its end.

    On SQLite nothing here needs a task of its own: the driver's thread is waited for
    directly, and the connection goes back to the pool without a trip (its transaction
    ended in the thread). Such tasks cost loop turns, each one a wait behind whatever
    else the loop has to do: six per transaction, most of a busy bot's wait for one."""
    context = contextvars.copy_context()

    def in_transaction(connection: Connection) -> T:
        with connection.begin():
            # PostgreSQL needs nothing: its transaction begins with the first statement,
            # and the rows a writer must hold still are read FOR UPDATE.
            if writes and connection.dialect.name == "sqlite":
                begin_immediate(connection)
            return context.run(work, connection)

    give_back: Callable[[], Awaitable[None]]
    at_hand = _connection_at_hand(engine)
    if at_hand is not None:
        sync, driver = at_hand
        give_back = partial(_give_back, sync, driver)
    else:
        conn = await _connected(engine, cancellations)
        started = conn.sync_connection
        assert started is not None  # started by _connected()
        pooled = started.connection.dbapi_connection
        if not isinstance(pooled, OneTripConnection):
            try:
                return await outlast(conn.run_sync(in_transaction), cancellations)
            finally:
                await outlast(conn.close(), cancellations)
        sync, driver, give_back = started, pooled, conn.close
    try:
        return await driver.in_thread(lambda: in_transaction(sync), cancellations.note)
    finally:
        await give_back()


def _connection_at_hand(engine: AsyncEngine) -> tuple[Connection, OneTripConnection] | None:
    """On SQLite, the pooled connection taken at once, when the pool holds one that is
    ready; None when the checkout would have to wait or to open a connection.

    Why: SQLAlchemy's async checkout runs the pool's sync code in a greenlet of its own,
    made for each checkout (and another for each return) in case the pool must wait. For a
    message that arrives alone, that was most of the checkout's 0.18 ms, on the path of its
    instant reply (bench/RESULTS.md, session 19). A checkout that needs to wait or to
    connect needs the greenlet: SQLAlchemy then raises MissingGreenlet before it changes
    anything (the pool takes its connection back), and the caller takes the async way."""
    sync_engine = engine.sync_engine
    if not isinstance(sync_engine.dialect.loaded_dbapi, OneTripDBAPI):
        return None
    pool = sync_engine.pool
    if not isinstance(pool, QueuePool) or pool.checkedin() == 0:
        return None
    try:
        sync = sync_engine.connect()
    except MissingGreenlet:
        return None
    driver = sync.connection.dbapi_connection
    if not isinstance(driver, OneTripConnection):  # another creator: not ours to run
        sync.close()
        return None
    return sync, driver


async def _give_back(sync: Connection, driver: OneTripConnection) -> None:
    """The connection back in the pool, in a greenlet only where that needs the driver's
    thread: a transaction left open to roll back, a connection invalidated to close."""
    if sync.invalidated or driver.in_transaction_now():
        await greenlet_spawn(sync.close)
    else:
        sync.close()


async def _connected(engine: AsyncEngine, cancellations: Cancellations) -> AsyncConnection:
    """A connection from the pool, waited for through cancellations (noted): the
    transaction runs all the same, as a group commit's other writers need it to."""
    while True:
        try:
            return await engine.connect()
        except asyncio.CancelledError:
            cancellations.note()


async def outlast(work: Awaitable[T], cancellations: Cancellations) -> T:
    """`work` awaited to its end, in a task of its own, through the caller's
    cancellations (noted); a cancellation of the work itself (the loop closing) is
    raised."""
    task = asyncio.ensure_future(work)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancellations.note()
