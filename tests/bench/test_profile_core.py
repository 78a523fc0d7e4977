"""bench.profile_core at a tiny size: each path runs, and the profile of aiosqlite's
thread, where storage transactions run, names the storage work of that path."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import profile_core


# Sampled every 0.5 ms: a path's frame shows only if the run spends long enough in it, so
# each expected frame is one its intake spends most of its storage time in, at a size
# that gives the thread a few hundred samples.
@pytest.mark.parametrize(
    ("path", "expected"), [("instant", "SqlStore._defer"), ("answer", "SqlStore._begin_turn")]
)
def test_a_tiny_profile_of_each_path(tmp_path: Path, path: str, expected: str) -> None:
    out = tmp_path / "profile.txt"
    assert profile_core.main([path, "--messages", "100", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    first_line = text.splitlines()[0]
    expected_first = "100 instant replies" if path == "instant" else "100 of 100 answered"
    assert first_line.startswith(expected_first)
    loop, storage = text.split("== aiosqlite's thread (storage transactions)")
    assert "== the event loop's thread" in loop
    assert expected in storage
