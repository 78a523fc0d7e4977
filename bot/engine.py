"""The engine: takes normalized events from adapters and hands each to its session's actor.

It stores a message before anything else happens to it, so whatever crashes next, the
message is there for recovery. It owns every background task (actors, deliveries, typing,
the operator control poll) and stops them all on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial

from bot.core_api import SubmitOutcome
from bot.courier import Courier
from bot.events import CommandName, CommandRequest, InboundMessage, ReplySink, utcnow
from bot.guards.access import AccessGate
from bot.interim.classify import Reading
from bot.interim.replies import ReplyBook, RunningTool
from bot.llm import ChatModel
from bot.policies import Gate, Verdict
from bot.presence import TypingKeeper
from bot.prompt import PromptStats
from bot.session import (
    MAX_RERUNS_AFTER_RESTART,
    Cancel,
    Recover,
    Reset,
    SessionActor,
    Taken,
    seconds_since,
)
from bot.settings import GroupMode, Settings
from bot.storable import storable
from bot.store import (
    Intake,
    InterimContext,
    InterimPlanner,
    PlannedInterim,
    QueuedMessage,
    SessionInfo,
    SessionState,
    Store,
    ToolCallInfo,
)
from bot.tasks import TaskSet
from bot.tools.registry import Registry
from bot.tools.runner import CANCELLED_BY_OPERATOR, CANCELLED_BY_USER, ToolOutcome, ToolRunner

log = logging.getLogger(__name__)

CONTROL_POLL_SECONDS = 1.0
# Sessions that run their recovery step, or their follow-up model call, at once after a
# restart. All of them at once (thousands, after a crash under load) would queue a new
# message's transactions and model call behind every one of theirs, and advance them all
# in lockstep so that none finishes early.
RECOVERY_CONCURRENCY = 32
# How often replies left undelivered (platform down, a dead worker's claim) are retried.
SWEEP_EVERY_POLLS = 30
# The engine's heartbeat (`Store.beat`) on the first poll, then every this many: the admin
# CLI tells from it, within seconds, whether a bot runs (one small write per 5 s).
HEARTBEAT_EVERY_POLLS = 5
# Waits between tries to store a message whose storing failed (a locked or restarting
# database). The platform has moved past the message once submit returns, so it is worth
# holding the adapter's intake a few seconds; after the last try the error propagates.
INTAKE_RETRY_SECONDS: tuple[float, ...] = (0.5, 2.0, 5.0)
# In a group, these change the conversation for everyone: only admins, once admins are set.
ADMIN_COMMANDS_IN_GROUPS = frozenset({CommandName.RESET})


@dataclass(frozen=True)
class EngineConfig:
    system_prompt: str
    context_budget_tokens: int
    max_tool_rounds: int
    max_message_chars: int = 4000
    max_deferred_messages: int = 10
    # Seconds a tool round runs before its "working on it" notice (0: at once).
    tool_notice_delay: float = 0.0
    worker_id: str = "main"
    group_modes: Mapping[str, GroupMode] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            system_prompt=settings.system_prompt,
            context_budget_tokens=settings.context_budget_tokens,
            max_tool_rounds=settings.max_tool_rounds,
            max_message_chars=settings.max_message_chars,
            max_deferred_messages=settings.max_deferred_messages,
            tool_notice_delay=settings.tool_notice_delay_seconds,
            worker_id=settings.worker_id,
            group_modes={
                "telegram": settings.telegram_group_mode,
                "discord": settings.discord_group_mode,
            },
        )


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        llm: ChatModel,
        registry: Registry,
        runner: ToolRunner,
        book: ReplyBook,
        config: EngineConfig,
        gates: Sequence[Gate] = (),
        access: AccessGate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.llm = llm
        self.registry = registry
        self.runner = runner
        self.book = book
        self.config = config
        self.gates = list(gates)
        self.access = access
        self.rng = rng or random.Random()
        self.tasks = TaskSet("engine")
        self.courier = Courier(store, config.worker_id)
        self.typing = TypingKeeper()
        self.prompt_stats = PromptStats()
        self._actors: dict[int, SessionActor] = {}
        # Consecutive failed steps per session, kept here because actors come and go.
        self.step_failures: dict[int, int] = {}
        # Sessions whose steps failed too often (SessionActor._retry_later): the next
        # message or cancel for one carries it on (`carry_on_now`).
        self.gave_up: set[int] = set()
        self._sinks: dict[str, ReplySink] = {}
        # Platform -> (since when, what) keeps its messages from arriving (report_intake).
        self._intake_problems: dict[str, tuple[datetime, str]] = {}
        self._control_task: asyncio.Task[None] | None = None
        # What `prepare` found to carry on; None until it ran.
        self._to_recover: list[int] | None = None
        self.recovery_slots = asyncio.Semaphore(RECOVERY_CONCURRENCY)
        self._to_hand_back: asyncio.Queue[int] = asyncio.Queue()
        self._awaiting_slot: set[int] = set()  # queued by `recover`, Recover not yet posted
        self._hand_back_task: asyncio.Task[None] | None = None

    # --- adapters' side (bot.core_api.ChatCore) ---------------------------------------------

    def attach(self, sink: ReplySink) -> None:
        self._sinks[sink.platform] = sink
        self.courier.attach(sink)

    def report_intake(self, platform: str, problem: str | None) -> None:
        if problem is None:
            if self._intake_problems.pop(platform, None) is not None:
                log.info("%s messages arrive again", platform)
            return
        since = self._intake_problems.get(platform, (utcnow(), ""))[0]
        self._intake_problems[platform] = (since, problem)

    def intake_problem(self) -> str | None:
        """The platforms' reported problems, as the heartbeat records them."""
        return (
            "; ".join(
                f"{platform} since {since:%Y-%m-%d %H:%M:%S} UTC: {problem}"
                for platform, (since, problem) in sorted(self._intake_problems.items())
            )
            or None
        )

    def sink(self, platform: str) -> ReplySink | None:
        return self._sinks.get(platform)

    def _addressed(self, message: InboundMessage) -> bool:
        if message.is_private or message.addresses_bot:
            return True
        mode = self.config.group_modes.get(message.conversation.platform, GroupMode.MENTION)
        return mode == GroupMode.ALL

    async def submit(self, message: InboundMessage) -> SubmitOutcome:
        extra = {"session": str(message.conversation), "platform": message.conversation.platform}
        if not self._addressed(message):
            return SubmitOutcome.IGNORED
        # Text no database stores would fail every try to store the message (bot.storable).
        title = message.chat_title
        message = replace(
            message,
            text=storable(message.text),
            display_name=storable(message.display_name),
            chat_title=None if title is None else storable(title),
        )
        if message.unsupported is not None and not (message.is_private or message.addresses_bot):
            # A group that gets every message answered still shares photos and stickers
            # among its people: only one sent to the bot gets the "text only" notice.
            return SubmitOutcome.IGNORED
        # A message that tells no language ("Ok") leaves the conversation's as it is; the
        # notices sent before the message is stored fall back to English.
        reading = self.book.classifier.read(message.text)
        told = reading.told
        language = told or "en"
        if self._is_admin(message.conversation.platform, message.user_id, message.is_admin):
            message = replace(message, is_admin=True)
        for gate in self.gates:
            verdict = await gate.check(message)
            if verdict is not Verdict.ALLOW:
                log.info("message refused: %s", verdict.reason, extra=extra)
                if verdict.notice_key and (message.is_private or verdict.notify_groups):
                    text = self.book.phrase(verdict.notice_key, language, **verdict.values)
                    await self._notice(message, text)
                return SubmitOutcome.DENIED
        limit = self.config.max_message_chars
        if len(message.text) > limit:
            # Never sent raw: the model gets the start and a note of what was cut.
            cut = f"{message.text[:limit]}\n[message cut: {len(message.text)} characters in all]"
            message = replace(message, text=cut)
        if message.unsupported is not None or not message.text.strip():
            if message.unsupported is None:
                return SubmitOutcome.IGNORED
            log.info("non-text message (%s)", message.unsupported, extra=extra)
            return await self._notice(message, self.book.phrase("text_only", language))
        # The message's words are read once: the planner is handed what this reading found.
        plan = partial(self.plan_interims, known={message.text: reading})
        intake = await self._record_inbound(message, told, plan)
        if intake is None:
            log.info("duplicate message %s ignored", message.message_id, extra=extra)
            return SubmitOutcome.DUPLICATE
        log.info("message stored", extra={**extra, "session": f"session-{intake.info.id}"})
        self.carry_on_now(intake.info.id)
        self.send_instant_replies(intake)
        if intake.turn is not None or intake.planned:
            self._actor(intake.info.id).post(Taken(intake))
        # Otherwise it waits, queued, for the model call in flight: its end takes it.
        return SubmitOutcome.ACCEPTED

    async def _record_inbound(
        self, message: InboundMessage, told: str | None, plan: InterimPlanner
    ) -> Intake | None:
        """Stores the message, trying again after a failure (see INTAKE_RETRY_SECONDS)."""
        delays = iter(INTAKE_RETRY_SECONDS)
        failed = False
        while True:
            try:
                intake = await self.store.record_inbound(message, told, plan)
            except Exception:
                delay = next(delays, None)
                if delay is None:
                    raise
                log.warning(
                    "storing message %s failed; trying again in %ss",
                    message.dedupe_key,
                    delay,
                    exc_info=True,
                    extra={"session": str(message.conversation)},
                )
                failed = True
                await asyncio.sleep(delay)
                continue
            if intake is None and failed:
                # Storing is deduplicated: a try that committed before it failed makes
                # this one a duplicate, and nothing acted on it yet. The session carries
                # on from what is stored, as after a restart.
                session_id = await self.store.active_session_id(message.conversation)
                if session_id is not None:
                    # Its instant reply, if it got one, is stored and claimed: send it.
                    self.courier.kick(session_id)
                    self.carry_on_now(session_id, queued_only=False)
            return intake

    async def _notice(self, message: InboundMessage, text: str) -> SubmitOutcome:
        session_id = await self.store.record_notice(message, text)
        if session_id is None:
            return SubmitOutcome.DUPLICATE
        self.courier.kick(session_id)
        return SubmitOutcome.IGNORED

    def _is_admin(self, platform: str, user_id: str, claimed: bool) -> bool:
        return claimed or (self.access is not None and self.access.is_admin(platform, user_id))

    async def command(self, request: CommandRequest) -> str | None:
        session_id = await self.store.active_session_id(request.conversation)
        language = "en"
        if session_id is not None:
            language = (await self.store.get_session(session_id)).language
        if self.access is not None:
            # In a group the platform's own admin flag is a server manager's (Discord), who
            # passes the lists only as a message author does: by ADMIN_USERS. In private
            # only the console's operator carries it, whose messages pass too.
            asking = request if request.is_private else replace(request, is_admin=False)
            reason = self.access.refusal(asking)
            if reason is not None:
                log.info(
                    "command refused: %s", reason, extra={"session": str(request.conversation)}
                )
                # As for messages: one short line in private, silence in a group.
                if request.is_private or request.answered_privately:
                    return self.book.phrase("denied", language)
                return None
        admin = self._is_admin(request.conversation.platform, request.user_id, request.is_admin)
        if (
            request.name in ADMIN_COMMANDS_IN_GROUPS
            and not request.is_private
            and not admin
            and self.access is not None
            and self.access.admins
        ):
            return self.book.phrase("admin_only", language)
        match request.name:
            case CommandName.START | CommandName.HELP:
                return self.book.phrase(request.name.value, language)
            case CommandName.STATUS:
                return await self._status(session_id, language)
            case CommandName.CANCEL:
                count = 0
                if session_id is not None:
                    count = await self.cancel_tools(session_id, CANCELLED_BY_USER)
                if not count:
                    return self.book.phrase("cancel_idle", language)
                return self.book.phrase("cancel_done", language, count=count)
            case CommandName.RESET:
                if session_id is not None:
                    await self.reset(session_id)
                return self.book.phrase("reset_done", language)
            case CommandName.USAGE:
                return await self._usage(request, language)
        raise ValueError(f"unknown command {request.name}")

    async def _usage(self, request: CommandRequest, language: str) -> str:
        for gate in self.gates:
            figures = await gate.usage(request.user_id, request.conversation)
            if figures is not None:
                return self.book.phrase("usage_report", language, **figures)
        return self.book.phrase("usage_unlimited", language)

    async def _status(self, session_id: int | None, language: str) -> str:
        if session_id is None:
            return self.book.phrase("status_idle", language)
        info = await self.store.get_session(session_id)
        if info.state == SessionState.TOOLS:
            calls = await self.store.open_tool_calls(session_id)
            running = self.describe_running(calls, language)
            if running:
                return self.book.status(language, running)
        if info.state != SessionState.IDLE:
            return self.book.phrase("status_thinking", language)
        return self.book.phrase("status_idle", language)

    def send_instant_replies(self, intake: Intake) -> None:
        """Hands the instant replies stored with `intake` to the courier now, not when the
        session's actor gets to them: the adapter's handler goes on once `submit` returns
        (a Telegram bot's next poll waits for it), and the reply goes out first."""
        if intake.planned:
            self.courier.kick(intake.info.id, intake.ready)

    def plan_interims(
        self,
        info: SessionInfo,
        queued: Sequence[QueuedMessage],
        context: InterimContext,
        known: Mapping[str, Reading] | None = None,
    ) -> list[PlannedInterim]:
        """The instant replies for messages that came while tools run (storage calls this
        inside the transaction that stores them, maybe in its own thread: pure and
        quick, no event loop). `known`: texts already read (`Classifier.read`)."""
        running = self.describe_running(context.calls, info.language)
        # Oldest first, newest last: the picker needs to know which text was sent last.
        avoid = list(context.recent_replies)
        planned = []
        for message in queued:
            reading = (known or {}).get(message.text) or self.book.classifier.read(message.text)
            kind = reading.classification(info.language)
            text = self.book.interim(kind.kind, kind.language, running, avoid, self.rng)
            avoid.append(text)
            planned.append(PlannedInterim(message.id, text, kind.kind.value, kind.language))
        return planned

    def describe_running(self, calls: Sequence[ToolCallInfo], language: str) -> list[RunningTool]:
        running = []
        for call in calls:
            if call.status.finished:
                continue
            spec = self.registry.get(call.name)
            label = spec.label(language) if spec else call.name.replace("_", " ")
            running.append(RunningTool(label=label, seconds=seconds_since(call.started_at)))
        return running

    async def cancel_tools(self, session_id: int, outcome: ToolOutcome) -> int:
        """Cancels the session's running tools; returns how many were running."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.carry_on_now(session_id)  # a tool waiting to run again is a tool to cancel
        self._actor(session_id).post(Cancel(outcome, done))
        return await done

    async def reset(self, session_id: int) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._actor(session_id).post(Reset(done))
        await done

    # --- actors -----------------------------------------------------------------------------

    def _actor(self, session_id: int) -> SessionActor:
        actor = self._actors.get(session_id)
        if actor is None:
            actor = self._actors[session_id] = SessionActor(self, session_id)
        return actor

    @property
    def rerunnable(self) -> frozenset[str]:
        """Tools that may run again after a restart interrupted them."""
        return frozenset(spec.name for spec in self.registry if spec.rerun_safe)

    def recover_later(self, session_id: int, delay: float) -> None:
        """Posts Recover after `delay` to whichever actor then owns the session (the one
        that asked may have retired meanwhile)."""

        async def later() -> None:
            await asyncio.sleep(delay)
            self.recover(session_id)

        self.tasks.spawn(later(), f"recover-later-{session_id}")

    def recover(self, session_id: int) -> None:
        """Hands the session back its stored state to carry on from, once a recovery slot
        is free (see RECOVERY_CONCURRENCY); at once if a living user reaches it first
        (`carry_on_now`)."""
        if session_id not in self._awaiting_slot:
            self._awaiting_slot.add(session_id)
            self._to_hand_back.put_nowait(session_id)

    async def _hand_back(self) -> None:
        """Takes a slot for each session `recover` queued, in order, and posts its Recover;
        the actor gives the slot back (or its follow-up call keeps it: SessionActor)."""
        while True:
            session_id = await self._to_hand_back.get()
            if session_id not in self._awaiting_slot:
                continue  # it carried on already
            await self.recovery_slots.acquire()
            if session_id not in self._awaiting_slot:
                self.recovery_slots.release()
                continue
            self._awaiting_slot.discard(session_id)
            self.gave_up.discard(session_id)
            self._actor(session_id).post(Recover(self.recovery_slots))

    def carry_on_now(self, session_id: int, *, queued_only: bool = True) -> None:
        """A message or a cancel came for a session (queued to recover, given up after
        failed steps, or any with `queued_only` off): it carries on from its stored
        state before handling it, without waiting for a slot. The slots keep thousands
        of recovering sessions from crowding out the living, and this one is living: its
        tools must run (or be cancelled) as the message expects, not after the sessions
        queued before it."""
        waiting = session_id in self._awaiting_slot or session_id in self.gave_up
        if queued_only and not waiting:
            return
        self._awaiting_slot.discard(session_id)
        self.gave_up.discard(session_id)
        self._actor(session_id).post(Recover())

    def retire(self, actor: SessionActor) -> None:
        if self._actors.get(actor.session_id) is actor:
            del self._actors[actor.session_id]

    # --- life cycle -------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Repairs what the last process left: each call it left unfinished gets its result
        (or is noted to run again), and the sessions to carry on are listed. Before any
        adapter takes a message, so that a call a new message starts is never taken for
        one a crash interrupted."""
        if self._to_recover is not None:
            return
        closed = await self.store.repair_after_restart(self.rerunnable, MAX_RERUNS_AFTER_RESTART)
        self._to_recover = await self.store.sessions_needing_work()
        if self._to_recover:
            log.info(
                "recovering %d sessions (%d tool rounds closed)", len(self._to_recover), closed
            )

    async def start(self) -> None:
        """Carries on what `prepare` found (preparing first if nothing did), then the
        operator control poll. Call once adapters attached: recovery sends replies."""
        await self.prepare()
        sessions, self._to_recover = self._to_recover or [], []
        for session_id in await self.store.sessions_with_undelivered():
            self.courier.kick(session_id)
        for session_id in sessions:
            self.recover(session_id)
        self._hand_back_task = self.tasks.spawn(self._hand_back(), "recoveries")
        self._control_task = self.tasks.spawn(self._poll_controls(), "controls")

    async def _poll_controls(self) -> None:
        polls = 0
        while True:
            polls += 1
            try:
                if polls % HEARTBEAT_EVERY_POLLS == 1:
                    await self.store.beat(self.config.worker_id, self.intake_problem())
                if polls % SWEEP_EVERY_POLLS == 0:
                    for session_id in await self.store.sessions_with_undelivered():
                        self.courier.kick(session_id)
                for control in await self.store.pending_controls():
                    result = await self._apply_control(control.session_id, control.action)
                    await self.store.finish_control(control.id, result)
                    log.info(
                        "operator %s: %s",
                        control.action,
                        result,
                        extra={"session": f"session-{control.session_id}"},
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("control poll failed")
            await asyncio.sleep(CONTROL_POLL_SECONDS)

    async def _apply_control(self, session_id: int, action: str) -> str:
        if action == "cancel":
            count = await self.cancel_tools(session_id, CANCELLED_BY_OPERATOR)
            return f"cancelled {count} running tool call(s)"
        if action == "recover":
            self.courier.kick(session_id)
            self.recover(session_id)
            return "session handed back to the engine"
        if action == "reset":
            await self.reset(session_id)
            return "conversation reset"
        return f"unknown action {action!r} ignored"

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Until every session is idle and every reply delivered (tests, console EOF)."""
        # Idleness spans actors and deliveries; a 10 ms poll is fine for its callers.
        async with asyncio.timeout(timeout):
            while self._actors or self.courier.busy or self._awaiting_slot:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        # First what starts actors: none may start once they are being stopped.
        for task in (self._control_task, self._hand_back_task):
            if task is not None:
                task.cancel()
        # At once: each may wait out a tool that ignores its cancel (CANCEL_GRACE_SECONDS).
        # Every stop is awaited, and one that fails does not keep the others from ending.
        actors = list(self._actors.values())
        outcomes = await asyncio.gather(*(a.stop() for a in actors), return_exceptions=True)
        for actor, outcome in zip(actors, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error(
                    "stopping the session failed",
                    exc_info=outcome,
                    extra={"session": actor.label},
                )
        self._actors.clear()
        await self.runner.stop()
        await self.typing.stop_all()
        await self.courier.stop()
        await self.tasks.cancel_all()
