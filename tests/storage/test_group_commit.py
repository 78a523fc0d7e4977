"""Group commit: units queued while a transaction runs commit together in the next one,
each caller resumes once its own unit is committed, and a failure reaches only its own
caller; a batch once begun runs to its end. Runs on SQLite and on PostgreSQL (see
conftest)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
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


async def test_a_rider_waits_for_the_next_batch_another_unit_begins(
    engine: AsyncEngine,
) -> None:
    group = GroupCommit(engine)
    rider = asyncio.create_task(group.run(add("rider"), join_within=10.0))
    await asyncio.sleep(0.05)
    assert not rider.done()
    assert group.transactions == 0  # it began none of its own
    assert await group.run(add("next")) == "next"
    assert await asyncio.wait_for(rider, 5) == "rider"
    assert (group.transactions, group.units) == (1, 2)
    assert await stored(engine) == ["rider", "next"]  # it came first, it goes first


async def test_a_rider_alone_commits_by_itself_once_its_wait_ends(engine: AsyncEngine) -> None:
    group = GroupCommit(engine)
    assert await asyncio.wait_for(group.run(add("alone"), join_within=0.05), 5) == "alone"
    assert (group.transactions, group.units) == (1, 1)
    assert await stored(engine) == ["alone"]


async def test_riders_join_a_batch_outside_its_bound(engine: AsyncEngine) -> None:
    group = GroupCommit(engine)
    riders = [asyncio.create_task(group.run(add(name), join_within=10.0)) for name in ("r1", "r2")]
    await asyncio.sleep(0.01)
    assert await group.run(add("bounded"), max_batch=1) == "bounded"
    assert await asyncio.wait_for(asyncio.gather(*riders), 5) == ["r1", "r2"]
    assert (group.transactions, group.units) == (1, 3)
    assert await stored(engine) == ["r1", "r2", "bounded"]


async def test_a_rider_cancelled_before_any_batch_is_dropped(engine: AsyncEngine) -> None:
    group = GroupCommit(engine)
    rider = asyncio.create_task(group.run(add("dropped"), join_within=10.0))
    await asyncio.sleep(0.01)
    rider.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rider
    assert await group.run(add("later")) == "later"
    assert (group.transactions, group.units) == (1, 1)
    assert await stored(engine) == ["later"]


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


def two_connections(engine: AsyncEngine) -> None:
    if engine.dialect.name == "sqlite":
        pytest.skip("one SQLite connection: a second batch would wait for it")


async def test_with_two_in_flight_a_batch_commits_while_another_is_open(
    engine: AsyncEngine,
) -> None:
    """The next units do not wait for a batch held open: they lead one of their own, on
    another connection, and a unit that came meanwhile joins whichever batch is next."""
    two_connections(engine)
    group = GroupCommit(engine, in_flight=2)
    held = HeldOpen("held")
    first = asyncio.create_task(group.run(held))
    await held.inside()
    assert await asyncio.wait_for(group.run(add("meanwhile")), 5) == "meanwhile"
    assert await stored(engine) == ["meanwhile"]  # "held" is not committed yet
    held.release()
    assert await first == "held"
    assert (group.transactions, group.units) == (2, 2)
    assert sorted(await stored(engine)) == ["held", "meanwhile"]


async def two_batches_held(
    engine: AsyncEngine,
) -> tuple[GroupCommit, list[HeldOpen], list[asyncio.Task[str]]]:
    """A group with two in flight, both taken by batches held open ("one", "two")."""
    two_connections(engine)
    group = GroupCommit(engine, in_flight=2)
    held = [HeldOpen("one"), HeldOpen("two")]
    leaders = [asyncio.create_task(group.run(h)) for h in held]
    for h in held:
        await h.inside()
    return group, held, leaders


async def test_no_more_batches_than_in_flight_run_at_once(engine: AsyncEngine) -> None:
    group, held, leaders = await two_batches_held(engine)
    waiting = [asyncio.create_task(group.run(add(name))) for name in ("a", "b", "c")]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)  # both connections are taken
    held[1].release()
    # The next batch takes every unit that waited, in the order they came.
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == ["a", "b", "c"]
    assert not leaders[0].done()
    held[0].release()
    assert await asyncio.gather(*leaders) == ["one", "two"]
    assert (group.transactions, group.units) == (3, 5)
    # Idle again: the next unit leads at once.
    assert await group.run(add("later")) == "later"
    assert sorted(await stored(engine)) == ["a", "b", "c", "later", "one", "two"]


async def test_a_unit_woken_to_lead_and_cancelled_passes_the_lead_on(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two in flight, the lead passes to a waiting unit while another batch is still
    open; if that unit's caller is gone before it leads, the next unit leads instead."""
    group, held, leaders = await two_batches_held(engine)
    gone = asyncio.create_task(group.run(add("gone")))
    kept = asyncio.create_task(group.run(add("kept"), max_batch=1))  # not in gone's batch
    await asyncio.sleep(0.01)
    pass_lead = group._pass_lead

    def and_cancel_the_new_leader() -> None:
        pass_lead()  # to "gone": it leads when its caller runs next
        monkeypatch.setattr(group, "_pass_lead", pass_lead)
        gone.cancel()  # before that

    monkeypatch.setattr(group, "_pass_lead", and_cancel_the_new_leader)
    held[1].release()
    assert await asyncio.wait_for(kept, 5) == "kept"
    with pytest.raises(asyncio.CancelledError):
        await gone
    held[0].release()
    assert await asyncio.gather(*leaders) == ["one", "two"]
    assert sorted(await stored(engine)) == ["kept", "one", "two"]
    assert await group.run(add("later")) == "later"


async def test_two_batches_that_deadlock_both_commit(engine: AsyncEngine) -> None:
    """Batches in flight at once may lock the same rows in opposite orders. PostgreSQL
    fails one of them (after its deadlock_timeout, a second by default); its units run
    again, and every caller gets its result, not the deadlock."""
    two_connections(engine)
    await run_transaction(
        engine, lambda conn: conn.execute(insert(ITEMS), [{"name": "x"}, {"name": "y"}])
    )
    group = GroupCommit(engine, in_flight=2)

    def locking(first: str, then: str, hold: Hold) -> Callable[[Connection], str]:
        def work(conn: Connection) -> str:
            for name in (first, then):
                conn.execute(update(ITEMS).where(ITEMS.c.name == name).values(name=name))
                if name == first:
                    hold.hold()  # until the other batch holds its first row too
            return f"{first} then {then}"

        return work

    holds = [Hold(), Hold()]
    x_first = asyncio.create_task(group.run(locking("x", "y", holds[0])))
    await holds[0].inside.wait()
    y_first = asyncio.create_task(group.run(locking("y", "x", holds[1])))
    await holds[1].inside.wait()
    for hold in holds:
        hold.release()
    done = await asyncio.wait_for(asyncio.gather(x_first, y_first), 10)
    assert done == ["x then y", "y then x"]
