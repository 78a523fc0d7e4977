"""A TOOL_MODULES module for tests: the time tool, slowed down so messages arrive meanwhile."""

from __future__ import annotations

import asyncio
import os
import time

from bot.tools import tool
from bot.tools.builtin import get_current_time as real_get_current_time

# Subprocess tests set the delay through the environment.
DELAY = float(os.environ.get("STILLHERE_TEST_TOOL_DELAY", "0.5"))
# When set, the time tool also waits for it after its delay: a test that must order the
# tool's end after something else of its own holds it here instead of guessing a delay.
release: asyncio.Event | None = None


@tool(rerun_safe=False, labels={"en": "checking the time", "es": "consultar la hora"})
async def get_current_time(timezone: str = "UTC") -> str:
    """Returns the current date and time in an IANA time zone such as "Europe/Madrid"."""
    await asyncio.sleep(DELAY)
    if release is not None:
        await release.wait()
    result: str = await real_get_current_time(timezone)
    return result


@tool
async def never_finishes() -> str:
    """A tool that hangs until cancelled or timed out."""
    await asyncio.Event().wait()
    return "unreachable"


@tool
async def cancels_itself() -> str:
    """Raises CancelledError though nobody cancelled it, as a tool may by mistake (a
    cancellation of its own inner work let through)."""
    raise asyncio.CancelledError


@tool
def blocks_its_thread(seconds: float = 3600) -> str:
    """A sync tool that holds its thread (nothing can cancel a thread)."""
    time.sleep(seconds)
    return f"slept {seconds:g} s"


@tool
def explode(reason: str) -> str:
    """Raises an exception (a sync tool, so it runs in a thread)."""
    raise RuntimeError(reason)


# What restart_service was asked to restart: an admin-only tool must never have run
# for anyone else, which its result alone could not prove.
restarted: list[str] = []


@tool(admin_only=True)
async def restart_service(name: str) -> str:
    """Restarts a service (admins only)."""
    restarted.append(name)
    return f"{name} restarted"


_slow_once_calls = 0


@tool(rerun_safe=True)
async def slow_once() -> str:
    """Hangs on its first call in this process, answers at once after (restart tests)."""
    global _slow_once_calls
    _slow_once_calls += 1
    if _slow_once_calls == 1:
        await asyncio.Event().wait()
    return f"done on call {_slow_once_calls}"


# Ends `ignores_cancel`: a test sets it once done, so that the task it left behind ends
# instead of outliving the test's event loop.
let_go = False
# Set once `ignores_cancel` runs: a cancel before that never reaches its code.
stubborn_started = False


@tool
async def ignores_cancel() -> str:
    """Swallows every cancellation and keeps running, as a badly written tool may."""
    global stubborn_started
    stubborn_started = True
    while not let_go:
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            continue
    return "let go"
