"""Holding a transaction open from inside it, for tests of what waits behind it.

Transaction functions (`storage.transaction`) are sync: on SQLite they run in aiosqlite's
thread, on PostgreSQL in a greenlet on the event loop's thread. A `Hold` works from
either: `hold()` says it is inside and waits for `release()`, blocking the driver's
thread, or awaiting through SQLAlchemy's greenlet bridge.
"""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy.util.concurrency import await_

WAIT_SECONDS = 10.0


class Hold:
    def __init__(self) -> None:
        self.inside = asyncio.Event()
        self._release = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def hold(self) -> None:
        """From inside a transaction function: signal `inside`, wait for `release()`."""
        if threading.get_ident() == self._loop_thread:
            self.inside.set()
            await_(asyncio.wait_for(self._release.wait(), WAIT_SECONDS))
            return
        self._loop.call_soon_threadsafe(self.inside.set)
        waiting = asyncio.run_coroutine_threadsafe(self._release.wait(), self._loop)
        waiting.result(WAIT_SECONDS)

    def release(self) -> None:
        self._release.set()
