"""A TOOL_MODULES module for the benchmarks: `wait_seconds` that really takes its time.

It replaces the built-in of the same name (which the offline model calls for "wait N
seconds"), so a benchmark starts a long tool in a chat by saying "wait 3600 seconds". Not
rerun-safe on purpose: after a restart each call is closed as "interrupted by a restart"
and its turn goes straight on to the LLM call, which is what the recovery figure times.
"""

from __future__ import annotations

import asyncio

from bot.tools import tool

LONG_SECONDS = 3600
START_TEXT = f"wait {LONG_SECONDS} seconds"


@tool(
    timeout=2 * LONG_SECONDS,
    rerun_safe=False,
    labels={"en": "a long benchmark job", "es": "un trabajo largo de prueba"},
)
async def wait_seconds(seconds: float) -> str:
    """Waits the given number of seconds, then says so. Used to keep a tool running."""
    await asyncio.sleep(max(0.0, float(seconds)))
    return f"waited {seconds:g} s"
