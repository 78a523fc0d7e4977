"""What every benchmark shares: the command line, figures, tables, JSON, machine facts.

Each benchmark is `python -m bench.<name> [--size tiny|small|full] [--out DIR]`: it prints a
table and writes `<DIR>/<name>.json` (bench/results by default). Its `main()` takes argv, so
the smoke tests run it in-process with `--size tiny` and a temporary `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

SIZES = ("tiny", "small", "full")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
POSTGRES_URL_VARIABLE = "STILLHERE_BENCH_POSTGRES_URL"
_LIBRARIES = (
    "python-telegram-bot",
    "discord.py",
    "openai",
    "SQLAlchemy",
    "aiosqlite",
    "asyncpg",
    "aiohttp",
    "httpx",
    "pydantic",
)

JSON = dict[str, Any]


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", choices=SIZES, default="small", help="how big a run")
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="directory for <name>.json (bench/results)"
    )
    return parser


def parse_args(name: str, argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    return make_parser(name, description).parse_args(argv)


# --- figures -------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on unsorted input."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> JSON:
    """p50/p95/p99/max in milliseconds."""
    return {
        "count": len(seconds),
        "p50_ms": round(percentile(seconds, 0.50) * 1000, 2),
        "p95_ms": round(percentile(seconds, 0.95) * 1000, 2),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 2),
        "max_ms": round(max(seconds) * 1000, 2) if seconds else math.nan,
    }


def median(values: Iterable[float]) -> float:
    found = [v for v in values if not math.isnan(v)]
    return statistics.median(found) if found else math.nan


def ratio(ours: float, baseline: float) -> float:
    if baseline == 0 or math.isnan(baseline) or math.isnan(ours):
        return math.nan
    return round(ours / baseline, 3)


# --- output --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def machine() -> JSON:
    memory_kib = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": versions,
    }


def write_result(name: str, size: str, out_dir: Path, figures: Mapping[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    document = {
        "benchmark": name,
        "size": size,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **figures,
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return path


# --- processes -----------------------------------------------------------------------------


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time a process has used so far, from /proc."""
    with open(f"/proc/{pid or 'self'}/stat", encoding="ascii") as stat:
        # Fields after the command name (which may hold spaces) start at index 2.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def postgres_url() -> str | None:
    return os.environ.get(POSTGRES_URL_VARIABLE) or None


def skip_reason_postgres() -> str:
    return f"PostgreSQL skipped: set {POSTGRES_URL_VARIABLE} to a server to measure it"


async def fresh_postgres_database(server_url: str, name: str) -> str:
    """(Re)creates database `name` on the server and returns its SQLAlchemy URL.

    Only databases named bench_* are ever dropped, so a wrong name cannot touch real data.
    """
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    if not name.startswith("bench_"):
        raise ValueError(f"benchmark databases are named bench_*, not {name!r}")
    url = make_url(server_url)
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return url.set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(server_url: str, name: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    if not name.startswith("bench_"):
        raise ValueError(f"benchmark databases are named bench_*, not {name!r}")
    url = make_url(server_url)
    connection = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


# --- waiting and errors ----------------------------------------------------------------------


async def wait_progress(
    count: Callable[[], int], target: int, *, stall: float, budget: float
) -> tuple[int, float]:
    """Polls `count()` until it reaches `target`, stops moving for `stall` seconds once it
    has moved, or `budget` runs out. Returns the last count and when (perf_counter) it last
    moved, so a stuck run reports how far it got and how long that took, not the time spent
    waiting. Before the first move only the budget counts: work that advances in lockstep
    may show nothing for a long while, then everything at once."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = last = count()
    moved_at, moved_perf = started, time.perf_counter()
    while last < target:
        now = loop.time()
        if (last != first and now - moved_at > stall) or now - started > budget:
            break
        await asyncio.sleep(0.01)
        current = count()
        if current != last:
            last, moved_at, moved_perf = current, loop.time(), time.perf_counter()
    return last, moved_perf


class ErrorCount(logging.Handler):
    """Counts ERROR records (e.g. "database is locked"), keeping the first few messages."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 5:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            self.samples.append(text[:300])

    def figures(self) -> JSON:
        return {"errors_logged": self.count, "error_samples": self.samples}


@contextmanager
def counting_errors() -> Iterator[ErrorCount]:
    handler = ErrorCount()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
