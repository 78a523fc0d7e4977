"""Counts and times every storage call the engine makes (a benchmark-only wrapper).

`counted()` wraps each public coroutine method of storage.repository.SqlStore for the
duration of a `with` block; the totals say how many transactions a message costs and which
of them cost most. It also counts, on SQLite, every trip to aiosqlite's thread by what it
ran there (a statement, a commit, a rollback). Used in an extra, untimed pass, so the
wrapping never touches a figure.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from bench.common import JSON
from storage.repository import SqlStore


@dataclass
class StoreCalls:
    calls: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    trips: dict[str, int] = field(default_factory=dict)

    def note(self, name: str, elapsed: float) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

    def per_message(self, messages: int) -> list[JSON]:
        """Rows sorted by time spent: calls per message, mean ms per call."""
        rows = [
            {
                "method": name,
                "calls_per_message": round(count / messages, 2),
                "mean_ms": round(1000 * self.seconds[name] / count, 3),
                "ms_per_message": round(1000 * self.seconds[name] / messages, 3),
            }
            for name, count in self.calls.items()
        ]
        return sorted(rows, key=lambda row: -float(row["ms_per_message"]))

    def trips_per_message(self, messages: int) -> dict[str, float]:
        """aiosqlite thread trips per message, by what ran there (`_run`: one statement)."""
        return {name: round(count / messages, 2) for name, count in sorted(self.trips.items())}


def _wrap(name: str, method: Callable[..., Any], sink: StoreCalls) -> Callable[..., Any]:
    @functools.wraps(method)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            sink.note(name, time.perf_counter() - started)

    return timed


def _counting_trips(execute: Callable[..., Any], sink: StoreCalls) -> Callable[..., Any]:
    @functools.wraps(execute)
    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__name__", type(fn).__name__)
        sink.trips[name] = sink.trips.get(name, 0) + 1
        return await execute(self, fn, *args, **kwargs)

    return counting


@contextmanager
def counted() -> Iterator[StoreCalls]:
    sink = StoreCalls()
    execute = aiosqlite.Connection._execute
    originals = {
        name: member
        for name, member in vars(SqlStore).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    try:
        for name, member in originals.items():
            setattr(SqlStore, name, _wrap(name, member, sink))
        aiosqlite.Connection._execute = _counting_trips(execute, sink)  # type: ignore[method-assign]
        yield sink
    finally:
        for name, member in originals.items():
            setattr(SqlStore, name, member)
        aiosqlite.Connection._execute = execute  # type: ignore[method-assign]
