"""Transactions as plain functions: `run_transaction(engine, work)` runs `work(connection)`
in a transaction, with SQLAlchemy's sync `Connection`, and commits it.

Why sync functions: on SQLite each statement an async caller awaits is a round trip to
aiosqlite's thread, and those trips, not SQLite, were most of what storing a message
cost (an instant reply: ten of them). `work` runs in that thread instead
(`storage.sqlite_driver`), statements, commit and all: one trip per transaction, and the
event loop blocks on nothing. On PostgreSQL it runs through SQLAlchemy's `run_sync`, each
statement awaited on the loop as before. Same code, either database.

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
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.sqlite_driver import OneTripConnection

log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[Connection], T]


async def run_transaction(engine: AsyncEngine, work: Work[T]) -> T:
    """`work(connection)` done in a transaction and committed (rolled back if it raises);
    its result. Runs in a copy of the caller's context, as `asyncio.to_thread` does."""
    return await finish_before_cancelling(transaction(engine, work))


async def transaction(engine: AsyncEngine, work: Work[T]) -> T:
    """`run_transaction` for a caller that already waits through cancellation around it
    (with `finish_before_cancelling`)."""
    context = contextvars.copy_context()

    def in_transaction(connection: Connection) -> T:
        with connection.begin():
            return context.run(work, connection)

    async with engine.connect() as conn:
        sync = conn.sync_connection
        assert sync is not None  # started by connect()
        driver = sync.connection.dbapi_connection
        if isinstance(driver, OneTripConnection):
            return await driver.in_thread(lambda: in_transaction(sync))
        return await conn.run_sync(in_transaction)


async def finish_before_cancelling(work: Awaitable[T]) -> T:
    """Awaits `work` to its end even if the caller is cancelled meanwhile; the
    cancellation is raised then. `work` cannot be stopped halfway (a transaction queued
    for the driver's thread), so the caller stays until it is over: nothing is left
    running, and the caller's cancellation still comes through."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled, not just its caller
                raise
            cancelled = True
            continue
        except Exception:
            if cancelled:
                log.warning("a storage call failed after its caller was cancelled", exc_info=True)
                raise asyncio.CancelledError() from None
            raise
        if cancelled:
            raise asyncio.CancelledError()
        return result
