"""bench.scale at --size tiny: memory, instant replies and recovery all measured."""

from __future__ import annotations

import json
from pathlib import Path

from bench import scale


def test_tiny_run_recovers_every_session(tmp_path: Path) -> None:
    assert scale.main(["--size", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "scale.json").read_text())
    size = scale.SIZES["tiny"]
    total = size.baseline_sessions + size.sessions + size.traced_sessions
    assert result["sessions_with_tool_running"] == total
    assert isinstance(result["memory"]["rss_kib_per_session"], int | float)
    assert result["memory"]["tracemalloc_kib_per_session"] > 0
    instant = result["instant"]
    assert instant["answered"] == instant["asked"] == instant["instant_replies"] > 0
    recovery = result["recovery"]
    assert recovery["reached_llm"] == recovery["answers_sent"] == total
    assert recovery["all_reached_llm_seconds"] is not None
    assert recovery["left_in_tool_round"] == recovery["calls_left_without_result"] == 0
    assert recovery["newcomers_answered"] == recovery["newcomer_answer"]["count"] == size.newcomers
    repairs = [row for row in recovery["store_calls"] if row["method"] == "repair_after_restart"]
    assert len(repairs) == 1
