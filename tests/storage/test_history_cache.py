"""storage.history_cache: what model calls keep of a history, and when they must not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.settings import Settings
from bot.store import HistoryEntry
from storage import statements as sql
from storage.admin import AdminStore, StuckRules
from storage.database import create_engine
from storage.history_cache import CachedHistory, HistoryCache, Reads
from storage.migrate import upgrade
from storage.models import MessageRow, SessionRow
from storage.repository import SqlStore
from storage.transaction import Work, run_transaction

PROMPT = Settings(_env_file=None).system_prompt  # type: ignore[call-arg]
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def cached(version: int, last_position: int, rows: int) -> CachedHistory:
    entries = tuple(HistoryEntry("user", f"m{n}") for n in range(rows))
    return CachedHistory(version, last_position * 10, last_position, entries)


def kept(cache: HistoryCache, session_id: int, history: CachedHistory) -> None:
    reads = Reads()
    reads.add(session_id, history)
    cache.keep(reads)


# --- the cache alone --------------------------------------------------------------------


def test_an_older_read_committing_late_never_replaces_a_newer_one() -> None:
    cache = HistoryCache()
    kept(cache, 1, cached(version=0, last_position=5, rows=5))
    kept(cache, 1, cached(version=0, last_position=4, rows=4))
    assert cache.get(1) == cached(0, 5, 5)
    # A repaired history (a later version) replaces it, even when it has fewer rows...
    kept(cache, 1, cached(version=1, last_position=3, rows=3))
    assert cache.get(1) == cached(1, 3, 3)
    # ...and a read from before the repair does not come back.
    kept(cache, 1, cached(version=0, last_position=6, rows=6))
    assert cache.get(1) == cached(1, 3, 3)
    assert cache.rows == 3


def test_past_its_row_bound_the_least_recently_kept_go_first() -> None:
    cache = HistoryCache(max_rows=10)
    for session_id in (1, 2, 3):
        kept(cache, session_id, cached(0, 4, 4))
    # 12 rows: session 1, kept first, went.
    assert (cache.get(1), len(cache), cache.rows) == (None, 2, 8)
    kept(cache, 2, cached(0, 5, 5))  # 2 is now the most recent
    kept(cache, 4, cached(0, 2, 2))
    assert cache.get(3) is None and cache.get(2) is not None and cache.rows == 7


def test_a_history_longer_than_the_whole_bound_is_not_kept() -> None:
    cache = HistoryCache(max_rows=10)
    kept(cache, 1, cached(0, 4, 4))
    kept(cache, 2, cached(0, 11, 11))
    assert cache.get(2) is None and cache.get(1) is not None and cache.rows == 4


# --- the store reading through it -----------------------------------------------------------


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def message(role: str, content: str | None, position: int, **values: Any) -> dict[str, Any]:
    return {
        "session_id": 1,
        "role": role,
        "content": content,
        "status": "history",
        "position": position,
        "turn": 1,
        "created_at": NOW,
        # Every row with every key: an executemany takes its columns from the first row.
        "tool_calls": None,
        "tool_call_id": None,
        **values,
    }


async def with_history(engine: AsyncEngine, *rows: dict[str, Any]) -> None:
    """Session 1, idle, with `rows` as its history."""

    def write(conn: Connection) -> None:
        conn.execute(
            insert(SessionRow).values(
                id=1,
                platform="test",
                chat_id="c",
                active_key="test:c:",
                state="idle",
                language="en",
                turn=1,
                tool_rounds=0,
                turn_is_admin=False,
                created_at=NOW,
                updated_at=NOW,
            )
        )
        if rows:
            conn.execute(insert(MessageRow), list(rows))

    await run_transaction(engine, write)


async def append(engine: AsyncEngine, role: str, content: str) -> None:
    """A row added the way the bot adds one: at the next position."""
    await run_transaction(
        engine,
        lambda conn: (
            sql.ADD_HISTORY_MESSAGE.run(
                conn, {**message(role, content, 0), "of_session": 1}
            ).rowcount
        ),
    )


def texts(history: Sequence[HistoryEntry]) -> list[str | None]:
    return [entry.content for entry in history]


async def test_a_model_call_reads_only_the_rows_added_since_the_last(engine: AsyncEngine) -> None:
    await with_history(engine, message("user", "hi", 1), message("assistant", "hello", 2))
    store = SqlStore(engine, history_rows=50)
    assert texts((await store.model_turn(1)).history) == ["hi", "hello"]
    assert store.histories.get(1) is not None
    await append(engine, "user", "more")
    statements: list[str] = []

    def heard(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", heard)
    try:
        history = (await store.model_turn(1)).history
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", heard)
    assert texts(history) == ["hi", "hello", "more"]
    reads = [s for s in statements if "messages.position" in s and "ORDER BY" in s]
    # One read, from the last row it had on (that row checks the copy still fits).
    assert len(reads) == 1 and "messages.position >=" in reads[0]
    held = store.histories.get(1)
    assert held is not None and (held.last_position, texts(held.entries)) == (
        3,
        ["hi", "hello", "more"],
    )


async def test_a_repair_that_reorders_older_rows_reaches_the_next_model_call(
    engine: AsyncEngine,
) -> None:
    """The repair moves a late tool result next to its call: the newest row keeps its id
    and position, so only the history's version tells a cached copy it is stale."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    await with_history(
        engine,
        message("user", "hi", 1),
        message("assistant", None, 2, tool_calls=[call]),
        message("user", "meanwhile", 3),
        message("tool", "result", 4, tool_call_id="c1"),
        message("assistant", "done", 5),
    )
    store = SqlStore(engine, history_rows=50)
    before = (await store.model_turn(1)).history
    assert texts(before) == ["hi", None, "meanwhile", "result", "done"]

    steps = (await AdminStore(engine, PROMPT).repair(1, StuckRules(), dry_run=False)).steps
    assert "move_message" in [s.code for s in steps], steps

    after = (await store.model_turn(1)).history
    assert texts(after) == ["hi", None, "result", "meanwhile", "done"]
    held = store.histories.get(1)
    assert held is not None and held.version == 1


async def test_rows_of_a_transaction_that_rolled_back_never_reach_the_cache(
    engine: AsyncEngine,
) -> None:
    """SQLite gives a rolled-back row's id to the next row: had the cache kept what the
    failed transaction read, the next read would have extended a copy that ends in a row
    that never was."""
    await with_history(engine, message("user", "hi", 1), message("assistant", "hello", 2))
    store = SqlStore(engine, history_rows=50)
    await store.model_turn(1)

    class Failed(Exception):
        pass

    def add_read_and_fail(conn: Connection, reads: Reads) -> None:
        sql.ADD_HISTORY_MESSAGE.run(conn, {**message("user", "never", 0), "of_session": 1})
        assert texts(store._model_history(conn, 1, reads))[-1] == "never"
        raise Failed

    with pytest.raises(Failed):
        await store._keeping_histories(store._run, add_read_and_fail)
    held = store.histories.get(1)
    assert held is not None and held.last_position == 2

    await append(engine, "user", "real")
    assert texts((await store.model_turn(1)).history) == ["hi", "hello", "real"]


async def test_only_the_committed_run_of_a_unit_run_twice_is_kept(engine: AsyncEngine) -> None:
    """A group commit runs a failed batch's units again; the run that commits may not read
    the history at all (the session moved on), and then the first run's read is void."""
    await with_history(engine, message("user", "hi", 1))
    store = SqlStore(engine, history_rows=50)
    runs: list[str] = []

    def work(conn: Connection, reads: Reads) -> None:
        if not runs:
            sql.ADD_HISTORY_MESSAGE.run(conn, {**message("user", "first run", 0), "of_session": 1})
            store._model_history(conn, 1, reads)
        runs.append("ran")

    async def twice(attempt: Work[None]) -> None:
        def and_fail(conn: Connection) -> None:
            attempt(conn)
            raise LookupError("the batch rolled back")

        with pytest.raises(LookupError):
            await run_transaction(engine, and_fail)
        await run_transaction(engine, attempt)

    await store._keeping_histories(twice, work)
    assert runs == ["ran", "ran"] and store.histories.get(1) is None
    assert texts((await store.model_turn(1)).history) == ["hi"]
