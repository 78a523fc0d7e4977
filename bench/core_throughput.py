"""Messages/s through the engine, beside a raw baseline that only writes the same rows.

stillhere: the real core (Runtime: storage, sessions, prompt) driven by the in-process
adapter, on the built-in offline model (no API key): it answers at once with plain text, in
process (bot.offline.OfflineModel: OpenAI's checks of the request and the rules, no HTTP
client; until session 12 it was reached through the openai SDK, bench/RESULTS.md).
C chats talk at the same time, each sending its next message when its answer arrived.

raw: the rows one answered message leaves behind, written with SQLAlchemy core on the same
driver and the same engine setup (storage.database.create_engine: WAL + synchronous=NORMAL on
SQLite) and the same schema: per message one transaction for the user message (stored
before answering, as a durable bot must) and one for the assistant message + its outbox row,
with the same C concurrent writers. No sessions logic, no model, no delivery.
raw+llm: raw, plus the model call of each message through the same client as stillhere.

Both run in alternation, on SQLite (a file) and on PostgreSQL when
STILLHERE_BENCH_POSTGRES_URL is set. The user/chat rate limits are off (they would refuse a
benchmark's pace by design). Goal: stillhere >= 0.5 x raw.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Connection

from bench import experiments
from bench.common import (
    JSON,
    counting_errors,
    cpu_seconds,
    drop_postgres_database,
    fresh_postgres_database,
    make_parser,
    median,
    postgres_url,
    ratio,
    skip_reason_postgres,
    table,
    write_result,
)
from bench.memory_chat import running_core
from bench.profiling import Profiles
from bench.store_calls import counted
from bot.events import ReplyKind
from bot.runtime import build_llm
from bot.settings import Settings
from bot.tools.registry import default_registry
from storage.database import create_engine
from storage.migrate import upgrade
from storage.models import Base
from storage.transaction import run_transaction

log = logging.getLogger(__name__)

NAME = "core_throughput"
GOAL = 0.5
TEXTS = ("hola", "hello there", "¿qué tal?", "thanks, and you?")
ANSWER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Size:
    chats: int
    messages: int
    trials: int


SIZES = {
    "tiny": Size(chats=2, messages=10, trials=1),
    "small": Size(chats=10, messages=300, trials=2),
    "full": Size(chats=20, messages=2000, trials=3),
}


@dataclass(frozen=True)
class Run:
    database: str
    system: str
    trial: int
    messages: int
    answered: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_message(self) -> float:
        """This process's CPU (engine, SDK, fake model and driver alike) per message."""
        return 1000 * self.cpu_seconds / max(1, self.messages)


def _per_chat(size: Size) -> list[int]:
    base, extra = divmod(size.messages, size.chats)
    return [base + (1 if i < extra else 0) for i in range(size.chats)]


async def run_stillhere(
    url: str, size: Size, profiles: Profiles | None = None
) -> tuple[int, float]:
    """Returns (answers received, seconds); `profiles` sample the messages' part."""
    settings = Settings(
        _env_file=None,
        database_url=url,
        openai_api_key=None,  # the built-in offline model
        openai_max_retries=0,
        rate_limit_user_per_minute=0,
        rate_limit_chat_per_minute=0,
    )
    async with running_core(settings) as (runtime, chat):

        async def talk(index: int, count: int) -> None:
            chat_id = f"chat-{index}"
            texts = itertools.cycle(TEXTS)
            taken = 0
            for _ in range(count):
                if not await chat.submit(next(texts), chat=chat_id, user=f"user-{index}"):
                    continue
                taken += 1
                try:
                    await chat.wait_chat(chat_id, taken, ANSWER_TIMEOUT)
                except TimeoutError:
                    # Stored but never answered: the session is stuck, and so would be
                    # every later message of this chat. Reported as unanswered.
                    log.error("%s: no answer in %ss; chat stopped", chat_id, ANSWER_TIMEOUT)
                    return

        if profiles is not None:
            await profiles.start(runtime.db)
        started = time.perf_counter()
        await asyncio.gather(*(talk(i, n) for i, n in enumerate(_per_chat(size))))
        elapsed = time.perf_counter() - started
        if profiles is not None:
            await profiles.stop()
        with contextlib.suppress(TimeoutError):
            await runtime.engine.wait_idle(timeout=ANSWER_TIMEOUT)
        # Only real answers count: an apology after a failed call is a reply too.
        return chat.kinds[ReplyKind.ANSWER], elapsed


def _session_values(index: int) -> dict[str, object]:
    stamp = datetime.now(UTC)
    return {
        "platform": "memory",
        "chat_id": f"chat-{index}",
        "thread_id": "",
        "active_key": f"memory:chat-{index}:",
        "is_private": True,
        "state": "idle",
        "language": "en",
        "turn": 0,
        "tool_rounds": 0,
        "turn_is_admin": False,
        "created_at": stamp,
        "updated_at": stamp,
    }


def _inserting(*rows: tuple[Table, JSON]) -> Callable[[Connection], None]:
    """A transaction inserting each (table, values), in order."""

    def work(conn: Connection) -> None:
        for into, values in rows:
            conn.execute(insert(into), values)

    return work


async def _raw(url: str, size: Size, with_model: bool) -> tuple[int, float]:
    """The rows alone; `with_model`, also the one model call per message any durable
    OpenAI bot makes (the same built-in model through the same `build_llm`, same growing
    history, same tools offered). Written as stillhere writes: each transaction through
    `storage.transaction` (on SQLite one trip to the driver's thread)."""
    await upgrade(url)
    engine = create_engine(url)
    tables = Base.metadata.tables
    messages, outbox, sessions = tables["messages"], tables["outbox"], tables["sessions"]
    llm = build_llm(Settings(_env_file=None, openai_api_key=None)) if with_model else None
    tools = default_registry().openai_tools(include_admin=False)
    try:
        session_ids = []
        async with engine.begin() as connection:
            for index in range(size.chats):
                result = await connection.execute(
                    insert(sessions).returning(sessions.c.id), _session_values(index)
                )
                session_ids.append(result.scalar_one())

        async def write(index: int, count: int) -> None:
            session_id = session_ids[index]
            texts = itertools.cycle(TEXTS)
            history: list[dict[str, Any]] = [{"role": "system", "content": "You are a bot."}]
            for number in range(count):
                text = next(texts)
                question = {
                    "session_id": session_id,
                    "role": "user",
                    "content": text,
                    "author_id": f"user-{index}",
                    "author_name": "Ana",
                    "platform_message_id": f"m-{index}-{number}",
                    "status": "history",
                    "position": 2 * number,
                    "turn": number,
                    "created_at": datetime.now(UTC),
                }
                await run_transaction(engine, _inserting((messages, question)))
                answer = "Got it."
                if llm is not None:
                    history.append({"role": "user", "content": text})
                    answer = (await llm.complete(history, tools)).content or answer
                    history.append({"role": "assistant", "content": answer})
                reply = {
                    "session_id": session_id,
                    "role": "assistant",
                    "content": answer,
                    "status": "history",
                    "position": 2 * number + 1,
                    "turn": number,
                    "created_at": datetime.now(UTC),
                }
                sent = {
                    "session_id": session_id,
                    "platform": "memory",
                    "chat_id": f"chat-{index}",
                    "thread_id": "",
                    "reply_to_id": f"m-{index}-{number}",
                    "kind": "answer",
                    "text": answer,
                    "attempts": 0,
                    "failed": False,
                    "created_at": datetime.now(UTC),
                }
                await run_transaction(engine, _inserting((messages, reply), (outbox, sent)))

        started = time.perf_counter()
        await asyncio.gather(*(write(i, n) for i, n in enumerate(_per_chat(size))))
        elapsed = time.perf_counter() - started
        return size.messages, elapsed
    finally:
        if llm is not None:
            await llm.close()
        await engine.dispose()


async def run_raw(url: str, size: Size) -> tuple[int, float]:
    return await _raw(url, size, with_model=False)


async def run_raw_llm(url: str, size: Size) -> tuple[int, float]:
    return await _raw(url, size, with_model=True)


System = Callable[[str, Size], Awaitable[tuple[int, float]]]
SYSTEMS: dict[str, System] = {
    "stillhere": run_stillhere,
    "raw": run_raw,
    "raw+llm": run_raw_llm,
}


def systems(switches: Sequence[str]) -> dict[str, System]:
    """The three systems, plus "stillhere+X+Y" with what-if experiments when asked."""
    chosen = sorted(experiments.check(switches))
    if not chosen:
        return dict(SYSTEMS)

    async def tried(url: str, size: Size) -> tuple[int, float]:
        with experiments.applied(chosen):
            return await run_stillhere(url, size)

    return {**SYSTEMS, "+".join(["stillhere", *chosen]): tried}


async def breakdown(size: Size) -> JSON:
    """One untimed pass with every storage call counted: one chat, so each call's time is
    its own and not a wait behind the others."""
    single = Size(chats=1, messages=min(size.messages, 50), trials=1)
    with tempfile.TemporaryDirectory(prefix="stillhere-bench-") as tmp, counted() as calls:
        answered, _ = await run_stillhere(f"sqlite+aiosqlite:///{tmp}/breakdown.db", single)
    rows = calls.per_message(single.messages)
    return {
        "messages": single.messages,
        "answered": answered,
        "store_calls_per_message": round(sum(float(r["calls_per_message"]) for r in rows), 2),
        "store_ms_per_message": round(sum(float(r["ms_per_message"]) for r in rows), 3),
        "methods": rows,
        "sqlite_thread_trips_per_message": calls.trips_per_message(single.messages),
    }


def _database_name(system: str) -> str:
    return "bench_core_" + "".join(c if c.isalnum() else "_" for c in system)


async def _database_url(database: str, system: str, trial: int, tmp: Path) -> str:
    if database == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / f'{_database_name(system)}-{trial}.db'}"
    server = postgres_url()
    assert server is not None
    return await fresh_postgres_database(server, _database_name(system))


async def measure(size: Size, chosen: dict[str, System]) -> tuple[list[Run], list[str]]:
    databases = ["sqlite"]
    notes = []
    if postgres_url():
        databases.append("postgresql")
    else:
        notes.append(skip_reason_postgres())
    runs = []
    names = list(chosen)
    with tempfile.TemporaryDirectory(prefix="stillhere-bench-") as tmp:
        for database in databases:
            for trial in range(size.trials):
                # Rotate the order each trial, so none always runs on a warmer machine.
                shift = trial % len(names)
                for system in names[shift:] + names[:shift]:
                    url = await _database_url(database, system, trial, Path(tmp))
                    cpu_before = cpu_seconds()
                    answered, seconds = await chosen[system](url, size)
                    cpu = cpu_seconds() - cpu_before
                    runs.append(Run(database, system, trial, size.messages, answered, seconds, cpu))
                    print(
                        f"  {database:>10} {system:>9} trial {trial + 1}: "
                        f"{runs[-1].per_second:,.1f} messages/s",
                        flush=True,
                    )
        server = postgres_url()
        if server is not None:
            for system in names:
                await drop_postgres_database(server, _database_name(system))
    return runs, notes


def summarize(runs: Sequence[Run]) -> JSON:
    summary: JSON = {}
    names = list(dict.fromkeys(r.system for r in runs))
    for database in dict.fromkeys(r.database for r in runs):
        mine = [r for r in runs if r.database == database]
        rates = {n: median(r.per_second for r in mine if r.system == n) for n in names}
        cpu = {n: median(r.cpu_ms_per_message for r in mine if r.system == n) for n in names}
        share = ratio(rates["stillhere"], rates["raw"])
        summary[database] = {
            "messages_per_second": {n: round(v, 1) for n, v in rates.items()},
            "process_cpu_ms_per_message": {n: round(v, 2) for n, v in cpu.items()},
            "ratio_to_raw": share,
            "ratio_to_raw_llm": ratio(rates["stillhere"], rates["raw+llm"]),
            "ratios_of_experiments_to_raw": {
                n: ratio(rates[n], rates["raw"]) for n in names if n.startswith("stillhere+")
            },
            "goal": GOAL,
            "goal_met": share >= GOAL,
            "all_answered": all(
                r.answered == r.messages for r in mine if r.system.startswith("stillhere")
            ),
        }
    return summary


def report(summary: JSON, notes: Sequence[str]) -> str:
    rows = []
    for database, fig in summary.items():
        for name, rate in fig["messages_per_second"].items():
            rows.append(
                (
                    database,
                    name,
                    rate,
                    fig["process_cpu_ms_per_message"][name],
                    ratio(rate, fig["messages_per_second"]["raw"]),
                )
            )
    text = table(
        "Core throughput: messages/s (medians over trials)",
        ("database", "system", "messages/s", "CPU ms/msg", "x raw"),
        rows,
    )
    verdicts = table(
        f"Goal: stillhere >= {GOAL} x raw",
        ("database", "stillhere/raw", "stillhere/raw+llm", "verdict", "all answered"),
        [
            (
                database,
                fig["ratio_to_raw"],
                fig["ratio_to_raw_llm"],
                "met" if fig["goal_met"] else "MISSED",
                "yes" if fig["all_answered"] else "NO",
            )
            for database, fig in summary.items()
        ],
    )
    return "\n\n".join([text, verdicts, *notes])


def report_breakdown(figures: JSON) -> str:
    rows = [
        (r["method"], r["calls_per_message"], r["mean_ms"], r["ms_per_message"])
        for r in figures["methods"]
    ]
    rows.append(("total", figures["store_calls_per_message"], "", figures["store_ms_per_message"]))
    trips = figures["sqlite_thread_trips_per_message"]
    return "\n".join(
        [
            table(
                "Storage calls per answered message "
                f"(SQLite, one chat, {figures['messages']} messages)",
                ("store method", "calls/msg", "ms/call", "ms/msg"),
                rows,
            ),
            "Trips to aiosqlite's thread per message ('_run' is one statement): "
            + ", ".join(f"{name} {count}" for name, count in trips.items())
            + f"; {round(sum(trips.values()), 2)} in all",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(NAME, __doc__ or NAME)
    parser.add_argument(
        "--experiment",
        dest="experiments",
        choices=experiments.EXPERIMENTS,
        nargs="+",
        default=[],
        help="also measure stillhere with these what-if changes (bench.experiments)",
    )
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    with counting_errors() as errors:
        runs, notes = asyncio.run(measure(size, systems(args.experiments)))
        summary = summarize(runs)
        calls = asyncio.run(breakdown(size))
    if errors.count:
        notes.append(f"{errors.count} errors logged, e.g. {errors.samples[0]}")
    print(report(summary, notes))
    print()
    print(report_breakdown(calls))
    path = write_result(
        NAME,
        args.size,
        args.out,
        {
            "setup": {"chats": size.chats, "messages": size.messages, "trials": size.trials},
            "summary": summary,
            "notes": notes,
            "storage_breakdown": calls,
            **errors.figures(),
            "runs": [
                {
                    **vars(r),
                    "messages_per_second": round(r.per_second, 1),
                    "cpu_ms_per_message": round(r.cpu_ms_per_message, 2),
                }
                for r in runs
            ],
        },
    )
    print(f"\nwritten {path}")
    complete = all(fig["all_answered"] for fig in summary.values())
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
