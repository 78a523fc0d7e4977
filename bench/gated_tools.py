"""A TOOL_MODULES module for bench.llm_calls: the time tool, held until the benchmark lets go.

Replacing the built-in `get_current_time`, it waits on `GATE` before answering, so the
scenario's later messages arrive while it runs on any machine, however slow, with no
sleep to tune.
"""

from __future__ import annotations

import asyncio

from bot.tools import tool
from bot.tools.builtin import get_current_time as real_get_current_time

GATE: asyncio.Event | None = None


def hold() -> asyncio.Event:
    """A closed gate for the running loop: time calls wait until `.set()`."""
    global GATE
    GATE = asyncio.Event()
    return GATE


@tool(rerun_safe=False, labels={"en": "checking the time", "es": "consultar la hora"})
async def get_current_time(timezone: str = "UTC") -> str:
    """Returns the current date and time in an IANA time zone such as "Europe/Madrid"."""
    if GATE is not None:
        await GATE.wait()
    result: str = await real_get_current_time(timezone)
    return result
