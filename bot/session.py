"""One session's actor: the state machine that drives a conversation's turns.

All state changes of a session happen in its actor's loop, one event at a time, so no two
steps of one conversation ever interleave. Slow work (the LLM call, tools) runs in owned
tasks that report back as events; the loop itself only does short storage writes, which is
why a message arriving while tools run is answered at once.

    idle --message--> llm --answer--> idle
                       \\--tool_calls--> tools --last result--> llm (loop, bounded)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.interim.classify import InterimKind
from bot.llm import Completion, LLMError, ToolCallRequest
from bot.prompt import build_request
from bot.storable import storable
from bot.store import (
    Intake,
    ModelTurn,
    OutboxItem,
    PlannedCall,
    SessionInfo,
    SessionMovedOn,
    SessionState,
    ToolCallInfo,
    TurnEnd,
)
from bot.tasks import TaskSet
from bot.tools.runner import (
    CANCELLED_BY_OPERATOR,
    CANCELLED_BY_USER,
    INTERRUPTED,
    ToolOutcome,
    ToolStatus,
)

if TYPE_CHECKING:
    from bot.engine import Engine

log = logging.getLogger(__name__)

MAX_RERUNS_AFTER_RESTART = 3
MAX_STEP_RETRIES = 5
STEP_RETRY_SECONDS = 2.0
MAX_CALL_ID = 40
# OpenAI's limit on a function name; the stored name's column holds 128.
MAX_TOOL_NAME = 64


@dataclass(frozen=True)
class Taken:
    """A new message was stored, and what the session's state made of it (a turn
    started, or an instant reply stored) in the same transaction."""

    intake: Intake


@dataclass(frozen=True)
class Recover:
    """Look at the stored state and carry on from it (start-up, operator repair). Posted
    by the engine (see `Engine.recover`), with the recovery slot it took for it, or none
    for a session that a living user's message made carry on at once."""

    slot: asyncio.Semaphore | None = None


@dataclass(frozen=True)
class LLMDone:
    result: Completion | LLMError
    info: SessionInfo  # the session as the call began
    # Set once the reply is recorded: a recovering call keeps its slot until then.
    recorded: asyncio.Future[None] | None = None


@dataclass(frozen=True)
class ToolDone:
    tool_call_id: int
    outcome: ToolOutcome


@dataclass(frozen=True)
class Cancel:
    outcome: ToolOutcome
    done: asyncio.Future[int]


@dataclass(frozen=True)
class Reset:
    done: asyncio.Future[None]


@dataclass(frozen=True)
class NoticeDue:
    """The tool round `round_message_id` names has run TOOL_NOTICE_DELAY_SECONDS: say
    that the bot works on it, unless the round is over."""

    round_message_id: int
    text: str


Event = Taken | Recover | LLMDone | ToolDone | Cancel | Reset | NoticeDue


def sanitize_calls(calls: Sequence[ToolCallRequest]) -> list[ToolCallRequest]:
    """Some OpenAI-compatible servers send ids that OpenAI itself would reject later (too
    long, empty, repeated), empty or overlong names, or text no database stores; fix them
    before they enter the history. A name cut short still names no tool: its result says
    so."""
    seen: set[str] = set()
    clean = []
    for call in calls:
        call_id = storable(call.call_id or "")
        if not call_id or len(call_id) > MAX_CALL_ID or call_id in seen:
            call_id = "call_" + secrets.token_hex(12)
        seen.add(call_id)
        name = storable(call.name or "")[:MAX_TOOL_NAME] or "unnamed_tool"
        clean.append(ToolCallRequest(call_id, name, storable(call.arguments or "")))
    return clean


class SessionActor:
    def __init__(self, engine: Engine, session_id: int) -> None:
        self.engine = engine
        self.session_id = session_id
        self.label = f"session-{session_id}"
        self._mailbox: asyncio.Queue[Event] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None
        self._work = TaskSet(self.label)
        self._llm_task: asyncio.Task[None] | None = None
        self._tool_tasks: dict[int, asyncio.Task[None]] = {}
        # Outcomes of tools that ended but are not stored yet (the write failed): the
        # step's retry stores these, where a call with no result would be run again or
        # called interrupted. The actor stays until they are stored.
        self._unrecorded: dict[int, ToolOutcome] = {}
        self._cancel_outcome: ToolOutcome | None = None
        # The pending "working on it" notice of the round that runs (_start_tools).
        self._notice: asyncio.TimerHandle | None = None

    # --- mailbox ---------------------------------------------------------------------------

    def post(self, event: Event) -> None:
        self._mailbox.put_nowait(event)
        if self._loop_task is None:
            self._loop_task = self.engine.tasks.spawn(self._run(), self.label)

    @property
    def quiet(self) -> bool:
        return (
            self._mailbox.empty()
            and self._llm_task is None
            and not self._tool_tasks
            and not self._unrecorded
        )

    async def _run(self) -> None:
        try:
            while True:
                if self.quiet:
                    # Retire with no await between the check and leaving the engine's map,
                    # so a concurrent post() either lands before it or builds a new actor.
                    self.engine.retire(self)
                    return
                event = await self._mailbox.get()
                try:
                    await self._handle(event)
                    if not isinstance(event, Recover) or self.quiet:
                        # A Recover that went well only started the work again (in a
                        # model call's state, a new call whose reply may fail to be
                        # stored as before): the failures count on until a step after it
                        # succeeds, so that MAX_STEP_RETRIES bounds the paid calls too.
                        self.engine.step_failures.pop(self.session_id, None)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(
                        "session step failed: %s",
                        type(event).__name__,
                        extra={"session": self.label},
                    )
                    if isinstance(event, Cancel | Reset) and not event.done.done():
                        event.done.set_exception(RuntimeError("the session could not do it"))
                    self._retry_later()
        finally:
            self._loop_task = None

    def _retry_later(self) -> None:
        """A failed step (database busy or down) is not the end of the conversation: look
        at the stored state again after a pause, a few times, as a restart would."""
        failures = self.engine.step_failures.get(self.session_id, 0) + 1
        self.engine.step_failures[self.session_id] = failures
        if failures > MAX_STEP_RETRIES:
            log.error(
                "session gave up after %d failed steps; `stillhere admin repair` resumes it",
                failures - 1,
                extra={"session": self.label},
            )
            self.engine.step_failures.pop(self.session_id, None)
            # No retry will store them; the operator's repair gives those calls a result.
            self._unrecorded.clear()
            # Its user writing again carries it on, once the database is back.
            self.engine.gave_up.add(self.session_id)
            return
        self.engine.recover_later(self.session_id, STEP_RETRY_SECONDS * failures)

    async def stop(self) -> None:
        """Shutdown: work in flight is abandoned, not finished; recovery resumes it."""
        self._drop_notice()
        self._cancel_outcome = None
        await self._work.cancel_all()
        self._tool_tasks.clear()
        self._unrecorded.clear()
        self._llm_task = None
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    async def _handle(self, event: Event) -> None:
        match event:
            case Taken(intake):
                self._after_intake(intake)
            case Recover(slot):
                await self._on_recover(slot)
            case LLMDone():
                await self._on_llm_done(event)
            case ToolDone(tool_call_id, outcome):
                await self._on_tool_done(tool_call_id, outcome)
            case Cancel(outcome, done):
                done.set_result(self._cancel_tools(outcome))
            case Reset(done):
                await self._on_reset()
                done.set_result(None)
            case NoticeDue(round_message_id, text):
                await self._post_notice(round_message_id, text)

    # --- turns -----------------------------------------------------------------------------

    async def _take_queued(self) -> bool:
        """Idle: queued messages start a turn (True). Tools: each gets its instant reply.
        LLM: they stay queued; the call's end picks them all up in one turn."""
        intake = await self.engine.store.take_queued(self.session_id, self.engine.plan_interims)
        self.engine.send_instant_replies(intake)
        return self._after_intake(intake)

    def _after_intake(self, intake: Intake) -> bool:
        """Acts on what storage did with queued messages, once their instant replies are
        with the courier (`Engine.send_instant_replies`): starts the model call of a turn
        that began (True)."""
        engine = self.engine
        if intake.turn is not None:
            log.info("turn started", extra={"session": self.label, "turn": intake.info.turn})
            self._spawn_llm(intake.turn)
            return True
        if intake.planned:
            for choice in intake.planned:
                log.info(
                    "instant reply: %s",
                    choice.kind,
                    extra={"session": self.label, "turn": intake.info.turn},
                )
            # The instant reply says what the notice would have: the tools still run.
            if self._drop_notice():
                engine.typing.stop(self.session_id)
            if any(choice.kind == InterimKind.CANCEL.value for choice in intake.planned):
                self._cancel_tools(CANCELLED_BY_USER)
        return False

    def _spawn_llm(self, turn: ModelTurn, slot: asyncio.Semaphore | None = None) -> bool:
        """Starts the model call unless one runs. `slot`: a recovery slot already taken;
        the call keeps it until its reply is recorded (however the task ends), so that
        thousands of recovering sessions neither call nor write all at once. Returns
        whether it started the call (which then holds `slot`)."""
        if self._llm_task is not None:
            return False
        task = self._llm_task = self._work.spawn(self._call_llm(turn, slot is not None), "llm")
        if slot is not None:
            task.add_done_callback(lambda _: slot.release())
        return True

    async def _call_llm(self, turn: ModelTurn, until_recorded: bool) -> None:
        key = turn.info.key
        # Typing while the model writes; it stopped if tools ran before this call.
        self.engine.typing.start(self.session_id, key, self.engine.sink(key.platform))
        result = await self._complete(turn)
        recorded = asyncio.get_running_loop().create_future() if until_recorded else None
        self.post(LLMDone(result, turn.info, recorded))
        if recorded is not None:
            await recorded

    async def _complete(self, turn: ModelTurn) -> Completion | LLMError:
        engine, info = self.engine, turn.info
        result: Completion | LLMError
        try:
            note = None
            if turn.interims:
                replies = "; ".join(f"«{text}»" for text in turn.interims)
                note = engine.book.phrase("interim_note", "en", replies=replies)
            messages = build_request(
                system_prompt=engine.config.system_prompt,
                entries=turn.history,
                name_authors=not info.is_private,
                note=note,
                budget_tokens=engine.config.context_budget_tokens,
                max_user_run=engine.config.max_deferred_messages,
                stats=engine.prompt_stats,
                session_label=self.label,
            )
            may_use_tools = info.tool_rounds < engine.config.max_tool_rounds
            tools = engine.registry.openai_tools(include_admin=info.turn_is_admin)
            result = await engine.llm.complete(
                messages, tools, tool_choice="auto" if may_use_tools else "none"
            )
        except LLMError as exc:
            result = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("preparing the LLM call failed", extra={"session": self.label})
            result = LLMError("internal", f"{type(exc).__name__}: {exc}")
        return result

    async def _on_llm_done(self, done: LLMDone) -> None:
        """`done.info`: the session as the call began; every write below is a
        compare-and-set on its waiting for the model, so nothing needs reading first."""
        self._llm_task = None
        try:
            await self._record(done.result, done.info)
        except SessionMovedOn:
            # Reset, repaired by an operator or taken by another worker meanwhile.
            log.info(
                "the model's reply came after the session moved on; dropped",
                extra={"session": self.label, "turn": done.info.turn},
            )
            self.engine.typing.stop(self.session_id)
        finally:
            if done.recorded is not None and not done.recorded.done():
                done.recorded.set_result(None)

    async def _record(self, result: Completion | LLMError, info: SessionInfo) -> None:
        store, engine = self.engine.store, self.engine
        if isinstance(result, Completion):
            calls = sanitize_calls(result.tool_calls)
            if info.tool_rounds >= engine.config.max_tool_rounds:
                # tool_choice was "none"; a server that ignores it gets its calls dropped.
                calls = []
            content = storable(result.content or "").strip() or None
            if calls:
                await self._start_tools(info, content, calls, result)
                return
            if content is None:
                result = LLMError("empty_answer", "the model answered with no text")
            else:
                end = await store.record_answer(self.session_id, content, result.usage)
                log.info("turn answered", extra={"session": self.label, "turn": info.turn})
                await self._after_turn(end)
                return
        log.warning("LLM call failed: %s", result, extra={"session": self.label, "turn": info.turn})
        apology = engine.book.phrase("apology", info.language)
        await self._after_turn(
            await store.record_llm_failure(self.session_id, storable(str(result)), apology)
        )

    async def _after_turn(self, end: TurnEnd) -> None:
        self.engine.courier.kick(self.session_id, end.ready)
        # Messages that came during the turn start the next one; typing goes on for it.
        if not (end.queued and await self._take_queued()):
            self.engine.typing.stop(self.session_id)

    async def _start_tools(
        self,
        info: SessionInfo,
        content: str | None,
        calls: Sequence[ToolCallRequest],
        completion: Completion,
    ) -> None:
        engine = self.engine
        planned = [PlannedCall(c, engine.runner.timeout_for(c.name)) for c in calls]
        # What the model said goes out at once. Otherwise the bot says it is working on it
        # only once the tools have taken a while: a quick one is answered without it, and
        # typing goes on meanwhile, as for an answer being written.
        delay = engine.config.tool_notice_delay
        working = engine.book.phrase("working", info.language)
        notice = content or (working if delay <= 0 else None)
        tool_round = await engine.store.record_tool_calls(
            self.session_id, content, planned, notice, completion.usage
        )
        rows = tool_round.calls
        if notice is None:
            self._notice = asyncio.get_running_loop().call_later(
                delay, self.post, NoticeDue(tool_round.message_id, working)
            )
        else:
            self._said_working(tool_round.ready)
        log.info(
            "tools started: %s",
            ", ".join(r.name for r in rows),
            extra={"session": self.label, "turn": info.turn},
        )
        for row in rows:
            self._spawn_tool(row, admin=info.turn_is_admin)
        if tool_round.queued:
            await self._take_queued()

    # --- tools -----------------------------------------------------------------------------

    def _said_working(self, ready: Sequence[OutboxItem]) -> None:
        # "Typing" means a message is being written; while tools run, the notice says what
        # happens instead. The model's next call shows it again.
        self.engine.typing.stop(self.session_id)
        self.engine.courier.kick(self.session_id, ready)

    async def _post_notice(self, round_message_id: int, text: str) -> None:
        self._notice = None
        if not self._tool_tasks:
            return  # the round ended as the timer fired
        ready = await self.engine.store.record_working_notice(
            self.session_id, round_message_id, text
        )
        if ready is not None:
            self._said_working(ready)

    def _drop_notice(self) -> bool:
        """Whether a notice was still to come."""
        if self._notice is None:
            return False
        self._notice.cancel()
        self._notice = None
        return True

    def _spawn_tool(self, call: ToolCallInfo, *, admin: bool) -> None:
        """`admin`: whether the turn is an admin's, which admin-only tools need."""
        task = self._work.spawn(self._run_tool(call, admin), f"tool-{call.name}")
        task.add_done_callback(lambda done: self._reported_unstarted(call, done))
        self._tool_tasks[call.id] = task

    def _reported_unstarted(self, call: ToolCallInfo, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs _run_tool's handler, so a
        # cancel handled right behind the spawn would leave the call without a result.
        # A task that ran reports itself, and ends cancelled only at shutdown (no outcome).
        if task.cancelled() and self._cancel_outcome is not None:
            self.post(ToolDone(call.id, self._cancel_outcome))

    async def _run_tool(self, call: ToolCallInfo, admin: bool) -> None:
        try:
            await self.engine.store.mark_tool_running(call.id)
            outcome = await self.engine.runner.run(call.name, call.arguments, admin=admin)
        except asyncio.CancelledError:
            if self._cancel_outcome is None:
                raise  # shutdown: the call stays running and recovery decides
            outcome = self._cancel_outcome
        except Exception as exc:
            log.exception("tool %s could not run", call.name, extra={"session": self.label})
            outcome = ToolOutcome(ToolStatus.FAILED, f"error: {type(exc).__name__}: {exc}")
        self.post(ToolDone(call.id, outcome))

    async def _on_tool_done(self, tool_call_id: int, outcome: ToolOutcome) -> None:
        self._tool_tasks.pop(tool_call_id, None)
        self._unrecorded[tool_call_id] = outcome
        await self._record_outcomes()
        if not self._tool_tasks:
            await self._close_round()

    async def _record_outcomes(self) -> None:
        """Stores the outcomes of ended tools, each kept until its own write succeeds."""
        for tool_call_id, outcome in list(self._unrecorded.items()):
            if await self.engine.store.finish_tool(tool_call_id, outcome):
                log.info("tool finished: %s", outcome.status, extra={"session": self.label})
            del self._unrecorded[tool_call_id]

    async def _close_round(self) -> None:
        self._drop_notice()
        turn = await self.engine.store.close_tool_round(self.session_id)
        if turn is not None:
            self._cancel_outcome = None
            self._spawn_llm(turn)

    def _cancel_tools(self, outcome: ToolOutcome) -> int:
        if not self._tool_tasks:
            return 0
        self._cancel_outcome = outcome
        for task in self._tool_tasks.values():
            task.cancel()
        return len(self._tool_tasks)

    # --- recovery and operators ------------------------------------------------------------

    async def _on_recover(self, slot: asyncio.Semaphore | None) -> None:
        kept = False
        try:
            kept = await self._recover(slot)
        finally:
            if slot is not None and not kept:
                slot.release()

    async def _recover(self, slot: asyncio.Semaphore | None) -> bool:
        """Carries on from the stored state; True when a follow-up model call took `slot`
        (taken) with it."""
        engine, store = self.engine, self.engine.store
        # Before the calls are read: a call whose outcome waits here is not unfinished.
        await self._record_outcomes()
        info = await store.get_session(self.session_id)
        if info.archived:
            return False
        # Only a tool round has calls to look at; sparing the read elsewhere matters when
        # thousands of sessions recover after a restart, all waiting for their model call.
        in_round = info.state == SessionState.TOOLS
        calls = await store.open_tool_calls(self.session_id) if in_round else []
        open_ids = {c.id for c in calls if not c.status.finished}
        for task_id in [t for t in self._tool_tasks if t not in open_ids]:
            # An operator gave this call its result (and maybe closed the round) while it
            # still ran here: its task has nothing left to report.
            self._cancel_outcome = self._cancel_outcome or CANCELLED_BY_OPERATOR
            self._tool_tasks[task_id].cancel()
        if info.state == SessionState.IDLE:
            await self._take_queued()
            return False
        if info.state == SessionState.LLM:
            return self._spawn_llm(await store.model_turn(self.session_id), slot)
        for call in calls:
            if call.status.finished or call.id in self._tool_tasks:
                continue
            if call.name in engine.rerunnable and call.attempts < MAX_RERUNS_AFTER_RESTART:
                log.info("re-running %s after a restart", call.name, extra={"session": self.label})
                self._spawn_tool(call, admin=info.turn_is_admin)
            else:
                await store.finish_tool(call.id, INTERRUPTED)
        await self._take_queued()
        if not self._tool_tasks:
            await self._close_round()
        return False

    async def _on_reset(self) -> None:
        self._drop_notice()
        self._cancel_outcome = ToolOutcome(
            ToolStatus.CANCELLED, "cancelled: the conversation was reset"
        )
        tasks = [*self._tool_tasks.values(), *([self._llm_task] if self._llm_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tool_tasks.clear()
        self._llm_task = None
        await self.engine.store.archive_session(self.session_id)
        self.engine.typing.stop(self.session_id)
        log.info("conversation reset", extra={"session": self.label})


def seconds_since(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return max(0.0, (datetime.now(UTC) - moment).total_seconds())
