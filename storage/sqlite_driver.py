"""SQLAlchemy's aiosqlite adapter, with one trip to the driver's thread per statement, or
one per whole transaction.

aiosqlite runs every sqlite3 call in its own thread; each call is a round trip: a queue
put, a thread wake-up, the event loop woken through its self-pipe, a task step (measured
here: 0.1 to 0.3 ms each, fifty times what SQLite takes to run a small statement).
SQLAlchemy's adapter makes three or four per statement (open a cursor, execute, fetch,
close). The cursor here does all four in one function in that thread, so a statement
costs one. The connection, its transactions, pooling and the errors raised are
SQLAlchemy's own.

`OneTripConnection.in_thread` goes further: it runs a whole function (a transaction
written against SQLAlchemy's sync `Connection`, see `storage.transaction`) in the
driver's thread, where this adapter runs each statement, the commit and the rollback at
once instead of sending them there. The event loop waits for one trip and blocks on
nothing.

Like SQLAlchemy's adapter (which queues its isolation-level change the same way), it
reaches into aiosqlite's connection for the queue of its thread: `Connection._execute`.
pyproject.toml bounds the aiosqlite versions this was checked against.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

Description = tuple[tuple[Any, ...], ...] | None
T = TypeVar("T")


class _DriverThread(threading.local):
    """Set while `OneTripConnection.in_thread` runs a function in the driver's thread."""

    inline = False
    # What callers worked out once for the whole trip (`trip_memo`).
    memo: dict[str, Any] | None = None


_driver_thread = _DriverThread()


def in_driver_thread() -> bool:
    """Whether this code runs inside `OneTripConnection.in_thread`: in the driver's
    thread, where its sqlite3 connection may be used directly (storage.prepared)."""
    return _driver_thread.inline


def trip_memo() -> dict[str, Any]:
    """A dict that lasts for the current `in_thread` trip, which runs on one connection:
    for what every statement of a trip would otherwise work out again (storage.prepared).
    Call only in the driver's thread (`in_driver_thread`)."""
    memo = _driver_thread.memo
    assert memo is not None, "trip_memo() outside a trip"
    return memo


class StatementOutcome:
    """What the DBAPI cursor left after a statement: SQLAlchemy reads these attributes."""

    __slots__ = ("description", "lastrowid", "rowcount")

    def __init__(self, description: Description, rowcount: int, lastrowid: int | None):
        self.description = description
        self.rowcount = rowcount
        self.lastrowid = lastrowid


_NOTHING_YET = StatementOutcome(None, -1, None)


def _run(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[StatementOutcome, list[Any]]:
    """In aiosqlite's thread: the whole statement, from opening the cursor to closing it."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return StatementOutcome(description, cursor.rowcount, cursor.lastrowid), rows
    finally:
        cursor.close()


def run_statement(
    connection: sqlite3.Connection, operation: str, parameters: Sequence[Any]
) -> tuple[StatementOutcome, list[Any]]:
    """In the driver's thread: one statement run whole, its rows fetched."""
    return _run(connection, operation, parameters, many=False)


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()

    def _make_new_cursor(self, connection: Any) -> Any:
        return _NOTHING_YET

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _async_soft_close(self) -> None:
        """Nothing is left open in the driver's thread after a statement."""

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        self._statement(operation, () if parameters is None else parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        self._statement(operation, seq_of_parameters, many=True)

    def _statement(self, operation: str, parameters: Any, many: bool) -> None:
        driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        in_thread = cast(
            Callable[..., Awaitable[tuple[StatementOutcome, list[Any]]]], driver._execute
        )
        try:
            if _driver_thread.inline:
                outcome, rows = _run(driver._conn, operation, parameters, many)
            else:
                outcome, rows = await_(in_thread(_run, driver._conn, operation, parameters, many))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        # What SQLAlchemy reads from `_cursor` after a statement; no driver cursor is left.
        self._cursor = outcome  # type: ignore[assignment]
        self._rows = deque(rows)


def _nothing() -> None:
    """A call queued only to learn that the calls before it are done."""


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    _cursor_cls = OneTripCursor

    async def in_thread(
        self, function: Callable[[], T], on_cancel: Callable[[], None] | None = None
    ) -> T:
        """`function()` run in the driver's thread, its statements, commit and rollback
        run there at once: one trip. It must not touch the event loop. Once queued it
        runs to its end, whether or not the caller still waits. With `on_cancel`, the
        caller waits: a cancellation meanwhile calls `on_cancel` instead of being raised,
        and the function's own result or exception comes back once it is over
        (`storage.transaction`); without, the cancellation is raised at once."""
        outcome: list[T] = []
        failure: list[BaseException] = []

        def inline() -> T:
            _driver_thread.inline = True
            _driver_thread.memo = {}
            try:
                outcome.append(function())
                return outcome[0]
            except BaseException as error:
                failure.append(error)
                raise
            finally:
                _driver_thread.inline = False
                _driver_thread.memo = None

        driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        in_thread = cast(Callable[[Callable[[], Any]], Awaitable[Any]], driver._execute)
        try:
            result: T = await in_thread(inline)
            return result
        except asyncio.CancelledError:
            if on_cancel is None:
                raise
            on_cancel()
        # Queued or running still. The thread runs its queue in order, so once a call
        # queued after it is back, it is over.
        while True:
            try:
                await in_thread(_nothing)
                break
            except asyncio.CancelledError:
                on_cancel()
        if failure:
            raise failure[0]
        return outcome[0]

    @property
    def sqlite_connection(self) -> sqlite3.Connection:
        """The driver's own connection: use it only in its thread (`in_driver_thread`)."""
        driver: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        return driver._conn

    def commit(self) -> None:
        if not _driver_thread.inline:
            super().commit()
            return
        try:
            self._connection._conn.commit()
        except Exception as error:
            self._handle_exception(error)

    def rollback(self) -> None:
        if _driver_thread.inline:
            try:
                self._connection._conn.rollback()
            except Exception as error:
                self._handle_exception(error)
            return
        # The pool rolls back every connection it takes back, most of them already
        # committed: sqlite3 would do nothing, after a trip to the thread to learn that.
        # The owner of the connection runs no statement meanwhile, so reading the flag
        # from this thread is safe. (A statement given up on while still queued for the
        # thread is no exception: SQLAlchemy then closes the connection, behind it.)
        if self.in_transaction_now():
            super().rollback()

    def in_transaction_now(self) -> bool:
        """Whether the driver's connection has a transaction open, read from the event
        loop's thread: only while the connection's owner runs nothing in the driver's
        thread (see `rollback`)."""
        return bool(self._connection._connection and self._connection.in_transaction)


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """Passed to SQLAlchemy's aiosqlite dialect as its DBAPI module (`module=`)."""

    def __init__(self) -> None:
        super().__init__(aiosqlite, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        kw.setdefault("async_creator_fn", _open)
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


async def _open(*arg: Any, **kw: Any) -> aiosqlite.Connection:
    """aiosqlite.connect, as SQLAlchemy's adapter calls it, but a file that cannot be
    opened leaves no thread behind: aiosqlite then stops its thread without waiting for it,
    and a command that stops on the error would close its event loop first, the thread
    printing a traceback of its own on stderr after the command's one line."""
    connection = aiosqlite.connect(*arg, **kw)
    connection._thread.daemon = True
    try:
        return await connection
    except Exception:
        await asyncio.to_thread(connection._thread.join)
        raise
