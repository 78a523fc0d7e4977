"""One statement run on asyncpg itself, inside SQLAlchemy's transaction (storage.prepared).

Why: on PostgreSQL every statement is a round trip, and SQLAlchemy's execution of one
(its execution context, the asyncpg adapter's cursor, its result) cost about twice what
asyncpg's own prepared statement does: 136-150 µs of CPU against 67-90 in a micro run
(bench/RESULTS.md, session 13), and an answered message runs twelve of them.

What is SQLAlchemy's stays SQLAlchemy's: the connection, the transaction (begun here as
the adapter begins it, lazily, before the first statement, and committed or rolled back by
SQLAlchemy), the adapter's cache of prepared statements, and the exceptions: translated
by the adapter as its cursor translates them, then handled by SQLAlchemy's connection
(a dropped connection is invalidated). Like storage.sqlite_driver it reaches into
the adapter (`_prepare`, `_start_transaction`, `_transaction`, `_execute_mutex`);
pyproject.toml bounds the SQLAlchemy versions this was checked against, and where the
adapter is not the one expected `asyncpg_adapter` says None and SQLAlchemy runs the
statement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_

# Per column, its name and its type code first, as in a DBAPI cursor's description; None
# for a statement that returns no rows.
Columns = Sequence[tuple[Any, ...]] | None

_ADAPTER_PARTS = ("_prepare", "_start_transaction", "_transaction", "_execute_mutex")
# The command tag's count: "INSERT 0 1", "UPDATE 3", "SELECT 5" (as the adapter reads it).
_COUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")


def asyncpg_adapter(conn: Connection) -> AsyncAdapt_asyncpg_connection | None:
    """The adapter of a PostgreSQL connection through asyncpg, if it is the one this
    module was written against; None otherwise."""
    adapter = conn.connection.dbapi_connection
    if not isinstance(adapter, AsyncAdapt_asyncpg_connection):
        return None
    if not all(hasattr(adapter, part) for part in _ADAPTER_PARTS):
        return None
    return adapter


def run_on_asyncpg(
    conn: Connection,
    adapter: AsyncAdapt_asyncpg_connection,
    operation: str,
    parameters: Sequence[Any],
) -> tuple[Columns, int, list[Any]]:
    """One statement, from the greenlet SQLAlchemy runs a sync transaction in: its
    columns, its row count and its rows (asyncpg `Record`s). Raises what SQLAlchemy's
    execution would: a `DBAPIError` subclass chosen by the adapter's translation."""
    dbapi_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    stamp = getattr(conn.dialect, "_invalidate_schema_cache_asof", 0)
    try:
        result: tuple[Columns, int, list[Any]] = await_(_run(adapter, operation, parameters, stamp))
    except dbapi_error as error:
        # SQLAlchemy's own handling, as its execution does: it wraps the error and, for a
        # connection the server dropped, invalidates it so the pool never hands it out
        # again (storage.transaction's rollback alone would not notice).
        conn._handle_dbapi_exception(error, operation, parameters, None, None)
    return result


async def _run(
    adapter: Any, operation: str, parameters: Sequence[Any], stamp: float
) -> tuple[Columns, int, list[Any]]:
    async with adapter._execute_mutex:
        if adapter._transaction is None:
            await adapter._start_transaction()
        try:
            statement, attributes = await adapter._prepare(operation, stamp)
            rows = await statement.fetch(*parameters)
            tag = statement.get_statusmsg() or ""
        except Exception as error:  # translated, as the adapter's cursor does
            adapter._handle_exception(error)
    columns = [(a.name, a.type.oid) for a in attributes] if attributes else None
    count = _COUNT.match(tag)
    return columns, int(count.group(1)) if count else -1, rows
