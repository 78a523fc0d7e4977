"""The sliding window behind RATE_LIMIT_USER_PER_MINUTE and RATE_LIMIT_CHAT_PER_MINUTE:
at most `limit` hits in any 60 seconds per key, and how long until the next one fits."""

from __future__ import annotations

import pytest

from bot.guards.rates import WINDOW_SECONDS, SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_limit_fits_in_a_window_and_the_next_hit_waits_for_the_oldest(clock: Clock) -> None:
    window = SlidingWindow(3, clock)
    for step in range(3):
        clock.now = 1000.0 + 10 * step
        assert window.wait_seconds("ana") == 0.0
    clock.now = 1025.0
    assert window.wait_seconds("ana") == pytest.approx(35.0)  # the hit at 1000 leaves at 1060
    assert window.wait_seconds("ana") == pytest.approx(35.0)  # a refused hit is not counted
    clock.now = 1000.0 + WINDOW_SECONDS
    assert window.wait_seconds("ana") == 0.0  # the oldest has left the window
    assert window.wait_seconds("ana") == pytest.approx(10.0)  # 1010 leaves at 1070


def test_hits_leave_the_window_together(clock: Clock) -> None:
    window = SlidingWindow(2, clock)
    assert window.wait_seconds("ana") == window.wait_seconds("ana") == 0.0
    assert window.wait_seconds("ana") > 0
    clock.now += 2 * WINDOW_SECONDS
    assert window.wait_seconds("ana") == window.wait_seconds("ana") == 0.0
    assert window.wait_seconds("ana") == pytest.approx(WINDOW_SECONDS)


def test_keys_are_counted_apart(clock: Clock) -> None:
    window = SlidingWindow(1, clock)
    assert window.wait_seconds("ana") == 0.0
    assert window.wait_seconds("ben") == 0.0
    assert window.wait_seconds("ana") > 0


def test_no_limit_counts_nothing(clock: Clock) -> None:
    window = SlidingWindow(0, clock)
    assert all(window.wait_seconds("ana") == 0.0 for _ in range(100))


def test_idle_keys_are_forgotten_and_start_afresh(clock: Clock) -> None:
    window = SlidingWindow(1, clock)
    window.wait_seconds("ana")
    clock.now += 30
    window.wait_seconds("ben")
    clock.now += 31  # ana idle for 61 s, ben for 31
    window.forget_idle()
    assert list(window._hits) == ["ben"]  # what a minute of quiet frees
    assert window.wait_seconds("ben") > 0  # ben's hit is still in the window
    assert window.wait_seconds("ana") == 0.0
