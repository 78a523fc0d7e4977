"""bench.run_all: every benchmark runs, and one failure makes the whole run fail."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from bench import run_all


def test_a_failing_benchmark_fails_the_run_but_the_others_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[tuple[str, list[str]]] = []

    def fake(name: str, status: int) -> object:
        def main(argv: Sequence[str]) -> int:
            ran.append((name, list(argv)))
            return status

        return main

    monkeypatch.setattr(
        run_all, "BENCHMARKS", {"first": fake("first", 1), "second": fake("second", 0)}
    )
    assert run_all.main(["--size", "tiny", "--out", str(tmp_path)]) == 1
    assert [name for name, _ in ran] == ["first", "second"]
    assert ran[0][1] == ["--size", "tiny", "--out", str(tmp_path)]
    assert "failed: first" in capsys.readouterr().out
