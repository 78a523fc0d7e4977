"""Where the core's time goes, in process: a pyinstrument profile of one path.

    python -m bench.profile_core instant [--messages N] [--out FILE]
    python -m bench.profile_core answer  [--messages N] [--out FILE]

instant  N messages, one at a time, to 10 sessions that each run an hour-long tool: every
         one gets an instant reply (the path of bench.telegram_latency, without Telegram).
answer   N messages over 20 chats, each chat sending its next one when its answer came
         (the path of bench.core_throughput): the offline model answers at once.

Both run the real core on a SQLite file (bench.scale's settings, rate limits off) with the
in-process adapter; `answer --postgres` runs on a fresh database of the server that
STILLHERE_BENCH_POSTGRES_URL names instead. It prints the figures of the run and writes
the profiles (text) of the event loop's thread and of aiosqlite's thread, where storage
transactions run on SQLite, to FILE (bench.profiling). Profiling slows the run: its
figures are only for comparing two profiles.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.busy_core import ask, busy_core
from bench.common import (
    drop_postgres_database,
    fresh_postgres_database,
    latency_summary,
    postgres_url,
    skip_reason_postgres,
)
from bench.core_throughput import Size, run_stillhere
from bench.profiling import Profiles
from storage.migrate import upgrade

PATHS = ("instant", "answer")
ANSWER_CHATS = 20
PROFILE_DATABASE = "bench_profile_core"


async def profile_instant(db: Path, messages: int) -> tuple[str, str]:
    async with busy_core(db) as (runtime, chat):
        profiles = Profiles()
        latencies = []
        await profiles.start(runtime.db)
        cpu = time.process_time()
        for number in range(messages):
            sent = time.perf_counter()
            latencies.append(await ask(chat, number, "p") - sent)
        cpu = time.process_time() - cpu
        report = await profiles.stop()
    summary = latency_summary(latencies)
    figures = (
        f"{messages} instant replies: p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, "
        f"{1000 * cpu / messages:.2f} ms CPU each (profiled)"
    )
    return report, figures


async def profile_answer(db: Path, messages: int, postgres: bool = False) -> tuple[str, str]:
    server = postgres_url() if postgres else None
    if postgres and server is None:
        raise SystemExit(skip_reason_postgres())
    url = f"sqlite+aiosqlite:///{db}"
    if server is not None:
        url = await fresh_postgres_database(server, PROFILE_DATABASE)
    await upgrade(url)
    profiles = Profiles()
    cpu = time.process_time()
    answered, seconds = await run_stillhere(
        url, Size(ANSWER_CHATS, messages, trials=1), profiles=profiles
    )
    cpu = time.process_time() - cpu
    if server is not None:
        await drop_postgres_database(server, PROFILE_DATABASE)
    figures = (
        f"{answered} of {messages} answered: {answered / seconds:.1f} msg/s, "
        f"{1000 * cpu / max(1, answered):.2f} ms CPU each (profiled)"
    )
    return profiles.report, figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_core",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", choices=PATHS)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="profile text file")
    parser.add_argument("--postgres", action="store_true", help="answer: on PostgreSQL (see above)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stillhere-profile-") as tmp:
        db = Path(tmp) / "bot.db"
        run = (
            profile_instant(db, args.messages)
            if args.path == "instant"
            else profile_answer(db, args.messages, args.postgres)
        )
        report, figures = asyncio.run(run)
    out = args.out or Path(f"profile-{args.path}.txt")
    out.write_text(f"{figures}\n\n{report}", encoding="utf-8")
    print(figures)
    print(f"profile written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
