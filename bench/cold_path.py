"""A message that arrives alone: what the same work costs hot and cold, and where it goes.

    python -m bench.cold_path [--size tiny|small|full] [--out DIR]

The paced figure of bench.telegram_latency sends one message every 100 ms, and a burst
starts after a pause: the code a message runs has not run for a while. This measures
what that costs on this machine, beside the same work run back to back:

  sqlite    one write transaction as stillhere's intake begins one (BEGIN IMMEDIATE, an
            UPDATE ... RETURNING, COMMIT) on a WAL file with stillhere's settings, run
            back to back ("hot") and each after `gap` ms of unrelated work ("cold"),
            alternated round by round.
  timeline  the instant reply in process (bench.profile_core's instant path: 10 sessions
            each running an hour-long tool, the in-process adapter, a SQLite file), one
            message at a time, sent as soon as the last reply was sent and recorded
            ("hot") or after a pause ("cold"), alternated block by block: the median
            time from the submit at which each step of the path began or ended, found
            by wrapping the functions named.

No figure here has a goal; it explains the paced and 10-chat figures (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.busy_core import BUSY_SESSIONS, ask, busy_core
from bench.common import JSON, make_parser, ratio, table, write_result
from bench.memory_chat import TimedChat
from bot.runtime import Runtime

NAME = "cold_path"
DELIVERY_POLL_SECONDS = 0.0005


@dataclass(frozen=True)
class Size:
    rounds: int
    per_round: int
    gap_ms: float
    messages: int
    pause_ms: float


SIZES = {
    "tiny": Size(rounds=2, per_round=10, gap_ms=2, messages=8, pause_ms=5),
    "small": Size(rounds=4, per_round=100, gap_ms=20, messages=200, pause_ms=50),
    "full": Size(rounds=6, per_round=200, gap_ms=20, messages=500, pause_ms=100),
}

# --- sqlite ----------------------------------------------------------------------------------


def _spin(seconds: float) -> None:
    """Other work: the interpreter busy, touching nothing SQLite uses."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def sqlite_hot_and_cold(directory: Path, size: Size) -> JSON:
    connection = sqlite3.connect(directory / "cold.db", isolation_level=None)
    try:
        # As storage.database sets every connection up.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(
            "CREATE TABLE sessions (id INTEGER PRIMARY KEY, active_key TEXT UNIQUE,"
            " language TEXT, updated INTEGER)"
        )
        connection.executemany(
            "INSERT INTO sessions (active_key, language, updated) VALUES (?, 'en', 0)",
            [(f"chat-{n}",) for n in range(BUSY_SESSIONS)],
        )
        times: dict[str, list[float]] = {"hot": [], "cold": []}
        for round_number in range(size.rounds):
            for mode in ("hot", "cold") if round_number % 2 == 0 else ("cold", "hot"):
                for n in range(size.per_round):
                    if mode == "cold":
                        _spin(size.gap_ms / 1000)
                    started = time.perf_counter()
                    connection.execute("BEGIN IMMEDIATE")
                    connection.execute(
                        "UPDATE sessions SET language = coalesce(?, language),"
                        " updated = updated + 1 WHERE active_key = ? RETURNING *",
                        (None, f"chat-{n % BUSY_SESSIONS}"),
                    ).fetchall()
                    connection.execute("COMMIT")
                    times[mode].append(time.perf_counter() - started)
    finally:
        connection.close()
    hot, cold = (statistics.median(times[m]) * 1e6 for m in ("hot", "cold"))
    return {
        "gap_ms": size.gap_ms,
        "transactions": {m: len(v) for m, v in times.items()},
        "hot_us": round(hot, 1),
        "cold_us": round(cold, 1),
        "cold_over_hot": ratio(cold, hot),
    }


# --- timeline --------------------------------------------------------------------------------

# (label, module, owner attribute path, function name): the steps, in the order they run.
STEPS: tuple[tuple[str, str, str | None, str], ...] = (
    ("stored by the store", "storage.repository", "SqlStore", "record_inbound"),
    ("group commit's transaction", "storage.group_commit", None, "transaction"),
    ("pool checkout", "storage.transaction", None, "_connection_at_hand"),
    ("trip to SQLite's thread", "storage.sqlite_driver", "OneTripConnection", "in_thread"),
    ("dedupe + session row (thread)", "storage.repository", "SqlStore", "_take_in"),
    ("reply chosen and stored (thread)", "storage.repository", "SqlStore", "_intake"),
    ("courier sends", "bot.courier", "Courier", "_deliver"),
)


class Timeline:
    """Wraps each step's function to note, per message, when it first began and ended."""

    def __init__(self) -> None:
        self.start = 0.0
        self.noted: dict[str, float] = {}

    def note(self, key: str) -> None:
        self.noted.setdefault(key, time.perf_counter() - self.start)

    def begin(self) -> None:
        self.noted = {}
        self.start = time.perf_counter()

    def _wrapped(self, label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(function):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                self.note(f"{label} begins")
                try:
                    return await function(*args, **kwargs)
                finally:
                    self.note(f"{label} ends")

            return timed_async

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.note(f"{label} begins")
            try:
                return function(*args, **kwargs)
            finally:
                self.note(f"{label} ends")

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        undo: list[tuple[Any, str, Any]] = []
        try:
            for label, module_name, owner_name, name in STEPS:
                owner: Any = importlib.import_module(module_name)
                if owner_name is not None:
                    owner = getattr(owner, owner_name)
                original = getattr(owner, name)
                undo.append((owner, name, original))
                setattr(owner, name, self._wrapped(label, original))
            yield
        finally:
            for owner, name, original in reversed(undo):
                setattr(owner, name, original)


async def _timeline(directory: Path, size: Size) -> JSON:
    samples: dict[str, list[dict[str, float]]] = {"hot": [], "cold": []}
    timeline = Timeline()
    async with busy_core(directory / "bot.db") as (runtime, chat):
        with timeline.installed():
            block = max(1, size.messages // 10)
            for number in range(2 * size.messages):
                mode = "cold" if (number // block) % 2 else "hot"
                if mode == "cold":
                    await asyncio.sleep(size.pause_ms / 1000)
                samples[mode].append(await _one_message(runtime, chat, timeline, number))
    return {mode: _medians(rows) for mode, rows in samples.items()}


async def _one_message(
    runtime: Runtime, chat: TimedChat, timeline: Timeline, number: int
) -> dict[str, float]:
    timeline.begin()
    sent_at = await ask(chat, number, "c")
    # The delivery is recorded in a transaction of its own after the send: let it end
    # before the next message, so only the reply's path is timed. Polled often: a long
    # sleep would make "hot" cold.
    while runtime.engine.courier.busy:
        await asyncio.sleep(DELIVERY_POLL_SECONDS)
    return {**timeline.noted, "reply sent": sent_at - timeline.start}


def _medians(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = {key for row in rows for key in row}
    medians = {key: statistics.median(row[key] for row in rows if key in row) for key in keys}
    return {key: round(1000 * value, 3) for key, value in sorted(medians.items(), key=_by_time)}


def _by_time(item: tuple[str, float]) -> float:
    return item[1]


def report(figures: JSON) -> str:
    sql = figures["sqlite"]
    lines = [
        table(
            f"One SQLite write transaction, back to back and after {sql['gap_ms']} ms of "
            "other work",
            ("hot us", "cold us", "cold/hot"),
            [(sql["hot_us"], sql["cold_us"], sql["cold_over_hot"])],
        ),
        "",
    ]
    hot, cold = figures["timeline"]["hot"], figures["timeline"]["cold"]
    steps = sorted(set(hot) | set(cold), key=lambda key: cold.get(key, hot.get(key, 0.0)))
    lines.append(
        table(
            "An instant reply in process: ms from the submit (median)",
            ("step", "hot ms", "cold ms"),
            [(step, hot.get(step, "-"), cold.get(step, "-")) for step in steps],
        )
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(NAME, __doc__ or NAME)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    with tempfile.TemporaryDirectory(prefix="stillhere-cold-") as tmp:
        figures: JSON = {
            "sqlite": sqlite_hot_and_cold(Path(tmp), size),
            "timeline": asyncio.run(_timeline(Path(tmp), size)),
        }
    print(report(figures))
    path = write_result(NAME, args.size, args.out, {"settings": size.__dict__, "figures": figures})
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
