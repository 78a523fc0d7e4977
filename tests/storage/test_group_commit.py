"""Group commit: units queued while a transaction runs commit together in the next one,
each caller resumes once its own unit is committed, and a failure reaches only its own
caller; a batch once begun runs to its end. Runs on SQLite and on PostgreSQL (see
conftest)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util.concurrency import await_

from storage.group_commit import GroupCommit
from storage.transaction import run_transaction
from tests.support.held import Hold
from tests.support.tables import engine_with

ITEMS = Table(
    "group_commit_items",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String(50), unique=True, nullable=False),
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    async with engine_with(database_url, ITEMS.metadata) as engine:
        yield engine


def add(name: str) -> Callable[[Connection], str]:
    def work(conn: Connection) -> str:
        conn.execute(insert(ITEMS).values(name=name))
        return name

    return work


async def stored(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(await conn.scalars(select(ITEMS.c.name).order_by(ITEMS.c.id)))


class HeldOpen:
    """A unit that holds its transaction open until released, so others queue behind it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = Hold()

    async def inside(self) -> None:
        await self.held.inside.wait()

    def release(self) -> None:
        self.held.release()

    def __call__(self, conn: Connection) -> str:
        conn.execute(insert(ITEMS).values(name=self.name))
        self.held.hold()
        return self.name


async def queue_behind(
    group: GroupCommit, held: HeldOpen, units: list[Callable[[Connection], str]]
) -> tuple[asyncio.Task[str], list[asyncio.Task[str]]]:
    leader = asyncio.create_task(group.run(held))
    await held.inside()
    waiting = [asyncio.create_task(group.run(unit)) for unit in units]
    await asyncio.sleep(0.01)  # every one of them queued
    return leader, waiting


async def second_batch_open(
    group: GroupCommit, leading: HeldOpen, rider: Callable[[Connection], str]
) -> tuple[asyncio.Task[str], asyncio.Task[str]]:
    """A second batch, after "first", whose first unit (`leading`, its caller the batch's
    leader) holds the transaction open with `rider` in it."""
    held = HeldOpen("first")
    first, (leader, riding) = await queue_behind(group, held, [leading, rider])
    held.release()
    await first
    await leading.inside()
    return leader, riding


async def test_a_unit_alone_commits_at_once_in_its_own_transaction(engine: AsyncEngine) -> None:
    group = GroupCommit(engine)
    assert await group.run(add("a")) == "a"
    assert await group.run(add("b")) == "b"
    assert (group.transactions, group.units) == (2, 2)
    assert await stored(engine) == ["a", "b"]


async def test_units_queued_during_a_transaction_share_the_next_one(
    engine: AsyncEngine,
) -> None:
    group = GroupCommit(engine)
    held = HeldOpen("first")
    leader, waiting = await queue_behind(group, held, [add(f"n{i}") for i in range(5)])
    assert not any(task.done() for task in waiting)  # nobody resumes before a commit
    held.release()
    assert await leader == "first"
    assert await asyncio.gather(*waiting) == [f"n{i}" for i in range(5)]
    assert (group.transactions, group.units) == (2, 6)
    assert await stored(engine) == ["first", "n0", "n1", "n2", "n3", "n4"]


async def test_a_batch_is_bounded(engine: AsyncEngine) -> None:
    group = GroupCommit(engine, max_batch=2)
    held = HeldOpen("first")
    leader, waiting = await queue_behind(group, held, [add(f"n{i}") for i in range(5)])
    held.release()
    await asyncio.gather(leader, *waiting)
    assert (group.transactions, group.units) == (4, 6)  # 1, then 2 + 2 + 1
    assert len(await stored(engine)) == 6


async def test_a_unit_shares_its_transaction_with_no_more_units_than_it_allows(
    engine: AsyncEngine,
) -> None:
    group = GroupCommit(engine)
    held = HeldOpen("first")
    leader = asyncio.create_task(group.run(held))
    await held.inside()
    bounds = {"a": None, "b": 2, "c": None, "d": None, "e": 1, "f": None}
    waiting = [asyncio.create_task(group.run(add(n), max_batch=b)) for n, b in bounds.items()]
    await asyncio.sleep(0.01)
    held.release()
    assert await asyncio.gather(leader, *waiting) == ["first", *bounds]
    # "first"; a + b (b allows two); c + d; e alone; f: in the order they queued.
    assert (group.transactions, group.units) == (5, 7)
    assert await stored(engine) == ["first", *bounds]


async def test_a_failing_unit_fails_alone_and_the_rest_of_its_batch_commits(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage.group_commit")
    group = GroupCommit(engine)

    def broken(conn: Connection) -> str:
        conn.execute(insert(ITEMS).values(name="from the broken unit"))
        raise ValueError("a bug in one unit")

    held = HeldOpen("first")
    leader, waiting = await queue_behind(group, held, [add("before"), broken, add("after")])
    held.release()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert await leader == "first"
    assert outcomes[0] == "before" and outcomes[2] == "after"
    assert isinstance(outcomes[1], ValueError)
    # The batch rolled back, then each unit ran alone: the broken one's insert is gone.
    assert await stored(engine) == ["first", "before", "after"]
    assert group.transactions == 1 + 1 + 3
    assert "a group of 3 writes rolled back (ValueError); each runs again alone" in caplog.text


async def test_a_unique_conflict_alone_is_retried_once(engine: AsyncEngine) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("one SQLite connection: another writer cannot commit mid-transaction")
    group = GroupCommit(engine)
    attempts = 0

    other_worker = asyncio.create_task(run_transaction(engine, add("shared")))

    def insert_or_find(conn: Connection) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            # Another worker's row, committed while this transaction ran (PostgreSQL:
            # this runs in a greenlet on the loop, and waits for that task here).
            await_(other_worker)
            conn.execute(insert(ITEMS).values(name="shared"))
        found = conn.scalar(select(ITEMS.c.name).where(ITEMS.c.name == "shared"))
        return str(found)

    assert await group.run(insert_or_find) == "shared"
    assert attempts == 2
    with pytest.raises(IntegrityError):
        await group.run(add("shared"))  # a second conflict is the caller's


async def test_a_caller_cancelled_while_waiting_drops_only_its_unit(
    engine: AsyncEngine,
) -> None:
    group = GroupCommit(engine)
    held = HeldOpen("first")
    leader, waiting = await queue_behind(group, held, [add("kept"), add("dropped"), add("too")])
    waiting[1].cancel()
    held.release()
    await leader
    kept, too = await asyncio.wait_for(asyncio.gather(waiting[0], waiting[2]), 5)
    assert (kept, too) == ("kept", "too")
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    assert await stored(engine) == ["first", "kept", "too"]


async def test_a_leader_cancelled_mid_batch_hears_it_once_the_batch_is_committed(
    engine: AsyncEngine,
) -> None:
    """A batch cannot be stopped halfway (on SQLite the driver's thread finishes it
    anyway): its leader's caller stays until it is over, then gets its cancellation;
    every unit in it, the leader's too, is committed."""
    group = GroupCommit(engine)
    leading = HeldOpen("from a leader that goes away")
    going, after = await second_batch_open(group, leading, add("last"))
    going.cancel()
    await asyncio.sleep(0.05)
    assert not going.done()  # waits for its batch
    leading.release()
    with pytest.raises(asyncio.CancelledError):
        await going
    # A unit left behind would wait forever: a bound makes that a failure.
    assert await asyncio.wait_for(after, 5) == "last"
    assert await stored(engine) == ["first", "from a leader that goes away", "last"]
    # Idle again: the next unit leads at once.
    assert await group.run(add("later")) == "later"


async def test_a_caller_cancelled_while_its_unit_runs_in_a_batch_led_by_another(
    engine: AsyncEngine,
) -> None:
    group = GroupCommit(engine)
    leads = HeldOpen("leads the second batch")
    second_leader, riding = await second_batch_open(group, leads, add("riding"))
    riding.cancel()  # its unit is in the batch "leads" runs, the transaction open
    await asyncio.sleep(0.01)
    leads.release()
    assert await asyncio.wait_for(second_leader, 5) == "leads the second batch"
    with pytest.raises(asyncio.CancelledError):
        await riding
    # Its unit was already in the transaction: it committed, its caller just never heard.
    assert await stored(engine) == ["first", "leads the second batch", "riding"]
    assert await group.run(add("later")) == "later"
