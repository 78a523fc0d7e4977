"""When Telegram may forget an update: once the core has taken it in.

A getUpdates call confirms every update below its `offset`, and Telegram then deletes
them. python-telegram-bot asks for the next batch as soon as it has queued the last one,
so a process killed while those messages were being stored lost them: Telegram had been
told they were read. Here the call that would confirm them waits until each has been
taken in (stored, or found to need no storing); killed before that, the bot gets them
again on its next start, and storing them is deduplicated. In webhook mode the answer to
Telegram's call confirms the update it brought, and waits the same way
(adapters.telegram.webhook).

The wait has a limit: a storing that takes longer than that (a database that is down)
must not leave every other chat unheard. Past it, polling goes on and says which updates
it confirms unstored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

CONFIRM_WAIT_SECONDS = 5.0


class UnconfirmedUpdates:
    """The ids of the updates fetched and not yet taken in."""

    def __init__(self, wait_limit: float = CONFIRM_WAIT_SECONDS) -> None:
        self.wait_limit = wait_limit
        self._waiting: set[int] = set()
        self._progress = asyncio.Event()

    def fetched(self, update_ids: Iterable[int]) -> None:
        self._waiting.update(update_ids)

    def taken_in(self, update_id: int) -> None:
        self._waiting.discard(update_id)
        self._progress.set()

    def _below(self, offset: int) -> list[int]:
        return sorted(i for i in self._waiting if i < offset)

    async def before_confirming(self, offset: int) -> None:
        """Returns once every update below `offset` is taken in, or after `wait_limit`
        (logged). Those at or above it are not waited for: this call does not confirm
        them (python-telegram-bot leaves out of its offset the ones it fetched while
        stopping and never handed on)."""
        await self._until_taken_in(lambda: self._below(offset))

    async def before_answering(self, update_id: int) -> None:
        """Returns once the update a webhook call brought is taken in, or after
        `wait_limit` (logged): answering the call confirms it."""
        await self._until_taken_in(lambda: [update_id] if update_id in self._waiting else [])

    async def _until_taken_in(self, pending: Callable[[], list[int]]) -> None:
        try:
            async with asyncio.timeout(self.wait_limit):
                while pending():
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            late = pending()
            log.warning(
                "confirming %d update%s to Telegram not yet stored after %.0f s (ids %s): "
                "if the bot dies before storing them, they are lost",
                len(late),
                "" if len(late) == 1 else "s",
                self.wait_limit,
                ", ".join(map(str, late[:10])) + (", ..." if len(late) > 10 else ""),
            )
            # Waited for once: the next poll does not wait for them again.
            self._waiting.difference_update(late)
