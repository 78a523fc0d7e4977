"""Thousands of sessions with a tool running each: memory, instant replies, recovery.

On the real core (SQLite file, the offline model through the openai SDK, the in-process
adapter with Telegram's typing interval), with bench.long_tools loaded through the
tool_modules setting:

  memory     N sessions each start "wait 3600 seconds" (in batches, so no transient peak
             inflates the figure); resident memory per session is the RSS delta over N,
             and tracemalloc's delta per session over the last sessions added.
  instant    messages to random busy sessions at a steady rate: submit -> the adapter's
             send of the instant reply, p50/p95/p99, with only a few sessions running
             (baseline, measured first) and with all N running.
  recovery   the runtime stops with every tool running; a new Runtime opens the same file
             and `engine.start()` recovers every session. Recovered: every interrupted
             call has its result ("interrupted by a restart": the tool is not rerun-safe),
             every round is closed into a valid history and every session waits for its
             follow-up model call; checked in the database when `engine.start()` returns.
             Then the follow-up calls drain, a few at a time: the time until the model got
             every one and until every answer was sent, and meanwhile new chats say hello:
             the time until each got its answer.

Goals: < 20 KiB per session, recovery < 10 s.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from bench import experiments
from bench.common import (
    JSON,
    counting_errors,
    latency_summary,
    make_parser,
    ratio,
    rss_bytes,
    table,
    wait_progress,
    write_result,
)
from bench.long_tools import START_TEXT
from bench.memory_chat import TimedChat, running_core
from bench.profiling import Profiles
from bench.store_calls import counted
from bot.events import ReplyKind
from bot.offline import FakeOpenAI
from bot.runtime import Runtime
from bot.settings import Settings
from bot.store import SessionState
from storage.models import SessionRow, ToolCallRow
from storage.repository import UNFINISHED, SqlStore

log = logging.getLogger(__name__)

NAME = "scale"
KIB_GOAL = 20.0
RECOVERY_GOAL = 10.0
INSTANT_TEXTS = ("¿Sigues ahí?", "Hola", "are you there?", "ok", "¿Qué tal?")
WAIT_PER_SESSION = 0.05  # generous drain budget: seconds per session, plus a minute
# No progress for this long: the rest is stuck, stop waiting. Long, because recovering
# sessions advance in lockstep and the first may finish only when the last does.
STALL_SECONDS = 90.0


@dataclass(frozen=True)
class Size:
    sessions: int
    baseline_sessions: int
    traced_sessions: int
    instant_messages: int
    instant_rate: float
    batch: int
    newcomers: int  # new chats saying hello while the recovered sessions drain


SIZES = {
    "tiny": Size(10, 3, 5, 5, 50.0, 10, 3),
    "small": Size(1000, 20, 200, 200, 50.0, 200, 10),
    "full": Size(10_000, 20, 1000, 500, 50.0, 250, 20),
}
NEWCOMER_RATE = 2.0  # hellos per second


class CountingModel(FakeOpenAI):
    """The offline model, counting the calls that carry a tool result (no request kept)."""

    def __init__(self) -> None:
        super().__init__(record=False)
        self.after_tool = 0
        self.after_tool_at: list[float] = []

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = json.loads(await request.text())
        except ValueError:
            body = None
        if isinstance(body, dict) and any(
            isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages", ())
        ):
            self.after_tool += 1
            self.after_tool_at.append(time.perf_counter())
        return await super()._chat_completions(request)


def settings_for(db: Path, model: FakeOpenAI, **overrides: Any) -> Settings:
    """The core on a SQLite file, the running offline model and the hour-long tool."""
    return Settings(
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{db}",
        openai_api_key="bench",
        openai_base_url=model.base_url,
        openai_max_retries=0,
        tool_modules=["bench.long_tools"],
        # The setup waits, batch after batch, for each session's notice to know its tool
        # runs: at the default delay that is 2 s a batch, and no measured figure.
        tool_notice_delay_seconds=0,
        **overrides,
    )


def _drain_budget(count: int) -> float:
    return 60.0 + count * WAIT_PER_SESSION


async def start_tools(chat: TimedChat, first: int, count: int, batch: int) -> None:
    """Sessions first..first+count-1 each start the long tool; waits for every notice."""
    for start in range(first, first + count, batch):
        chats = range(start, min(start + batch, first + count))
        expected = len(chat.sent)
        for index in chats:
            if await chat.submit(START_TEXT, chat=f"chat-{index}", user=f"user-{index}"):
                expected += 1
        await chat.wait_for(expected, timeout=_drain_budget(len(chats)))


async def instant_latencies(
    chat: TimedChat, sessions: int, count: int, rate: float, tag: str
) -> list[float]:
    """Messages to random busy sessions at `rate`; seconds from submit to the reply."""
    rng = random.Random(count * 7919 + sessions)
    asked: dict[str, float] = {}
    refused: set[str] = set()
    for number in range(count):
        index = rng.randrange(sessions)
        message_id = f"{tag}-{number}"
        asked[message_id] = time.perf_counter()
        taken = await chat.submit(
            INSTANT_TEXTS[number % len(INSTANT_TEXTS)],
            chat=f"chat-{index}",
            user=f"user-{index}",
            message_id=message_id,
        )
        if not taken:
            refused.add(message_id)
        await asyncio.sleep(1 / rate)
    deadline = time.perf_counter() + _drain_budget(count)
    waiting = [m for m in asked if m not in refused]
    while any(m not in chat.replied_at for m in waiting) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    return [chat.replied_at[m] - t for m, t in asked.items() if m in chat.replied_at]


def _top_growth(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, sessions: int
) -> list[JSON]:
    """Where the traced sessions' memory was allocated: the lines that grew most."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    return [
        {
            "where": f"{stat.traceback[0].filename.split('site-packages/')[-1]}"
            f":{stat.traceback[0].lineno}",
            "kib_per_session": round(stat.size_diff / 1024 / sessions, 2),
        }
        for stat in stats[:12]
    ]


def _settle() -> int:
    gc.collect()
    return rss_bytes()


async def measure(size: Size, db: Path, profile: bool = False) -> JSON:
    figures: JSON = {}
    total = size.baseline_sessions + size.sessions + size.traced_sessions
    model = CountingModel()
    async with model, running_core(settings_for(db, model)) as (_, chat):
        await start_tools(chat, 0, size.baseline_sessions, size.batch)
        baseline = await instant_latencies(
            chat, size.baseline_sessions, size.instant_messages, size.instant_rate, "base"
        )
        rss_before = _settle()
        started = time.perf_counter()
        await start_tools(chat, size.baseline_sessions, size.sessions, size.batch)
        figures["setup_seconds"] = round(time.perf_counter() - started, 2)
        await asyncio.sleep(1.0)  # let the last deliveries and typing tasks settle
        rss_after = _settle()
        busy = size.baseline_sessions + size.sessions

        tracemalloc.start()
        traced_before = tracemalloc.get_traced_memory()[0]
        snapshot_before = tracemalloc.take_snapshot()
        await start_tools(chat, busy, size.traced_sessions, size.batch)
        await asyncio.sleep(0.5)
        gc.collect()
        traced_after = tracemalloc.get_traced_memory()[0]
        growth = _top_growth(snapshot_before, tracemalloc.take_snapshot(), size.traced_sessions)
        tracemalloc.stop()

        with counted() as instant_calls:
            loaded = await instant_latencies(
                chat, busy + size.traced_sessions, size.instant_messages, size.instant_rate, "load"
            )
        running = sum(1 for s in range(total) if chat.per_chat[f"chat-{s}"] >= 1)
        figures["memory"] = {
            "sessions": size.sessions,
            "rss_delta_mib": round((rss_after - rss_before) / 2**20, 1),
            "rss_kib_per_session": round((rss_after - rss_before) / 1024 / size.sessions, 2),
            "traced_sessions": size.traced_sessions,
            "tracemalloc_kib_per_session": round(
                (traced_after - traced_before) / 1024 / size.traced_sessions, 2
            ),
            "goal_kib": KIB_GOAL,
            "tracemalloc_top_lines": growth,
        }
        figures["instant"] = {
            "baseline_sessions": size.baseline_sessions,
            "busy_sessions": busy + size.traced_sessions,
            "messages": size.instant_messages,
            "rate_per_second": size.instant_rate,
            "baseline": latency_summary(baseline),
            "loaded": latency_summary(loaded),
            "answered": len(baseline) + len(loaded),
            "asked": 2 * size.instant_messages,
        }
        figures["sessions_with_tool_running"] = running
        figures["typing_calls"] = chat.typings
        figures["submits_refused"] = len(chat.refused)
        interims = chat.kinds[ReplyKind.INTERIM]
        figures["instant"]["instant_replies"] = interims
        figures["instant"]["store_calls"] = instant_calls.per_message(size.instant_messages)
    # Sessions whose start was refused (see submits_refused) have nothing to recover.
    figures["recovery"] = await recover(
        db, figures["sessions_with_tool_running"], size.newcomers, profile
    )
    return figures


async def recover(db: Path, sessions: int, newcomers: int, profile: bool = False) -> JSON:
    """A new runtime on the stopped bot's file: how long until every session was repaired,
    and until every one moved on."""
    model = CountingModel()
    async with model:
        opened = time.perf_counter()
        async with Runtime(settings_for(db, model)) as runtime:
            chat = TimedChat(runtime.engine)
            await chat.start()
            profiles = Profiles(interval=0.001) if profile else None
            if profiles is not None:
                await profiles.start(runtime.db)
            started = time.perf_counter()
            with counted() as calls:
                await runtime.engine.start()
                start_returned = time.perf_counter()
                unrepaired = await _unrepaired(runtime)
                hellos = asyncio.create_task(_newcomers(chat, newcomers))
                budget = _drain_budget(sessions)
                reached, reached_at = await wait_progress(
                    lambda: model.after_tool, sessions, stall=STALL_SECONDS, budget=budget
                )
                answers, answered_at = await wait_progress(
                    lambda: chat.kinds[ReplyKind.ANSWER],
                    sessions + newcomers,
                    stall=STALL_SECONDS,
                    budget=budget,
                )
                newcomer_latencies = await hellos
            report = None if profiles is None else await profiles.stop()
            return {
                "sessions": sessions,
                "runtime_open_seconds": round(started - opened, 3),
                "repaired_seconds": round(start_returned - started, 3),
                **unrepaired,
                "half_reached_llm_seconds": _half(model.after_tool_at, sessions, started),
                # None when some session never got there (see reached_llm / answers_sent).
                "all_reached_llm_seconds": _elapsed(reached == sessions, started, reached_at),
                "all_answered_seconds": _elapsed(
                    answers == sessions + newcomers, started, answered_at
                ),
                "reached_llm": reached,
                "answers_sent": answers - len(newcomer_latencies),
                "newcomers": newcomers,
                "newcomers_answered": len(newcomer_latencies),
                "newcomer_answer": latency_summary(newcomer_latencies),
                "goal_seconds": RECOVERY_GOAL,
                "store_calls": calls.per_message(sessions),
                "profile": report,
            }


async def _unrepaired(runtime: Runtime) -> JSON:
    """What `engine.start()` left unrepaired: sessions still in their tool round, and
    calls of an open round with no result (none are rerun-safe here)."""
    store = runtime.engine.store
    assert isinstance(store, SqlStore)
    async with store.engine.connect() as conn:
        in_round = await conn.scalar(
            select(func.count()).where(SessionRow.state == SessionState.TOOLS)
        )
        open_calls = await conn.scalar(
            select(func.count()).where(ToolCallRow.status.in_(UNFINISHED))
        )
    return {"left_in_tool_round": in_round, "calls_left_without_result": open_calls}


async def _newcomers(chat: TimedChat, count: int) -> list[float]:
    """New chats say hello while the recovered sessions drain; seconds to each answer."""
    asked: dict[str, float] = {}
    for number in range(count):
        message_id = f"newcomer-{number}"
        asked[message_id] = time.perf_counter()
        await chat.submit("hello", chat=message_id, user=message_id, message_id=message_id)
        await asyncio.sleep(1 / NEWCOMER_RATE)
    try:
        for message_id in asked:
            await chat.wait_chat(message_id, 1, timeout=_drain_budget(count) + STALL_SECONDS)
    except TimeoutError:
        log.error("a new chat got no answer while the recovered sessions drained")
    return [chat.replied_at[m] - t for m, t in asked.items() if m in chat.replied_at]


def _half(moments: Sequence[float], sessions: int, started: float) -> float | None:
    """When half of the sessions had reached the LLM call: lockstep shows up here."""
    middle = (sessions + 1) // 2
    return round(sorted(moments)[middle - 1] - started, 3) if len(moments) >= middle else None


def _elapsed(complete: bool, started: float, finished: float) -> float | None:
    return round(finished - started, 3) if complete else None


def verdicts(figures: JSON) -> JSON:
    memory, recovery = figures["memory"], figures["recovery"]
    return {
        "memory_goal_met": memory["rss_kib_per_session"] < KIB_GOAL
        and memory["tracemalloc_kib_per_session"] < KIB_GOAL,
        "recovery_goal_met": recovery["repaired_seconds"] < RECOVERY_GOAL
        and recovery["left_in_tool_round"] == 0
        and recovery["calls_left_without_result"] == 0,
        "instant_p99_ratio_loaded_to_baseline": ratio(
            figures["instant"]["loaded"]["p99_ms"], figures["instant"]["baseline"]["p99_ms"]
        ),
        "all_answered": figures["instant"]["answered"] == figures["instant"]["asked"]
        and recovery["answers_sent"] == recovery["sessions"]
        and recovery["newcomers_answered"] == recovery["newcomers"]
        and figures["submits_refused"] == 0,
    }


def _or_count(seconds: float | None, count: int) -> object:
    return seconds if seconds is not None else f"only {count:,} got there"


def report(figures: JSON) -> str:
    memory, instant, recovery = figures["memory"], figures["instant"], figures["recovery"]
    checks = figures["verdicts"]
    rows: list[Sequence[Any]] = [
        ("sessions with a tool running", memory["sessions"], "", ""),
        ("setup (s)", figures["setup_seconds"], "", ""),
        ("RSS per session (KiB)", memory["rss_kib_per_session"], f"< {KIB_GOAL}", ""),
        (
            f"tracemalloc per session (KiB, last {memory['traced_sessions']})",
            memory["tracemalloc_kib_per_session"],
            f"< {KIB_GOAL}",
            "met" if checks["memory_goal_met"] else "MISSED",
        ),
        (
            f"instant reply p50/p99 ms, {instant['baseline_sessions']} busy sessions",
            f"{instant['baseline']['p50_ms']} / {instant['baseline']['p99_ms']}",
            "",
            "",
        ),
        (
            f"instant reply p50/p99 ms, {instant['busy_sessions']} busy sessions",
            f"{instant['loaded']['p50_ms']} / {instant['loaded']['p99_ms']}",
            "",
            f"p99 x{checks['instant_p99_ratio_loaded_to_baseline']}",
        ),
        ("recovery: Runtime opened (s)", recovery["runtime_open_seconds"], "", ""),
        (
            f"recovery: all {recovery['sessions']} sessions repaired (s)",
            recovery["repaired_seconds"],
            f"< {RECOVERY_GOAL}",
            "met" if checks["recovery_goal_met"] else "MISSED",
        ),
        (
            "recovery: left in a tool round / calls without a result",
            f"{recovery['left_in_tool_round']} / {recovery['calls_left_without_result']}",
            "0 / 0",
            "",
        ),
        (
            "recovery: half of them at the follow-up call (s)",
            _or_count(recovery["half_reached_llm_seconds"], recovery["reached_llm"]),
            "",
            "",
        ),
        (
            "recovery: all at the follow-up call (s)",
            _or_count(recovery["all_reached_llm_seconds"], recovery["reached_llm"]),
            "",
            "",
        ),
        (
            f"recovery: new chats' answers meanwhile, p50/p99 ms ({recovery['newcomers']})",
            f"{recovery['newcomer_answer']['p50_ms']} / {recovery['newcomer_answer']['p99_ms']}",
            "",
            "",
        ),
        (
            "recovery: all answers sent (s)",
            _or_count(recovery["all_answered_seconds"], recovery["answers_sent"]),
            "",
            "",
        ),
        (
            "every message answered",
            "yes" if checks["all_answered"] else "NO",
            "",
            "",
        ),
        ("errors logged", figures["errors_logged"], "0", ""),
    ]
    return table("Scale (SQLite file)", ("figure", "value", "goal", "verdict"), rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(NAME, __doc__ or NAME)
    parser.add_argument(
        "--experiment",
        dest="experiments",
        choices=experiments.EXPERIMENTS,
        nargs="+",
        default=[],
        help="run with these what-if changes to the core (bench.experiments)",
    )
    parser.add_argument(
        "--sessions", type=int, default=None, help="override the size's session count"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the recovery (pyinstrument); report in <out>/scale.recovery.profile.txt",
    )
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.sessions:
        size = replace(size, sessions=args.sessions)
    with (
        tempfile.TemporaryDirectory(prefix="stillhere-bench-") as tmp,
        counting_errors() as errors,
        experiments.applied(args.experiments),
    ):
        figures = asyncio.run(measure(size, Path(tmp) / "scale.db", args.profile))
    figures.update(errors.figures())
    figures["experiments"] = sorted(args.experiments)
    figures["verdicts"] = verdicts(figures)
    print(report(figures))
    profile = figures["recovery"].pop("profile")
    path = write_result(NAME, args.size, args.out, {"setup": vars(size), **figures})
    if profile is not None:
        profile_path = args.out / f"{NAME}.recovery.profile.txt"
        profile_path.write_text(profile, encoding="utf-8")
        print(f"profile: {profile_path}")
    print(f"\nwritten {path}")
    return 0 if figures["verdicts"]["all_answered"] else 1


if __name__ == "__main__":
    sys.exit(main())
