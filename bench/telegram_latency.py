"""Instant-reply latency through the real python-telegram-bot stack, against an echo bot.

The fake Bot API (tests.fakes.telegram_api) runs here, in the driver; each bot runs in a
process of its own (bench.telegram_bots). Latency is measured on the fake's clock: from the
moment an update is queued to the moment the bot's sendMessage answering it arrives.

For each chat count N, every bot variant runs at once, each against a fake of its own,
and the bots take turns (the order flipped every turn), so that all are measured in the
same minutes of this shared machine:
  setup   stillhere only: every chat asks for a long tool ("wait 3600 seconds") and gets
          its "working" notice, so every later message gets an instant templated reply.
  bursts  M rounds; each bot in turn gets one message queued in every chat at once, and
          the next bot's turn begins once all N are answered: p50/p95/p99 and messages/s
          under load.
  paced   messages at a steady rate under Telegram's flood limit, one chat after another,
          each bot in turn: what a user sees while N sessions are busy.
Bot CPU per message comes from /proc, over the whole measured phase (the other bots'
turns included). stillhere's SQLite file is checked afterwards: every message stored,
every one deferred, one instant reply each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bench.common import (
    JSON,
    cpu_seconds,
    latency_summary,
    make_parser,
    median,
    ratio,
    table,
    write_result,
)
from bench.long_tools import START_TEXT
from bench.telegram_bots import is_ours, parse_variant
from tests.fakes.telegram_api import FakeTelegram, TgUser

NAME = "telegram_latency"
ROUND_TEXTS = ("¿Sigues ahí?", "Hola", "¿Qué tal?", "Ok", "are you there?", "hello")
FIRST_CHAT = 20_000
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# A profiled bot renders minutes of samples on its way out.
PROFILED_STOP_TIMEOUT = 600.0
# Telegram allows about 30 messages/s per bot; paced load stays well under it.
PACED_RATE = 10.0


@dataclass(frozen=True)
class Size:
    chats: tuple[int, ...]
    rounds: int
    trials: int
    paced: int
    variants: tuple[str, ...] = (
        "stillhere",
        "echo",
        "stillhere-nolimit",
        "echo-limited",
        "echo-stored",
        "echo-aiohttp",
    )
    # Limited variants drain a burst at 30/s: one trial is enough where that dominates.
    big_chats: int = 1000


SIZES = {
    # tiny is the smoke test's: every part runs once, as little as possible.
    "tiny": Size(
        chats=(2,),
        rounds=1,
        trials=1,
        paced=2,
        variants=("stillhere", "echo", "echo-stored", "echo-aiohttp"),
    ),
    "small": Size(chats=(10, 100), rounds=3, trials=2, paced=30),
    # Three trials, not two: the median of two is their mean, and one slow minute of this
    # shared machine in one trial (seen in session 18: 15.7 ms against 10.4) set the
    # figure.
    "full": Size(chats=(10, 100, 1000), rounds=3, trials=3, paced=50),
}


class TimedTelegram(FakeTelegram):
    """The fake Bot API, noting when each update was queued and when its answer came."""

    def __init__(self) -> None:
        super().__init__()
        self.queued_at: dict[tuple[int, int], float] = {}
        self.answered_at: dict[tuple[int, int], float] = {}
        self.replies: Counter[tuple[int, int]] = Counter()
        self.sent_per_chat: Counter[int] = Counter()

    def push_timed(self, chat: int, text: str) -> tuple[int, int]:
        user = TgUser(chat, f"User{chat}")
        message_id = self.push_text(chat, user, text)
        key = (chat, message_id)
        self.queued_at[key] = time.perf_counter()
        return key

    async def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        arrived = time.perf_counter()
        result = await super()._api_sendMessage(params)
        chat = int(params["chat_id"])
        self.sent_per_chat[chat] += 1
        replied = (params.get("reply_parameters") or {}).get("message_id")
        if replied is not None:
            key = (chat, int(replied))
            self.replies[key] += 1
            self.answered_at.setdefault(key, arrived)
        return result


@dataclass
class Trial:
    variant: str
    chats: int
    burst_latencies: list[float] = field(default_factory=list)
    burst_seconds: float = 0.0
    paced_latencies: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    messages: int = 0
    answered: int = 0
    extra_replies: int = 0
    setup_seconds: float = 0.0
    setup_lost: int = 0
    log_errors: int = 0
    stored: JSON = field(default_factory=dict)

    def figures(self) -> JSON:
        burst = latency_summary(self.burst_latencies)
        return {
            "variant": self.variant,
            "chats": self.chats,
            "messages": self.messages,
            "answered": self.answered,
            "extra_replies": self.extra_replies,
            "burst": burst,
            "messages_per_second": round(len(self.burst_latencies) / self.burst_seconds, 1)
            if self.burst_seconds
            else 0.0,
            "paced": latency_summary(self.paced_latencies),
            "bot_cpu_ms_per_message": round(1000 * self.cpu_seconds / max(1, self.messages), 3),
            "setup_seconds": round(self.setup_seconds, 2),
            "setup_lost": self.setup_lost,
            "log_errors": self.log_errors,
            "stored": self.stored,
        }


class BotProcess:
    """One bot in its own process; stdin closing tells it to stop."""

    def __init__(
        self, variant: str, fake: FakeTelegram, db: Path, log: Path, profile: Path | None
    ) -> None:
        self.variant = variant
        self.fake = fake
        self.db = db
        self.log = log
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BotProcess:
        profiling = ["--profile", str(self.profile)] if self.profile else []
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.telegram_bots",
                self.variant,
                "--base-url",
                self.fake.base_url,
                "--token",
                self.fake.token,
                "--db",
                str(self.db),
                *profiling,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                line = await self.process.stdout.readline()
        except TimeoutError:
            line = b""
        if line.strip() != b"READY":
            await self._kill()
            raise RuntimeError(f"{self.variant} did not start:\n{self.tail()}")
        return self

    async def start_profile(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(b"profile\n")
        await self.process.stdin.drain()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def __aexit__(self, *exc: object) -> None:
        process = self.process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        limit = PROFILED_STOP_TIMEOUT if self.profile else STOP_TIMEOUT
        try:
            async with asyncio.timeout(limit):
                await process.wait()
        except TimeoutError:
            await self._kill()
            raise RuntimeError(
                f"{self.variant} did not stop within {limit}s:\n{self.tail()}"
            ) from None
        if process.returncode != 0 and exc == (None, None, None):
            raise RuntimeError(f"{self.variant} exited with {process.returncode}:\n{self.tail()}")


def _drain_timeout(count: int) -> float:
    # Generous: a limited bot drains at 30/s; anything slower than 10/s is a failure.
    return 30.0 + count / 10.0


async def _wait_answered(fake: TimedTelegram, keys: Sequence[tuple[int, int]]) -> None:
    """Until every message is answered, or the drain timeout: a message still unanswered
    then counts as lost (reported, not raised, so the other figures survive)."""
    pending = set(keys)

    def done() -> bool:
        pending.difference_update([k for k in list(pending) if k in fake.answered_at])
        return not pending

    with contextlib.suppress(AssertionError):
        await fake.wait_for(done, timeout=_drain_timeout(len(keys)))


async def _setup_tools(fake: TimedTelegram, chats: Sequence[int]) -> tuple[float, int]:
    """Starts the long tool in every chat; done when each chat got its working notice.
    Returns the time it took and how many chats never got one."""
    started = time.perf_counter()
    before = {chat: fake.sent_per_chat[chat] for chat in chats}

    def missing() -> int:
        return sum(1 for c in chats if fake.sent_per_chat[c] == before[c])

    for chat in chats:
        fake.push_timed(chat, START_TEXT)
    with contextlib.suppress(AssertionError):
        await fake.wait_for(lambda: missing() == 0, timeout=_drain_timeout(len(chats)))
    return time.perf_counter() - started, missing()


def _stored_counts(db: Path) -> JSON:
    """What stillhere's database holds: read with the stdlib driver, after the bot stopped."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        users = connection.execute("SELECT COUNT(*) FROM messages WHERE role = 'user'").fetchone()
        deferred = connection.execute(
            "SELECT COUNT(*) FROM messages WHERE role = 'user' AND status = 'deferred'"
        ).fetchone()
        interims = connection.execute(
            "SELECT COUNT(*) FROM messages WHERE role = 'assistant' AND status = 'interim'"
        ).fetchone()
    return {"user_messages": users[0], "deferred": deferred[0], "instant_replies": interims[0]}


def _echo_stored_counts(db: Path) -> JSON:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        stored, delivered = connection.execute(
            "SELECT COUNT(*), COUNT(sent_id) FROM echoes"
        ).fetchone()
    return {"user_messages": stored, "delivered": delivered}


@dataclass
class _Bot:
    """One variant's bot in a trial: its fake Bot API, its process and what it measured."""

    trial: Trial
    fake: TimedTelegram
    process: BotProcess
    db: Path
    log: Path
    chat_ids: list[int]
    keys: list[tuple[int, int]] = field(default_factory=list)
    paced: list[tuple[int, int]] = field(default_factory=list)
    cpu_before: float = 0.0


async def run_trial(
    variants: Sequence[str],
    chats: int,
    size: Size,
    workdir: Path,
    trial_number: int,
    profile: tuple[str, Path] | None = None,
) -> list[Trial]:
    """One trial of each variant at N chats, side by side in time: every bot runs at
    once, each against a fake of its own, and they take turns (the order flipped every
    turn), one burst round each, then one paced message each. Bots measured one after
    another were measured in different minutes of this shared machine, and one slow
    minute set a variant's figure (bench/RESULTS.md, session 18); taking turns spreads
    such a minute over every variant alike. With `profile` (variant, report file), that
    bot is profiled."""
    async with contextlib.AsyncExitStack() as stack:
        bots = []
        for variant in variants:
            name = f"{variant}-{chats}-{trial_number}"
            fake = TimedTelegram()
            await stack.enter_async_context(fake)
            profiled = profile[1] if profile is not None and profile[0] == variant else None
            db, log = workdir / f"{name}.db", workdir / f"{name}.log"
            process = await stack.enter_async_context(BotProcess(variant, fake, db, log, profiled))
            ids = [FIRST_CHAT + i for i in range(chats)]
            bots.append(_Bot(Trial(variant, chats), fake, process, db, log, ids))
        for bot in bots:
            if is_ours(bot.trial.variant):
                bot.trial.setup_seconds, bot.trial.setup_lost = await _setup_tools(
                    bot.fake, bot.chat_ids
                )
            if bot.process.profile is not None:
                await bot.process.start_profile()
            bot.cpu_before = cpu_seconds(bot.process.pid)
        for round_number in range(size.rounds):
            text = ROUND_TEXTS[round_number % len(ROUND_TEXTS)]
            for bot in _order(bots, round_number):
                await _burst(bot, text)
        texts = itertools.cycle(ROUND_TEXTS)
        for index in range(size.paced):
            text = next(texts)
            for bot in _order(bots, index):
                bot.paced.append(bot.fake.push_timed(bot.chat_ids[index % chats], text))
                await asyncio.sleep(1 / (PACED_RATE * len(bots)))
        for bot in bots:
            await _wait_answered(bot.fake, bot.paced)
            _tally(bot, cpu_seconds(bot.process.pid) - bot.cpu_before)
    for bot in bots:
        _check_stored(bot)
    return [bot.trial for bot in bots]


async def _burst(bot: _Bot, text: str) -> None:
    """One message in every chat at once, until all are answered."""
    started = time.perf_counter()
    burst = [bot.fake.push_timed(chat, text) for chat in bot.chat_ids]
    await _wait_answered(bot.fake, burst)
    bot.trial.burst_seconds += time.perf_counter() - started
    bot.trial.burst_latencies += [bot.fake.answered_at[k] - bot.fake.queued_at[k] for k in burst]
    bot.keys += burst


def _tally(bot: _Bot, cpu: float) -> None:
    trial, fake = bot.trial, bot.fake
    trial.paced_latencies = [fake.answered_at[k] - fake.queued_at[k] for k in bot.paced]
    keys = bot.keys + bot.paced
    trial.cpu_seconds = cpu
    trial.messages = len(keys)
    trial.answered = sum(1 for k in keys if k in fake.answered_at)
    trial.extra_replies = sum(max(0, fake.replies[k] - 1) for k in keys)


def _check_stored(bot: _Bot) -> None:
    """What the bot's database holds and the errors it logged, once it has stopped."""
    trial = bot.trial
    if is_ours(trial.variant):
        trial.stored = _stored_counts(bot.db)
    elif trial.variant == "echo-stored":
        trial.stored = _echo_stored_counts(bot.db)
    trial.log_errors = sum(
        1 for line in bot.log.read_text(errors="replace").splitlines() if line.startswith("ERROR")
    )


T = TypeVar("T")


def _order(items: Sequence[T], turn: int) -> list[T]:
    return list(items) if turn % 2 == 0 else list(reversed(items))


def _trials_for(size: Size, chats: int, variant: str) -> int:
    if chats >= size.big_chats and variant in ("stillhere", "echo-limited"):
        return 1
    return size.trials


async def measure(size: Size, profile: str | None, out: Path) -> list[Trial]:
    """Runs every trial; with `profile`, that variant's first trial at the largest N is
    profiled and the report saved next to the JSON."""
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="stillhere-bench-") as tmp:
        workdir = Path(tmp)
        for chats in size.chats:
            for trial_number in range(size.trials):
                variants = [v for v in size.variants if trial_number < _trials_for(size, chats, v)]
                profiled = (
                    (profile, out / f"{NAME}.{profile}.N{chats}.profile.txt")
                    if profile in variants and chats == size.chats[-1] and trial_number == 0
                    else None
                )
                for trial in await run_trial(
                    variants, chats, size, workdir, trial_number, profiled
                ):
                    print(
                        f"  {trial.variant:>17} N={chats:<5} trial {trial_number + 1}: "
                        f"burst p50 {latency_summary(trial.burst_latencies)['p50_ms']} ms, "
                        f"paced p50 {latency_summary(trial.paced_latencies)['p50_ms']} ms, "
                        f"{trial.messages - trial.answered} lost, "
                        f"{trial.log_errors} errors logged",
                        flush=True,
                    )
                    trials.append(trial)
    return trials


def _medians(trials: Sequence[Trial], variant: str, chats: int) -> JSON:
    figures = [t.figures() for t in trials if t.variant == variant and t.chats == chats]
    if not figures:
        return {}

    def med(*path: str) -> float:
        values = []
        for f in figures:
            value: Any = f
            for step in path:
                value = value[step]
            values.append(float(value))
        return median(values)

    return {
        "trials": len(figures),
        "burst_p50_ms": med("burst", "p50_ms"),
        "burst_p95_ms": med("burst", "p95_ms"),
        "burst_p99_ms": med("burst", "p99_ms"),
        "messages_per_second": med("messages_per_second"),
        "paced_p50_ms": med("paced", "p50_ms"),
        "paced_p99_ms": med("paced", "p99_ms"),
        "bot_cpu_ms_per_message": med("bot_cpu_ms_per_message"),
        "all_answered": all(
            f["answered"] == f["messages"] and f["setup_lost"] == 0 for f in figures
        ),
    }


PAIRS = (
    ("stillhere", "echo"),
    ("stillhere", "echo-limited"),
    ("stillhere-nolimit", "echo"),
    ("stillhere-nolimit", "echo-stored"),
    ("stillhere-nolimit", "echo-aiohttp"),
)


def summarize(size: Size, trials: Sequence[Trial]) -> JSON:
    summary: JSON = {}
    for chats in size.chats:
        per_variant = {v: _medians(trials, v, chats) for v in size.variants}
        ratios = {}
        for ours, baseline in PAIRS:
            a, b = per_variant.get(ours), per_variant.get(baseline)
            if not a or not b:
                continue
            ratios[f"{ours}/{baseline}"] = {
                key: ratio(a[key], b[key])
                for key in (
                    "burst_p50_ms",
                    "burst_p99_ms",
                    "paced_p50_ms",
                    "paced_p99_ms",
                    "messages_per_second",
                    "bot_cpu_ms_per_message",
                )
            }
        summary[str(chats)] = {"variants": per_variant, "ratios": ratios}
    return summary


def report(size: Size, summary: JSON) -> str:
    rows = []
    for chats in size.chats:
        for variant, fig in summary[str(chats)]["variants"].items():
            rows.append(
                (
                    chats,
                    variant,
                    fig["burst_p50_ms"],
                    fig["burst_p95_ms"],
                    fig["burst_p99_ms"],
                    fig["messages_per_second"],
                    fig["paced_p50_ms"],
                    fig["paced_p99_ms"],
                    fig["bot_cpu_ms_per_message"],
                    "yes" if fig["all_answered"] else "NO",
                )
            )
    out = [
        table(
            "Telegram: update queued -> sendMessage received (medians over trials)",
            (
                "N",
                "bot",
                "burst p50 ms",
                "p95 ms",
                "p99 ms",
                "msg/s",
                "paced p50 ms",
                "paced p99 ms",
                "CPU ms/msg",
                "all answered",
            ),
            rows,
        )
    ]
    ratio_rows = []
    for chats in size.chats:
        for pair, values in summary[str(chats)]["ratios"].items():
            ratio_rows.append(
                (
                    chats,
                    pair,
                    values["burst_p50_ms"],
                    values["burst_p99_ms"],
                    values["paced_p50_ms"],
                    values["paced_p99_ms"],
                    values["messages_per_second"],
                    values["bot_cpu_ms_per_message"],
                )
            )
    out.append(
        table(
            "Ratios (goal: stillhere/echo p50 <= 1.3, p99 <= 1.5)",
            ("N", "pair", "burst p50", "burst p99", "paced p50", "paced p99", "msg/s", "CPU"),
            ratio_rows,
        )
    )
    return "\n\n".join(out)


def _variant(name: str) -> str:
    try:
        parse_variant(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(NAME, __doc__ or NAME)
    parser.add_argument(
        "--profile",
        type=_variant,
        default=None,
        help="profile this bot (pyinstrument) during its first trial at the largest N",
    )
    parser.add_argument(
        "--chats", type=int, nargs="+", default=None, help="override the sizes' chat counts"
    )
    parser.add_argument(
        "--variants",
        type=_variant,
        nargs="+",
        default=None,
        help="only these bots (stillhere+notyping tries a what-if change, see bench.experiments)",
    )
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    if args.chats:
        size = replace(size, chats=tuple(args.chats))
    if args.variants:
        size = replace(size, variants=tuple(args.variants))
    args.out.mkdir(parents=True, exist_ok=True)
    trials = asyncio.run(measure(size, args.profile, args.out))
    summary = summarize(size, trials)
    print(report(size, summary))
    path = write_result(
        NAME,
        args.size,
        args.out,
        {
            "setup": {
                "chats": list(size.chats),
                "rounds": size.rounds,
                "trials": size.trials,
                "paced_messages": size.paced,
                "paced_rate_per_second": PACED_RATE,
            },
            "summary": summary,
            "trials": [t.figures() for t in trials],
        },
    )
    print(f"\nwritten {path}")
    complete = all(t.answered == t.messages and t.setup_lost == 0 for t in trials)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
