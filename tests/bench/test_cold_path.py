"""bench.cold_path at --size tiny: both parts measured, and every step it times was on the
instant reply's path, in order, hot and cold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cold_path
from storage.repository import SqlStore


def test_tiny_run_times_every_step_of_the_path(tmp_path: Path) -> None:
    assert cold_path.main(["--size", "tiny", "--out", str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "cold_path.json").read_text())["figures"]
    sqlite = figures["sqlite"]
    size = cold_path.SIZES["tiny"]
    assert sqlite["transactions"] == {
        "hot": size.rounds * size.per_round,
        "cold": size.rounds * size.per_round,
    }
    assert sqlite["hot_us"] > 0 and sqlite["cold_us"] > 0
    for mode in ("hot", "cold"):
        steps = figures["timeline"][mode]
        for label, *_ in cold_path.STEPS:
            assert steps[f"{label} begins"] <= steps[f"{label} ends"], (mode, label)
        # The reply went out after the message was stored, through the courier.
        assert (
            steps["stored by the store ends"]
            <= steps["courier sends begins"]
            <= steps["reply sent"]
        )
        thread = steps["trip to SQLite's thread begins"]
        assert thread <= steps["reply chosen and stored (thread) begins"]


def test_the_timed_functions_are_put_back(tmp_path: Path) -> None:
    original = SqlStore.record_inbound
    timeline = cold_path.Timeline()
    with timeline.installed():
        assert SqlStore.record_inbound is not original
    assert SqlStore.record_inbound is original


def test_a_step_that_no_longer_exists_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        cold_path, "STEPS", (*cold_path.STEPS, ("gone", "storage.repository", "SqlStore", "nope"))
    )
    original = SqlStore.record_inbound
    with pytest.raises(AttributeError), cold_path.Timeline().installed():
        pass
    assert SqlStore.record_inbound is original
