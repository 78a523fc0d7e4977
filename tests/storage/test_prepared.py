"""Prepared statements: run on the driver itself (on SQLite inside a one-trip transaction,
on sqlite3; on PostgreSQL on asyncpg), with the same values in and out as SQLAlchemy's
execution, its defaults and its exceptions; everywhere else, and whenever someone watches
the connection, through SQLAlchemy. Runs on SQLite and on PostgreSQL (see conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    exists,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

import storage.prepared
from storage.models import UTCDateTime
from storage.prepared import BEGIN_IMMEDIATE, Prepared, Rows
from storage.transaction import run_transaction
from tests.support.tables import engine_with

ITEMS = Table(
    "prepared_items",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("key", String(20), unique=True, nullable=False),
    Column("at", UTCDateTime, nullable=True),
    Column("flag", Boolean, default=False),
    Column("data", JSON, nullable=True),
    Column("count", Integer, default=0),
)
ADD = Prepared(insert(ITEMS).returning(*ITEMS.c, sort_by_parameter_order=True))
ADD_QUIETLY = Prepared(insert(ITEMS))
LISTED = Prepared(
    select(ITEMS.c.key, ITEMS.c.at, ITEMS.c.flag, ITEMS.c.data)
    .where(ITEMS.c.key != "hidden", ITEMS.c.count >= bindparam("least"))
    .order_by(ITEMS.c.id)
)
BUMP = Prepared(
    update(ITEMS)
    .where(ITEMS.c.key == bindparam("k"))
    .values(count=ITEMS.c.count + 1, at=bindparam("at", type_=ITEMS.c.at.type))
    .returning(ITEMS.c.count, ITEMS.c.at)
)
ANY_FLAGGED = Prepared(select(exists().where(ITEMS.c.flag.is_(True)).label("any_flagged")))
BY_KEYS = Prepared(
    select(ITEMS.c.key).where(ITEMS.c.key.in_(bindparam("keys", expanding=True))).order_by("key")
)
STAMP = datetime(2026, 12, 2, 16, 30, 5, 123456, tzinfo=UTC)
FIRST = {"key": "a", "at": STAMP, "flag": True, "data": {"list": [1, "ñ"], "none": None}}
SECOND = {"key": "b", "at": None, "data": None}  # flag and count from the column defaults


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with(database_url, ITEMS.metadata) as engine:
        yield engine


@pytest.fixture
def direct_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements run on the driver itself (sqlite3 or asyncpg) from now on."""
    runs: list[str] = []
    for name in ("run_statement", "run_on_asyncpg"):
        run = getattr(storage.prepared, name)

        def counted(*args: Any, run: Any = run) -> Any:
            # Both take (..., operation, parameters). SQLite's writing transactions begin
            # with BEGIN IMMEDIATE the same way, but it is not a statement of the test's.
            if args[-2] != BEGIN_IMMEDIATE:
                runs.append(args[-2])
            return run(*args)

        monkeypatch.setattr(storage.prepared, name, counted)
    return runs


def table(rows: Rows | list[Any]) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in rows]


async def test_values_in_and_out_are_sqlalchemys(
    engine: AsyncEngine, direct_runs: list[str]
) -> None:
    """Bind processing (an aware datetime, a boolean, JSON), the columns' defaults, the
    rows returned in order, and each read the same as SQLAlchemy's execution of it."""

    def work(conn: Connection) -> dict[str, Any]:
        added = ADD.run(conn, FIRST).all() + ADD.run(conn, SECOND).all()
        reads: dict[str, tuple[Prepared, dict[str, Any]]] = {
            "listed": (LISTED, {"least": 0}),
            "bumped": (BUMP, {"k": "a", "at": STAMP}),
            "any_flagged": (ANY_FLAGGED, {}),
        }
        seen = {
            "added": table(added),
            "stored": table(conn.execute(select(ITEMS).order_by(ITEMS.c.id))),
        }
        for name, (statement, params) in reads.items():
            seen[name] = table(statement.run(conn, params))
            seen[f"{name} by sqlalchemy"] = table(conn.execute(statement.statement, params))
        return seen

    seen = await run_transaction(engine, work)
    assert seen["added"] == seen["stored"]
    first, second = seen["stored"]
    assert first == {"id": first["id"], "count": 0, **FIRST}
    assert first["at"].tzinfo is UTC
    assert second == {
        "id": second["id"],
        "key": "b",
        "at": None,
        "flag": False,
        "data": None,
        "count": 0,
    }
    assert (
        seen["listed"]
        == seen["listed by sqlalchemy"]
        == [
            {k: v for k, v in row.items() if k in ("key", "at", "flag", "data")}
            for row in (first, second)
        ]
    )
    # The update ran twice, once each way.
    assert seen["bumped"] == [{"count": 1, "at": STAMP}]
    assert seen["bumped by sqlalchemy"] == [{"count": 2, "at": STAMP}]
    assert seen["any_flagged"] == seen["any_flagged by sqlalchemy"] == [{"any_flagged": True}]
    assert len(direct_runs) == 5, direct_runs


@dataclass
class Listed:
    key: str
    at: datetime | None
    flag: bool
    data: Any


async def test_built_rows_hold_the_values_run_returns(
    engine: AsyncEngine, direct_runs: list[str]
) -> None:
    """`build` makes each row as the caller's type from the same converted values `run`
    returns (an aware datetime, a boolean, JSON), in order."""

    def work(conn: Connection) -> tuple[list[Listed], list[Listed]]:
        ADD.run(conn, FIRST)
        ADD.run(conn, SECOND)
        built = LISTED.build(conn, {"least": 0}, Listed)
        return built, [Listed(*row) for row in LISTED.run(conn, {"least": 0})]

    built, ran = await run_transaction(engine, work)
    assert built == ran
    assert [(b.key, b.at, b.flag, b.data) for b in built] == [
        ("a", STAMP, True, FIRST["data"]),
        ("b", None, False, None),
    ]
    assert built[0].at is not None and built[0].at.tzinfo is UTC
    assert len(direct_runs) == 4, direct_runs


def dedupe_insert(engine: AsyncEngine) -> Prepared:
    make = postgresql_insert if engine.dialect.name == "postgresql" else sqlite_insert
    return Prepared(make(ITEMS).on_conflict_do_nothing())


async def test_rowcount_counts_what_changed(engine: AsyncEngine) -> None:
    ignoring = dedupe_insert(engine)

    def work(conn: Connection) -> list[int]:
        added = [ignoring.run(conn, {"key": key}).rowcount for key in ("a", "a", "b")]
        bumped = [BUMP.run(conn, {"k": key, "at": STAMP}).rowcount for key in ("a", "zz")]
        return added + bumped

    assert await run_transaction(engine, work) == [1, 0, 1, 1, 0]


async def test_a_failing_statement_raises_as_sqlalchemy_and_changes_nothing(
    engine: AsyncEngine,
) -> None:
    await run_transaction(engine, lambda conn: ADD.run(conn, FIRST))

    def again(conn: Connection) -> None:
        ADD_QUIETLY.run(conn, {"key": "new"})
        ADD.run(conn, FIRST)

    with pytest.raises(IntegrityError):
        await run_transaction(engine, again)
    keys = await run_transaction(
        engine, lambda conn: [r.key for r in LISTED.run(conn, {"least": 0})]
    )
    assert keys == ["a"]


async def test_what_only_sqlalchemy_can_run_goes_through_it(
    engine: AsyncEngine, direct_runs: list[str]
) -> None:
    """An expanding IN list; on PostgreSQL a batch of parameter sets (SQLAlchemy sends it
    in one round trip); on SQLite a connection outside the driver's thread (here: the
    greenlet of `run_sync`), where sqlite3 is not this code's to use. On PostgreSQL that
    greenlet is where every transaction runs, and asyncpg is used directly there."""
    postgres = engine.dialect.name == "postgresql"
    await run_transaction(
        engine, lambda conn: ADD_QUIETLY.run(conn, [FIRST, {**FIRST, "key": "b"}])
    )
    batch, in_list = list(direct_runs), []
    direct_runs.clear()
    keys = await run_transaction(
        engine, lambda conn: [r.key for r in BY_KEYS.run(conn, {"keys": ["b", "a", "zz"]})]
    )
    in_list, outside = list(direct_runs), direct_runs
    direct_runs.clear()
    async with engine.connect() as conn:
        listed = await conn.run_sync(lambda sync: table(LISTED.run(sync, {"least": 0})))
    assert keys == ["a", "b"]
    assert [row["key"] for row in listed] == ["a", "b"]
    assert in_list == []
    assert len(batch) == (0 if postgres else 2)
    assert len(outside) == (1 if postgres else 0)


async def test_a_watched_connection_sees_every_statement(
    engine: AsyncEngine, direct_runs: list[str]
) -> None:
    """Tracing, statement counts in tests, echo: listeners hear every statement."""
    heard: list[str] = []

    def note(*args: Any) -> None:
        heard.append(args[2])

    # A transaction nobody watched first: what it found out is not kept for the next.
    await run_transaction(engine, lambda conn: ADD.run(conn, FIRST))
    unwatched = len(direct_runs)
    event.listen(engine.sync_engine, "before_cursor_execute", note)
    await run_transaction(engine, lambda conn: ADD.run(conn, SECOND))
    # On SQLite a writing transaction takes its write lock first (storage.transaction).
    begin = ["BEGIN"] if engine.dialect.name == "sqlite" else []
    assert [statement.split()[0] for statement in heard] == [*begin, "INSERT"]
    assert len(direct_runs) == unwatched


async def test_a_connection_the_server_dropped_is_not_pooled_again(engine: AsyncEngine) -> None:
    """As SQLAlchemy's execution does: the error says the connection was invalidated, and
    the next transaction gets a new one instead of failing on the dead one."""
    if engine.dialect.name != "postgresql":
        pytest.skip("a server's connection: SQLite has none")
    pid = await run_transaction(
        engine, lambda conn: conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    )
    # From outside the pool, whose one idle connection is the one to drop.
    server = await asyncpg.connect(
        engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await server.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await server.close()
    with pytest.raises(DBAPIError) as raised:
        await run_transaction(engine, lambda conn: LISTED.run(conn, {"least": 0}).all())
    assert raised.value.connection_invalidated
    assert await run_transaction(engine, lambda conn: LISTED.run(conn, {"least": 0}).all()) == []
