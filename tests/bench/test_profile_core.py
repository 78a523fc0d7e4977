"""bench.profile_core at a tiny size: each path runs, and the profile of aiosqlite's
thread, where storage transactions run, names the storage work of that path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import profile_core


# Sampled every 0.5 ms: a path's frame shows only if the run spends long enough in it
# (the report leaves out frames under bench.profiling.STORAGE_THRESHOLD of the thread's
# time, waits included), so each expected frame is one its intake spends most of its
# storage time in. An instant reply's transaction is short (100 of them gave `_defer`
# about six samples, and one CI run, with pyinstrument's own 1% threshold, showed none):
# it gets more messages.
@pytest.mark.parametrize(
    ("path", "expected", "messages"),
    [("instant", "SqlStore._defer", 400), ("answer", "SqlStore._begin_turn", 100)],
)
def test_a_tiny_profile_of_each_path(
    tmp_path: Path, path: str, expected: str, messages: int
) -> None:
    out = tmp_path / "profile.txt"
    assert profile_core.main([path, "--messages", str(messages), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    first_line = text.splitlines()[0]
    expected_first = (
        f"{messages} instant replies" if path == "instant" else f"{messages} of {messages} answered"
    )
    assert first_line.startswith(expected_first)
    loop, storage = text.split("== aiosqlite's thread (storage transactions)")
    assert "== the event loop's thread" in loop
    assert expected in storage
