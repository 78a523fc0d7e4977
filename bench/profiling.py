"""pyinstrument profiles of the two threads a stillhere process works in.

pyinstrument samples the thread it was started in. The event loop's thread runs the bot;
on SQLite, aiosqlite's thread runs every storage transaction whole
(`storage.transaction`), so a profile of the loop alone would show the storage time as
waiting. `Profiles` starts one profiler in each (a second one only for an SQLite engine)
and renders both reports, one after the other. Not async-aware on purpose: every sample
counts, whichever task the loop runs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from storage.sqlite_driver import OneTripConnection

# The share of aiosqlite's thread's time under which a frame is left out of its report.
STORAGE_THRESHOLD = 0.001


def _profiler(interval: float) -> Any:
    from pyinstrument import Profiler

    return Profiler(interval=interval, async_mode="disabled")


class Profiles:
    def __init__(self, interval: float = 0.0005) -> None:
        self._interval = interval
        self._loop: Any = None
        self._storage: Any = None
        self._driver: OneTripConnection | None = None
        self.report = ""

    async def start(self, engine: AsyncEngine | None) -> None:
        """Starts sampling the calling (event loop's) thread and, for an SQLite engine,
        the thread of its one pooled connection."""
        if engine is not None and engine.dialect.name == "sqlite":
            async with engine.connect() as conn:
                driver = (await conn.get_raw_connection()).dbapi_connection
            if isinstance(driver, OneTripConnection):
                self._driver, self._storage = driver, _profiler(self._interval)
                await driver.in_thread(self._storage.start)
        self._loop = _profiler(self._interval)
        self._loop.start()

    async def stop(self, show_all: bool = False) -> str:
        """Stops both; their reports (text), also kept in `report`."""
        self._loop.stop()
        parts = [
            "== the event loop's thread",
            self._loop.output_text(unicode=True, show_all=show_all),
        ]
        if self._driver is not None:
            await self._driver.in_thread(self._storage.stop)
            # pyinstrument leaves out frames under 1% of the thread's time, and this
            # thread mostly waits for work: a transaction's steps would fall under it.
            storage = self._storage.output_text(
                unicode=True,
                show_all=show_all,
                processor_options={"filter_threshold": STORAGE_THRESHOLD},
            )
            parts += ["== aiosqlite's thread (storage transactions)", storage]
        self.report = "\n".join(parts)
        return self.report
