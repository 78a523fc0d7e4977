"""The admin's queries and repairs, on databases that real engine runs produced (SQLite, and
PostgreSQL when configured)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, inspect, select, text, update

from bot.events import DeliveryError, ReplyKind
from bot.history import INTERRUPTED_RESULT, validate
from bot.offline import FakeOpenAI
from bot.settings import Settings
from bot.tools.runner import ToolOutcome, ToolStatus
from storage.admin import (
    ALIVE_SECONDS,
    AdminStore,
    Reason,
    SessionSummary,
    StuckRules,
    UnknownSession,
    _history_fix,
    _Item,
    sqlite_file_missing,
)
from storage.database import DatabaseUnavailable, create_engine, sessionmaker
from storage.migrate import SchemaError, SchemaNotAtHead, check_schema, upgrade
from storage.models import (
    ControlRow,
    LLMCallRow,
    MessageRow,
    OutboxRow,
    SessionRow,
    ToolCallRow,
)
from storage.repository import SqlStore
from tests.conftest import CoreFactory

PROMPT = Settings(_env_file=None).system_prompt  # type: ignore[call-arg]


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[AdminStore]:
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        yield AdminStore(engine, PROMPT)
    finally:
        await engine.dispose()


# --- helpers shared with the CLI tests -----------------------------------------------------------


async def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (alembic's too), in a stable order."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            names: list[str] = await connection.run_sync(
                lambda sync: inspect(sync).get_table_names()
            )
            tables = {}
            for name in sorted(names):
                result = await connection.execute(text(f'SELECT * FROM "{name}"'))
                tables[name] = sorted(tuple(row) for row in result)
            return tables
    finally:
        await engine.dispose()


async def execute(url: str, *statements: Any) -> None:
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as tx, tx.begin():
            for statement in statements:
                await tx.execute(statement)
    finally:
        await engine.dispose()


async def fetch(url: str, model: Any, *where: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as tx:
            order = inspect(model).primary_key
            return list(await tx.scalars(select(model).where(*where).order_by(*order)))
    finally:
        await engine.dispose()


async def corrupt_history(url: str, session_id: int) -> None:
    """An assistant message with tool_calls placed in the history with no tool reply, and a
    tool message answering a call nobody made: what a buggy writer could leave behind."""
    engine = create_engine(url)
    now = datetime.now(UTC)
    call = {
        "id": "call_lost",
        "type": "function",
        "function": {"name": "get_current_time", "arguments": "{}"},
    }
    try:
        async with sessionmaker(engine)() as tx, tx.begin():
            last = await tx.scalar(
                select(func.max(MessageRow.position)).where(MessageRow.session_id == session_id)
            )
            position = (last or 0) + 1
            for offset, row in enumerate(
                [
                    MessageRow(role="assistant", content=None, tool_calls=[call]),
                    MessageRow(role="tool", content="stray", tool_call_id="call_stray"),
                ]
            ):
                row.session_id = session_id
                row.status = "history"
                row.position = position + offset
                row.turn = 1
                row.created_at = now
                tx.add(row)
    finally:
        await engine.dispose()


async def stuck_tool_session(
    make_core: CoreFactory, fake_openai: FakeOpenAI, **overrides: Any
) -> None:
    """A core that started a tool that never finishes, then went away with it running."""
    fake_openai.script_tool_calls([("never_finishes", {})])
    async with make_core(tool_timeout_seconds=30, **overrides) as (_runtime, chat):
        await chat.say("run the hanging tool")
        await chat.wait_for(1)


async def stopped_in_a_hung_model_call(
    make_core: CoreFactory, fake_openai: FakeOpenAI, url: str, *later: str
) -> None:
    """A core stopped while its model call for "hello" hangs, each of `later` queued."""
    fake_openai.script_delay(600)
    async with make_core() as (_runtime, chat):
        await chat.say("hello")
        await wait_rows(url, SessionRow, SessionRow.state == "llm")
        for text in later:
            await chat.say(text)
            await wait_rows(url, MessageRow, MessageRow.status == "queued")


async def answered(make_core: CoreFactory, text: str) -> None:
    """A core that answered `text` in chat-1 and went idle, then stopped."""
    async with make_core() as (runtime, chat):
        await chat.say(text)
        await chat.wait_for(1)
        await runtime.engine.wait_idle()


async def wait_rows(url: str, model: Any, *where: Any) -> list[Any]:
    """Polls until some row matches (the engine writes after the adapter saw the reply)."""
    import asyncio

    async with asyncio.timeout(10):
        while True:
            found = await fetch(url, model, *where)
            if found:
                return found
            await asyncio.sleep(0.02)


async def listed(admin: AdminStore, **options: Any) -> list[SessionSummary]:
    found, total = await admin.sessions(**options)
    assert total == len(found)
    return found


# --- schema --------------------------------------------------------------------------------------


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/nope/bot.db"
    assert sqlite_file_missing(url) == f"{tmp_path}/nope/bot.db"
    assert not (tmp_path / "nope").exists()
    assert sqlite_file_missing("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_file_missing("postgresql+asyncpg://u:p@h/db") is None


def test_a_missing_sqlite_file_of_a_relative_url_is_named_by_its_absolute_path(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = sqlite_file_missing("sqlite+aiosqlite:///./data/stillhere.db")
    assert missing == str(Path.cwd() / "data" / "stillhere.db")


async def test_schema_not_at_head_is_refused(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with pytest.raises(SchemaError, match="db upgrade"):
            await check_schema(engine)
        await upgrade(database_url)
        await check_schema(engine)
    finally:
        await engine.dispose()


async def test_a_schema_newer_than_the_code_is_not_called_behind(database_url: str) -> None:
    """A newer stillhere migrated it: `db upgrade` would not help, running the newer code
    would."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(SchemaNotAtHead) as caught:
            await check_schema(engine)
    finally:
        await engine.dispose()
    assert caught.value.newer
    assert "newer" in str(caught.value) and "db upgrade" not in str(caught.value)


async def test_unreachable_database_is_one_clear_error_without_the_password() -> None:
    engine = create_engine("postgresql+asyncpg://admin:s3cret-pw@127.0.0.1:1/none")
    try:
        with pytest.raises(DatabaseUnavailable, match="DATABASE_URL: cannot connect") as caught:
            await check_schema(engine)
    finally:
        await engine.dispose()
    assert "s3cret-pw" not in str(caught.value)


# --- listing and stuck sessions ------------------------------------------------------------------


async def test_answered_session_is_idle_valid_and_not_stuck(
    make_core: CoreFactory, admin: AdminStore, database_url: str
) -> None:
    await answered(make_core, "hello there")
    (summary,) = await listed(admin, rules=StuckRules())
    assert (summary.id, summary.platform, summary.chat_id) == (1, "memory", "chat-1")
    assert summary.state == "idle" and not summary.archived
    assert (summary.open_tools, summary.queued, summary.undelivered) == (0, 0, 0)
    assert summary.unanswered == 0 and summary.reasons == ()
    assert await listed(admin, rules=StuckRules(), stuck_only=True) == []
    assert await listed(admin, rules=StuckRules(), platform="telegram") == []


async def test_limit_keeps_the_newest_and_counts_all(
    make_core: CoreFactory, admin: AdminStore
) -> None:
    async with make_core() as (runtime, chat):
        await chat.say("first", chat="old")
        await chat.wait_for(1)
        await chat.say("second", chat="new")
        await chat.wait_for(2)
        await runtime.engine.wait_idle()
    found, total = await admin.sessions(rules=StuckRules(), limit=1)
    assert [s.chat_id for s in found] == ["new"] and total == 2


async def test_tool_past_timeout_plus_margin_is_stuck(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore
) -> None:
    await stuck_tool_session(make_core, fake_openai)
    rules = StuckRules(tool_margin_seconds=60)
    soon = datetime.now(UTC) + timedelta(seconds=60)
    (fresh,) = await listed(admin, rules=rules, now=soon)
    assert fresh.state == "tools" and fresh.open_tools == 1 and fresh.reasons == ()
    assert fresh.oldest_tool_seconds is not None and fresh.oldest_tool_seconds >= 60
    later = datetime.now(UTC) + timedelta(seconds=95)
    (stuck,) = await listed(admin, rules=rules, stuck_only=True, now=later)
    assert [r.code for r in stuck.reasons] == [Reason.TOOL_OVERDUE]
    assert "never_finishes" in stuck.reasons[0].text


async def test_a_model_call_past_its_timeouts_plus_margin_is_stuck(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore, database_url: str
) -> None:
    await stopped_in_a_hung_model_call(make_core, fake_openai, database_url)
    # The bot went away during the call: the session stays in llm until a bot starts.
    rules = StuckRules(tool_margin_seconds=60, llm_seconds=180)
    soon = datetime.now(UTC) + timedelta(seconds=200)
    (fresh,) = await listed(admin, rules=rules, now=soon)
    assert fresh.state == "llm" and fresh.reasons == ()
    later = datetime.now(UTC) + timedelta(seconds=250)
    (stuck,) = await listed(admin, rules=rules, stuck_only=True, now=later)
    assert [r.code for r in stuck.reasons] == [Reason.LLM_OVERDUE]
    assert "180 s" in stuck.reasons[0].text and "plus 60 s" in stuck.reasons[0].text


async def test_failed_llm_call_with_waiting_user_is_error(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore
) -> None:
    fake_openai.script_error(500, "upstream exploded")
    await answered(make_core, "first question")
    (summary,) = await listed(admin, rules=StuckRules(), stuck_only=True)
    assert summary.state == "error" and summary.stored_state == "idle"
    assert summary.unanswered == 1
    assert [r.code for r in summary.reasons] == [Reason.LLM_FAILED]
    assert "upstream exploded" in (summary.last_error or "")


async def test_a_retry_call_in_flight_after_a_failed_one_is_not_stuck(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore, database_url: str
) -> None:
    """The session's last_error stays until the retry ends: while its call runs, the
    session is working, not failed."""
    fake_openai.script_error(500, "upstream exploded")
    fake_openai.script_delay(60)  # the retry: still running while the admin looks
    async with make_core() as (runtime, chat):
        await chat.say("first question")
        await chat.wait_for(1)
        await runtime.engine.wait_idle()
        await chat.say("are you there?")
        await wait_rows(database_url, SessionRow, SessionRow.state == "llm")
        assert await listed(admin, rules=StuckRules(), stuck_only=True) == []
        (summary,) = await listed(admin, rules=StuckRules())
        assert (summary.state, summary.reasons) == ("llm", ())


async def test_undeliverable_reply_is_stuck(
    make_core: CoreFactory, admin: AdminStore, database_url: str
) -> None:
    async with make_core() as (runtime, chat):
        chat.fail_next = [DeliveryError("chat not found", permanent=True)]
        await chat.say("hi")
        await wait_rows(database_url, OutboxRow, OutboxRow.failed.is_(True))
        await runtime.engine.wait_idle()
    (summary,) = await listed(admin, rules=StuckRules(), stuck_only=True)
    assert [r.code for r in summary.reasons] == [Reason.OUTBOX_FAILED]
    assert "chat not found" in summary.reasons[0].text
    assert summary.undelivered == 1


async def test_outbox_retries_and_age_and_queued_age(
    make_core: CoreFactory, admin: AdminStore, database_url: str
) -> None:
    await answered(make_core, "hi")
    # The state a bot that died mid-way leaves: a reply tried and not sent, a message unread.
    await execute(
        database_url,
        update(OutboxRow).values(delivered_at=None, attempts=4, last_error="timeout"),
        update(MessageRow).where(MessageRow.role == "user").values(status="queued", position=None),
    )
    later = datetime.now(UTC) + timedelta(minutes=6)
    (summary,) = await listed(admin, rules=StuckRules(max_attempts=3), now=later)
    assert [r.code for r in summary.reasons] == [Reason.OUTBOX_RETRIES, Reason.QUEUED_LATE]
    assert "4 attempts" in summary.reasons[0].text and "timeout" in summary.reasons[0].text
    await execute(database_url, update(OutboxRow).values(attempts=1))
    (late,) = await listed(admin, rules=StuckRules(max_attempts=3), now=later)
    assert [r.code for r in late.reasons] == [Reason.OUTBOX_LATE, Reason.QUEUED_LATE]
    (calm,) = await listed(admin, rules=StuckRules(max_attempts=3))
    assert calm.reasons == () and calm.queued == 1


async def test_corrupted_history_is_invalid_with_rule_and_index(
    make_core: CoreFactory, admin: AdminStore, database_url: str
) -> None:
    await answered(make_core, "hello")
    await corrupt_history(database_url, 1)
    checked, invalid = await admin.invalid_histories()
    assert checked == 1 and len(invalid) == 1
    summary, problems = invalid[0]
    assert summary.id == 1
    # system, user, answer, assistant(tool_calls) at 3, stray tool at 4
    assert [(p.rule, p.index) for p in problems] == [
        ("missing_tool_response", 3),
        ("unknown_tool_call_id", 4),
    ]
    assert problems[0].position == 3 and problems[0].row_id is not None
    transcript = await admin.transcript(1, StuckRules())
    assert [(p.rule, p.index) for p in transcript.problems] == [
        ("missing_tool_response", 3),
        ("unknown_tool_call_id", 4),
    ]
    (stuck,) = await listed(admin, rules=StuckRules(), stuck_only=True)
    assert [r.code for r in stuck.reasons] == [Reason.INVALID_HISTORY]


# --- transcript ----------------------------------------------------------------------------------


async def test_transcript_marks_interims_deferred_tools_and_outbox(
    make_core: CoreFactory, admin: AdminStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support import slow_tools

    monkeypatch.setattr(slow_tools, "DELAY", 0.5)
    async with make_core() as (runtime, chat):
        await chat.say("Dame la hora actual", name="Ana")
        await chat.wait_for(1)
        await chat.say("¿Sigues ahí?", name="Ana")
        await chat.wait_for(3)
        await runtime.engine.wait_idle()
    found = await admin.transcript(1, StuckRules())
    assert found.problems == () and found.history_length == 5
    # In history order (the deferred message follows the tool result there), and the
    # instant reply, which has no place in the history, after the message it answered.
    roles = [(m.role, m.status, m.position) for m in found.messages]
    assert roles == [
        ("user", "history", 1),
        ("assistant", "history", 2),
        ("tool", "history", 3),
        ("user", "history", 4),
        ("assistant", "interim", None),
        ("assistant", "history", 5),
    ]
    call = found.messages[1].calls[0]
    assert call.name == "get_current_time" and call.status == "done"
    assert call.seconds is not None and call.result
    assert found.messages[0].author == "Ana"
    assert [o.delivery for o in found.outbox] == ["delivered"] * 3
    assert [o.kind for o in found.outbox] == ["working", "interim", "answer"]
    last_two = await admin.transcript(1, StuckRules(), last=2)
    assert [(m.role, m.status) for m in last_two.messages] == [
        ("assistant", "interim"),
        ("assistant", "history"),
    ]
    assert last_two.omitted == 4


async def test_transcript_follows_the_history_a_repair_reordered(
    make_core: CoreFactory, admin: AdminStore, database_url: str
) -> None:
    await answered(make_core, "hello")
    # A call, a user message answered at once, then the call's result: a late result
    # that a repair moves up next to its call, after rows with smaller ids.
    start = datetime.now(UTC)
    call = {
        "id": "call_late",
        "type": "function",
        "function": {"name": "get_current_time", "arguments": "{}"},
    }
    rows = [
        dict(role="assistant", tool_calls=[call], status="history", position=3),
        dict(role="user", content="meanwhile", status="history", position=4),
        dict(role="assistant", content="one moment", status="interim", position=None),
        dict(role="tool", content="12:00", tool_call_id="call_late", status="history", position=5),
    ]
    await execute(
        database_url,
        *(
            insert(MessageRow).values(
                session_id=1, turn=2, created_at=start + timedelta(seconds=n), **row
            )
            for n, row in enumerate(rows)
        ),
    )
    steps = (await admin.repair(1, StuckRules(), dry_run=False)).steps
    assert "move_message" in [s.code for s in steps]
    found = await admin.transcript(1, StuckRules())
    shown = [(m.id, m.position, m.status) for m in found.messages]
    assert shown == [
        (1, 1, "history"),
        (2, 2, "history"),
        (3, 3, "history"),
        (6, 4, "history"),  # the tool result, moved next to its call
        (4, 5, "history"),
        (5, None, "interim"),  # after "meanwhile", which it answered
    ]


async def test_unknown_session_raises(admin: AdminStore) -> None:
    with pytest.raises(UnknownSession):
        await admin.transcript(99, StuckRules())
    with pytest.raises(UnknownSession):
        await admin.repair(99, StuckRules(), dry_run=False)
    with pytest.raises(UnknownSession):
        await admin.request(99, "cancel")


# --- repair --------------------------------------------------------------------------------------


async def test_dry_run_changes_nothing_and_plans_what_repair_does(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore, database_url: str
) -> None:
    await stuck_tool_session(make_core, fake_openai)
    before = await dump(database_url)
    planned = await admin.repair(1, StuckRules(), dry_run=True)
    assert await dump(database_url) == before
    assert planned.control_id is None
    done = await admin.repair(1, StuckRules(), dry_run=False)
    assert done.steps == planned.steps
    assert [s.code for s in done.steps] == ["cancel_tool", "close_round", "recover"]
    assert await dump(database_url) != before
    (control,) = await fetch(database_url, ControlRow)
    assert done.control_id == control.id


async def test_repair_closes_the_round_like_the_engine_and_the_next_core_answers(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore, database_url: str
) -> None:
    await stuck_tool_session(make_core, fake_openai)
    await admin.repair(1, StuckRules(), dry_run=False)
    (call,) = await fetch(database_url, ToolCallRow)
    assert (call.status, call.result) == ("cancelled", "cancelled by an operator")
    (session,) = await fetch(database_url, SessionRow)
    assert session.state == "llm"
    (control,) = await fetch(database_url, ControlRow)
    assert control.action == "recover" and control.done_at is None
    history = await fetch(database_url, MessageRow, MessageRow.position.is_not(None))
    assert [m.role for m in sorted(history, key=lambda m: m.position)] == [
        "user",
        "assistant",
        "tool",
    ]
    async with make_core(tool_timeout_seconds=30) as (runtime, chat):
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[-1].message.kind is ReplyKind.ANSWER
    assert "cancelled by an operator" in sent[-1].message.text
    assert fake_openai.rejected == []


async def test_a_tool_result_stored_during_a_repair_is_not_overwritten_unseen(
    make_core: CoreFactory,
    fake_openai: FakeOpenAI,
    admin: AdminStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bot stores a tool's result while the repair, having read the call as running,
    is about to cancel it: whichever wins, the bot must not believe its result recorded
    when the repair's cancel is what the row keeps."""
    await stuck_tool_session(make_core, fake_openai)
    store = SqlStore(create_engine(database_url))
    (call,) = await fetch(database_url, ToolCallRow)
    recorded: list[asyncio.Task[bool]] = []
    real_apply = AdminStore._apply

    async def apply_while_the_bot_finishes(self: AdminStore, tx: Any, plan: Any, now: Any) -> Any:
        done = ToolOutcome(ToolStatus.DONE, "the tool's output")
        recorded.append(asyncio.create_task(store.finish_tool(call.id, done)))
        # Long enough for the bot's write to land, unless it waits for the repair.
        await asyncio.wait(recorded, timeout=0.5)
        return await real_apply(self, tx, plan, now)

    monkeypatch.setattr(AdminStore, "_apply", apply_while_the_bot_finishes)
    try:
        await admin.repair(1, StuckRules(), dry_run=False)
        bot_recorded = await asyncio.wait_for(recorded[0], 10)
    finally:
        await store.engine.dispose()
    (kept,) = await fetch(database_url, ToolCallRow)
    if bot_recorded:
        assert kept.result == "the tool's output"
    else:
        assert kept.result == "cancelled by an operator"


async def test_repair_of_a_corrupted_history_makes_it_valid(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore, database_url: str
) -> None:
    await answered(make_core, "hello")
    await corrupt_history(database_url, 1)
    steps = (await admin.repair(1, StuckRules(), dry_run=False)).steps
    assert [s.code for s in steps] == ["add_tool_result", "drop_message", "recover"]
    assert (await admin.invalid_histories())[1] == []
    rows = await fetch(database_url, MessageRow)
    dropped = [r for r in rows if r.status == "dropped"]
    assert [(r.role, r.content, r.position) for r in dropped] == [("tool", "stray", None)]
    added = [r for r in rows if r.tool_call_id == "call_lost"]
    assert [(r.content, r.position) for r in added] == [(INTERRUPTED_RESULT, 4)]
    async with make_core() as (runtime, chat):
        await chat.say("again", message_id="after-repair")
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[-1].message.kind is ReplyKind.ANSWER
    assert fake_openai.rejected == []


async def test_repair_resends_a_failed_reply(
    make_core: CoreFactory, admin: AdminStore, database_url: str
) -> None:
    async with make_core() as (runtime, chat):
        chat.fail_next = [DeliveryError("chat not found", permanent=True)]
        await chat.say("hi")
        await wait_rows(database_url, OutboxRow, OutboxRow.failed.is_(True))
        await runtime.engine.wait_idle()
    steps = (await admin.repair(1, StuckRules(), dry_run=False)).steps
    assert [s.code for s in steps] == ["reset_outbox", "recover"]
    (row,) = await fetch(database_url, OutboxRow)
    assert (row.failed, row.attempts, row.delivered_at) == (False, 0, None)
    async with make_core() as (runtime, chat):
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ANSWER
    (row,) = await fetch(database_url, OutboxRow)
    assert row.delivered_at is not None


async def test_repair_after_a_failed_llm_call_asks_again(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore
) -> None:
    fake_openai.script_error(500, "upstream exploded")
    await answered(make_core, "first question")
    steps = (await admin.repair(1, StuckRules(), dry_run=False)).steps
    assert [s.code for s in steps] == ["retry_llm", "recover"]
    async with make_core() as (runtime, chat):
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert sent[0].message.kind is ReplyKind.ANSWER
    assert "first question" in sent[0].message.text
    assert fake_openai.rejected == []


async def test_repair_queues_deferred_messages_left_without_a_round(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore, database_url: str
) -> None:
    await answered(make_core, "hi")
    # What a crash between a round's end and its deferred messages could leave.
    await execute(
        database_url,
        insert(MessageRow).values(
            session_id=1,
            role="user",
            content="still there?",
            author_name="Ana",
            status="deferred",
            turn=1,
            created_at=datetime.now(UTC),
        ),
    )
    steps = (await admin.repair(1, StuckRules(), dry_run=False)).steps
    assert [s.code for s in steps] == ["requeue_deferred", "recover"]
    async with make_core() as (runtime, chat):
        sent = await chat.wait_for(1)
        await runtime.engine.wait_idle()
    assert "still there?" in sent[0].message.text
    assert fake_openai.rejected == []


async def test_repair_of_a_healthy_idle_session_has_nothing_to_do(
    make_core: CoreFactory, admin: AdminStore, database_url: str
) -> None:
    await answered(make_core, "hi")
    before = await dump(database_url)
    for dry_run in (True, False):
        done = await admin.repair(1, StuckRules(), dry_run=dry_run)
        assert (done.steps, done.control_id) == ([], None)
    # Not even a 'recover' control for the bot, nor a touched session row.
    assert await dump(database_url) == before


async def test_repair_of_a_session_left_waiting_for_the_model_hands_it_back(
    make_core: CoreFactory, fake_openai: FakeOpenAI, admin: AdminStore, database_url: str
) -> None:
    await stopped_in_a_hung_model_call(make_core, fake_openai, database_url)
    done = await admin.repair(1, StuckRules(), dry_run=False)
    assert [s.code for s in done.steps] == ["recover"]
    (control,) = await fetch(database_url, ControlRow)
    assert (control.id, control.action, control.done_at) == (done.control_id, "recover", None)


# --- history repair mapped onto rows (pure) ------------------------------------------------------


def _call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_history_fix_moves_a_late_reply_next_to_its_call() -> None:
    items = [
        _Item(1, "user", "hi"),
        _Item(2, "assistant", None, tool_calls=[_call("c1")]),
        _Item(3, "user", "meanwhile"),
        _Item(4, "tool", "result", tool_call_id="c1"),
    ]
    fix = _history_fix(items, PROMPT)
    assert [i.row_id for i in fix.target] == [1, 2, 4, 3]
    assert [s.code for s in fix.steps] == ["move_message"]
    assert fix.dropped == []


def test_history_fix_of_a_valid_history_does_nothing() -> None:
    items = [_Item(1, "user", "hi"), _Item(2, "assistant", "hello")]
    fix = _history_fix(items, PROMPT)
    assert fix.steps == [] and [i.row_id for i in fix.target] == [1, 2]


def test_history_fix_drops_an_empty_assistant_and_orphan_and_validates() -> None:
    items = [
        _Item(1, "tool", "orphan", tool_call_id="c9"),
        _Item(2, "user", "hi"),
        _Item(3, "assistant", None),
        _Item(4, "assistant", "fine"),
    ]
    fix = _history_fix(items, PROMPT)
    assert sorted(i.row_id or 0 for i in fix.dropped) == [1, 3]
    assert {s.code for s in fix.steps} == {"drop_message"}
    messages = [{"role": "system", "content": PROMPT}]
    messages += [i.openai(name_authors=False) for i in fix.target]
    assert validate(messages) == []


# --- the running bot's heartbeat ----------------------------------------------------------------


async def test_a_worker_is_alive_while_it_beats_and_stale_after(admin: AdminStore) -> None:
    assert await admin.workers() == []
    store = SqlStore(admin.engine)
    await store.beat("main")
    await store.beat("main")  # the same row again, not a second one
    await store.beat("other")
    now = datetime.now(UTC)
    seen = {w.worker_id: w for w in await admin.workers(now)}
    assert sorted(seen) == ["main", "other"]
    assert seen["main"].alive and seen["main"].seconds_ago < 5
    later = {w.worker_id: w for w in await admin.workers(now + timedelta(minutes=4))}
    assert not later["main"].alive and later["main"].seconds_ago >= 240
    assert later["main"].last_seen == seen["main"].last_seen


async def test_a_beat_records_the_intake_problem_it_is_given_and_clears_it(
    admin: AdminStore,
) -> None:
    store = SqlStore(admin.engine)
    await store.beat("main", "telegram since 2026-12-03 07:00:00 UTC: fetching updates fails")
    [worker] = await admin.workers()
    assert worker.intake_problem == "telegram since 2026-12-03 07:00:00 UTC: fetching updates fails"
    await store.beat("main")
    [worker] = await admin.workers()
    assert worker.intake_problem is None


def test_a_worker_stays_alive_across_several_missed_beats() -> None:
    from bot.engine import CONTROL_POLL_SECONDS, HEARTBEAT_EVERY_POLLS

    # A beat late behind a slow control or a locked database is no reason to call the
    # bot dead: only several missed ones are.
    assert ALIVE_SECONDS >= 3 * HEARTBEAT_EVERY_POLLS * CONTROL_POLL_SECONDS


# --- usage ---------------------------------------------------------------------------------------


async def test_usage_per_user_and_chat_today_and_month(
    admin: AdminStore, database_url: str
) -> None:
    now = datetime(2026, 5, 15, 12, 0, tzinfo=UTC)
    stamp = datetime(2026, 5, 1, tzinfo=UTC)
    engine = create_engine(database_url)
    try:
        async with sessionmaker(engine)() as tx, tx.begin():
            session = SessionRow(
                platform="telegram",
                chat_id="42",
                thread_id="",
                active_key="telegram:42:",
                state="idle",
                created_at=stamp,
                updated_at=stamp,
            )
            tx.add(session)
            await tx.flush()
            for user, when, tokens in [
                ("u1", datetime(2026, 5, 15, 9, tzinfo=UTC), 100),
                ("u1", datetime(2026, 5, 2, tzinfo=UTC), 50),
                ("u2", datetime(2026, 5, 15, 11, tzinfo=UTC), 7),
                ("u1", datetime(2026, 4, 30, tzinfo=UTC), 1000),  # last month: not counted
            ]:
                tx.add(
                    LLMCallRow(
                        session_id=session.id,
                        user_id=user,
                        chat_key="telegram:42",
                        ok=True,
                        prompt_tokens=tokens,
                        completion_tokens=0,
                        created_at=when,
                    )
                )
    finally:
        await engine.dispose()
    lines = {(line.scope, line.id): line for line in await admin.usage(now)}
    u1, u2 = lines[("user", "u1")], lines[("user", "u2")]
    assert (u1.calls_today, u1.tokens_today, u1.calls_month, u1.tokens_month) == (1, 100, 2, 150)
    assert (u2.tokens_today, u2.tokens_month) == (7, 7)
    chat = lines[("chat", "telegram:42")]
    assert (chat.tokens_today, chat.tokens_month, chat.calls_month) == (107, 157, 3)
    assert lines[("total", "all")].tokens_month == 157
