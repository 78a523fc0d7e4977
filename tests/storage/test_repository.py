"""SqlStore: the start-up repair on a database a stopped core left behind, and a message
taken in while another worker closes the round."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event, select

import storage.repository
from bot.events import ConversationKey, InboundMessage
from bot.history import validate
from bot.llm import ToolCallRequest, Usage
from bot.offline import FakeOpenAI
from bot.prompt import PromptStats, build_request, history_rows, to_openai
from bot.store import (
    Intake,
    InterimContext,
    PlannedCall,
    PlannedInterim,
    QueuedMessage,
    SessionInfo,
    SessionState,
)
from bot.tools.runner import ToolOutcome, ToolStatus
from storage.database import create_engine, sessionmaker
from storage.history_cache import Reads
from storage.migrate import upgrade
from storage.models import MessageRow, SessionRow, ToolCallRow
from storage.repository import INTAKE_BATCH, SqlStore
from storage.transaction import run_transaction
from tests.conftest import core_settings, started_core
from tests.support import slow_tools
from tests.support.held import Hold

BUSY_CHATS = 12


async def test_repair_closes_every_interrupted_round_in_a_few_statements_for_all(
    database_url: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slow_tools, "DELAY", 30)
    monkeypatch.setattr(slow_tools, "_slow_once_calls", 0)
    settings = core_settings(database_url, fake_openai)
    async with started_core(settings) as (_core, chat):
        await chat.say("hello", chat="idle")
        await chat.wait_for(1)
        fake_openai.script_tool_calls([("get_current_time", {}), ("slow_once", {})])
        await chat.say("do two things", chat="rerun")
        await chat.wait_for(2)
        busy = [f"busy-{n}" for n in range(BUSY_CHATS)]
        for name in busy:
            await chat.say("Dame la hora actual", chat=name)
        await chat.wait_for(2 + BUSY_CHATS)
        await chat.say("¿sigues ahí?", chat="busy-0")  # deferred: joins after the result
        await chat.say("still there?", chat="rerun")
        await chat.wait_for(4 + BUSY_CHATS)
    # The core stopped as a deploy stops it: every tool still running, nothing closed.

    engine = create_engine(settings.database_url)
    statements: list[str] = []

    def count(*args: Any) -> None:
        if args[2] != "BEGIN IMMEDIATE":  # SQLite's start of each writing transaction
            statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    store = SqlStore(engine)
    try:
        closed = await store.repair_after_restart({"slow_once"}, max_reruns=3)
        repair_statements = len(statements)
        async with sessionmaker(engine)() as tx:
            sessions = {row.chat_id: row for row in await tx.scalars(select(SessionRow))}
            calls = list(await tx.scalars(select(ToolCallRow).order_by(ToolCallRow.id)))
            deferred = list(
                await tx.scalars(select(MessageRow).where(MessageRow.status == "deferred"))
            )
            # A session with no open round: nothing to place, nothing changes.
            await tx.run_sync(store.place_rounds, [sessions["idle"].id])
            await tx.commit()
        histories = {
            name: [to_openai(e, name_authors=False) for e in await store.history(row.id)]
            for name, row in sessions.items()
        }
    finally:
        await engine.dispose()

    assert closed == BUSY_CHATS
    # One statement for the calls, then a handful per batch of sessions: not per session.
    assert repair_statements <= 10 < BUSY_CHATS
    assert {name: row.state for name, row in sessions.items()} == {
        "idle": SessionState.IDLE,
        "rerun": SessionState.TOOLS,  # slow_once may run again: the engine re-runs it
        **{name: SessionState.LLM for name in busy},
    }
    by_session = {row.id: name for name, row in sessions.items()}
    assert sorted((by_session[c.session_id], c.name, c.status, c.result) for c in calls) == sorted(
        [
            ("rerun", "get_current_time", "interrupted", "interrupted by a restart"),
            ("rerun", "slow_once", "running", None),
            *[(n, "get_current_time", "interrupted", "interrupted by a restart") for n in busy],
        ]
    )
    assert [by_session[m.session_id] for m in deferred] == ["rerun"]
    assert [m["role"] for m in histories["busy-0"]] == ["user", "assistant", "tool", "user"]
    assert histories["busy-0"][-1]["content"] == "¿sigues ahí?"
    assert histories["busy-0"][2]["content"] == "interrupted by a restart"
    assert [m["role"] for m in histories["idle"]] == ["user", "assistant"]
    for name in busy:
        assert validate([{"role": "system", "content": "s"}, *histories[name]]) == []


def reply_to_each(
    info: SessionInfo, queued: Sequence[QueuedMessage], context: InterimContext
) -> list[PlannedInterim]:
    return [PlannedInterim(m.id, "still on it", "status", info.language) for m in queued]


CHAT = ConversationKey("memory", "chat-1", "")


def said(text: str, message_id: str) -> InboundMessage:
    return InboundMessage(CHAT, "u1", "Ana", text, message_id, True, True)


@asynccontextmanager
async def two_workers(database_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore, int]]:
    """Worker one's and worker two's stores on one database, and a session whose turn
    (started by "what time is it") waits for the model."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        one, two = SqlStore(engine, worker="one"), SqlStore(engine, worker="two")
        started = await one.record_inbound(said("what time is it", "m1"), "en", reply_to_each)
        assert started is not None and started.turn is not None
        yield one, two, started.info.id
    finally:
        await engine.dispose()


@asynccontextmanager
async def taken_in_and_held(
    store: SqlStore, message: InboundMessage, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[asyncio.Task[Intake | None]]:
    """Takes `message` in and holds its transaction open (the message stored, the session
    row written) until the block ends; the task then finishes it."""
    held = Hold()
    real_intake = store._intake

    def holding(*args: Any) -> Intake:
        held.hold()
        return real_intake(*args)

    monkeypatch.setattr(store, "_intake", holding)
    task = asyncio.create_task(store.record_inbound(message, "en", reply_to_each))
    await held.inside.wait()
    try:
        yield task
    finally:
        held.release()


async def test_a_round_closing_while_a_message_is_taken_in_waits_and_places_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker takes a message in while the session runs tools, the other closes the
    round. Taking a message in locks the session row (the one SQLite connection does the
    same), so the round closes after the message is deferred and places it after the tool
    result; closing first would leave the deferred message out of the history."""
    async with two_workers(database_url) as (taking_in, closing, session_id):
        request = ToolCallRequest("call_1", "get_current_time", "{}")
        tool_round = await closing.record_tool_calls(
            session_id, None, [PlannedCall(request, 30.0)], "working", Usage()
        )
        done = ToolOutcome(ToolStatus.DONE, "12:00")
        assert await closing.finish_tool(tool_round.calls[0].id, done)
        message = said("still there?", "m2")
        async with taken_in_and_held(taking_in, message, monkeypatch) as intake_task:
            close_task = asyncio.create_task(closing.close_tool_round(session_id))
            await asyncio.sleep(0.3)
            assert not close_task.done()  # waiting for the message's transaction
        intake = await intake_task
        turn = await close_task
    assert intake is not None and [p.text for p in intake.planned] == ["still on it"]
    assert turn is not None
    assert [(e.role, e.content) for e in turn.history] == [
        ("user", "what time is it"),
        ("assistant", None),
        ("tool", "12:00"),
        ("user", "still there?"),
    ]


async def test_an_answer_recorded_while_a_message_is_taken_in_sees_it_queued(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker takes a message in while the model writes (it stays queued), the other
    records the answer. The answer waits for the message's transaction and then sees it
    queued, so the next turn starts; otherwise neither would start it."""
    async with two_workers(database_url) as (taking_in, answering, session_id):
        message = said("and tomorrow?", "m2")
        async with taken_in_and_held(taking_in, message, monkeypatch) as intake_task:
            answer_task = asyncio.create_task(
                answering.record_answer(session_id, "It is noon.", Usage())
            )
            await asyncio.sleep(0.3)
            assert not answer_task.done()  # waiting for the message's transaction
        intake = await intake_task
        end = await answer_task
    assert intake is not None and intake.turn is None and not intake.planned
    assert end.queued


@asynccontextmanager
async def sqlite_file_store_with_a_turn(path: Path) -> AsyncIterator[tuple[SqlStore, Intake]]:
    """A migrated SQLite file at `path`, worker "one"'s store on it, and a turn it started."""
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    engine = create_engine(url)
    try:
        store = SqlStore(engine, worker="one")
        started = await store.record_inbound(said("what time is it", "m1"), "en", reply_to_each)
        assert started is not None
        yield store, started
    finally:
        await engine.dispose()


async def test_on_sqlite_taking_queued_messages_reads_them_under_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (`admin repair`) must not change the session between the state
    read here and the turn started from it."""
    path = tmp_path / "bot.db"
    async with sqlite_file_store_with_a_turn(path) as (store, started):
        assert started.turn is not None
        await store.record_inbound(said("and tomorrow?", "m2"), "en", reply_to_each)
        assert (await store.record_answer(started.info.id, "noon", Usage())).queued
        interleaved: list[bool] = []
        real_intake = store._intake

        def intake(conn: Any, session: Any, *args: Any) -> Intake:
            # The session row is read: could another process write before the turn starts?
            other = sqlite3.connect(path, timeout=0)
            try:
                other.execute("UPDATE sessions SET updated_at = updated_at")
                other.commit()
                interleaved.append(True)
            except sqlite3.OperationalError:
                interleaved.append(False)
            finally:
                other.close()
            return real_intake(conn, session, *args)

        monkeypatch.setattr(store, "_intake", intake)
        taken = await store.take_queued(started.info.id, reply_to_each)
    assert taken.turn is not None
    assert interleaved == [False]


async def test_on_sqlite_reads_go_on_while_another_process_writes(tmp_path: Path) -> None:
    """What only reads takes no write lock: the admin CLI's repair does not stall them."""
    path = tmp_path / "bot.db"
    async with sqlite_file_store_with_a_turn(path) as (store, started):
        session_id = started.info.id
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        other = sqlite3.connect(path, timeout=0)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with asyncio.timeout(2):  # far under the 5 s a locked write waits
                reads = [
                    await store.get_session(session_id),
                    await store.active_session_id(CHAT),
                    await store.history(session_id),
                    await store.model_turn(session_id),
                    await store.open_tool_calls(session_id),
                    await store.sessions_needing_work(),
                    await store.sessions_with_undelivered(),
                    await store.pending_controls(),
                    await store.token_totals("u1", "memory:chat-1", midnight, midnight),
                ]
        finally:
            other.rollback()
            other.close()
    assert reads[1] == session_id
    assert reads[5] == [session_id]  # its turn waits for the model


async def test_a_long_chat_reads_only_the_history_its_request_can_use(
    database_url: str, fake_openai: FakeOpenAI
) -> None:
    budget = 120  # history_rows(120) == 21: a few turns
    settings = core_settings(database_url, fake_openai, context_budget_tokens=budget)
    async with started_core(settings) as (runtime, chat):
        store = runtime.engine.store
        assert isinstance(store, SqlStore) and store.history_rows == history_rows(budget)
        answers = 0
        for number in range(14):
            if number % 4 == 1:  # some turns run a tool: blocks the window must not split
                fake_openai.script_tool_calls([("get_current_time", {})])
            await chat.say(f"message {number}", chat="long")
            answers += 2 if number % 4 == 1 else 1
            await chat.wait_for(answers)
        full = await store.history(1)
        # Every turn after the first read only its new rows (storage.history_cache)...
        assert store.histories.get(1) is not None
        window = await run_transaction(
            runtime.db, lambda conn: store._model_history(conn, 1, Reads())
        )
        # ...and what they made is what a store with nothing cached reads.
        cold = SqlStore(runtime.db, history_rows=store.history_rows)
        read_whole = await run_transaction(
            runtime.db, lambda conn: cold._model_history(conn, 1, Reads())
        )

    assert window == read_whole
    assert len(full) > store.history_rows >= len(window) > 0
    # The newest rows, starting at a turn's first message.
    assert window == full[len(full) - len(window) :]
    assert window[0].role == "user" and full[len(full) - len(window) - 1].role != "user"
    # And the last request is what the whole history would have made.
    last = fake_openai.requests[-1]["messages"]
    assert last == build_request(
        system_prompt=settings.system_prompt,
        entries=full[:-1],  # the answer to it came after
        name_authors=False,
        note=None,
        budget_tokens=budget,
        max_user_run=settings.max_deferred_messages,
        stats=PromptStats(),
        session_label="s",
    )


async def test_each_store_call_of_a_turn_is_one_trip_to_sqlites_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storing a message, starting tools, an instant reply, closing the round, the answer,
    each delivery: one trip each (storage.transaction), not one per statement."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'trips.db'}"
    await upgrade(url)
    engine = create_engine(url)
    trips: list[str] = []
    real = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    store = SqlStore(engine, worker="main")
    try:
        await store.record_inbound(said("what time is it", "m1"), "en", reply_to_each)
        first = (await store.record_answer(1, "noon", Usage())).ready[0]
        session_id = first.session_id
        await store.mark_delivered(first.id, "sent-1")
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
        calls: dict[str, int] = {}

        async def counted(name: str, call: Awaitable[Any]) -> Any:
            before = len(trips)
            result = await call
            calls[name] = len(trips) - before
            return result

        started = await counted(
            "record_inbound", store.record_inbound(said("and now?", "m2"), "en", reply_to_each)
        )
        assert started is not None and started.turn is not None
        request = ToolCallRequest("call_1", "get_current_time", "{}")
        tool_round = await counted(
            "record_tool_calls",
            store.record_tool_calls(
                session_id, None, [PlannedCall(request, 30.0)], "working", Usage()
            ),
        )
        await counted("mark_delivered", store.mark_delivered(tool_round.ready[0].id, "sent-2"))
        await counted("mark_tool_running", store.mark_tool_running(tool_round.calls[0].id))
        instant = await counted(
            "record_inbound (instant reply)",
            store.record_inbound(said("still there?", "m3"), "en", reply_to_each),
        )
        assert instant is not None and instant.planned and instant.ready
        done = ToolOutcome(ToolStatus.DONE, "12:00")
        await counted("finish_tool", store.finish_tool(tool_round.calls[0].id, done))
        await counted("close_tool_round", store.close_tool_round(session_id))
        await counted("record_answer", store.record_answer(session_id, "It is noon.", Usage()))
    finally:
        await engine.dispose()
    assert calls == {
        "record_inbound": 1,
        "record_tool_calls": 1,
        "mark_tool_running": 1,
        "record_inbound (instant reply)": 1,
        "mark_delivered": 1,
        "finish_tool": 1,
        "close_tool_round": 1,
        "record_answer": 1,
    }


async def test_messages_taken_in_at_once_commit_a_few_at_a_time(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every message of a transaction waits for all of it before its instant reply can
    go out: a burst is taken in `INTAKE_BATCH` messages at a time, not 64."""
    # One batch at a time, as on SQLite: on PostgreSQL a second batch in flight would
    # race the held one to create the conversation's session, fail on its unique key and
    # run its units again alone (correct, but more transactions than batches counted).
    monkeypatch.setattr(storage.repository, "POSTGRES_BATCHES_IN_FLIGHT", 1)
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        store = SqlStore(engine)
        burst = 10
        assert burst > INTAKE_BATCH  # else one transaction would hold them all anyway
        async with taken_in_and_held(store, said("first", "m0"), monkeypatch) as first:
            messages = [said(f"n{n}", f"m{n + 1}") for n in range(burst)]
            arriving = [
                asyncio.create_task(store.record_inbound(message, "en", reply_to_each))
                for message in messages
            ]
            await asyncio.sleep(0.05)  # every one of them queued behind the first
            assert not any(task.done() for task in arriving)
        intakes = await asyncio.gather(first, *arriving)
    finally:
        await engine.dispose()
    assert all(intake is not None for intake in intakes)
    batches = -(-burst // INTAKE_BATCH)
    assert (store._group.transactions, store._group.units) == (1 + batches, 1 + burst)


async def test_a_reply_handed_over_by_its_write_is_the_reply_the_outbox_holds(
    database_url: str,
) -> None:
    """What a write claims and hands to the courier is built from what it inserted; read
    back from the outbox, the same reply comes out, field for field."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    topic = ConversationKey("memory", "chat-2", "topic-7")

    def in_topic(text: str, message_id: str) -> InboundMessage:
        return InboundMessage(topic, "u9", "Bo", text, message_id, False, True)

    try:
        store = SqlStore(engine, worker="main")
        started = await store.record_inbound(in_topic("what time is it", "m1"), "en", reply_to_each)
        assert started is not None and started.turn is not None
        request = ToolCallRequest("call_1", "get_current_time", "{}")
        tool_round = await store.record_tool_calls(
            started.info.id, None, [PlannedCall(request, 30.0)], "working", Usage()
        )
        await store.mark_delivered(tool_round.ready[0].id, "sent-1")
        instant = await store.record_inbound(in_topic("still there?", "m2"), "en", reply_to_each)
        assert instant is not None and len(instant.ready) == 1
        claim = await store.claim_undelivered(started.info.id, "main", lease_seconds=60)
        assert claim.items == instant.ready
        (reply,) = instant.ready
        assert (reply.key, reply.reply_to_id, reply.text) == (topic, "m2", "still on it")
    finally:
        await engine.dispose()
