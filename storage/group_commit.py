"""Group commit: units of work that arrive together share one transaction.

Every message is stored before it is answered, so under a burst the bot would pay one
BEGIN/COMMIT, one pool checkout and one wait for the connection per message; on SQLite,
which has one writer, the transactions queue anyway. Here the units that queued while a
transaction ran are committed together in the next one, and each caller resumes only once
its unit is committed: durability per message is unchanged, and an idle bot pays nothing
(a unit alone runs at once, in a transaction of its own).

No task of its own: the caller whose unit opens an empty queue leads, commits one batch,
and hands the lead to the first unit still waiting, whose caller then commits the next.
So nothing is left running on shutdown. Up to `in_flight` batches commit at once, each
on a connection of its own: one on SQLite, which has one writer; on PostgreSQL more, so
that the server runs one batch's statements while the bot works on another's (every
statement is a round trip there). Two batches that lock the same rows in opposite orders
deadlock; PostgreSQL fails one, whose units then run again alone (below).

A caller cancelled while its unit waits drops it; once its batch has begun, the batch
runs to its end (on SQLite the driver's thread finishes it anyway: storage.transaction)
and the caller hears of the cancellation then, its unit committed or not, like any
storage call cancelled mid-way.

A batch is bounded twice: by `MAX_BATCH`, and by each unit's own bound, for a unit whose
caller is waiting to answer someone. Every unit of a batch waits for the whole batch, so a
burst's first messages, taken in 64 at a time, would wait for 63 others before their
instant replies could go out, while the event loop that sends them sat idle; in batches
of a few, the loop sends one batch's replies while the next commits. Each unit costs
several times what its share of a commit saves, so a small batch gives up little.

A unit whose caller is in no hurry (recording that a reply was delivered: nobody waits on
it but the next reply of the same chat) may wait a moment to join a batch another unit
begins (`join_within`) rather than begin a transaction of its own: such units ride along
with the next batch, outside its bound, and only one whose wait ends alone commits by
itself. A busy bot then pays no transaction for them at all.

Units are `storage.transaction` work: sync functions of a connection, the whole batch
run in one trip to SQLite's thread. A unit that raises rolls its batch back; the batch's
units are then run once more, each in a transaction of its own, so a failure (a bug, a
constraint, a deadlock on PostgreSQL) reaches only its own caller. Units therefore do
nothing but database work: they may run twice, and only the committed run counts.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.transaction import Cancellations, Work, transaction

log = logging.getLogger(__name__)
T = TypeVar("T")

# A bound on one transaction: long enough to amortize a burst, short enough that the admin
# CLI (another writer on SQLite) and the first caller's latency stay small.
MAX_BATCH = 64


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class _Unit(Generic[T]):
    work: Work[T]
    # The most units, this one included, its transaction may hold.
    max_batch: int
    # Resolved when the unit's transaction committed (or it failed alone), or when the
    # lead passes to its caller: `result` is set in the first case only.
    wake: asyncio.Future[None] = field(default_factory=_future)
    # A unit waiting to join another's batch (`join_within`): when it stops waiting.
    alone_at: asyncio.TimerHandle | None = None
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self, engine: AsyncEngine, max_batch: int = MAX_BATCH, in_flight: int = 1) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._in_flight = max(1, in_flight)
        # Units in order of arrival; those woken to lead a batch stay here until they do.
        self._waiting: deque[_Unit[Any]] = deque()
        # Units waiting to join the next batch (`join_within`), in order of arrival.
        self._riders: deque[_Unit[Any]] = deque()
        # Callers leading a batch, or woken to lead one: never more than `in_flight`.
        self._leaders = 0
        # Figures for tests and benchmarks: transactions begun, units committed.
        self.transactions = 0
        self.units = 0

    async def run(self, work: Work[T], max_batch: int | None = None, join_within: float = 0.0) -> T:
        """`work` done and committed, in a transaction it may share with other callers'
        (in the caller's context, whoever leads the transaction); with at most
        `max_batch` units in all, when given and below the group's own bound. With
        `join_within` (seconds), the unit joins the next batch another unit begins
        within that time, and only then begins one of its own."""
        context = contextvars.copy_context()

        def in_context(connection: Connection) -> T:
            return context.run(work, connection)

        bound = self._max_batch if max_batch is None else max(1, min(max_batch, self._max_batch))
        unit: _Unit[T] = _Unit(in_context, bound)
        if join_within > 0:
            self._riders.append(unit)
            unit.alone_at = asyncio.get_running_loop().call_later(
                join_within, self._stop_riding, unit
            )
        else:
            self._enqueue(unit)
        try:
            await unit.wake
        except asyncio.CancelledError:
            self._forget(unit)
            raise
        if not unit.done:
            try:
                await self._lead(unit)
            except asyncio.CancelledError:
                if unit.error is not None:
                    log.warning(
                        "a write failed after its caller was cancelled", exc_info=unit.error
                    )
                raise
        if unit.error is not None:
            raise unit.error
        result: T = unit.result
        return result

    def _enqueue(self, unit: _Unit[Any]) -> None:
        self._waiting.append(unit)
        if self._leaders < self._in_flight:
            self._leaders += 1
            unit.wake.set_result(None)

    def _stop_riding(self, unit: _Unit[Any]) -> None:
        """A rider's wait ended with no batch begun: it queues as any unit does."""
        unit.alone_at = None
        self._riders.remove(unit)
        self._enqueue(unit)

    def _with_riders(self, batch: list[_Unit[Any]]) -> list[_Unit[Any]]:
        """The riders first: they came before, and a later unit may read what they
        write (a reply recorded delivered lets the next one be claimed at once)."""
        riders: list[_Unit[Any]] = []
        while self._riders and len(riders) + len(batch) < self._max_batch:
            riders.append(self._dismount(self._riders.popleft()))
        return riders + batch

    @staticmethod
    def _dismount(rider: _Unit[Any]) -> _Unit[Any]:
        """A rider taken off the riders: its wait to commit alone is called off."""
        if rider.alone_at is not None:
            rider.alone_at.cancel()
            rider.alone_at = None
        return rider

    def _forget(self, unit: _Unit[Any]) -> None:
        """A caller cancelled: a unit still waiting is dropped, and if the lead had just
        passed to it, it passes on. A unit already in another caller's transaction is
        left to it (it commits or rolls back with its batch; nobody hears the result)."""
        if unit.alone_at is not None:  # still riding
            self._riders.remove(self._dismount(unit))
            return
        if unit not in self._waiting:
            return
        self._waiting.remove(unit)
        if unit.wake.done() and not unit.wake.cancelled():
            self._pass_lead()

    def _pass_lead(self) -> None:
        for unit in self._waiting:
            if not unit.wake.done():
                unit.wake.set_result(None)
                return
        self._leaders -= 1

    async def _lead(self, leader: _Unit[Any]) -> None:
        """Commits the leader's unit and the first units waiting after it, and settles
        each (a leader cancelled meanwhile is told once they are settled)."""
        self._waiting.remove(leader)
        batch = [leader]
        bound = leader.max_batch
        # In order, as they queued, but not those woken to lead batches of their own (at
        # most `in_flight - 1`, set aside and put back): a unit that allows fewer units
        # than the batch would then hold waits for the next. Taken from the front, so a
        # burst of thousands queued costs each batch only its own units.
        leading_elsewhere = []
        while self._waiting:
            unit = self._waiting[0]
            if unit.wake.done():
                leading_elsewhere.append(self._waiting.popleft())
                continue
            if len(batch) >= min(bound, unit.max_batch):
                break
            batch.append(self._waiting.popleft())
            bound = min(bound, unit.max_batch)
        self._waiting.extendleft(reversed(leading_elsewhere))
        batch = self._with_riders(batch)
        cancellations = Cancellations()
        try:
            await self._commit(batch, cancellations)
        finally:
            for unit in batch:
                if not unit.done:  # the commit itself was cancelled: the loop is closing
                    unit.error, unit.done = asyncio.CancelledError(), True
                if not unit.wake.done():
                    unit.wake.set_result(None)
            self._pass_lead()
        if cancellations.noted:
            raise asyncio.CancelledError()

    async def _commit(self, batch: list[_Unit[Any]], cancellations: Cancellations) -> None:
        if len(batch) > 1:
            try:
                results = await self._transaction(batch, cancellations)
            except Exception as exc:
                # The failing unit's own caller hears of it below; this says why its
                # neighbours paid a second transaction (a deadlock that resolves alone on
                # PostgreSQL, say, would otherwise show nowhere).
                log.info(
                    "a group of %d writes rolled back (%s); each runs again alone",
                    len(batch),
                    type(exc).__name__,
                )
            else:
                for unit, result in zip(batch, results, strict=True):
                    unit.result, unit.done = result, True
                return
        for unit in batch:
            await self._alone(unit, cancellations)

    async def _transaction(
        self, batch: list[_Unit[Any]], cancellations: Cancellations
    ) -> list[Any]:
        self.transactions += 1

        def units(connection: Connection) -> list[Any]:
            return [unit.work(connection) for unit in batch]

        results = await transaction(self._engine, units, cancellations)
        self.units += len(batch)
        return results

    async def _alone(self, unit: _Unit[Any], cancellations: Cancellations) -> None:
        """One unit in its own transaction. Retried once: a unique-key conflict (another
        worker created the same row first, such as two workers creating one
        conversation's session: the retry finds it), and a transaction the server rolled
        back (a deadlock with another batch or writer, a serialization failure: the retry
        runs once the other has committed)."""
        for _attempt in range(2):
            try:
                (unit.result,) = await self._transaction([unit], cancellations)
            except (IntegrityError, DBAPIError) as exc:
                unit.error = exc
                if isinstance(exc, IntegrityError) or _rolled_back_by_server(exc):
                    continue
            except Exception as exc:  # handed to the unit's caller
                unit.error = exc
            else:
                unit.error = None
            break
        unit.done = True


def _rolled_back_by_server(error: DBAPIError) -> bool:
    """PostgreSQL's class 40, transaction rollback: 40P01 a deadlock, 40001 a
    serialization failure. Nothing of the transaction was kept; running it again is safe."""
    return str(getattr(error.orig, "sqlstate", None) or "").startswith("40")
