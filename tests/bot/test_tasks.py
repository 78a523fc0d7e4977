"""TaskSet.finish: tasks get their grace to end on their own, then are cancelled."""

from __future__ import annotations

import asyncio

from bot.tasks import TaskSet


async def test_finish_lets_a_task_end_within_the_grace() -> None:
    tasks = TaskSet("test")
    quick = tasks.spawn(asyncio.sleep(0.01, result="done"), "quick")
    await tasks.finish(grace=1.0)
    assert quick.result() == "done"
    assert len(tasks) == 0


async def test_finish_cancels_what_outlasts_the_grace() -> None:
    tasks = TaskSet("test")
    slow = tasks.spawn(asyncio.sleep(60), "slow")
    await tasks.finish(grace=0.01)
    assert slow.cancelled()
    assert len(tasks) == 0
