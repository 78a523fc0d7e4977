"""The statements every message runs, prepared once and, on SQLite, run on sqlite3 itself.

Why: SQLAlchemy's execution of a statement (binding its parameters, its execution
context, building its result) cost 50-80 µs where SQLite itself took 15-50, measured in
the storage thread (bench/RESULTS.md, session 8), and an instant reply's intake runs nine
statements. A `Prepared` statement is compiled by SQLAlchemy once per set of parameter
names, with the bind and result processors of its column types; running it inside a
one-trip transaction on SQLite (`storage.transaction`, where the storage thread owns the
sqlite3 connection) is one parameter tuple, one `execute` and SQLAlchemy's own `Row`s.
Same SQL, same values in and out, same exceptions.

Everywhere else `run` is `Connection.execute`: on PostgreSQL, outside the driver's
thread, and on a connection that someone watches (cursor-event listeners, echo), so that
they see every statement. A statement that needs what only SQLAlchemy's execution does
(an expanding IN list, a column default computed by a function) always goes that way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Row
from sqlalchemy.engine.result import result_tuple
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select

from storage.sqlite_driver import (
    OneTripConnection,
    StatementOutcome,
    in_driver_thread,
    run_statement,
)

Params = Mapping[str, Any]
Processor = Callable[[Any], Any]
AnyRow = Row[*tuple[Any, ...]]
Statement = Select[*tuple[Any, ...]] | UpdateBase
T = TypeVar("T")


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
    """One statement compiled for one set of parameter names."""

    sql: str
    # Per positional parameter: its name, where its value comes from (_FROM_PARAMS, or
    # the statement's literal or the column's default) and its type's bind processor.
    binds: tuple[tuple[str, Any, Processor | None], ...]
    results: tuple[Processor | None, ...]
    # Made from the cursor's column names the first time the statement returns rows.
    make_row: Callable[[Sequence[Any]], AnyRow] | None = field(default=None)

    def values(self, params: Params) -> list[Any]:
        out = []
        for name, source, process in self.binds:
            value = params[name] if source is _FROM_PARAMS else source
            out.append(value if process is None else process(value))
        return out

    def rows(self, names: Sequence[str], raw: list[Any]) -> list[AnyRow]:
        if self.make_row is None:
            self.make_row = result_tuple(names)
        return [self.make_row(values) for values in self.converted(names, raw)]

    def converted(self, names: Sequence[str], raw: list[Any]) -> list[Sequence[Any]]:
        """The rows' values as the columns' types return them."""
        if len(names) != len(self.results):
            raise RuntimeError(
                f"{self.sql!r} returned {len(names)} columns, not {len(self.results)}"
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
        # Per set of parameter names: the plan, or None where only SQLAlchemy can run it.
        # Plans are SQLite's only (the one dialect run directly), so one set serves every
        # engine; two threads compiling the same plan at once would each get a good one.
        self._plans: dict[frozenset[str], _Plan | None] = {}

    def run(self, conn: Connection, params: Params | Sequence[Params] | None = None) -> Rows:
        """The statement executed with `params` (a list: once per set, in order)."""
        driver = _direct_driver(conn)
        if driver is None:
            return self._through_sqlalchemy(conn, params)
        sets = [params or {}] if params is None or isinstance(params, Mapping) else params
        names = frozenset(sets[0]) if sets else frozenset()
        plan = self._plan(conn, names) if sets else None
        # A batch whose sets name different parameters is SQLAlchemy's to refuse.
        if plan is None or any(frozenset(values) != names for values in sets[1:]):
            return self._through_sqlalchemy(conn, params)
        rows: list[AnyRow] = []
        counts = []
        for values in sets:
            rowcount, more = self._direct(conn, driver, plan, values)
            rows += more
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
        driver = _direct_driver(conn)
        plan = None if driver is None else self._plan(conn, frozenset(params))
        if driver is None or plan is None:
            return [make(*row) for row in conn.execute(self.statement, params)]
        outcome, raw = self._execute(conn, driver, plan, params)
        names = [column[0] for column in outcome.description or ()]
        return [make(*values) for values in plan.converted(names, raw)]

    @classmethod
    def _direct(
        cls, conn: Connection, driver: sqlite3.Connection, plan: _Plan, params: Params
    ) -> tuple[int, list[AnyRow]]:
        outcome, raw = cls._execute(conn, driver, plan, params)
        if outcome.description is None:
            return outcome.rowcount, []
        names = [column[0] for column in outcome.description]
        return outcome.rowcount, plan.rows(names, raw)

    @staticmethod
    def _execute(
        conn: Connection, driver: sqlite3.Connection, plan: _Plan, params: Params
    ) -> tuple[StatementOutcome, list[Any]]:
        values = plan.values(params)
        try:
            return run_statement(driver, plan.sql, values)
        except sqlite3.Error as error:
            # As SQLAlchemy raises it (IntegrityError for a unique key, and so on); the
            # failed statement changed nothing, as SQLite undoes a statement that fails.
            raise DBAPIError.instance(
                plan.sql, values, error, sqlite3.Error, dialect=conn.dialect
            ) from error

    def _plan(self, conn: Connection, names: frozenset[str]) -> _Plan | None:
        if names not in self._plans:
            self._plans[names] = self._compile(conn, names)
        return self._plans[names]

    def _compile(self, conn: Connection, names: frozenset[str]) -> _Plan | None:
        dialect = conn.dialect
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
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in _returned_columns(self.statement)
        )
        return _Plan(str(compiled), tuple(binds), results)


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
        return
    try:
        driver.execute(BEGIN_IMMEDIATE).close()
    except sqlite3.Error as error:
        raise DBAPIError.instance(
            BEGIN_IMMEDIATE, (), error, sqlite3.Error, dialect=conn.dialect
        ) from error


def _returned_columns(statement: Statement) -> list[Any]:
    if isinstance(statement, Select):
        return list(statement.selected_columns)
    if isinstance(statement, UpdateBase):
        return list(statement.exported_columns)
    return []


def _direct_driver(conn: Connection) -> sqlite3.Connection | None:
    """The sqlite3 connection to run on directly, when this is a one-trip transaction on
    SQLite that nobody watches; None to go through SQLAlchemy."""
    if not in_driver_thread() or conn.engine.echo:
        return None
    if conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute:
        return None
    driver = conn.connection.dbapi_connection
    if not isinstance(driver, OneTripConnection):
        return None
    return driver.sqlite_connection
