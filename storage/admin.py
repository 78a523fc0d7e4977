"""Every query and change the admin CLI makes, safe to run while the bot uses the database.

Reads are plain snapshots. The one big change, `repair`, runs in a single transaction that
first locks the session row, so the bot's own compare-and-set updates of that session wait
for it (or lose, and leave the session to the repair), and it closes tool rounds with the
repository's own code so a repaired history looks exactly like one the engine wrote.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import accumulate
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession as Tx

from bot import history as history_rules
from bot.prompt import to_openai
from bot.store import HistoryEntry, SessionState
from bot.tools.runner import CANCELLED_BY_OPERATOR
from storage.database import sessionmaker
from storage.models import (
    ControlRow,
    LLMCallRow,
    MessageRow,
    OutboxRow,
    SessionRow,
    ToolCallRow,
    WorkerRow,
)
from storage.repository import UNFINISHED, SqlStore

# How many sessions' histories are held in memory at once while checking them all.
CHUNK = 200
# A history message that a repair takes out keeps its row (for the transcript) under this.
DROPPED = "dropped"
# A worker seen this recently runs. It beats every 5 s (bot.engine.HEARTBEAT_EVERY_POLLS),
# later behind a slow control or a locked database: only several missed beats mean dead.
ALIVE_SECONDS = 20.0


class UnknownSession(LookupError):
    pass


def sqlite_file_missing(url: str) -> str | None:
    """The absolute path of a SQLite database file that does not exist (opening it would
    create it). Absolute, because a relative URL is read from the current folder, which is
    the usual reason the file is not where the operator thinks."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(os.path.abspath(parsed.database or ""))
    return None if path.exists() else str(path)


# --- records --------------------------------------------------------------------------------


class Reason(StrEnum):
    """Why a session counts as stuck; the values are stable codes for scripts."""

    TOOL_OVERDUE = "tool_overdue"
    LLM_OVERDUE = "llm_overdue"
    OUTBOX_FAILED = "outbox_failed"
    OUTBOX_RETRIES = "outbox_retries"
    OUTBOX_LATE = "outbox_late"
    QUEUED_LATE = "queued_late"
    LLM_FAILED = "llm_failed"
    INVALID_HISTORY = "invalid_history"


@dataclass(frozen=True, slots=True)
class StuckReason:
    code: Reason
    text: str


@dataclass(frozen=True, slots=True)
class StuckRules:
    # How long after its timeout a tool call, or a model call, counts as stuck.
    tool_margin_seconds: float = 60.0
    max_attempts: int = 3
    minutes: float = 5.0
    # The longest a model call may take with its retries: OPENAI_TIMEOUT_SECONDS x
    # (OPENAI_MAX_RETRIES + 1), 60 s x 3 with the default settings.
    llm_seconds: float = 180.0


@dataclass(frozen=True, slots=True)
class SessionSummary:
    id: int
    platform: str
    chat_id: str
    thread_id: str
    chat_title: str | None
    # idle | llm | tools | error ("error": the last LLM call failed, users still wait)
    state: str
    stored_state: str
    archived: bool
    open_tools: int
    oldest_tool_seconds: float | None
    deferred: int
    queued: int
    undelivered: int
    unanswered: int
    last_activity: datetime
    last_error: str | None
    reasons: tuple[StuckReason, ...]

    @property
    def stuck(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True, slots=True)
class Problem:
    """A history rule broken at message `index` of the request (0 is the system prompt)."""

    rule: str
    index: int
    message: str
    row_id: int | None
    position: int | None


@dataclass(frozen=True, slots=True)
class ToolCallView:
    id: int
    call_id: str
    name: str
    arguments: str
    status: str
    timeout_seconds: float
    attempts: int
    seconds: float | None
    result: str | None


@dataclass(frozen=True, slots=True)
class MessageView:
    id: int
    role: str
    author: str | None
    content: str | None
    status: str
    position: int | None
    kind: str | None
    tool_call_id: str | None
    created_at: datetime
    calls: tuple[ToolCallView, ...]


@dataclass(frozen=True, slots=True)
class OutboxView:
    id: int
    kind: str
    text: str
    attempts: int
    failed: bool
    delivered_at: datetime | None
    last_error: str | None
    created_at: datetime

    @property
    def delivery(self) -> str:
        if self.delivered_at is not None:
            return "delivered"
        return "failed" if self.failed else "pending"


@dataclass(frozen=True, slots=True)
class Transcript:
    session: SessionSummary
    messages: tuple[MessageView, ...]
    outbox: tuple[OutboxView, ...]
    problems: tuple[Problem, ...]
    history_length: int
    omitted: int


@dataclass(frozen=True, slots=True)
class Step:
    """One thing a repair does; `code` is stable for scripts."""

    code: str
    text: str


@dataclass(frozen=True, slots=True)
class RepairResult:
    steps: list[Step]  # empty: nothing to repair (and nothing was written)
    # The 'recover' control queued for the bot to carry the session on; None in a dry run
    # or when the session needs no bot (archived).
    control_id: int | None


class _NothingToRepair(Exception):
    """Rolls back a repair that found nothing to do: it writes nothing at all."""


@dataclass(frozen=True, slots=True)
class UsageLine:
    scope: str  # user | chat | total
    id: str
    calls_today: int
    tokens_today: int
    calls_month: int
    tokens_month: int


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A bot process as its heartbeat shows it."""

    worker_id: str
    last_seen: datetime
    seconds_ago: float
    alive: bool
    # What kept a platform's messages from arriving at its last beat (None: nothing).
    intake_problem: str | None = None


@dataclass(frozen=True, slots=True)
class ControlState:
    id: int
    action: str
    done: bool
    result: str | None


# --- history as the engine sends it -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """One history message: a stored row, or (row_id None) one the repair would add."""

    row_id: int | None
    role: str
    content: str | None
    author_name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    position: int | None = None
    turn: int = 0

    @property
    def label(self) -> str:
        if self.row_id is not None:
            return f"message #{self.row_id}"
        return f"the tool result for {self.tool_call_id}"

    def openai(self, name_authors: bool) -> dict[str, Any]:
        entry = HistoryEntry(
            self.role, self.content, self.author_name, self.tool_calls, self.tool_call_id
        )
        return to_openai(entry, name_authors=name_authors)


def _item(row: MessageRow) -> _Item:
    return _Item(
        row_id=row.id,
        role=row.role,
        content=row.content,
        author_name=row.author_name,
        tool_calls=row.tool_calls,
        tool_call_id=row.tool_call_id,
        position=row.position,
        turn=row.turn,
    )


def _problems(items: Sequence[_Item], system_prompt: str, name_authors: bool) -> list[Problem]:
    """`bot.history.validate` on the request the engine would build (system prompt first)."""
    messages = [{"role": "system", "content": system_prompt}]
    messages.extend(item.openai(name_authors) for item in items)
    found = []
    for violation in history_rules.validate(messages):
        item = items[violation.index - 1] if 0 < violation.index <= len(items) else None
        found.append(
            Problem(
                rule=violation.rule,
                index=violation.index,
                message=violation.message,
                row_id=item.row_id if item else None,
                position=item.position if item else None,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class _HistoryFix:
    target: list[_Item]  # the repaired history, in order
    dropped: list[_Item]
    steps: list[Step]


_REF = "_stillhere_ref"


def _history_fix(items: Sequence[_Item], system_prompt: str) -> _HistoryFix:
    """What `bot.history.repair` makes of this history, mapped back to the stored rows."""
    if not _problems(items, system_prompt, name_authors=False):
        return _HistoryFix(list(items), [], [])
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    for k, item in enumerate(items):
        # repair() copies each message it keeps whole, so a private key tells which row
        # a repaired message came from; messages without it are the ones repair made up.
        messages.append({**item.openai(name_authors=False), _REF: k})
    repaired = history_rules.repair(messages)[1:]
    target: list[_Item] = []
    steps: list[Step] = []
    kept: set[int] = set()
    previous: _Item | None = None
    for message in repaired:
        ref = message.get(_REF)
        if ref is None:
            added = _Item(
                row_id=None,
                role="tool",
                content=str(message.get("content") or ""),
                tool_call_id=str(message.get("tool_call_id")),
                turn=previous.turn if previous else 0,
            )
            where = f" after {previous.label}" if previous else ""
            steps.append(
                Step(
                    "add_tool_result",
                    f"add the missing tool result for {added.tool_call_id}{where} "
                    f'("{added.content}")',
                )
            )
            target.append(added)
            previous = added
            continue
        original = items[ref]
        kept.add(ref)
        fixed = original
        before = original.openai(name_authors=False)
        content, calls = message.get("content"), message.get("tool_calls")
        if original.role != "user" and (
            content != before.get("content") or calls != before.get("tool_calls")
        ):
            fixed = replace(original, content=content, tool_calls=calls)
            steps.append(Step("fix_message", f"fix {original.label} ({original.role})"))
        target.append(fixed)
        previous = fixed
    survivors = [i for i in range(len(items)) if i in kept]
    order = [m[_REF] for m in repaired if m.get(_REF) is not None]
    for place, ref in enumerate(order):
        if items[ref].role == "tool" and survivors[place] != ref:
            steps.append(
                Step("move_message", f"move {items[ref].label} (tool) right after its call")
            )
    reasons = {p.index: p for p in _problems(items, system_prompt, name_authors=False)}
    dropped = [items[i] for i in range(len(items)) if i not in kept]
    for k, item in enumerate(items):
        if k in kept:
            continue
        why = reasons.get(k + 1)
        steps.append(
            Step(
                "drop_message",
                f"take {item.label} ({item.role}) out of the history"
                + (f": {why.rule}" if why else ""),
            )
        )
    return _HistoryFix(target, dropped, steps)


# --- the store ------------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _seconds(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


def _chunks(values: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _unanswered(items: Sequence[_Item]) -> int:
    """User messages in the history after the last answer (an assistant text, not a call)."""
    count = 0
    for item in items:
        if item.role == "assistant" and not item.tool_calls:
            count = 0
        elif item.role == "user":
            count += 1
    return count


def _transcript_order(messages: Sequence[MessageRow]) -> list[MessageRow]:
    """History rows by position (the order the model reads them, which a repair or a
    deferred message makes differ from the order they came in), and each row outside the
    history (an instant reply, a queued or deferred message, a round waiting for its
    results, a dropped row) right after the last history row it is not older than: never
    before a message it may answer."""
    placed = sorted((m for m in messages if m.position is not None), key=_row_position)
    in_time = sorted(range(len(placed)), key=lambda i: (placed[i].created_at, placed[i].id))
    times = [placed[i].created_at for i in in_time]
    # latest[k]: the furthest history place among the k + 1 oldest history rows.
    latest = list(accumulate(in_time, max))

    def anchor(row: MessageRow) -> int:
        older = bisect_right(times, row.created_at)
        return latest[older - 1] if older else -1

    outside = sorted(
        ((anchor(m), m.created_at, m.id, m) for m in messages if m.position is None),
        key=lambda entry: entry[:3],
    )
    ordered: list[MessageRow] = []
    k = 0
    for place in range(-1, len(placed)):
        if place >= 0:
            ordered.append(placed[place])
        while k < len(outside) and outside[k][0] == place:
            ordered.append(outside[k][3])
            k += 1
    return ordered


def _row_position(row: MessageRow) -> int:
    return row.position or 0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


@dataclass
class _Facts:
    """What the listing gathers about one session before judging it."""

    row: SessionRow
    items: list[_Item] = field(default_factory=list)
    open_calls: list[ToolCallRow] = field(default_factory=list)
    queued: list[MessageRow] = field(default_factory=list)
    deferred: int = 0
    outbox: list[OutboxRow] = field(default_factory=list)
    last_llm_ok: bool | None = None


class AdminStore:
    def __init__(self, engine: AsyncEngine, system_prompt: str) -> None:
        self.engine = engine
        self.system_prompt = system_prompt
        self.store = SqlStore(engine)
        self._tx = sessionmaker(engine)

    # --- reading ----------------------------------------------------------------------------

    async def _row(self, tx: Tx, session_id: int) -> SessionRow:
        row = await tx.get(SessionRow, session_id)
        if row is None:
            raise UnknownSession(f"no session {session_id}")
        return row

    async def _facts(self, tx: Tx, rows: Sequence[SessionRow]) -> list[_Facts]:
        facts = {row.id: _Facts(row) for row in rows}
        ids = list(facts)
        for part in _chunks(ids):
            positioned = await tx.scalars(
                select(MessageRow)
                .where(MessageRow.session_id.in_(part), MessageRow.position.is_not(None))
                .order_by(MessageRow.session_id, MessageRow.position)
            )
            for message in positioned:
                facts[message.session_id].items.append(_item(message))
            waiting = await tx.scalars(
                select(MessageRow)
                .where(
                    MessageRow.session_id.in_(part),
                    MessageRow.status.in_(("queued", "deferred")),
                )
                .order_by(MessageRow.id)
            )
            for message in waiting:
                if message.status == "queued":
                    facts[message.session_id].queued.append(message)
                else:
                    facts[message.session_id].deferred += 1
            calls = await tx.scalars(
                select(ToolCallRow)
                .where(ToolCallRow.session_id.in_(part), ToolCallRow.status.in_(UNFINISHED))
                .order_by(ToolCallRow.id)
            )
            for call in calls:
                facts[call.session_id].open_calls.append(call)
            outbox = await tx.scalars(
                select(OutboxRow)
                .where(OutboxRow.session_id.in_(part), OutboxRow.delivered_at.is_(None))
                .order_by(OutboxRow.id)
            )
            for row in outbox:
                facts[row.session_id].outbox.append(row)
            last_calls = (
                select(func.max(LLMCallRow.id))
                .where(LLMCallRow.session_id.in_(part))
                .group_by(LLMCallRow.session_id)
            )
            for session_id, ok in await tx.execute(
                select(LLMCallRow.session_id, LLMCallRow.ok).where(LLMCallRow.id.in_(last_calls))
            ):
                facts[session_id].last_llm_ok = ok
        return [facts[i] for i in ids]

    def _summary(self, facts: _Facts, rules: StuckRules, now: datetime) -> SessionSummary:
        row = facts.row
        reasons: list[StuckReason] = []
        oldest: float | None = None
        for call in facts.open_calls:
            age = _seconds(call.started_at or call.created_at, now) or 0.0
            oldest = age if oldest is None else max(oldest, age)
            if age > call.timeout_seconds + rules.tool_margin_seconds:
                reasons.append(
                    StuckReason(
                        Reason.TOOL_OVERDUE,
                        f"tool {call.name} ({call.call_id}) {call.status} for {age:.0f} s, "
                        f"over its timeout of {call.timeout_seconds:g} s plus "
                        f"{rules.tool_margin_seconds:g} s",
                    )
                )
        if row.state == SessionState.LLM and row.active_key is not None:
            # Every state change and every message taken in stamps updated_at, so it is no
            # earlier than the running call's start: this never fires while a call may
            # still be running. A bot killed during a call leaves the session here.
            age = _seconds(row.updated_at, now) or 0.0
            if age > rules.llm_seconds + rules.tool_margin_seconds:
                reasons.append(
                    StuckReason(
                        Reason.LLM_OVERDUE,
                        f"waiting for the model for {age:.0f} s, over the "
                        f"{rules.llm_seconds:g} s a call may take (OPENAI_TIMEOUT_SECONDS x "
                        f"(OPENAI_MAX_RETRIES + 1)) plus {rules.tool_margin_seconds:g} s",
                    )
                )
        late = timedelta(minutes=rules.minutes)
        for out in facts.outbox:
            what = f"reply #{out.id} ({out.kind})"
            error = f": {out.last_error}" if out.last_error else ""
            if out.failed:
                reasons.append(StuckReason(Reason.OUTBOX_FAILED, f"{what} failed for good{error}"))
            elif out.attempts >= rules.max_attempts:
                reasons.append(
                    StuckReason(
                        Reason.OUTBOX_RETRIES,
                        f"{what} not delivered after {_plural(out.attempts, 'attempt')}{error}",
                    )
                )
            elif now - out.created_at > late:
                reasons.append(
                    StuckReason(
                        Reason.OUTBOX_LATE,
                        f"{what} not delivered after {rules.minutes:g} minutes",
                    )
                )
        overdue = [m for m in facts.queued if now - m.created_at > late]
        if overdue:
            reasons.append(
                StuckReason(
                    Reason.QUEUED_LATE,
                    f"{_plural(len(overdue), 'queued message')} not handled after "
                    f"{rules.minutes:g} minutes",
                )
            )
        unanswered = _unanswered(facts.items) + len(facts.queued) + facts.deferred
        failed = row.last_error is not None or facts.last_llm_ok is False
        # Idle only: last_error stays until a call succeeds, so a session whose retry call
        # runs (llm) still carries it, and that session is working, not stuck.
        error_state = failed and unanswered > 0 and row.state == SessionState.IDLE
        if error_state:
            cause = f" ({row.last_error})" if row.last_error else ""
            reasons.append(
                StuckReason(
                    Reason.LLM_FAILED,
                    f"the last LLM call failed{cause} and "
                    f"{_plural(unanswered, 'user message')} wait for an answer",
                )
            )
        problems = _problems(facts.items, self.system_prompt, not row.is_private)
        if problems:
            first = problems[0]
            reasons.append(
                StuckReason(
                    Reason.INVALID_HISTORY,
                    f"the history breaks {first.rule} at message {first.index}"
                    + (f" (#{first.row_id})" if first.row_id else "")
                    + (f" and {len(problems) - 1} more rule(s)" if len(problems) > 1 else ""),
                )
            )
        return SessionSummary(
            id=row.id,
            platform=row.platform,
            chat_id=row.chat_id,
            thread_id=row.thread_id,
            chat_title=row.chat_title,
            state="error" if error_state else row.state,
            stored_state=row.state,
            archived=row.active_key is None,
            open_tools=len(facts.open_calls),
            oldest_tool_seconds=oldest,
            deferred=facts.deferred,
            queued=len(facts.queued),
            undelivered=len(facts.outbox),
            unanswered=unanswered,
            last_activity=row.updated_at,
            last_error=row.last_error,
            reasons=tuple(reasons),
        )

    async def sessions(
        self,
        *,
        rules: StuckRules,
        stuck_only: bool = False,
        include_archived: bool = False,
        platform: str | None = None,
        limit: int | None = None,
        now: datetime | None = None,
    ) -> tuple[list[SessionSummary], int]:
        """Newest activity first, at most `limit` of them; and how many matched in all."""
        moment = _now(now)
        where: list[ColumnElement[bool]] = []
        if not include_archived:
            where.append(SessionRow.active_key.is_not(None))
        if platform is not None:
            where.append(SessionRow.platform == platform)
        query = (
            select(SessionRow)
            .where(*where)
            .order_by(SessionRow.updated_at.desc(), SessionRow.id.desc())
        )
        async with self._tx() as tx:
            if stuck_only:
                # Any session can be stuck (an invalid history hides anywhere): judge them all.
                rows = list(await tx.scalars(query))
                facts = await self._facts(tx, rows)
                stuck = [s for s in (self._summary(f, rules, moment) for f in facts) if s.stuck]
                return stuck[:limit], len(stuck)
            total = await tx.scalar(select(func.count()).select_from(SessionRow).where(*where))
            rows = list(await tx.scalars(query.limit(limit)))
            summaries = [self._summary(f, rules, moment) for f in await self._facts(tx, rows)]
            return summaries, total or 0

    async def summary(
        self, session_id: int, rules: StuckRules, now: datetime | None = None
    ) -> SessionSummary:
        async with self._tx() as tx:
            row = await self._row(tx, session_id)
            (facts,) = await self._facts(tx, [row])
            return self._summary(facts, rules, _now(now))

    async def transcript(
        self,
        session_id: int,
        rules: StuckRules | None = None,
        *,
        last: int | None = None,
        now: datetime | None = None,
    ) -> Transcript:
        moment = _now(now)
        summary = await self.summary(session_id, rules or StuckRules(), moment)
        async with self._tx() as tx:
            row = await self._row(tx, session_id)
            messages = list(
                await tx.scalars(
                    select(MessageRow)
                    .where(MessageRow.session_id == session_id)
                    .order_by(MessageRow.id)
                )
            )
            calls = list(
                await tx.scalars(
                    select(ToolCallRow)
                    .where(ToolCallRow.session_id == session_id)
                    .order_by(ToolCallRow.message_id, ToolCallRow.seq)
                )
            )
            outbox = list(
                await tx.scalars(
                    select(OutboxRow)
                    .where(OutboxRow.session_id == session_id)
                    .order_by(OutboxRow.id)
                )
            )
        by_message: dict[int, list[ToolCallView]] = {}
        for call in calls:
            end = call.finished_at or (moment if call.status in UNFINISHED else None)
            by_message.setdefault(call.message_id, []).append(
                ToolCallView(
                    id=call.id,
                    call_id=call.call_id,
                    name=call.name,
                    arguments=call.arguments,
                    status=call.status,
                    timeout_seconds=call.timeout_seconds,
                    attempts=call.attempts,
                    seconds=None
                    if call.started_at is None or end is None
                    else max(0.0, (end - call.started_at).total_seconds()),
                    result=call.result,
                )
            )
        views = [
            MessageView(
                id=m.id,
                role=m.role,
                author=m.author_name,
                content=m.content,
                status=m.status,
                position=m.position,
                kind=m.kind,
                tool_call_id=m.tool_call_id,
                created_at=m.created_at,
                calls=tuple(by_message.get(m.id, ())),
            )
            for m in _transcript_order(messages)
        ]
        items = sorted((_item(m) for m in messages if m.position is not None), key=_by_position)
        shown = views if last is None else views[-last:] if last else []
        return Transcript(
            session=summary,
            messages=tuple(shown),
            outbox=tuple(
                OutboxView(
                    id=o.id,
                    kind=o.kind,
                    text=o.text,
                    attempts=o.attempts,
                    failed=o.failed,
                    delivered_at=o.delivered_at,
                    last_error=o.last_error,
                    created_at=o.created_at,
                )
                for o in outbox
            ),
            problems=tuple(_problems(items, self.system_prompt, not row.is_private)),
            history_length=len(items),
            omitted=len(views) - len(shown),
        )

    async def invalid_histories(self) -> tuple[int, list[tuple[SessionSummary, list[Problem]]]]:
        """Checks every stored history, archived ones too: (how many, the invalid ones)."""
        async with self._tx() as tx:
            ids = list(await tx.scalars(select(SessionRow.id).order_by(SessionRow.id)))
            invalid: list[tuple[SessionSummary, list[Problem]]] = []
            for part in _chunks(ids):
                rows = list(
                    await tx.scalars(
                        select(SessionRow).where(SessionRow.id.in_(part)).order_by(SessionRow.id)
                    )
                )
                for facts in await self._facts(tx, rows):
                    name_authors = not facts.row.is_private
                    problems = _problems(facts.items, self.system_prompt, name_authors)
                    if problems:
                        summary = self._summary(facts, StuckRules(), _now(None))
                        invalid.append((summary, problems))
        return len(ids), invalid

    async def usage(self, now: datetime | None = None) -> list[UsageLine]:
        """LLM calls and tokens per user and per chat: today and this month (UTC)."""
        moment = _now(now)
        day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        tokens = LLMCallRow.prompt_tokens + LLMCallRow.completion_tokens
        today = LLMCallRow.created_at >= day
        columns = (
            func.sum(case((today, 1), else_=0)),
            func.sum(case((today, tokens), else_=0)),
            func.count(),
            func.coalesce(func.sum(tokens), 0),
        )
        lines: list[UsageLine] = []
        async with self._tx() as tx:
            for scope, key in (("user", LLMCallRow.user_id), ("chat", LLMCallRow.chat_key)):
                result = await tx.execute(
                    select(key, *columns)
                    .where(LLMCallRow.created_at >= month)
                    .group_by(key)
                    .order_by(func.coalesce(func.sum(tokens), 0).desc(), key)
                )
                for name, *figures in result:
                    lines.append(UsageLine(scope, name or "-", *(int(v or 0) for v in figures)))
            total = (await tx.execute(select(*columns).where(LLMCallRow.created_at >= month))).one()
            lines.append(UsageLine("total", "all", *(int(v or 0) for v in total)))
        return lines

    async def workers(self, now: datetime | None = None) -> list[WorkerView]:
        """Every worker that ever beat on this database, the most recently seen first."""
        moment = _now(now)
        async with self._tx() as tx:
            rows = await tx.scalars(
                select(WorkerRow).order_by(WorkerRow.last_seen_at.desc(), WorkerRow.worker_id)
            )
            views = []
            for row in rows:
                ago = _seconds(row.last_seen_at, moment) or 0.0
                views.append(
                    WorkerView(
                        row.worker_id,
                        row.last_seen_at,
                        ago,
                        ago <= ALIVE_SECONDS,
                        row.intake_problem,
                    )
                )
            return views

    # --- operators' requests to the running bot -----------------------------------------------

    async def request(self, session_id: int, action: str) -> int:
        """Queues a control for the running bot (or the next start): its id."""
        async with self._tx() as tx:
            await self._row(tx, session_id)
        return await self.store.add_control(session_id, action)

    async def control(self, control_id: int) -> ControlState:
        async with self._tx() as tx:
            row = await tx.get(ControlRow, control_id)
            if row is None:
                raise LookupError(f"no control {control_id}")
            return ControlState(row.id, row.action, row.done_at is not None, row.result)

    async def archive(self, session_id: int) -> bool:
        """Resets a conversation directly (bot stopped); False if it was archived already."""
        async with self._tx() as tx:
            row = await self._row(tx, session_id)
            if row.active_key is None:
                return False
        await self.store.archive_session(session_id)
        return True

    # --- repair ------------------------------------------------------------------------------

    async def repair(
        self, session_id: int, rules: StuckRules, *, dry_run: bool, now: datetime | None = None
    ) -> RepairResult:
        """Makes the session able to go on; returns the steps (a dry run only plans them)
        and the control that asks the bot to carry it on. No steps: nothing to repair.

        The plan is computed the same way in both modes from the same state, so a dry run
        prints exactly what a real run would do from here.
        """
        moment = _now(now)
        if dry_run:
            async with self._tx() as tx:
                return RepairResult((await self._plan(tx, session_id, rules))[0], None)
        try:
            async with self._tx() as tx, tx.begin():
                # Take the session row's write lock first (an update that changes nothing):
                # the bot's state changes of this session queue behind the repair instead
                # of interleaving with it.
                locked = await tx.execute(
                    update(SessionRow)
                    .where(SessionRow.id == session_id)
                    .values(updated_at=SessionRow.updated_at)
                )
                if not locked.rowcount:  # type: ignore[attr-defined]
                    raise UnknownSession(f"no session {session_id}")
                steps, plan = await self._plan(tx, session_id, rules)
                if not steps:
                    raise _NothingToRepair
                control_id = await self._apply(tx, plan, moment)
        except _NothingToRepair:
            return RepairResult([], None)
        return RepairResult(steps, control_id)

    async def _plan(self, tx: Tx, session_id: int, rules: StuckRules) -> tuple[list[Step], _Plan]:
        session = await self._row(tx, session_id)
        archived = session.active_key is None
        steps: list[Step] = []
        rounds = list(
            await tx.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id, MessageRow.status == "pending_calls")
                .order_by(MessageRow.id)
            )
        )
        calls: dict[int, list[ToolCallRow]] = {}
        for message in rounds:
            calls[message.id] = list(
                await tx.scalars(
                    select(ToolCallRow)
                    .where(ToolCallRow.message_id == message.id)
                    .order_by(ToolCallRow.seq)
                    # The bot stores a result without the session's lock (finish_tool): on
                    # PostgreSQL it would land between this read and the repair's cancel,
                    # and be overwritten while the bot counts it stored.
                    .with_for_update()
                )
            )
        positioned = list(
            await tx.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id, MessageRow.position.is_not(None))
                .order_by(MessageRow.position)
            )
        )
        deferred = list(
            await tx.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id, MessageRow.status == "deferred")
                .order_by(MessageRow.id)
            )
        )
        # The history as it will be once the rounds are closed, to plan the history repair.
        items = [_item(m) for m in positioned]
        for n, message in enumerate(rounds):
            round_calls = calls[message.id]
            unfinished = [c for c in round_calls if c.status in UNFINISHED]
            for call in unfinished:
                steps.append(
                    Step(
                        "cancel_tool",
                        f"give tool call {call.call_id} ({call.name}, {call.status}) the result "
                        f'"{CANCELLED_BY_OPERATOR.result}" (status cancelled)',
                    )
                )
            placed = deferred if n == 0 else []
            move = "" if archived or n else f"; session state {session.state} -> llm"
            steps.append(
                Step(
                    "close_round",
                    f"close the tool round of message #{message.id}: it enters the history with "
                    f"{_plural(len(round_calls), 'tool result')} and "
                    f"{_plural(len(placed), 'deferred message')}{move}",
                )
            )
            items.append(replace(_item(message), position=None))
            for call in round_calls:
                result = CANCELLED_BY_OPERATOR.result if call in unfinished else call.result
                items.append(
                    _Item(None, "tool", result or "", tool_call_id=call.call_id, turn=message.turn)
                )
            items.extend(_item(m) for m in placed)
        requeue = [] if rounds or archived else deferred
        if requeue:
            # Deferred messages wait for a round to close; with none open they would wait
            # forever. Queued, the engine takes them into its next turn.
            steps.append(
                Step(
                    "requeue_deferred",
                    f"queue {_plural(len(requeue), 'deferred message')} again (no tool round is "
                    "open to take them into the history)",
                )
            )
        new_state: str | None = None
        if rounds and not archived:
            new_state = SessionState.LLM
        elif session.state == SessionState.TOOLS and not archived:
            new_state = SessionState.LLM
            steps.append(Step("set_state", "session state tools -> llm (no tool round is open)"))
        fix = _history_fix(items, self.system_prompt)
        steps.extend(fix.steps)
        waiting = _unanswered(fix.target)
        queued = await tx.scalar(
            select(func.count())
            .select_from(MessageRow)
            .where(MessageRow.session_id == session_id, MessageRow.status == "queued")
        )
        idle = new_state is None and not archived and session.state == SessionState.IDLE
        if idle and waiting and not queued and not requeue:
            # Recovery starts turns only for queued messages; these are in the history
            # already (the LLM call that took them failed), so ask the model again.
            new_state = SessionState.LLM
            steps.append(
                Step(
                    "retry_llm",
                    f"session state idle -> llm: ask the model again for "
                    f"{_plural(waiting, 'unanswered message')}",
                )
            )
        outbox = list(
            await tx.scalars(
                select(OutboxRow)
                .where(
                    OutboxRow.session_id == session_id,
                    OutboxRow.delivered_at.is_(None),
                    (OutboxRow.failed.is_(True)) | (OutboxRow.attempts >= rules.max_attempts),
                )
                .order_by(OutboxRow.id)
            )
        )
        for out in outbox:
            how = "failed for good" if out.failed else _plural(out.attempts, "attempt")
            steps.append(
                Step(
                    "reset_outbox",
                    f"send reply #{out.id} ({out.kind}) again ({how}; attempts reset to 0)",
                )
            )
        unsent = await tx.scalar(
            select(func.count())
            .select_from(OutboxRow)
            .where(OutboxRow.session_id == session_id, OutboxRow.delivered_at.is_(None))
        )
        # An idle session with nothing waiting and a valid history needs no bot: a
        # 'recover' control would only be one more request no bot may be there to apply.
        work_left = session.state != SessionState.IDLE or bool(queued) or bool(unsent)
        recover = not archived and bool(steps or work_left)
        if recover:
            steps.append(
                Step(
                    "recover",
                    "queue a 'recover' control: the running bot (or its next start) "
                    "carries the session on",
                )
            )
        return steps, _Plan(
            session,
            rounds,
            calls,
            new_state,
            [m.id for m in requeue],
            [o.id for o in outbox],
            recover,
        )

    async def _apply(self, tx: Tx, plan: _Plan, now: datetime) -> int | None:
        """Writes the plan; the id of the 'recover' control it queues, if any."""
        session_id = plan.session.id
        for message in plan.rounds:
            for call in plan.calls[message.id]:
                if call.status in UNFINISHED:
                    # The same change as SqlStore.finish_tool with the operator's outcome.
                    call.status = CANCELLED_BY_OPERATOR.status.value
                    call.result = CANCELLED_BY_OPERATOR.result
                    call.finished_at = now
        if plan.rounds:
            await tx.run_sync(self.store.place_rounds, [session_id])
        if plan.new_state is not None:
            await tx.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(state=plan.new_state, updated_at=now)
            )
        if plan.requeue_ids:
            await tx.execute(
                update(MessageRow)
                .where(MessageRow.id.in_(plan.requeue_ids), MessageRow.status == "deferred")
                .values(status="queued")
            )
        await self._apply_history_fix(tx, session_id, now)
        if plan.outbox_ids:
            await tx.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_(plan.outbox_ids), OutboxRow.delivered_at.is_(None))
                .values(failed=False, attempts=0)
            )
        control = None
        if plan.recover:
            control = ControlRow(session_id=session_id, action="recover", created_at=now)
            tx.add(control)
        await tx.flush()
        rows = await tx.scalars(
            select(MessageRow)
            .where(MessageRow.session_id == session_id, MessageRow.position.is_not(None))
            .order_by(MessageRow.position)
            .execution_options(populate_existing=True)
        )
        problems = _problems([_item(r) for r in rows], self.system_prompt, False)
        if problems:
            # Never commit a repair that did not work; the transaction rolls back.
            raise RuntimeError(f"the repaired history still breaks {problems[0].rule}")
        return None if control is None else control.id

    async def _apply_history_fix(self, tx: Tx, session_id: int, now: datetime) -> None:
        rows = {
            r.id: r
            for r in await tx.scalars(
                select(MessageRow)
                .where(MessageRow.session_id == session_id, MessageRow.position.is_not(None))
                .execution_options(populate_existing=True)
            )
        }
        items = sorted((_item(r) for r in rows.values()), key=_by_position)
        fix = _history_fix(items, self.system_prompt)
        if not fix.steps:
            return
        # Tells every bot's cached copy of this history that it is stale (the rewrite
        # below changes rows in place, which an incremental read cannot see).
        await tx.execute(
            update(SessionRow)
            .where(SessionRow.id == session_id)
            .values(history_version=SessionRow.history_version + 1)
        )
        # Renumbered from scratch: positions are unique per session, so clear them first.
        await tx.execute(
            update(MessageRow)
            .where(MessageRow.session_id == session_id, MessageRow.position.is_not(None))
            .values(position=None)
        )
        for item in fix.dropped:
            if item.row_id is not None:
                rows[item.row_id].status = DROPPED
        for position, item in enumerate(fix.target, start=1):
            if item.row_id is None:
                tx.add(
                    MessageRow(
                        session_id=session_id,
                        role=item.role,
                        content=item.content,
                        tool_call_id=item.tool_call_id,
                        status="history",
                        position=position,
                        turn=item.turn,
                        created_at=now,
                    )
                )
                continue
            row = rows[item.row_id]
            row.position = position
            row.content = item.content
            row.tool_calls = item.tool_calls
        await tx.flush()


@dataclass(frozen=True, slots=True)
class _Plan:
    session: SessionRow
    rounds: list[MessageRow]
    calls: dict[int, list[ToolCallRow]]
    new_state: str | None
    requeue_ids: list[int]
    outbox_ids: list[int]
    recover: bool  # queue a 'recover' control for the bot


def _by_position(item: _Item) -> int:
    return item.position or 0
