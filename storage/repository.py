"""The engine's storage: the only module with SQL for the running bot.

Concurrency: every state change is a compare-and-set on `sessions.state` inside the
transaction that makes it (UPDATE ... WHERE state = expected), so two workers sharing a
PostgreSQL database can never both start or close the same turn; the loser sees zero rows
updated and leaves the session to the winner.

Each transaction is a plain function of a sync connection (`storage.transaction`): on
SQLite it runs whole in aiosqlite's thread, one trip, where awaiting each statement would
cost a trip per statement.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import groupby
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from bot.courier import CLAIM_LEASE_SECONDS
from bot.events import ConversationKey, InboundMessage, ReplyKind
from bot.guards.budget import TokenTotals
from bot.llm import Usage
from bot.store import (
    Control,
    HistoryEntry,
    Intake,
    InterimContext,
    InterimPlanner,
    ModelTurn,
    OutboxClaim,
    OutboxItem,
    PlannedCall,
    QueuedMessage,
    SessionInfo,
    SessionMovedOn,
    SessionState,
    ToolCallInfo,
    ToolRound,
    TurnEnd,
)
from bot.tools.runner import INTERRUPTED, ToolOutcome, ToolStatus
from storage import statements as sql
from storage.group_commit import GroupCommit
from storage.history_cache import CachedHistory, HistoryCache, Reads
from storage.models import (
    ControlRow,
    LLMCallRow,
    MessageRow,
    OutboxRow,
    ProcessedUpdateRow,
    SessionRow,
    ToolCallRow,
    WorkerRow,
)
from storage.prepared import AnyRow, Prepared
from storage.statements import MESSAGES, SESSIONS, TOOL_CALLS
from storage.transaction import Work, run_transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

UNFINISHED = (ToolStatus.PENDING.value, ToolStatus.RUNNING.value)
# Sessions whose interrupted rounds one start-up transaction closes: few statements for
# all of them, short enough that a new message waits on it for milliseconds.
REPAIR_BATCH = 500
# The most messages taken in together (`GroupCommit`): their instant replies wait for the
# whole transaction. Measured through python-telegram-bot, a burst of 100 chats was
# answered at p50 in half the time with 4 as with 64 (bench/RESULTS.md); other writes,
# which no reply waits on as closely, still share transactions of up to 64.
INTAKE_BATCH = 4
# How long a delivery record may wait to share another write's transaction
# (`mark_delivered(join_next_write=True)`). A busy bot writes far sooner and pays no
# transaction for it; the price is a window this long in which a crash re-posts the reply.
DELIVERY_JOIN_SECONDS = 0.05
# Group-commit batches committing at once on PostgreSQL (SQLite: one, its one writer).
# With one, the bot waited for the server's round trips one statement at a time: two
# raised core_throughput's answered messages/s by half (bench/RESULTS.md, session 13).
POSTGRES_BATCHES_IN_FLIGHT = 2


def now() -> datetime:
    return datetime.now(UTC)


def active_key(key: ConversationKey) -> str:
    return f"{key.platform}:{key.chat_id}:{key.thread_id}"


def _positioned(row_id: int, position: int, *entry: Any) -> tuple[int, int, HistoryEntry]:
    return row_id, position, HistoryEntry(*entry)


def _session_info(row: SessionRow | Row[Any]) -> SessionInfo:
    return SessionInfo(
        id=row.id,
        key=ConversationKey(row.platform, row.chat_id, row.thread_id),
        state=row.state,
        language=row.language,
        turn=row.turn,
        tool_rounds=row.tool_rounds,
        is_private=row.is_private,
        chat_title=row.chat_title,
        reply_to_id=row.reply_to_id,
        reply_to_user_id=row.reply_to_user_id,
        turn_user_id=row.turn_user_id,
        turn_is_admin=row.turn_is_admin,
        last_error=row.last_error,
        archived=row.active_key is None,
    )


def _tool_info(row: Row[Any]) -> ToolCallInfo:
    return ToolCallInfo(
        id=row.id,
        call_id=row.call_id,
        name=row.name,
        arguments=row.arguments,
        status=ToolStatus(row.status),
        timeout_seconds=row.timeout_seconds,
        attempts=row.attempts,
        started_at=row.started_at,
        result=row.result,
    )


def _outbox_item(row: Row[Any]) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        session_id=row.session_id,
        key=ConversationKey(row.platform, row.chat_id, row.thread_id),
        reply_to_id=row.reply_to_id,
        reply_to_user_id=row.reply_to_user_id,
        kind=ReplyKind(row.kind),
        text=row.text,
        attempts=row.attempts,
    )


def _claimable(worker: str, stamp: datetime) -> Any:
    """Free, already this worker's (a restart takes its own claims back at once), or held
    under a lease that ran out (its worker died)."""
    return or_(
        OutboxRow.claimed_by.is_(None),
        OutboxRow.claimed_by == worker,
        OutboxRow.claimed_until < stamp,
    )


class SqlStore:
    def __init__(
        self,
        engine: AsyncEngine,
        worker: str | None = None,
        lease_seconds: float = CLAIM_LEASE_SECONDS,
        history_rows: int | None = None,
    ) -> None:
        """`worker`: the bot's WORKER_ID, whose courier sends what this store writes; None
        (the admin CLI) leaves new replies unclaimed for the bot to take. `history_rows`:
        at most this many of the newest history rows are read for a model call (None:
        all); `bot.prompt.history_rows` says how many the request can use."""
        self.engine = engine
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.history_rows = history_rows
        # What model calls read of each history, kept for the next call's read.
        self.histories = HistoryCache()
        postgres = engine.dialect.name == "postgresql"
        # The dedupe insert, built once (storage.statements says why): the dialect's own
        # INSERT ... ON CONFLICT DO NOTHING.
        dialect_insert = postgresql_insert if postgres else sqlite_insert
        self._note_seen = Prepared(dialect_insert(ProcessedUpdateRow).on_conflict_do_nothing())
        # The writes every message makes (its intake, its turn's answer, the delivery of
        # its replies) commit together with other sessions' under a burst.
        self._group = GroupCommit(engine, in_flight=POSTGRES_BATCHES_IN_FLIGHT if postgres else 1)

    # --- helpers -------------------------------------------------------------------

    async def _run(self, work: Work[T]) -> T:
        return await run_transaction(self.engine, work)

    async def _read(self, work: Work[T]) -> T:
        """A transaction that only reads: on SQLite it takes no write lock."""
        return await run_transaction(self.engine, work, writes=False)

    async def _keeping_histories(
        self,
        run: Callable[[Work[T]], Awaitable[T]],
        work: Callable[[Connection, Reads], T],
    ) -> T:
        """`run(work)`, with the histories `work` read for model calls kept once it has
        committed (storage.history_cache says why not before)."""
        reads = Reads()

        def attempt(conn: Connection) -> T:
            reads.clear()  # from a run whose batch rolled back
            return work(conn, reads)

        result = await run(attempt)
        self.histories.keep(reads)
        return result

    def _session(self, conn: Connection, session_id: int, lock: bool = False) -> Row[Any]:
        query = select(SESSIONS).where(SESSIONS.c.id == session_id)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise LookupError(f"no session {session_id}")
        return row

    def _next_position(self, conn: Connection, session_id: int) -> int:
        last = sql.LAST_POSITION.run(conn, {"session_id": session_id}).scalar()
        return (last or 0) + 1

    def _claim(
        self, conn: Connection, session_id: int, expected: str, new: str, **values: Any
    ) -> Row[Any] | None:
        """The compare-and-set on a session's state; the session as it is after, or None
        (nothing changed) if it was not in `expected`."""
        return conn.execute(
            update(SessionRow)
            .where(SessionRow.id == session_id, SessionRow.state == expected)
            .values(state=new, updated_at=now(), **values)
            .returning(*SESSIONS.columns)
        ).first()

    def _claim_values(self, conn: Connection, session_id: int) -> dict[str, Any]:
        """Claim columns for replies about to be added: empty unless this store has a worker
        and nothing older of the session waits (replies go out in order; an older one goes
        first, through the courier's claim). Call before adding them."""
        if self.worker is None:
            return {}
        older = sql.OLDER_UNDELIVERED.run(conn, {"session_id": session_id}).scalar()
        return self._reply_claim(older is not None)

    def _reply_claim(self, older_unsent: bool) -> dict[str, Any]:
        if self.worker is None or older_unsent:
            return {}
        return {
            "claimed_by": self.worker,
            "claimed_until": now() + timedelta(seconds=self.lease_seconds),
        }

    def _outbox(
        self,
        session: Row[Any],
        kind: ReplyKind,
        text: str,
        reply_to: str | None,
        user: str | None,
        claim: dict[str, Any],
    ) -> dict[str, Any]:
        return {
            **claim,
            "session_id": session.id,
            "platform": session.platform,
            "chat_id": session.chat_id,
            "thread_id": session.thread_id,
            "reply_to_id": reply_to,
            "reply_to_user_id": user,
            "kind": kind.value,
            "text": text,
            "created_at": now(),
        }

    def _add_outbox(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[OutboxItem]:
        """Inserts the replies (`_outbox` values); the claimed ones are returned, to send."""
        if not rows:
            return []
        added = sql.ADD_OUTBOX.run(conn, rows)
        return [_outbox_item(row) for row in added if row.claimed_by is not None]

    def _take_in(
        self, conn: Connection, message: InboundMessage, language: str | None
    ) -> Row[Any] | None:
        """Dedupe + the conversation's active session, in the caller's transaction, in
        plain SQL (every message passes here). Returns the session's row, locked (the
        UPDATE locks it on PostgreSQL: a worker closing its tool round waits for this
        transaction), or None for a message seen before."""
        # Values go in as parameters, not into the statement: every message passes here,
        # and a statement built with its values costs a cache key computed from them.
        seen = self._note_seen.run(
            conn,
            {"key": message.dedupe_key, "created_at": now()},
        )
        if not seen.rowcount:
            return None
        key, stamp = active_key(message.conversation), now()
        found = sql.TOUCH_ACTIVE_SESSION.run(
            conn,
            {
                "key": key,
                "stamp": stamp,
                "new_language": language,
                "new_title": message.chat_title or None,
            },
        ).first()
        if found is not None:
            return found
        c = message.conversation
        return (
            conn.execute(
                insert(SessionRow)
                .values(
                    platform=c.platform,
                    chat_id=c.chat_id,
                    thread_id=c.thread_id,
                    active_key=key,
                    chat_title=message.chat_title,
                    is_private=message.is_private,
                    state=SessionState.IDLE,
                    language=language or "en",
                    turn=0,
                    tool_rounds=0,
                    turn_is_admin=False,
                    created_at=stamp,
                    updated_at=stamp,
                )
                .returning(*SESSIONS.columns)
            )
        ).one()

    async def _take_in_and(
        self,
        message: InboundMessage,
        language: str | None,
        then: Callable[[Connection, Row[Any], Reads], T],
    ) -> T | None:
        """Takes the message in and does `then` with its session, in one transaction
        (shared with other callers' under a burst: `GroupCommit`). Two workers may create
        the same conversation's session at once: the unique active key fails one
        transaction, and its retry finds the winner's session."""

        def take_in(conn: Connection, reads: Reads) -> T | None:
            session = self._take_in(conn, message, language)
            return None if session is None else then(conn, session, reads)

        return await self._keeping_histories(
            partial(self._group.run, max_batch=INTAKE_BATCH), take_in
        )

    # --- taking messages in ------------------------------------------------------------

    async def record_inbound(
        self, message: InboundMessage, language: str | None, plan: InterimPlanner
    ) -> Intake | None:
        def queue_and_take(conn: Connection, session: Row[Any], reads: Reads) -> Intake:
            arrived = {
                "session_id": session.id,
                "role": "user",
                "content": message.text,
                "author_id": message.user_id,
                "author_name": message.display_name,
                "platform_message_id": message.message_id,
                "kind": "admin" if message.is_admin else None,
                "created_at": message.timestamp,
            }
            return self._intake(conn, session, plan, reads, arrived)

        return await self._take_in_and(message, language, queue_and_take)

    async def record_notice(self, message: InboundMessage, text: str) -> int | None:
        def notice(conn: Connection, session: Row[Any], _: Reads) -> int:
            self._add_outbox(
                conn,
                [
                    self._outbox(
                        session,
                        ReplyKind.NOTICE,
                        text,
                        message.message_id,
                        message.user_id,
                        {},
                    )
                ],
            )
            return int(session.id)

        return await self._take_in_and(message, None, notice)

    async def get_session(self, session_id: int) -> SessionInfo:
        return await self._read(lambda conn: _session_info(self._session(conn, session_id)))

    async def active_session_id(self, key: ConversationKey) -> int | None:
        def find(conn: Connection) -> int | None:
            found: int | None = conn.scalar(
                select(SESSIONS.c.id).where(SESSIONS.c.active_key == active_key(key))
            )
            return found

        return await self._read(find)

    # --- turns ---------------------------------------------------------------------------

    async def take_queued(self, session_id: int, plan: InterimPlanner) -> Intake:
        def take(conn: Connection, reads: Reads) -> Intake:
            # Locked (on PostgreSQL FOR UPDATE, on SQLite the write lock this transaction
            # takes at its start): a worker closing the tool round meanwhile would otherwise
            # miss a message deferred against the state read here, and leave it out of the
            # history.
            return self._intake(conn, self._session(conn, session_id, lock=True), plan, reads)

        return await self._keeping_histories(self._run, take)

    def _intake(
        self,
        conn: Connection,
        session: Row[Any],
        plan: InterimPlanner,
        reads: Reads,
        arrived: dict[str, Any] | None = None,
    ) -> Intake:
        """What the session's state says to do with its queued messages (see
        `Store.take_queued`); `session` is its row, locked by the caller. `arrived`: the
        values of a message being taken in, the newest of them: it is stored here, at
        once with the status the session gives it (one statement fewer than queueing it
        and then moving it)."""
        info = _session_info(session)
        if info.archived or info.state == SessionState.LLM:
            self._queue(conn, info, arrived)
            return Intake(info)
        queued = sql.QUEUED_MESSAGES.run(conn, {"session_id": info.id}).all()
        if not queued and arrived is None:
            return Intake(info)
        if info.state == SessionState.IDLE:
            return self._begin_turn(conn, info, queued, reads, arrived)
        return self._defer(conn, session, queued, plan, arrived)

    def _queue(self, conn: Connection, info: SessionInfo, arrived: dict[str, Any] | None) -> None:
        """Stores the arriving message (if any) queued: for the session's next turn."""
        if arrived is not None:
            sql.ADD_MESSAGE.run(conn, {**arrived, "status": "queued", "turn": info.turn})

    def _begin_turn(
        self,
        conn: Connection,
        info: SessionInfo,
        queued: Sequence[Row[*tuple[Any, ...]]],
        reads: Reads,
        arrived: dict[str, Any] | None,
    ) -> Intake:
        last = arrived if arrived is not None else queued[-1]._mapping
        turn = info.turn + 1
        claimed = sql.START_TURN.run(
            conn,
            {
                "session_id": info.id,
                "stamp": now(),
                "new_turn": turn,
                "reply_to": last["platform_message_id"],
                "turn_user": last["author_id"],
                # A turn is an admin's only if every message in it is.
                "admin": all(q.kind == "admin" for q in queued)
                and (arrived is None or arrived["kind"] == "admin"),
            },
        ).first()
        if claimed is None:  # another worker took the turn
            self._queue(conn, info, arrived)
            return Intake(info)
        if queued:
            sql.JOIN_HISTORY.run(
                conn,
                [{"row_id": row.id, "of_session": info.id, "row_turn": turn} for row in queued],
            )
        if arrived is not None:  # after the older ones: its position is the next
            sql.ADD_HISTORY_MESSAGE.run(
                conn,
                {**arrived, "of_session": info.id, "status": "history", "turn": turn},
            )
        started = _session_info(claimed)
        return Intake(started, turn=self._model_turn(conn, started, reads))

    async def history(self, session_id: int) -> list[HistoryEntry]:
        return await self._read(lambda conn: self._history(conn, session_id))

    def _history(self, conn: Connection, session_id: int) -> list[HistoryEntry]:
        return [
            entry for *_, entry in sql.HISTORY.build(conn, {"session_id": session_id}, _positioned)
        ]

    def _model_history(self, conn: Connection, session_id: int, reads: Reads) -> list[HistoryEntry]:
        """The history a model call needs: the newest `history_rows` rows, from the first
        turn that starts inside them. Reading every row would make each turn of a long
        chat slower than the last, for messages the request's budget drops anyway; the
        rows a past call read come from `histories`, so only the new ones are read."""
        window = self._cached_window(conn, session_id) or self._read_window(conn, session_id)
        if window.entries:
            reads.add(session_id, window)
        rows, limit = window.entries, self.history_rows
        if limit is None or len(rows) < limit:
            return list(rows)
        # Begin where a run of user messages begins: never inside a tool block (its calls
        # and results belong together), nor inside a run (the prompt summarizes runs), nor
        # at the messages written while a round ran (`bot.history.starts_turn`).
        start = next(
            (
                i
                for i in range(1, len(rows))
                if rows[i].role == "user" and rows[i - 1].role not in ("user", "tool")
            ),
            None,
        )
        if start is None:  # one turn longer than the window: all of it
            return self._history(conn, session_id)
        return list(rows[start:])

    def _window(
        self,
        version: int,
        rows: Sequence[tuple[int, int, HistoryEntry]],
        older: Sequence[HistoryEntry],
    ) -> CachedHistory:
        """The newest `history_rows` of `older` then `rows` (oldest first), as read at
        `version`."""
        entries = (*older, *(entry for *_, entry in rows))
        if self.history_rows is not None:
            entries = entries[-self.history_rows :]
        last_id, last_position, _ = rows[-1] if rows else (0, 0, None)
        return CachedHistory(version, last_id, last_position, entries)

    def _cached_window(self, conn: Connection, session_id: int) -> CachedHistory | None:
        """The newest rows, the cached ones with those added since; None if the cache has
        none for the session or they no longer continue its stored history."""
        cached = self.histories.get(session_id)
        if cached is None:
            return None
        since = sql.HISTORY_SINCE.build(
            conn,
            {"session_id": session_id, "since": cached.last_position, "version": cached.version},
            _positioned,
        )
        if not since or since[0][0] != cached.last_id:
            return None
        if len(since) == 1:
            return cached
        return self._window(cached.version, since[1:], cached.entries)

    def _read_window(self, conn: Connection, session_id: int) -> CachedHistory:
        version = sql.HISTORY_VERSION.run(conn, {"session_id": session_id}).scalar_one()
        limit = self.history_rows
        if limit is None:
            rows = sql.HISTORY.build(conn, {"session_id": session_id}, _positioned)
        else:
            newest = sql.NEWEST_HISTORY.build(
                conn, {"session_id": session_id, "rows": limit}, _positioned
            )
            rows = newest[::-1]
        return self._window(version, rows, ())

    async def model_turn(self, session_id: int) -> ModelTurn:
        def read(conn: Connection, reads: Reads) -> ModelTurn:
            return self._model_turn(conn, _session_info(self._session(conn, session_id)), reads)

        return await self._keeping_histories(self._read, read)

    def _model_turn(self, conn: Connection, info: SessionInfo, reads: Reads) -> ModelTurn:
        interims: list[str] = []
        if info.tool_rounds:
            rows = conn.scalars(
                select(MessageRow.content)
                .where(
                    MessageRow.session_id == info.id,
                    MessageRow.status == "interim",
                    MessageRow.turn == info.turn,
                )
                .order_by(MessageRow.id)
            )
            interims = [r or "" for r in rows]
        return ModelTurn(info, self._model_history(conn, info.id, reads), interims)

    def _interim_context(self, conn: Connection, session_id: int, turn: int) -> InterimContext:
        calls = self._round_calls(conn, session_id)
        interims = sql.RECENT_INTERIM_REPLIES.run(conn, {"session_id": session_id})
        newest_first = list(interims)
        recent = [text or "" for row_turn, text in reversed(newest_first) if row_turn == turn]
        if newest_first and (not recent or newest_first[0][1] != recent[-1]):
            recent.append(newest_first[0][1] or "")  # the last one, even from a past turn
        return InterimContext(calls, recent)

    def _llm_call(
        self, session: Row[Any], usage: Usage | None, error: str | None = None
    ) -> dict[str, Any]:
        return {
            "session_id": session.id,
            "user_id": session.turn_user_id,
            "chat_key": f"{session.platform}:{session.chat_id}",
            "ok": error is None,
            "error": error,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "created_at": now(),
        }

    async def record_answer(self, session_id: int, text: str, usage: Usage) -> TurnEnd:
        def answer(conn: Connection) -> TurnEnd:
            session, after = self._end_turn(conn, session_id)
            sql.ADD_HISTORY_MESSAGE.run(
                conn,
                {
                    "session_id": session_id,
                    "of_session": session_id,
                    "role": "assistant",
                    "content": text,
                    "status": "history",
                    "turn": session.turn,
                    "kind": ReplyKind.ANSWER.value,
                    "created_at": now(),
                },
            )
            sql.ADD_LLM_CALL.run(conn, self._llm_call(session, usage))
            outbox = self._outbox(
                session,
                ReplyKind.ANSWER,
                text,
                session.reply_to_id,
                session.reply_to_user_id,
                self._reply_claim(after.has_unsent),
            )
            return self._turn_end(conn, after, outbox)

        return await self._group.run(answer)

    def _end_turn(
        self, conn: Connection, session_id: int, error: str | None = None
    ) -> tuple[Row[Any], Row[bool, bool]]:
        """The session after its turn ended, and `AFTER_MODEL_REPLY`'s flags."""
        stamp = now()
        session = sql.END_TURN.run(
            conn,
            {
                "session_id": session_id,
                "stamp": stamp,
                "error": error,
                "error_at": stamp if error is not None else None,
            },
        ).first()
        if session is None:
            raise SessionMovedOn(f"session {session_id} is not waiting for the model")
        return session, self._after_model_reply(conn, session_id)

    def _turn_end(
        self, conn: Connection, after: Row[bool, bool], outbox: dict[str, Any]
    ) -> TurnEnd:
        """The turn's last reply added; `after` is `_end_turn`'s flags."""
        return TurnEnd(self._add_outbox(conn, [outbox]), queued=bool(after.has_queued))

    def _after_model_reply(self, conn: Connection, session_id: int) -> AnyRow:
        """`AFTER_MODEL_REPLY`'s flags; call once the session row is locked."""
        return sql.AFTER_MODEL_REPLY.run(conn, {"session_id": session_id}).one()

    async def record_tool_calls(
        self,
        session_id: int,
        content: str | None,
        calls: Sequence[PlannedCall],
        notice: str | None,
        usage: Usage,
    ) -> ToolRound:
        def start_round(conn: Connection) -> ToolRound:
            session = self._claim(
                conn,
                session_id,
                SessionState.LLM,
                SessionState.TOOLS,
                tool_rounds=SessionRow.tool_rounds + 1,
                last_error=None,
            )
            if session is None:
                raise SessionMovedOn(f"session {session_id} is not waiting for the model")
            after = self._after_model_reply(conn, session_id)
            stamp = now()
            message_id: int = conn.execute(
                insert(MessageRow).returning(MessageRow.id),
                {
                    "session_id": session_id,
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [c.request.as_openai() for c in calls],
                    "status": "pending_calls",
                    "turn": session.turn,
                    "created_at": stamp,
                },
            ).scalar_one()
            rows = conn.execute(
                insert(ToolCallRow).returning(*TOOL_CALLS.columns, sort_by_parameter_order=True),
                [
                    {
                        "session_id": session_id,
                        "message_id": message_id,
                        "seq": seq,
                        "call_id": call.request.call_id,
                        "name": call.request.name,
                        "arguments": call.request.arguments,
                        "status": ToolStatus.PENDING.value,
                        "attempts": 0,
                        "timeout_seconds": call.timeout_seconds,
                        "created_at": stamp,
                    }
                    for seq, call in enumerate(calls)
                ],
            )
            stored = [_tool_info(row) for row in rows]
            sql.ADD_LLM_CALL.run(conn, self._llm_call(session, usage))
            ready = (
                []
                if notice is None
                else self._add_outbox(conn, [self._working(session, notice, after.has_unsent)])
            )
            return ToolRound(stored, ready, queued=bool(after.has_queued), message_id=message_id)

        return await self._run(start_round)

    def _working(self, session: Row[Any], text: str, older_unsent: bool) -> dict[str, Any]:
        return self._outbox(
            session,
            ReplyKind.WORKING,
            text,
            session.reply_to_id,
            session.reply_to_user_id,
            self._reply_claim(older_unsent),
        )

    async def record_working_notice(
        self, session_id: int, round_message_id: int, text: str
    ) -> list[OutboxItem] | None:
        def notice(conn: Connection) -> list[OutboxItem] | None:
            session = self._session(conn, session_id, lock=True)
            if session.state != SessionState.TOOLS:
                return None
            round_status = conn.scalar(
                select(MessageRow.status).where(MessageRow.id == round_message_id)
            )
            if round_status != "pending_calls":
                return None
            older_unsent = self._after_model_reply(conn, session_id).has_unsent
            return self._add_outbox(conn, [self._working(session, text, older_unsent)])

        return await self._run(notice)

    async def record_llm_failure(
        self, session_id: int, error: str, apology: str, usage: Usage | None = None
    ) -> TurnEnd:
        def fail(conn: Connection) -> TurnEnd:
            session, after = self._end_turn(conn, session_id, error)
            sql.ADD_LLM_CALL.run(conn, self._llm_call(session, usage, error))
            outbox = self._outbox(
                session,
                ReplyKind.ERROR,
                apology,
                session.reply_to_id,
                session.reply_to_user_id,
                self._reply_claim(after.has_unsent),
            )
            return self._turn_end(conn, after, outbox)

        return await self._run(fail)

    def _defer(
        self,
        conn: Connection,
        session: Row[Any],
        queued: Sequence[Row[*tuple[Any, ...]]],
        plan: InterimPlanner,
        arrived: dict[str, Any] | None,
    ) -> Intake:
        info = _session_info(session)
        messages = [
            QueuedMessage(r.id, r.content or "", r.platform_message_id, r.author_id) for r in queued
        ]
        if arrived is not None:
            # Stored deferred at once: that is what a message gets while tools run, and
            # choosing its reply needs its id. It goes back to the queue if it gets none.
            added = sql.ADD_MESSAGE_ID.run(
                conn, {**arrived, "status": "deferred", "turn": info.turn}
            )
            messages.append(
                QueuedMessage(
                    added.scalar_one(),
                    arrived["content"] or "",
                    arrived["platform_message_id"],
                    arrived["author_id"],
                )
            )
        context = self._interim_context(conn, info.id, info.turn)
        try:
            planned = list(plan(info, messages, context))
        except Exception:
            # A bug in choosing replies must not cost the message: it stays queued, with
            # no instant reply, and joins the next turn.
            log.exception(
                "no instant reply could be chosen", extra={"session": f"session-{info.id}"}
            )
            planned = []
        new_id = messages[-1].id if arrived is not None else None
        if new_id is not None and all(choice.message_id != new_id for choice in planned):
            sql.REQUEUE_MESSAGE.run(conn, {"row_id": new_id})
        if not planned:
            return Intake(info)
        by_id = {message.id: message for message in messages}
        claim = self._claim_values(conn, info.id)
        stamp = now()
        older = [choice for choice in planned if choice.message_id != new_id]
        if older:
            sql.DEFER_MESSAGES.run(
                conn,
                [{"row_id": choice.message_id, "row_turn": info.turn} for choice in older],
            )
        sql.ADD_MESSAGE.run(
            conn,
            [
                {
                    "session_id": info.id,
                    "role": "assistant",
                    "content": choice.text,
                    "status": "interim",
                    "turn": info.turn,
                    "kind": choice.kind,
                    "created_at": stamp,
                }
                for choice in planned
            ],
        )
        ready = self._add_outbox(
            conn,
            [
                self._outbox(
                    session,
                    ReplyKind.INTERIM,
                    choice.text,
                    by_id[choice.message_id].platform_message_id,
                    by_id[choice.message_id].author_id,
                    claim,
                )
                for choice in planned
            ],
        )
        language = planned[-1].language
        # Taking each of these messages in stamped the session's activity (in this
        # transaction or an earlier one): only a new language is news.
        if language != info.language:
            conn.execute(
                update(SessionRow).where(SessionRow.id == info.id).values(language=language)
            )
        return Intake(replace(info, language=language), planned=planned, ready=ready)

    # --- tools ---------------------------------------------------------------------------

    def _round_calls(self, conn: Connection, session_id: int) -> list[ToolCallInfo]:
        """The calls of the round in progress, in the model's order, in one query."""
        rows = sql.OPEN_ROUND_CALLS.run(conn, {"session_id": session_id}).all()
        return [_tool_info(row) for row in rows if row.message_id == rows[0].message_id]

    async def open_tool_calls(self, session_id: int) -> list[ToolCallInfo]:
        return await self._read(lambda conn: self._round_calls(conn, session_id))

    async def mark_tool_running(self, tool_call_id: int) -> None:
        def mark(conn: Connection) -> None:
            conn.execute(
                update(ToolCallRow)
                .where(ToolCallRow.id == tool_call_id, ToolCallRow.status.in_(UNFINISHED))
                .values(
                    status=ToolStatus.RUNNING.value,
                    attempts=ToolCallRow.attempts + 1,
                    started_at=now(),
                )
            )

        await self._run(mark)

    async def finish_tool(self, tool_call_id: int, outcome: ToolOutcome) -> bool:
        def finish(conn: Connection) -> bool:
            result = conn.execute(
                update(ToolCallRow)
                .where(ToolCallRow.id == tool_call_id, ToolCallRow.status.in_(UNFINISHED))
                .values(status=outcome.status.value, result=outcome.result, finished_at=now())
            )
            return bool(result.rowcount)

        return await self._run(finish)

    async def close_tool_round(self, session_id: int) -> ModelTurn | None:
        def close(conn: Connection, reads: Reads) -> ModelTurn | None:
            with Session(bind=conn) as tx:
                if not self._close_rounds(tx, [session_id]):
                    return None
            return self._model_turn(conn, _session_info(self._session(conn, session_id)), reads)

        return await self._keeping_histories(self._run, close)

    def _close_rounds(self, tx: Session, session_ids: Sequence[int]) -> list[int]:
        """tools -> llm for those of the sessions whose round has every result (the
        compare-and-set comes first, so a worker that loses it changes nothing), and their
        rounds join the history. Returns the sessions closed."""
        pending = and_(MessageRow.session_id == SessionRow.id, MessageRow.status == "pending_calls")
        unfinished = (
            select(ToolCallRow.id)
            .join(MessageRow, ToolCallRow.message_id == MessageRow.id)
            .where(pending, ToolCallRow.status.in_(UNFINISHED))
            .exists()
        )
        closed = list(
            tx.scalars(
                update(SessionRow)
                .where(
                    SessionRow.id.in_(session_ids),
                    SessionRow.state == SessionState.TOOLS,
                    exists().where(pending),
                    ~unfinished,
                )
                .values(state=SessionState.LLM, updated_at=now())
                .returning(SessionRow.id)
                .execution_options(synchronize_session=False)
            )
        )
        self.place_rounds(tx, closed)
        return closed

    def place_rounds(self, tx: Session, session_ids: Sequence[int]) -> None:
        """Each session's open rounds enter its history whole, a few statements for them
        all: the assistant message, one tool message per call in the model's order, then
        what users said meanwhile. Every call must have its result. Plain SQL: a caller
        holding these rows as objects reads them again with `populate_existing`."""
        if not session_ids:
            return
        tx.flush()
        mine = MessageRow.session_id.in_(session_ids)
        ends = tx.execute(
            select(MessageRow.session_id, func.max(MessageRow.position))
            .where(mine)
            .group_by(MessageRow.session_id)
        )
        last: dict[int, int] = {session_id: end or 0 for session_id, end in ends}
        rounds = tx.execute(
            select(MessageRow.session_id, MessageRow.id, MessageRow.turn, ToolCallRow)
            .outerjoin(ToolCallRow, ToolCallRow.message_id == MessageRow.id)
            .where(mine, MessageRow.status == "pending_calls")
            .order_by(MessageRow.session_id, MessageRow.id, ToolCallRow.seq)
        )
        deferred: dict[int, list[int]] = {}
        not_admins: set[int] = set()
        for session_id, message_id, kind in tx.execute(
            select(MessageRow.session_id, MessageRow.id, MessageRow.kind)
            .where(mine, MessageRow.status == "deferred")
            .order_by(MessageRow.id)
        ):
            deferred.setdefault(session_id, []).append(message_id)
            if kind != "admin":
                not_admins.add(session_id)
        if not_admins:
            # What someone else wrote while an admin's tools ran joins the admin's turn:
            # from here on the turn may neither be offered nor run admin-only tools.
            tx.execute(
                update(SESSIONS)
                .where(SESSIONS.c.id.in_(not_admins), SESSIONS.c.turn_is_admin)
                .values(turn_is_admin=False)
            )
        stamp = now()
        moved: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for (session_id, message_id, turn), row in groupby(rounds, key=lambda r: tuple(r[:3])):
            position = last.get(session_id, 0) + 1
            moved.append({"row_id": message_id, "row_position": position})
            for *_, call in row:
                if call is None:
                    continue
                position += 1
                results.append(
                    {
                        "session_id": session_id,
                        "role": "tool",
                        "content": call.result or "",
                        "tool_call_id": call.call_id,
                        "status": "history",
                        "position": position,
                        "turn": turn,
                        "created_at": stamp,
                    }
                )
            for waiting in deferred.pop(session_id, []):
                position += 1
                moved.append({"row_id": waiting, "row_position": position})
            last[session_id] = position
        if moved:
            tx.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == bindparam("row_id"))
                .values(status="history", position=bindparam("row_position")),
                moved,
            )
        if results:
            tx.execute(insert(MESSAGES), results)

    async def repair_after_restart(self, rerunnable: Collection[str], max_reruns: int) -> int:
        """Start-up, before any actor runs: every call the last process left unfinished
        gets "interrupted by a restart" unless its tool may run again (`rerunnable`, fewer
        than `max_reruns` attempts), and each round left with every result closes. Set-wise
        and in batches, so ten thousand sessions take seconds and new messages interleave.
        Returns the number of rounds closed."""
        stamp = now()

        def interrupt(conn: Connection) -> None:
            in_round = select(MessageRow.id).where(MessageRow.status == "pending_calls")
            conn.execute(
                update(ToolCallRow)
                .where(
                    ToolCallRow.status.in_(UNFINISHED),
                    ToolCallRow.message_id.in_(in_round),
                    ~and_(ToolCallRow.name.in_(rerunnable), ToolCallRow.attempts < max_reruns),
                )
                .values(
                    status=INTERRUPTED.status.value, result=INTERRUPTED.result, finished_at=stamp
                )
            )

        def close_batch(conn: Connection, after: int) -> tuple[int | None, int]:
            """The last id of the next batch of sessions in a tool round (ids above
            `after`), and how many of them closed; (None, 0) when none is left."""
            with Session(bind=conn) as tx:
                batch = list(
                    tx.scalars(
                        select(SessionRow.id)
                        .where(SessionRow.state == SessionState.TOOLS, SessionRow.id > after)
                        .order_by(SessionRow.id)
                        .limit(REPAIR_BATCH)
                    )
                )
                if not batch:
                    return None, 0
                return batch[-1], len(self._close_rounds(tx, batch))

        await self._run(interrupt)
        closed, after = 0, 0
        while True:
            last, count = await self._run(partial(close_batch, after=after))
            if last is None:
                return closed
            closed, after = closed + count, last

    async def archive_session(self, session_id: int) -> None:
        def archive(conn: Connection) -> None:
            # Never leave an unanswered block behind, even in an archived history.
            conn.execute(
                update(ToolCallRow)
                .where(
                    ToolCallRow.message_id.in_(
                        select(MessageRow.id).where(
                            MessageRow.session_id == session_id,
                            MessageRow.status == "pending_calls",
                        )
                    ),
                    ToolCallRow.status.in_(UNFINISHED),
                )
                .values(
                    status=ToolStatus.CANCELLED.value,
                    result="cancelled: the conversation was reset",
                    finished_at=now(),
                )
            )
            with Session(bind=conn) as tx:
                self.place_rounds(tx, [session_id])
            position = self._next_position(conn, session_id)
            waiting = conn.scalars(
                select(MessageRow.id)
                .where(
                    MessageRow.session_id == session_id,
                    MessageRow.status.in_(("queued", "deferred")),
                )
                .order_by(MessageRow.id)
            )
            moved = [
                {"row_id": row_id, "row_position": position + n} for n, row_id in enumerate(waiting)
            ]
            if moved:
                conn.execute(
                    update(MESSAGES)
                    .where(MESSAGES.c.id == bindparam("row_id"))
                    .values(status="history", position=bindparam("row_position")),
                    moved,
                )
            archived = conn.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(
                    active_key=None, archived_at=now(), state=SessionState.IDLE, updated_at=now()
                )
            )
            if not archived.rowcount:
                raise LookupError(f"no session {session_id}")

        await self._run(archive)

    # --- outbox --------------------------------------------------------------------------

    async def claim_undelivered(
        self, session_id: int, worker: str, lease_seconds: float
    ) -> OutboxClaim:
        stamp = now()

        def claim(conn: Connection) -> OutboxClaim:
            # One conditional UPDATE: on PostgreSQL a worker racing for the same rows waits
            # for this commit and then finds them claimed.
            rows = conn.execute(
                update(OutboxRow)
                .where(*sql.undelivered(session_id), _claimable(worker, stamp))
                .values(claimed_by=worker, claimed_until=stamp + timedelta(seconds=lease_seconds))
                .returning(*OutboxRow.__table__.columns)
            )
            items = sorted((_outbox_item(row) for row in rows), key=lambda item: item.id)
            held = conn.scalar(
                select(func.min(OutboxRow.id)).where(
                    *sql.undelivered(session_id), OutboxRow.claimed_by != worker
                )
            )
            if held is None:
                return OutboxClaim(items, blocked=False)
            later = [item.id for item in items if item.id > held]
            if later:
                conn.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id.in_(later))
                    .values(claimed_by=None, claimed_until=None)
                )
            return OutboxClaim([item for item in items if item.id < held], blocked=True)

        return await self._run(claim)

    async def claim_delivery(self, outbox_id: int, worker: str, lease_seconds: float) -> bool:
        stamp = now()

        def claim(conn: Connection) -> bool:
            result = conn.execute(
                update(OutboxRow)
                .where(
                    OutboxRow.id == outbox_id,
                    OutboxRow.delivered_at.is_(None),
                    _claimable(worker, stamp),
                )
                .values(claimed_by=worker, claimed_until=stamp + timedelta(seconds=lease_seconds))
            )
            return bool(result.rowcount)

        return await self._run(claim)

    async def mark_delivered(
        self, outbox_id: int, platform_message_id: str | None, *, join_next_write: bool = False
    ) -> None:
        values = {"outbox_id": outbox_id, "stamp": now(), "sent_id": platform_message_id}

        def mark(conn: Connection) -> None:
            sql.MARK_DELIVERED.run(conn, values)

        await self._group.run(mark, join_within=DELIVERY_JOIN_SECONDS if join_next_write else 0.0)

    async def mark_delivery_failed(self, outbox_id: int, error: str, permanent: bool) -> None:
        def mark(conn: Connection) -> None:
            conn.execute(
                update(OutboxRow)
                .where(OutboxRow.id == outbox_id)
                .values(
                    attempts=OutboxRow.attempts + 1,
                    last_attempt_at=now(),
                    last_error=error[:2000],
                    failed=permanent,
                    claimed_by=None,
                    claimed_until=None,
                )
            )

        await self._run(mark)

    # --- recovery and operators --------------------------------------------------------

    async def sessions_needing_work(self) -> list[int]:
        waiting = exists().where(
            MessageRow.session_id == SessionRow.id,
            MessageRow.status.in_(("queued", "deferred")),
        )
        unsent = exists().where(
            OutboxRow.session_id == SessionRow.id,
            OutboxRow.delivered_at.is_(None),
            OutboxRow.failed.is_(False),
        )
        query = (
            select(SessionRow.id)
            .where(
                or_(
                    and_(
                        SessionRow.active_key.is_not(None),
                        or_(SessionRow.state != SessionState.IDLE, waiting),
                    ),
                    unsent,
                )
            )
            .order_by(SessionRow.id)
        )
        return await self._read(lambda conn: list(conn.scalars(query)))

    async def sessions_with_undelivered(self) -> list[int]:
        query = (
            select(OutboxRow.session_id)
            .where(OutboxRow.delivered_at.is_(None), OutboxRow.failed.is_(False))
            .distinct()
        )
        return await self._read(lambda conn: list(conn.scalars(query)))

    async def pending_controls(self) -> list[Control]:
        query = (
            select(ControlRow.id, ControlRow.session_id, ControlRow.action)
            .where(ControlRow.done_at.is_(None))
            .order_by(ControlRow.id)
        )
        return await self._read(lambda conn: [Control(*row) for row in conn.execute(query)])

    async def add_control(self, session_id: int, action: str) -> int:
        added = (
            insert(ControlRow)
            .values(session_id=session_id, action=action, created_at=now())
            .returning(ControlRow.id)
        )
        return await self._run(lambda conn: int(conn.execute(added).scalar_one()))

    async def finish_control(self, control_id: int, result: str) -> None:
        finished = (
            update(ControlRow)
            .where(ControlRow.id == control_id)
            .values(done_at=now(), result=result)
        )
        await self._run(lambda conn: conn.execute(finished))

    async def beat(self, worker: str, intake_problem: str | None = None) -> None:
        dialect_insert = (
            postgresql_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        )
        added = dialect_insert(WorkerRow).values(
            worker_id=worker, last_seen_at=now(), intake_problem=intake_problem
        )
        beat = added.on_conflict_do_update(
            index_elements=[WorkerRow.worker_id],
            set_={
                "last_seen_at": added.excluded.last_seen_at,
                "intake_problem": added.excluded.intake_problem,
            },
        )
        await self._run(lambda conn: conn.execute(beat))

    # --- usage (token budgets) ---------------------------------------------------------

    async def token_totals(
        self, user_id: str, chat_key: str, day_start: datetime, month_start: datetime
    ) -> TokenTotals:
        tokens = LLMCallRow.prompt_tokens + LLMCallRow.completion_tokens

        def total(*conditions: Any) -> Any:
            return select(func.coalesce(func.sum(tokens), 0)).where(*conditions).scalar_subquery()

        in_day = LLMCallRow.created_at >= day_start
        in_month = LLMCallRow.created_at >= month_start
        by_user = LLMCallRow.user_id == user_id
        by_chat = LLMCallRow.chat_key == chat_key
        query = select(
            total(by_user, in_day),
            total(by_user, in_month),
            total(by_chat, in_day),
            total(by_chat, in_month),
            total(in_day),
        )
        row = await self._read(lambda conn: conn.execute(query).one())
        return TokenTotals(*(int(v) for v in row))
