"""The statements every message runs, prepared once and run on the driver itself.

Why: SQLAlchemy's execution of a statement (binding its parameters, its execution
context, building its result) cost 50-80 µs where SQLite itself took 15-50, measured in
the storage thread (bench/RESULTS.md, session 8), and an instant reply's intake runs nine
statements; on PostgreSQL it cost about twice asyncpg's own (session 13). A `Prepared`
statement is compiled by SQLAlchemy once per dialect and set of parameter names, with
the bind and result processors of its column types, and run as one parameter tuple and
one `execute`: on SQLite inside a one-trip transaction (`storage.transaction`, where the
storage thread owns the sqlite3 connection), on PostgreSQL as asyncpg's prepared
statement inside SQLAlchemy's transaction (`storage.postgres_driver`). Same SQL, same
values in and out, same exceptions.

SQLAlchemy's `Connection.execute` runs it instead wherever that is not possible (SQLite
outside the driver's thread, another driver) and on a connection that someone watches
(cursor-event listeners, echo), so that they see every statement. A statement that needs
what only SQLAlchemy's execution does (an expanding IN list, a column default computed
by a function) always goes that way, and so does a batch of parameter sets on PostgreSQL,
which SQLAlchemy sends in one round trip.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.engine.result import result_tuple
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import TypeEngine

from storage.postgres_driver import Columns, asyncpg_adapter, run_on_asyncpg
from storage.sqlite_driver import OneTripConnection, in_driver_thread, run_statement, trip_memo

Params = Mapping[str, Any]
Processor = Callable[[Any], Any]
AnyRow = Row[*tuple[Any, ...]]
Statement = Select[*tuple[Any, ...]] | UpdateBase
T = TypeVar("T")
# One statement run on the driver itself: (SQL, values) -> its columns, the number of
# rows it changed, its rows as the driver returns them.
Direct = Callable[[str, Sequence[Any]], tuple[Columns, int, list[Any]]]


class Rows:
    """What a statement returned: its rows, and how many rows it changed (`rowcount`)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[AnyRow], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[AnyRow]:
        return iter(self._rows)

    def all(self) -> list[AnyRow]:
        return list(self._rows)

    def first(self) -> AnyRow | None:
        return self._rows[0] if self._rows else None

    def one(self) -> AnyRow:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


_FROM_PARAMS = object()


@dataclass
class _Plan:
    """One statement compiled for one dialect and one set of parameter names."""

    sql: str
    dialect: Dialect
    # Per positional parameter: its name, where its value comes from (_FROM_PARAMS, or
    # the statement's literal or the column's default) and its type's bind processor.
    binds: tuple[tuple[str, Any, Processor | None], ...]
    # The types of the columns it returns. Their processors are made from the driver's
    # type codes, which the first run tells (asyncpg's numeric processor needs its own).
    types: tuple[TypeEngine[Any], ...]
    results: tuple[Processor | None, ...] | None = field(default=None)
    make_row: Callable[[Sequence[Any]], AnyRow] | None = field(default=None)

    def values(self, params: Params) -> list[Any]:
        out = []
        for name, source, process in self.binds:
            value = params[name] if source is _FROM_PARAMS else source
            out.append(value if process is None else process(value))
        return out

    def rows(self, columns: Columns, raw: list[Any]) -> list[AnyRow]:
        # No columns asked for, but maybe some returned: on PostgreSQL SQLAlchemy has an
        # INSERT return its primary key for itself (`inserted_primary_key`).
        if not columns or not self.types:
            return []
        if self.make_row is None:
            self.make_row = result_tuple([column[0] for column in columns])
        return [self.make_row(values) for values in self.converted(columns, raw)]

    def converted(self, columns: Columns, raw: list[Any]) -> list[Sequence[Any]]:
        """The rows' values as the columns' types return them."""
        columns = columns or []
        if len(columns) != len(self.types):
            raise RuntimeError(
                f"{self.sql!r} returned {len(columns)} columns, not {len(self.types)}"
            )
        if self.results is None:
            dialect = self.dialect
            self.results = tuple(
                kind.dialect_impl(dialect).result_processor(dialect, column[1])
                for kind, column in zip(self.types, columns, strict=True)
            )
        # Only the values whose column's type converts (a few per statement) are touched,
        # and not NULL, which every type of this schema reads as None: a history read
        # makes hundreds of rows per message, most with no tool calls.
        converted = [(i, p) for i, p in enumerate(self.results) if p is not None]
        if not converted:
            return raw
        out: list[Sequence[Any]] = []
        for row in raw:
            values = list(row)
            for i, process in converted:
                if values[i] is not None:
                    values[i] = process(values[i])
            out.append(values)
        return out


class Prepared:
    """A statement that storage runs on every message (see the module's docstring)."""

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        # Per dialect and set of parameter names: the plan, or None where only SQLAlchemy
        # can run it. Two threads compiling the same plan at once would each get a good one.
        self._plans: dict[tuple[str, frozenset[str]], _Plan | None] = {}

    def run(self, conn: Connection, params: Params | Sequence[Params] | None = None) -> Rows:
        """The statement executed with `params` (a list: once per set, in order)."""
        direct = _direct(conn)
        if direct is None:
            return self._through_sqlalchemy(conn, params)
        sets = [params or {}] if params is None or isinstance(params, Mapping) else params
        names = frozenset(sets[0]) if sets else frozenset()
        plan = self._plan(conn, names) if sets else None
        # A batch whose sets name different parameters is SQLAlchemy's to refuse; on
        # PostgreSQL SQLAlchemy sends a batch in one round trip, here each set is one.
        if (
            plan is None
            or any(frozenset(values) != names for values in sets[1:])
            or (len(sets) > 1 and conn.dialect.name != "sqlite")
        ):
            return self._through_sqlalchemy(conn, params)
        rows: list[AnyRow] = []
        counts = []
        for values in sets:
            columns, rowcount, raw = direct(plan.sql, plan.values(values))
            rows += plan.rows(columns, raw)
            counts.append(rowcount)
        # As sqlite3 counts a batch: the sum of what each set changed.
        return Rows(rows, counts[0] if len(counts) == 1 else sum(max(c, 0) for c in counts))

    def _through_sqlalchemy(
        self, conn: Connection, params: Params | Sequence[Params] | None
    ) -> Rows:
        result = conn.execute(self.statement, params)
        rows = result.all() if result.returns_rows else []
        return Rows(list(rows), result.rowcount)

    def build(self, conn: Connection, params: Params, make: Callable[..., T]) -> list[T]:
        """The rows of a query, each as `make(*values)`, with no SQLAlchemy `Row` made in
        between (a history read returns hundreds of rows per message)."""
        direct = _direct(conn)
        plan = None if direct is None else self._plan(conn, frozenset(params))
        if direct is None or plan is None:
            return [make(*row) for row in conn.execute(self.statement, params)]
        columns, _, raw = direct(plan.sql, plan.values(params))
        return [make(*values) for values in plan.converted(columns, raw)]

    def _plan(self, conn: Connection, names: frozenset[str]) -> _Plan | None:
        key = (conn.dialect.name, names)
        if key not in self._plans:
            self._plans[key] = self._compile(conn.dialect, names)
        return self._plans[key]

    def _compile(self, dialect: Dialect, names: frozenset[str]) -> _Plan | None:
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=sorted(names))
        if compiled.positiontup is None or compiled.update_prefetch:
            return None
        defaults = {column.key: column.default for column in compiled.insert_prefetch}
        binds = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.expanding:
                return None
            if name in names:
                source = _FROM_PARAMS
            elif name in defaults:
                default = defaults[name]
                if default is None or not default.is_scalar:
                    return None
                source = default.arg
            else:
                source = bind.effective_value
            binds.append((name, source, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        types = tuple(column.type for column in _returned_columns(self.statement))
        return _Plan(str(compiled), dialect, tuple(binds), types)


BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"


def begin_immediate(conn: Connection) -> None:
    """On SQLite, before a writing transaction's first statement: takes the write lock now.
    sqlite3 sends BEGIN only before the first write, so the reads before it would run
    outside the transaction, and another process (the admin CLI) could change what they
    read before this transaction writes from it. Run on sqlite3 directly where a
    `Prepared` statement would be, with the same exceptions."""
    driver = _direct_driver(conn)
    if driver is None:
        conn.exec_driver_sql(BEGIN_IMMEDIATE)
    else:
        _on_sqlite(conn, driver, BEGIN_IMMEDIATE, ())


def _returned_columns(statement: Statement) -> list[Any]:
    if isinstance(statement, Select):
        return list(statement.selected_columns)
    if isinstance(statement, UpdateBase):
        return list(statement.exported_columns)
    return []


_DIRECT = "direct_driver"


def _direct_driver(conn: Connection) -> sqlite3.Connection | None:
    """The sqlite3 connection to run on directly, when this is a one-trip transaction on
    SQLite that nobody watches; None to go through SQLAlchemy. Worked out once per trip:
    asking SQLAlchemy whether anyone listens builds its listener collections anew each
    time (3% of an instant reply's CPU when asked for each statement)."""
    if not in_driver_thread():
        return None
    memo = trip_memo()
    if _DIRECT not in memo:
        driver = None if _watched(conn) else conn.connection.dbapi_connection
        memo[_DIRECT] = driver.sqlite_connection if isinstance(driver, OneTripConnection) else None
    direct: sqlite3.Connection | None = memo[_DIRECT]
    return direct


def _watched(conn: Connection) -> bool:
    return bool(
        conn.engine.echo
        or conn.dispatch.before_cursor_execute
        or conn.dispatch.after_cursor_execute
    )


def _direct(conn: Connection) -> Direct | None:
    """How to run a statement on the driver itself here (see the module's docstring);
    None to go through SQLAlchemy."""
    sqlite = _direct_driver(conn)
    if sqlite is not None:
        return lambda sql, values: _on_sqlite(conn, sqlite, sql, values)
    if _watched(conn):
        return None
    adapter = asyncpg_adapter(conn)
    if adapter is None:
        return None
    return lambda sql, values: run_on_asyncpg(conn, adapter, sql, values)


def _on_sqlite(
    conn: Connection, driver: sqlite3.Connection, sql: str, values: Sequence[Any]
) -> tuple[Columns, int, list[Any]]:
    try:
        outcome, rows = run_statement(driver, sql, values)
    except sqlite3.Error as error:
        # As SQLAlchemy raises it (IntegrityError for a unique key, and so on); the
        # failed statement changed nothing, as SQLite undoes a statement that fails.
        raise DBAPIError.instance(
            sql, values, error, sqlite3.Error, dialect=conn.dialect
        ) from error
    # sqlite3's description: (name, None, ...) per column, as Columns reads it.
    return outcome.description, outcome.rowcount, rows
