"""How an adapter tells `stillhere run` that its platform stopped sending it messages for
good while the bot ran (a token revoked meanwhile): the bot then stops and says why, as it
would have at start-up, rather than stay up and look alive while it hears nothing."""

from __future__ import annotations

import asyncio


class LostIntake:
    def __init__(self) -> None:
        self._lost = asyncio.Event()
        self.reason = ""

    def declare(self, reason: str) -> None:
        """`reason`: one line an operator can act on, without secrets; the first one holds."""
        if not self._lost.is_set():
            self.reason = reason
            self._lost.set()

    def is_set(self) -> bool:
        return self._lost.is_set()

    async def wait(self) -> str:
        await self._lost.wait()
        return self.reason
