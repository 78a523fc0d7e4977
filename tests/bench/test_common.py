"""The benchmarks' shared helpers: figures, waits, guards on what they may touch."""

from __future__ import annotations

import asyncio
import math

import pytest

from bench import experiments
from bench.common import (
    fresh_postgres_database,
    latency_summary,
    percentile,
    ratio,
    table,
    wait_progress,
)
from bench.telegram_bots import parse_variant


async def test_a_database_not_named_bench_is_never_dropped() -> None:
    with pytest.raises(ValueError, match="bench_"):
        await fresh_postgres_database("postgresql+asyncpg://nobody@127.0.0.1:1/x", "postgres")


def test_unknown_experiments_and_bots_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.check(["turbo"])
    with pytest.raises(ValueError, match="unknown bot"):
        parse_variant("echo+notyping")
    with pytest.raises(ValueError, match="unknown experiment"):
        parse_variant("stillhere+turbo")
    assert parse_variant("stillhere-nolimit+notyping") == (
        "stillhere-nolimit",
        frozenset({"nolimit", "notyping"}),
    )


def test_experiments_are_undone_on_exit() -> None:
    from bot.presence import TypingKeeper

    original = TypingKeeper.start
    with experiments.applied(["notyping"]):
        assert TypingKeeper.start is not original
    assert TypingKeeper.start is original


def test_percentiles_interpolate_between_ranks() -> None:
    values = [0.004, 0.001, 0.003, 0.002, 0.005]
    assert percentile(values, 0.5) == pytest.approx(0.003)
    assert percentile(values, 0.99) == pytest.approx(0.00496)
    assert math.isnan(percentile([], 0.5))
    summary = latency_summary(values)
    assert (summary["count"], summary["p50_ms"], summary["max_ms"]) == (5, 3.0, 5.0)


def test_ratio_of_a_missing_baseline_is_nan_not_a_crash() -> None:
    assert ratio(2.0, 4.0) == 0.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_table_aligns_columns() -> None:
    text = table("T", ("name", "value"), [("a", 1234), ("long name", 0.5)])
    lines = text.splitlines()
    assert lines[0] == "T"
    assert len({len(line) for line in lines[1:]}) == 1
    assert "1,234" in text and "0.500" in text


async def test_wait_progress_gives_up_when_nothing_moves() -> None:
    counter = [0]

    async def bump() -> None:
        for _ in range(3):
            await asyncio.sleep(0.01)
            counter[0] += 1

    task = asyncio.create_task(bump())
    reached, _ = await wait_progress(lambda: counter[0], 10, stall=0.1, budget=5.0)
    await task
    assert reached == 3


async def test_wait_progress_waits_out_a_slow_start_within_the_budget() -> None:
    counter = [0]

    async def late() -> None:
        await asyncio.sleep(0.2)
        counter[0] = 2

    task = asyncio.create_task(late())
    reached, _ = await wait_progress(lambda: counter[0], 2, stall=0.05, budget=5.0)
    await task
    assert reached == 2
