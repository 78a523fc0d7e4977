"""Tools every stillhere bot has."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.tools.registry import tool


@tool(rerun_safe=True, labels={"en": "checking the time", "es": "consultar la hora"})
async def get_current_time(timezone: str = "UTC") -> str:
    """Returns the current date and time in an IANA time zone such as "Europe/Madrid"."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {timezone!r}; use an IANA name such as Europe/Madrid"
    now = datetime.now(zone).replace(microsecond=0)
    return f"{now.isoformat()} ({timezone})"


@tool(rerun_safe=True, labels={"en": "waiting", "es": "esperar"})
async def wait_seconds(seconds: float) -> str:
    """Waits the given number of seconds (at most 600), then says so. A demo of a long tool."""
    seconds = max(0.0, min(float(seconds), 600.0))
    await asyncio.sleep(seconds)
    return f"waited {seconds:g} s"
