"""The courier with two workers' claims on one session's replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from sqlalchemy import select

from adapters.memory import MemoryAdapter
from bot import courier as courier_module
from bot.core_api import ChatCore
from bot.courier import Courier
from bot.events import ConversationKey, DeliveryError, InboundMessage, ReplyKind
from bot.settings import Settings
from bot.store import OutboxItem, Store
from storage.admin import AdminStore, StuckRules
from storage.database import create_engine
from storage.migrate import upgrade
from storage.models import OutboxRow
from storage.repository import SqlStore


@asynccontextmanager
async def worker_one(database_url: str) -> AsyncIterator[tuple[SqlStore, Courier, MemoryAdapter]]:
    """A store, and worker "one"'s courier sending to an in-memory sink."""
    await upgrade(database_url)
    engine = create_engine(database_url)
    courier = Courier(SqlStore(engine), "one")
    sink = MemoryAdapter(cast(ChatCore, object()))  # it only sends here: no core needed
    courier.attach(sink)
    try:
        yield SqlStore(engine), courier, sink
    finally:
        await courier.stop()
        await engine.dispose()


class MarkFailsOnce(SqlStore):
    """A store whose first `mark_delivered` fails, like a database busy for a moment."""

    failed = False

    async def mark_delivered(
        self, outbox_id: int, platform_message_id: str | None, *, join_next_write: bool = False
    ) -> None:
        if not self.failed:
            self.failed = True
            raise OSError("database is locked")
        await super().mark_delivered(
            outbox_id, platform_message_id, join_next_write=join_next_write
        )


@asynccontextmanager
async def courier_failing_once_to_record(
    database_url: str,
) -> AsyncIterator[tuple[SqlStore, MarkFailsOnce, Courier, MemoryAdapter]]:
    """worker_one's store and sink, with a courier over a MarkFailsOnce view of the store."""
    async with worker_one(database_url) as (store, _, sink):
        flaky = MarkFailsOnce(store.engine)
        courier = Courier(flaky, "one")
        courier.attach(sink)
        try:
            yield store, flaky, courier, sink
        finally:
            await courier.stop()


async def send_the_reply(store: SqlStore, courier: Courier, sink: MemoryAdapter) -> int:
    """Records "the reply" for message 1 and kicks `courier` until it has sent it."""
    session_id = await store.record_notice(message(1), "the reply")
    assert session_id is not None
    courier.kick(session_id)
    await sink.wait_for(1)
    await drained(courier)
    return session_id


async def delivered(store: SqlStore) -> list[tuple[str, bool]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(OutboxRow.text, OutboxRow.delivered_at).order_by(OutboxRow.id)
        )
        return [(text, sent_at is not None) for text, sent_at in rows]


async def drained(courier: Courier) -> None:
    while courier.busy:
        await asyncio.sleep(0.01)


def message(number: int) -> InboundMessage:
    conversation = ConversationKey("memory", "chat-1", "")
    return InboundMessage(conversation, "u1", "Ana", "?", f"m{number}", True, True)


class RecordsHow(SqlStore):
    """A store noting, per delivery recorded, whether it was let join the next write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.joined: list[bool] = []

    async def mark_delivered(
        self, outbox_id: int, platform_message_id: str | None, *, join_next_write: bool = False
    ) -> None:
        self.joined.append(join_next_write)
        await super().mark_delivered(
            outbox_id, platform_message_id, join_next_write=join_next_write
        )


async def test_only_the_last_reply_of_a_drain_waits_to_join_the_next_write(
    database_url: str,
) -> None:
    """The record of a reply with another after it is committed before that one is sent;
    the last one's may ride on the next write, and is recorded all the same."""
    async with worker_one(database_url) as (store, _, sink):
        noting = RecordsHow(store.engine)
        courier = Courier(noting, "one")
        courier.attach(sink)
        try:
            for number in range(3):
                session_id = await store.record_notice(message(number), f"reply {number}")
            assert session_id is not None
            courier.kick(session_id)
            await sink.wait_for(3)
            await drained(courier)
        finally:
            await courier.stop()
        assert noting.joined == [False, False, True]
        assert await delivered(store) == [(f"reply {n}", True) for n in range(3)]


async def replies_one_held_by_two(store: SqlStore, count: int, held: int) -> tuple[int, int]:
    """`count` replies in one session ("reply 0", ...), the `held`-th claimed by worker
    two: the session's id and that reply's outbox id."""
    for number in range(count):
        session_id = await store.record_notice(message(number), f"reply {number}")
    assert session_id is not None
    async with store.engine.connect() as conn:
        ids = list(await conn.scalars(select(OutboxRow.id).order_by(OutboxRow.id)))
    assert await store.claim_delivery(ids[held], "two", lease_seconds=60)
    return session_id, ids[held]


async def test_rows_after_one_held_by_another_worker_go_out_once_it_is_sent(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(courier_module, "HELD_RETRY_SECONDS", 0.05)
    async with worker_one(database_url) as (store, courier, sink):
        # Worker two holds the second reply: the third must wait for it.
        session_id, second = await replies_one_held_by_two(store, 3, held=1)
        courier.kick(session_id)
        await sink.wait_for(1)
        await asyncio.sleep(0.2)
        assert [s.message.text for s in sink.sent] == ["reply 0"]
        await store.mark_delivered(second, "sent-by-two")
        # No kick and no sweep: the courier looks again by itself.
        await sink.wait_for(2, timeout=5)
        assert [s.message.text for s in sink.sent] == ["reply 0", "reply 2"]


async def test_the_courier_is_busy_while_a_held_session_waits_to_be_looked_at_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that waits for another worker's older one is still on its way: `busy`
    says so until it is sent (the engine's wait_idle relies on it)."""
    monkeypatch.setattr(courier_module, "HELD_RETRY_SECONDS", 0.3)
    async with worker_one(database_url) as (store, courier, sink):
        session_id, first = await replies_one_held_by_two(store, 2, held=0)
        courier.kick(session_id)
        await asyncio.sleep(0.1)
        assert sink.sent == [] and courier.busy
        await store.mark_delivered(first, "sent-by-two")
        await drained(courier)
        assert [s.message.text for s in sink.sent] == ["reply 1"]


async def test_a_reply_handed_over_after_a_drain_already_sent_it_goes_out_once(
    database_url: str,
) -> None:
    """A writer claims its reply for this worker and hands it to the courier; a drain of
    the same session that ran in between (a sweep, an older reply) may have sent it."""
    async with worker_one(database_url) as (store, courier, sink):
        session_id = await store.record_notice(message(1), "the reply")
        assert session_id is not None
        handed_over = await store.claim_undelivered(session_id, "one", lease_seconds=60)
        assert len(handed_over.items) == 1
        courier.kick(session_id)  # the drain that came first: it takes this worker's claim
        await sink.wait_for(1)
        while courier.busy:
            await asyncio.sleep(0.01)
        courier.kick(session_id, handed_over.items)
        await asyncio.sleep(0.2)
        assert [s.message.text for s in sink.sent] == ["the reply"]


async def test_a_reply_written_before_the_drain_of_a_hand_over_starts_goes_out(
    database_url: str,
) -> None:
    """A writer hands over its claimed reply; before the drain it started runs, another
    writer adds a reply and kicks: the drain must read the outbox after the hand-over."""
    async with worker_one(database_url) as (store, courier, sink):
        session_id = await store.record_notice(message(1), "handed over")
        assert session_id is not None
        handed_over = await store.claim_undelivered(session_id, "one", lease_seconds=60)
        await store.record_notice(message(2), "written meanwhile")
        courier.kick(session_id, handed_over.items)
        courier.kick(session_id)  # the drain has not run yet: this must not be lost
        await sink.wait_for(2, timeout=5)
        assert [s.message.text for s in sink.sent] == ["handed over", "written meanwhile"]


async def test_a_reply_whose_delivery_could_not_be_recorded_is_recorded_not_sent_again(
    database_url: str,
) -> None:
    async with courier_failing_once_to_record(database_url) as (store, flaky, courier, sink):
        session_id = await send_the_reply(store, courier, sink)
        assert flaky.failed
        assert await delivered(store) == [("the reply", False)]
        # The next sweep finds the row still undelivered and claimed by this worker.
        courier.kick(session_id)
        await drained(courier)
        assert await delivered(store) == [("the reply", True)]
        courier.kick(session_id)
        await drained(courier)
        assert [s.message.text for s in sink.sent] == ["the reply"]


async def test_a_reply_sent_but_not_recorded_is_recorded_when_the_courier_stops(
    database_url: str,
) -> None:
    """A restart would post it again: stopping is the last chance to record it."""
    async with courier_failing_once_to_record(database_url) as (store, _, courier, sink):
        await send_the_reply(store, courier, sink)
        await courier.stop()
        assert await delivered(store) == [("the reply", True)]


async def test_a_failed_reply_reset_by_repair_goes_out_after_a_later_one_was_sent(
    database_url: str,
) -> None:
    async with worker_one(database_url) as (store, courier, sink):
        sink.fail_next = [DeliveryError("chat not found", permanent=True)]
        session_id = await store.record_notice(message(1), "first")
        await store.record_notice(message(2), "second")
        assert session_id is not None
        courier.kick(session_id)
        await sink.wait_for(1)
        await drained(courier)
        assert [s.message.text for s in sink.sent] == ["second"]
        prompt = Settings(_env_file=None).system_prompt  # type: ignore[call-arg]
        done = await AdminStore(store.engine, prompt).repair(
            session_id, StuckRules(), dry_run=False
        )
        assert "reset_outbox" in [step.code for step in done.steps]
        courier.kick(session_id)  # what the bot does with the repair's "recover" control
        await sink.wait_for(2, timeout=5)
        await drained(courier)
        assert [s.message.text for s in sink.sent] == ["second", "first"]
        assert await delivered(store) == [("first", True), ("second", True)]


def test_the_courier_forgets_replies_it_sent_more_than_a_lease_ago(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(courier_module.time, "monotonic", lambda: clock[0])
    courier = Courier(cast(Store, object()), "one")
    key = ConversationKey("memory", "chat", "")

    def item(outbox_id: int, session_id: int) -> OutboxItem:
        return OutboxItem(outbox_id, session_id, key, None, None, ReplyKind.ANSWER, "hi", 0)

    courier._note_sent(item(2, session_id=1))
    assert courier._sent_before(item(2, session_id=1))
    # Kept by id: an older row of the session (one an operator reset) is not covered.
    assert not courier._sent_before(item(1, session_id=1))
    assert not courier._sent_before(item(3, session_id=1))
    clock[0] += courier_module.CLAIM_LEASE_SECONDS + 1
    courier._note_sent(item(5, session_id=2))
    # Reply 2's note is older than a lease: dropped, so the map holds only reply 5.
    assert list(courier._sent) == [5]
    assert not courier._sent_before(item(2, session_id=1))
