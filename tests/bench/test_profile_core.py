"""bench.profile_core at a tiny size: each path runs and its profile names the storage
call that path makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import profile_core


@pytest.mark.parametrize(
    ("path", "expected"), [("instant", "record_inbound"), ("answer", "record_answer")]
)
def test_a_tiny_profile_of_each_path(tmp_path: Path, path: str, expected: str) -> None:
    out = tmp_path / "profile.txt"
    assert profile_core.main([path, "--messages", "6", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    first_line = text.splitlines()[0]
    assert first_line.startswith("6 instant replies" if path == "instant" else "6 of 6 answered")
    assert expected in text
