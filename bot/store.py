"""What the engine needs from storage, as plain records and one protocol.

`storage.repository.SqlStore` implements it; the engine never sees SQL. Every method is one
short transaction, and every method that changes a session's state also writes the outbox
row that change produces, so a crash can never separate them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.events import ConversationKey, InboundMessage, ReplyKind
from bot.llm import ToolCallRequest, Usage
from bot.tools.runner import ToolOutcome, ToolStatus


class SessionState:
    IDLE = "idle"
    LLM = "llm"
    TOOLS = "tools"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: int
    key: ConversationKey
    state: str
    language: str
    turn: int
    tool_rounds: int
    is_private: bool
    chat_title: str | None
    reply_to_id: str | None
    reply_to_user_id: str | None
    turn_user_id: str | None
    turn_is_admin: bool
    last_error: str | None
    archived: bool


# Not frozen: every model call builds one per history row, hundreds, and a frozen
# dataclass's __init__ costs nearly three times as much. Nothing changes one once read.
@dataclass(slots=True)
class HistoryEntry:
    role: str
    content: str | None
    author_name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    text: str
    platform_message_id: str | None
    author_id: str | None


@dataclass(frozen=True, slots=True)
class ToolCallInfo:
    id: int
    call_id: str
    name: str
    arguments: str
    status: ToolStatus
    timeout_seconds: float
    attempts: int
    started_at: datetime | None
    result: str | None


@dataclass(frozen=True, slots=True)
class InterimContext:
    """What an instant reply needs, read in one go: the round's calls, and the instant
    replies this session got recently (oldest first, the very last one last)."""

    calls: list[ToolCallInfo]
    recent_replies: list[str]


@dataclass(frozen=True, slots=True)
class PlannedInterim:
    """The instant reply chosen for one queued message."""

    message_id: int
    text: str
    kind: str
    language: str


# Picks the instant replies for a session's queued messages; pure and quick, because it
# runs inside the transaction that stores its choices, perhaps in storage's own thread
# (it must not touch the event loop), perhaps twice (a shared transaction retried).
InterimPlanner = Callable[
    [SessionInfo, Sequence[QueuedMessage], InterimContext], Sequence[PlannedInterim]
]


@dataclass(frozen=True, slots=True)
class PlannedCall:
    request: ToolCallRequest
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    session_id: int
    key: ConversationKey
    reply_to_id: str | None
    reply_to_user_id: str | None
    kind: ReplyKind
    text: str
    attempts: int


@dataclass(frozen=True, slots=True)
class ToolRound:
    """The calls `record_tool_calls` stored, its notice if claimed for sending now, and
    whether messages came during the model call (they get their instant replies);
    `message_id`: the round's assistant message, which names the round."""

    calls: list[ToolCallInfo]
    ready: list[OutboxItem]
    queued: bool
    message_id: int


@dataclass(frozen=True, slots=True)
class OutboxClaim:
    """Replies claimed for sending, in order; `blocked` when an older one of the session
    is held by another worker, so the rest wait for it."""

    items: list[OutboxItem]
    blocked: bool


@dataclass(frozen=True, slots=True)
class ModelTurn:
    """What the next model call of a session needs, read in the transaction that made the
    session wait for it: the session, its history, and the instant replies this turn got
    (the model is told about them, so it does not repeat them)."""

    info: SessionInfo
    history: list[HistoryEntry]
    interims: list[str]


@dataclass(frozen=True, slots=True)
class Intake:
    """What `record_inbound` or `take_queued` did with a session's queued messages. `info`
    is the session after it; `turn` when they joined the history and a turn started (the
    session was idle); `planned`, the instant replies stored for them (tools were running),
    of which `ready` are claimed for sending at once (none while older replies of the
    session wait: replies keep order)."""

    info: SessionInfo
    turn: ModelTurn | None = None
    planned: list[PlannedInterim] = field(default_factory=list)
    ready: list[OutboxItem] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """A turn recorded as over: its reply, if claimed for sending at once (see
    `Intake.ready`), and whether messages came meanwhile (they start the next turn)."""

    ready: list[OutboxItem]
    queued: bool


class SessionMovedOn(Exception):
    """The session left the state a write expected (a reset, an operator's repair, another
    worker): the write changed nothing."""


@dataclass(frozen=True, slots=True)
class Control:
    id: int
    session_id: int
    action: str


class Store(Protocol):
    """A store made for a worker (`WORKER_ID`) claims the replies it writes for that worker
    when nothing older of the session waits, and returns them as `ready`: the courier sends
    those without a transaction of its own to claim them."""

    # --- taking messages in ---
    async def record_inbound(
        self, message: InboundMessage, language: str | None, plan: InterimPlanner
    ) -> Intake | None:
        """Stores a message as queued in its conversation's active session (created on
        first use) and, in the same transaction, does what `take_queued` does: an idle
        session starts its turn, a session running tools defers the message with the
        instant reply `plan` picks. None if this platform message was seen before.
        `language`: the one the message tells, the session's from now on; None keeps
        the session's (English for a new one)."""
        ...

    async def record_notice(self, message: InboundMessage, text: str) -> int | None:
        """Answers a message outside the conversation (text-only, denied, over a limit):
        dedupes it and writes only an outbox row. Returns the session id or None."""
        ...

    async def get_session(self, session_id: int) -> SessionInfo: ...

    async def active_session_id(self, key: ConversationKey) -> int | None: ...

    # --- turns ---
    async def take_queued(self, session_id: int, plan: InterimPlanner) -> Intake:
        """The queued messages, in one transaction whatever the state. Idle: they join the
        history and a turn starts (idle -> llm). Tools: each is deferred and answered with
        the reply `plan` picks (if `plan` fails they stay queued, for the next turn). LLM
        (or archived, or nothing queued): nothing changes."""
        ...

    async def history(self, session_id: int) -> list[HistoryEntry]: ...

    async def model_turn(self, session_id: int) -> ModelTurn:
        """The session as its next model call needs it (recovery: the transaction that
        made it wait is gone)."""
        ...

    async def record_answer(self, session_id: int, text: str, usage: Usage) -> TurnEnd:
        """llm -> idle with the answer in the history and in the outbox. Raises
        SessionMovedOn if the session was not waiting for the model."""
        ...

    async def record_tool_calls(
        self,
        session_id: int,
        content: str | None,
        calls: Sequence[PlannedCall],
        notice: str | None,
        usage: Usage,
    ) -> ToolRound:
        """llm -> tools: the assistant message waits outside the history until every call
        has its result; `notice`, if any, goes to the outbox. Raises SessionMovedOn as
        above."""
        ...

    async def record_working_notice(
        self, session_id: int, round_message_id: int, text: str
    ) -> list[OutboxItem] | None:
        """tools: the "working on it" notice of the round `round_message_id` names, into
        the outbox if that round still runs (None if it is over); the row is returned
        claimed for sending now unless an older reply waits."""
        ...

    async def record_llm_failure(
        self, session_id: int, error: str, apology: str, usage: Usage | None = None
    ) -> TurnEnd:
        """llm -> idle, keeping the history as it was; the apology goes to the outbox.
        Raises SessionMovedOn as above."""
        ...

    # --- tools ---
    async def open_tool_calls(self, session_id: int) -> list[ToolCallInfo]:
        """Every call of the round in progress, finished or not, in the model's order."""
        ...

    async def mark_tool_running(self, tool_call_id: int) -> None: ...

    async def finish_tool(self, tool_call_id: int, outcome: ToolOutcome) -> bool:
        """Records the one result of a call; False if it already had one."""
        ...

    async def close_tool_round(self, session_id: int) -> ModelTurn | None:
        """tools -> llm once every call has a result: the assistant message, its tool
        results and then the deferred messages join the history, in one transaction.
        Returns what the follow-up call needs, or None if the round is not done (or not
        open)."""
        ...

    async def archive_session(self, session_id: int) -> None:
        """/reset: the conversation is kept but no longer active."""
        ...

    # --- outbox ---
    async def claim_undelivered(
        self, session_id: int, worker: str, lease_seconds: float
    ) -> OutboxClaim:
        """The session's unsent replies in order, claimed for `worker`, up to the first one
        another worker holds (that worker sends it and those after it)."""
        ...

    async def claim_delivery(self, outbox_id: int, worker: str, lease_seconds: float) -> bool:
        """Takes the row for sending; False while another worker holds it."""
        ...

    async def mark_delivered(
        self, outbox_id: int, platform_message_id: str | None, *, join_next_write: bool = False
    ) -> None:
        """Records the row delivered. `join_next_write`: no later reply waits on this, so
        the record may wait a moment to share the next write's transaction."""
        ...

    async def mark_delivery_failed(self, outbox_id: int, error: str, permanent: bool) -> None: ...

    # --- recovery and operators ---
    async def repair_after_restart(self, rerunnable: Collection[str], max_reruns: int) -> int:
        """Start-up, before any session runs: every unfinished call of an open round gets
        "interrupted by a restart", except those of tools in `rerunnable` tried fewer than
        `max_reruns` times; each round then complete closes (tools -> llm), for all
        sessions at once. Returns how many rounds it closed."""
        ...

    async def sessions_needing_work(self) -> list[int]: ...

    async def sessions_with_undelivered(self) -> list[int]: ...

    async def pending_controls(self) -> list[Control]: ...

    async def finish_control(self, control_id: int, result: str) -> None: ...

    async def beat(self, worker: str, intake_problem: str | None = None) -> None:
        """Records that `worker` runs, now, and what keeps its platforms' messages from
        arriving, if anything (the admin CLI reads both)."""
        ...
