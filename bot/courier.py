"""Delivers the outbox: in order within a session, concurrently across sessions.

A row is marked delivered the moment the platform accepts it, before the next row is sent,
so a restart re-sends only what never got through (Discord also dedupes on the row id as
nonce); a delivery the database would not record is recorded at the next look at the
session, not sent again. The record of a drain's last row, which no reply waits on, may
wait a moment to share the next write's transaction (`Store.mark_delivered`): under load
that saves a transaction per reply, for a window of milliseconds in which a crash would
post that one reply again. Failures are retried with backoff; permanent ones (chat gone,
bot blocked) are recorded and left for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence

from bot.events import DeliveryError, OutgoingMessage, ReplySink
from bot.store import OutboxItem, Store
from bot.tasks import TaskSet

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
MAX_BACKOFF_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0
CLAIM_LEASE_SECONDS = 60.0
# How soon to look again at a session whose older reply another worker is sending.
HELD_RETRY_SECONDS = 2.0


class Courier:
    def __init__(self, store: Store, worker: str, base_backoff: float = 1.0) -> None:
        self.store = store
        self.base_backoff = base_backoff
        self.sinks: dict[str, ReplySink] = {}
        # Stable across restarts (WORKER_ID): a restarted bot takes over its own claims at
        # once, while a peer with another id waits for their lease to end.
        self.worker = worker
        self._tasks = TaskSet("courier")
        self._running: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        # Rows a writer claimed for this worker while the session's drain ran (`kick`):
        # sent next by that drain, with no transaction to read them.
        self._handed: dict[int, list[OutboxItem]] = {}
        self._looking_again: set[int] = set()
        # Replies this process sent (outbox id -> when), oldest first. A writer claims its
        # reply for this worker and then hands it over; a drain of the session that ran in
        # between takes this worker's claims too, and may have sent it already. Kept by id,
        # not as a session's highest id: an older row can still be due (an operator's
        # repair resets a reply that failed after a later one went out).
        self._sent: OrderedDict[int, float] = OrderedDict()
        # Sent, but the delivery could not be recorded (outbox id -> the platform's id):
        # the row stays undelivered and claimed by this worker, so every later look at the
        # session meets it and must record it, never send it again. Not aged out with
        # `_sent`: forgetting one means a duplicate post.
        self._unrecorded: dict[int, str | None] = {}
        self._closing = asyncio.Event()

    def attach(self, sink: ReplySink) -> None:
        self.sinks[sink.platform] = sink

    @property
    def busy(self) -> bool:
        """A session's replies being sent, or to be looked at again soon (another worker
        held an older one): either way a reply may still be on its way."""
        return bool(self._running or self._looking_again)

    def kick(self, session_id: int, ready: Sequence[OutboxItem] = ()) -> None:
        """Something was added to this session's outbox: deliver it soon. `ready` are rows
        the writer already claimed for this worker with nothing older waiting: they are
        sent without another transaction to claim them."""
        if session_id in self._running:
            if ready and session_id not in self._again:
                # Claimed with nothing older unsent: next after what the drain holds.
                self._handed.setdefault(session_id, []).extend(ready)
            else:
                # The running drain reads the outbox again when it is done, rows claimed
                # for this worker included.
                self._again.add(session_id)
            return
        task = self._tasks.spawn(self._drain(session_id, ready), f"session-{session_id}")
        self._running[session_id] = task

    async def _drain(self, session_id: int, ready: Sequence[OutboxItem]) -> None:
        try:
            while True:
                if ready:
                    # Read nothing: a kick that came before this drain ran stays noted,
                    # so the outbox is read after these are sent.
                    items, ready = ready, ()
                else:
                    self._again.discard(session_id)
                    self._handed.pop(session_id, None)  # the read finds them too
                    items = await self._claim(session_id)
                for index, item in enumerate(items):
                    if item.id in self._unrecorded:
                        if not await self._record(item, self._unrecorded[item.id]):
                            return
                        continue
                    if self._sent_before(item):
                        continue
                    last = index == len(items) - 1
                    if self._closing.is_set() or not await self._deliver(item, last):
                        return
                if session_id not in self._again:
                    ready = self._handed.pop(session_id, ())
                    if not ready:
                        return
        finally:
            self._running.pop(session_id, None)
            self._handed.pop(session_id, None)

    def _sent_before(self, item: OutboxItem) -> bool:
        return item.id in self._sent

    def _note_sent(self, item: OutboxItem) -> None:
        clock = time.monotonic()
        self._sent[item.id] = clock
        self._sent.move_to_end(item.id)
        # A hand-over comes milliseconds after its write; a claim older than its lease
        # is anyone's anyway. Older notes go, so this stays small.
        while self._sent:
            noted = next(iter(self._sent.values()))
            if noted >= clock - CLAIM_LEASE_SECONDS:
                break
            self._sent.popitem(last=False)

    async def _record(
        self, item: OutboxItem, platform_id: str | None, *, nothing_waits: bool = False
    ) -> bool:
        """Records a sent row's delivery; False (the session's later rows wait) when the
        database refuses, the row then being recorded at the next look at the session.
        `nothing_waits`: no later row of the session is known, so the record may join
        the next write's transaction."""
        try:
            await self.store.mark_delivered(
                item.id,
                platform_id,
                join_next_write=nothing_waits
                and item.session_id not in self._again
                and item.session_id not in self._handed,
            )
        except Exception as exc:
            self._unrecorded[item.id] = platform_id
            log.warning(
                "reply %d was sent but its delivery could not be recorded (%s: %s); "
                "recording it at the next look at the session",
                item.id,
                type(exc).__name__,
                exc,
                extra={"session": item.session_id},
            )
            return False
        self._unrecorded.pop(item.id, None)
        log.info(
            "reply delivered",
            extra={"session": item.session_id, "outbox": item.id, "kind": item.kind},
        )
        return True

    async def _claim(self, session_id: int) -> list[OutboxItem]:
        claim = await self.store.claim_undelivered(session_id, self.worker, CLAIM_LEASE_SECONDS)
        if claim.blocked and session_id not in self._looking_again:
            # The other worker sends its row, but it was not told about the rows after it:
            # look again soon rather than leave them to the sweep.
            self._looking_again.add(session_id)
            self._tasks.spawn(self._look_again(session_id), f"session-{session_id}-held")
        return claim.items

    async def _look_again(self, session_id: int) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), HELD_RETRY_SECONDS)
        finally:
            self._looking_again.discard(session_id)
        if not self._closing.is_set():
            self.kick(session_id)

    async def _deliver(self, item: OutboxItem, last: bool) -> bool:
        """Sends one row; False when the session's later rows must wait (order matters).
        `last`: the drain has no later row of the session in hand."""
        sink = self.sinks.get(item.key.platform)
        if sink is None:
            log.warning("no adapter for %s; reply %d waits", item.key.platform, item.id)
            return False
        message = OutgoingMessage(
            conversation=item.key,
            text=item.text,
            reply_to_id=item.reply_to_id,
            kind=item.kind,
            outbox_id=item.id,
            reply_to_user_id=item.reply_to_user_id,
        )
        attempts = item.attempts
        claimed = True  # every row gets here claimed; a retry claims it again
        while True:
            if not claimed and not await self.store.claim_delivery(
                item.id, self.worker, CLAIM_LEASE_SECONDS
            ):
                # Another worker is sending this session's replies; it sends the later
                # ones too (or, if it died, the sweep retries once its lease ends).
                return False
            try:
                platform_id = await sink.send(message)
            except DeliveryError as exc:
                error, permanent, retry_after = str(exc), exc.permanent, exc.retry_after
            except Exception as exc:
                log.exception("adapter %s failed to send reply %d", sink.platform, item.id)
                error, permanent, retry_after = f"{type(exc).__name__}: {exc}", False, None
            else:
                self._note_sent(item)
                return await self._record(item, platform_id, nothing_waits=last)
            attempts += 1
            claimed = False  # a failed send releases the claim
            give_up = permanent or attempts >= MAX_ATTEMPTS
            await self.store.mark_delivery_failed(item.id, error, permanent=permanent)
            log.warning(
                "reply %d not delivered (attempt %d%s): %s",
                item.id,
                attempts,
                ", giving up" if give_up else "",
                error,
                extra={"session": item.session_id},
            )
            if permanent:
                return True  # a chat that is gone: later rows will fail alike, but try them
            if give_up:
                return False
            delay = retry_after if retry_after is not None else self.base_backoff * 2**attempts
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), min(delay, MAX_BACKOFF_SECONDS))
            if self._closing.is_set():
                return False

    async def stop(self) -> None:
        """Lets a send in flight record its delivery (so a restart does not post it again),
        starts no new one, and cancels what is still running after a grace period."""
        self._closing.set()
        running = list(self._running.values())
        if running:
            await asyncio.wait(running, timeout=STOP_GRACE_SECONDS)
        await self._tasks.cancel_all()
        self._running.clear()
        await self._record_unrecorded()

    async def _record_unrecorded(self) -> None:
        # The last chance: after a restart the notes are gone and these would be posted
        # again. Nothing else runs now, so the items need only their ids.
        for outbox_id, platform_id in list(self._unrecorded.items()):
            try:
                await self.store.mark_delivered(outbox_id, platform_id)
            except Exception as exc:
                log.warning(
                    "reply %d: delivery still not recorded at shutdown (%s: %s); "
                    "the next start posts it again",
                    outbox_id,
                    type(exc).__name__,
                    exc,
                )
            else:
                del self._unrecorded[outbox_id]
