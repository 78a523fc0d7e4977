"""bench.llm_calls at --size tiny: the three scenarios, counted in the fake's log."""

from __future__ import annotations

import json
from pathlib import Path

from bench import llm_calls


def test_a_turn_with_an_extra_call_is_reported_as_differing() -> None:
    outcome = llm_calls.Outcome(
        scenario="1",
        repeat=0,
        interim_messages=1,
        instant_replies=1,
        llm_calls=3,
        answers=1,
        deferred_after_tool=True,
        rejected=0,
    )
    assert not outcome.ok
    assert "DIFFERS" in llm_calls.report([outcome])


def test_tiny_run_counts_two_calls_per_turn(tmp_path: Path) -> None:
    assert llm_calls.main(["--size", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "llm_calls.json").read_text())
    outcomes = result["outcomes"]
    assert [o["scenario"] for o in outcomes] == ["1", "2", "3"]
    assert all(o["llm_calls"] == 2 for o in outcomes)
    assert [o["instant_replies"] for o in outcomes] == [1, 2, 4]
    assert result["all_ok"] is True
